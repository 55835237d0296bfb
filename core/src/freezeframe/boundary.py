"""The data that crosses the boundary between the core and its components: the
quiesce's :class:`Deadline`, what a stage made (:class:`Artifact`), what a stage is
given (:class:`StageContext`), what a restore is asked (:class:`RestoreOptions`), and a
snapshot stage's :class:`WindowEstimate`. :mod:`freezeframe.plugin` exports them all."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from freezeframe.copying import outermost
from freezeframe.errors import Cancelled, FreezeframeError
from freezeframe.fsutil import under

__all__ = [
    "Artifact",
    "Deadline",
    "ProgressCallback",
    "RestoreOptions",
    "StageContext",
    "WindowEstimate",
]


@dataclass(frozen=True)
class Deadline:
    """The instant (``time.monotonic()``) by which a quiesce must be done."""

    at: float

    @classmethod
    def after(cls, seconds: float) -> Deadline:
        """A deadline ``seconds`` from now."""
        return cls(time.monotonic() + seconds)

    def remaining(self) -> float:
        """Seconds left, never negative."""
        return max(0.0, self.at - time.monotonic())

    def expired(self) -> bool:
        """Whether the instant has passed."""
        return time.monotonic() >= self.at


@dataclass(frozen=True)
class Artifact:
    """What one stage of one run produced, as the catalog keeps it.

    ``id`` is the backend's own name for it (a directory, a file, a restic
    snapshot id). ``view`` is, for snapshot stages, a directory where the
    consistent image can be read with every file under its original absolute
    path (``view / "srv/shop/orders.db"``). ``metadata`` must be JSON-serialisable
    and must never hold a secret.
    """

    id: str
    bytes: int = 0
    files: int = 0
    view: Path | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def roots(self) -> list[tuple[Path, Path]]:
        """``(original absolute path, where its image is)`` for each path a snapshot holds.

        Snapshot backends record the original paths in ``metadata["paths"]``;
        the image of each is :meth:`image`. Without ``paths``, the whole view is one
        root, "/".
        """
        if self.view is None:
            return []
        paths = self.metadata.get("paths")
        if not paths:
            return [(Path("/"), self.view)]
        return [(Path(p), self.image(p)) for p in paths]

    def image(self, original: Path | str) -> Path:
        """Where the image of the absolute path ``original`` is (or goes) in the view:
        ``view / <path without its leading "/">``, unless ``metadata["locations"]`` maps
        it, or a folder above it, elsewhere (btrfs: inside the subvolume snapshot). A
        completion (:meth:`ApplicationPlugin.complete`) writes its files here."""
        if self.view is None:
            raise FreezeframeError(f"artifact {self.id} has no view")
        path = Path(original)
        locations: Mapping[str, str] = self.metadata.get("locations", {})
        for above in (path, *path.parents):
            if str(above) in locations:
                return Path(locations[str(above)]) / path.relative_to(above)
        return under(self.view, path)

    def outer_roots(self) -> list[tuple[Path, Path]]:
        """:meth:`roots` in path order, less those inside another listed path: what a
        copy must read, each tree once. Raises :class:`FreezeframeError` when there is
        none or when an image is missing from the snapshot."""
        roots = sorted(self.roots())
        keep = set(outermost(o for o, _ in roots))  # each tree once
        outer: list[tuple[Path, Path]] = []
        for original, image in roots:
            key = Path(os.path.abspath(original))  # as outermost() normalises it
            if key not in keep:
                continue  # inside a path already listed, or listed twice
            keep.discard(key)
            if not os.path.lexists(image):
                raise FreezeframeError(
                    f"{image} (the image of {original}) is missing from the snapshot"
                )
            outer.append((original, image))
        if not outer:
            raise FreezeframeError("the source snapshot holds no paths")
        return outer


@dataclass(frozen=True)
class RestoreOptions:
    """What the user asked of a restore, beyond where to put it.

    A backend receives it as the ``options`` keyword of :meth:`Backend.restore`
    when its ``restore`` declares that parameter; one that does not is called
    as before, without it.
    """

    #: Make device nodes and FIFOs, and keep setuid/setgid bits (``--preserve-special``),
    #: and then only from an artifact verified genuine. Without it they are left out,
    #: with one warning saying what was.
    preserve_special: bool = False
    #: The original absolute paths to restore, each with everything below it (``--app``,
    #: ``--path``); empty: everything the artifact holds. A backend restores only what
    #: :meth:`selects` takes, at the same place as a whole restore would, plus the folders
    #: above it (:meth:`leads_to`), and returns :meth:`within` its paths.
    paths: tuple[Path, ...] = ()

    def __post_init__(self) -> None:
        # compared as normalised paths; a relative one raises ValueError
        object.__setattr__(self, "paths", tuple(_normal(p) for p in self.paths))

    def selects(self, original: Path | str) -> bool:
        """Whether the entry at the absolute path ``original`` is restored: it is, or is
        below, a path of :attr:`paths` (every entry is when :attr:`paths` is empty)."""
        if not self.paths:
            return True
        path = _normal(original)
        return any(path.is_relative_to(p) for p in self.paths)

    def leads_to(self, original: Path | str) -> bool:
        """Whether ``original`` is a folder above a selected path: restored as a folder (its
        owner, mode and times), without what else it holds."""
        path = _normal(original)
        return any(path in p.parents for p in self.paths)

    def within(self, roots: Iterable[Path | str]) -> list[Path]:
        """What to restore of an artifact that holds the trees ``roots`` (original paths):
        every root when nothing is selected; otherwise each root the selection takes
        whole and each selected path inside a root, each tree once, in path order. Empty
        when the artifact holds nothing selected."""
        if not self.paths:
            return [Path(r) for r in roots]
        held = [_normal(r) for r in roots]
        taken = [r for r in held if self.selects(r)]
        taken += [p for p in self.paths if any(p.is_relative_to(r) for r in held)]
        return outermost(taken)


def _normal(original: Path | str) -> Path:
    """The absolute path ``original`` without ``.``, ``..`` or repeated slashes (as a tar
    member's name, ``srv/shop/`` with a "/" in front, compares to a selected path)."""
    text = os.path.normpath(original)
    if not text.startswith("/"):
        raise ValueError(f"{original!s} is not an absolute path")
    return Path("/" + text.lstrip("/"))  # normpath keeps a leading "//"


ProgressCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class WindowEstimate:
    """What a snapshot stage predicts, before the run, it will do inside the freeze window
    (:meth:`Backend.window_estimate`)."""

    #: ``"reflink"`` (every file shared, no data copied), ``"copy"`` (``bytes_copied``
    #: bytes copied), ``"mixed"`` (some paths reflinked, ``bytes_copied`` copied), or
    #: ``"unknown"`` (the backend cannot tell: nothing is bounded).
    how: str = "unknown"
    #: The bytes of file data copied inside the window; ``None`` when unknown.
    bytes_copied: int | None = None
    #: Why, in a few words (``"dir /snap is on another filesystem than /srv/db"``).
    note: str = ""


@dataclass
class StageContext:
    """What the core hands a backend's :meth:`Backend.run`."""

    run_id: str
    profile: str
    stage: str
    #: Every application's data paths (absolute), in profile order, without duplicates.
    data_paths: tuple[Path, ...]
    #: For copy stages: the artifact of the stage named by ``source``.
    source: Artifact | None = None
    #: For snapshot stages: the original paths that applications in a capture mode
    #: complete into the view after the thaw (:meth:`ApplicationPlugin.completed_paths`).
    #: A backend that takes completions keeps them writable in its view until
    #: :meth:`Backend.seal`; empty when no application of the profile completes.
    completed_paths: tuple[Path, ...] = ()
    cancel_event: threading.Event = field(default_factory=threading.Event)
    on_progress: ProgressCallback | None = None
    bytes_done: int = 0
    files_done: int = 0
    #: The bytes the stage is expected to read, when known: for a copy stage the core
    #: sets its source's size; a tool that counts them itself (restic) says better
    #: through :meth:`progress_to`. Progress bars show it as their total.
    bytes_total: int | None = None

    def check(self) -> None:
        """Raise :class:`Cancelled` if the run was cancelled; call it often in long work."""
        if self.cancel_event.is_set():
            raise Cancelled(f"stage {self.stage} cancelled")

    @property
    def cancelled(self) -> bool:
        """Whether the run was cancelled."""
        return self.cancel_event.is_set()

    def progress(self, *, bytes: int = 0, files: int = 0) -> None:
        """Report work done since the last call (bytes, files); also checks for cancellation."""
        self.bytes_done += bytes
        self.files_done += files
        if self.on_progress is not None:
            self.on_progress(self.bytes_done, self.files_done)
        self.check()

    def progress_to(self, *, bytes: int, files: int, total: int | None = None) -> None:
        """Report the work done so far as a tool counts it (restic's, borg's JSON progress),
        and the bytes the stage will read when the tool knows (``total``).

        Unlike :meth:`progress` it never raises for a cancel: call it from the thread that
        reads the tool's output (``run_tool``'s ``on_stdout``/``on_stderr``)."""
        self.bytes_done, self.files_done = bytes, files
        if total is not None:
            self.bytes_total = total
        if self.on_progress is not None:
            self.on_progress(self.bytes_done, self.files_done)
