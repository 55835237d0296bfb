"""A loaded, validated profile: the profile's fields, and each ``[[application]]`` and
``[[backup]]`` table as its component instance with the core's fields around it.
:func:`freezeframe.profile.load_profile` makes them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from freezeframe.components import ApplicationPlugin, Backend, Role
from freezeframe.errors import ProfileError
from freezeframe.keep import KeepPolicy
from freezeframe.registry import ComponentInfo

__all__ = ["MAX_COPY_IN_WINDOW", "ApplicationSpec", "Profile", "StageSpec"]

#: The default ``max_copy_in_window``: what a disk copies in well under a second.
MAX_COPY_IN_WINDOW = 64 << 20


@dataclass(frozen=True)
class ApplicationSpec:
    """One ``[[application]]``: its plug-in instance and the core's fields around it."""

    name: str
    info: ComponentInfo
    component: ApplicationPlugin
    after: tuple[str, ...] = ()
    on_quiesce_failure: str = "fail"
    #: The capture mode the profile names (``capture = ...``); ``None``: the default.
    chosen: str | None = None

    @property
    def capture(self) -> str:
        """The capture mode (one of the plug-in's ``capture_modes``): the profile's, or by
        default the first one consistent with the profile's stages, settled again before a
        run when a stage would copy the application inside the window
        (:func:`freezeframe.preflight.settle_captures`)."""
        return self.component.capture


@dataclass(frozen=True)
class StageSpec:
    """One ``[[backup]]``: its backend instance and the core's fields around it."""

    name: str
    info: ComponentInfo
    component: Backend
    role: Role
    source: str | None = None
    keep: KeepPolicy | None = None


@dataclass(frozen=True)
class Profile:
    """A loaded, validated profile."""

    path: Path
    name: str
    freeze_timeout: float
    thaw: str
    state_dir: Path
    applications: tuple[ApplicationSpec, ...]
    stages: tuple[StageSpec, ...]
    #: The most bytes a snapshot stage may copy inside the freeze window (``check``).
    max_copy_in_window: int = MAX_COPY_IN_WINDOW

    @property
    def home(self) -> Path:
        """This profile's folder in the state dir: its catalog and lock."""
        return self.state_dir / self.name

    def stage(self, name: str) -> StageSpec:
        """The stage called ``name``."""
        for s in self.stages:
            if s.name == name:
                return s
        raise ProfileError([f"{self.path}: no [[backup]] stage named {name!r}"])

    def released_after_run(self, stage: StageSpec) -> bool:
        """A snapshot that a copy stage reads and that has no ``keep`` is released after the run."""
        return (
            stage.role == Role.SNAPSHOT
            and stage.keep is None
            and any(s.source == stage.name for s in self.stages)
        )
