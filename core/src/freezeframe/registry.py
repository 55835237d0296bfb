"""Finding plug-ins and backends: pluggy over the ``freezeframe`` entry-point group.

:func:`default_registry` is the cached factory the CLI uses; tests build their
own with :func:`build_registry` and register in-process modules. Nothing is
loaded at import time.

Ways out for users: ``FREEZEFRAME_DISABLE_PLUGIN_AUTOLOAD=1`` loads no entry
point; ``FREEZEFRAME_PLUGINS=sqlite,clone`` loads only the entry points so named.
"""

from __future__ import annotations

import functools
import importlib.metadata as md
import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Literal

import pluggy

from freezeframe import hookspecs
from freezeframe.components import API_VERSION, ApplicationPlugin, Backend, Role
from freezeframe.errors import ConfigError, PluginError
from freezeframe.observing import Observer

__all__ = [
    "Broken",
    "ComponentInfo",
    "Conflict",
    "Registry",
    "build_registry",
    "default_registry",
    "normalized",
    "owner_of",
]

log = logging.getLogger(__name__)

ComponentType = Literal["application", "backend", "observer"]


@dataclass(frozen=True)
class ComponentInfo:
    """A registered component class and where it came from."""

    kind: str
    category: ComponentType
    cls: Any  # the registered class
    distribution: str
    version: str

    def to_json(self) -> dict[str, Any]:
        """The ``plugins --json`` form."""
        out: dict[str, Any] = {
            "kind": self.kind,
            "type": self.category,
            "distribution": self.distribution,
            "version": self.version,
            "api_version": self.cls.api_version,
        }
        if self.category == "observer":
            out["table"] = f"[[{self.kind}]]"
        elif self.category == "backend":
            out["role"] = str(self.cls.role)
            if self.cls.role == Role.SNAPSHOT:
                out["snapshot_kind"] = str(self.cls.snapshot_kind)
                out["takes_completions"] = bool(self.cls.takes_completions)
        else:
            out["consistent_on"] = sorted(str(k) for k in self.cls.consistent_on)
            out["crash_safety"] = str(self.cls.crash_safety)
            out["capture_modes"] = list(self.cls.capture_modes)
            out["self_contained_modes"] = sorted(
                m for m in self.cls.capture_modes if m in self.cls.self_contained_modes
            )
        return out


@dataclass(frozen=True)
class Broken:
    """A plug-in that failed to load or register, kept to show in ``freezeframe plugins``."""

    name: str
    distribution: str
    error: str
    kind: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The ``plugins --json`` form."""
        return {
            "name": self.name,
            "distribution": self.distribution,
            "kind": self.kind,
            "error": self.error,
        }


def normalized(distribution: str) -> str:
    """A distribution name as pip compares them (PEP 503): ``Freezeframe_SQLite`` is
    ``freezeframe-sqlite``."""
    return re.sub(r"[-_.]+", "-", distribution).lower()


def owner_of(kind: str) -> str:
    """The distribution a kind is named for, by the project's naming convention."""
    return normalized(f"freezeframe-{kind}")


@dataclass(frozen=True)
class Conflict:
    """One kind registered by more than one distribution.

    A profile table that pins ``distribution`` gets that distribution's class; one
    that pins none gets the class of the distribution named for the kind
    (``freezeframe-<kind>``) when it is one of them, and an error otherwise. So a
    vendor's package that takes a kind already in use never breaks a working profile.
    """

    kind: str
    category: ComponentType
    candidates: tuple[ComponentInfo, ...]

    @property
    def table(self) -> str:
        """The profile table that names a component of this category."""
        if self.category == "observer":
            return f"[[{self.kind}]]"
        return "[[application]]" if self.category == "application" else "[[backup]]"

    @property
    def unpinned(self) -> ComponentInfo | None:
        """What a profile table that pins no distribution gets, if anything."""
        named = [c for c in self.candidates if normalized(c.distribution) == owner_of(self.kind)]
        return named[0] if len(named) == 1 else None

    def problem(self) -> str:
        """One line: who registered the kind, and what an unpinned profile gets."""
        dists = [c.distribution for c in self.candidates]
        names = ("both " if len(dists) == 2 else "") + ", ".join(dists[:-1]) + " and " + dists[-1]
        default = self.unpinned
        gets = (
            f"a profile that pins no distribution gets {default.distribution}"
            if default
            else "a profile must pin one to use it"
        )
        return f"{self.category} kind {self.kind!r} is registered by {names}; {gets}"

    def hint(self) -> str:
        """How to resolve it: pin one in the profile, or uninstall the others."""
        dists = [c.distribution for c in self.candidates]
        default = self.unpinned
        pins = " or ".join(f'distribution = "{d}"' for d in dists)
        if default is None:
            drop = f"all but one of {', '.join(dists)}"
        else:
            drop = " and ".join(d for d in dists if d != default.distribution)
        return f"pin with {pins} in the {self.table} table, or uninstall {drop}"

    def to_json(self) -> dict[str, Any]:
        """The ``plugins --json`` form."""
        default = self.unpinned
        return {
            "kind": self.kind,
            "type": self.category,
            "distributions": [c.distribution for c in self.candidates],
            "unpinned": default.distribution if default else None,
            "error": self.problem(),
            "hint": self.hint(),
        }


@dataclass
class Registry:
    """Every component class known to this process, and every plug-in that broke."""

    pm: pluggy.PluginManager
    #: By kind, what a profile gets without pinning a distribution (a conflicting kind
    #: is here only when one of its distributions is named for it).
    applications: dict[str, ComponentInfo] = field(default_factory=dict)
    backends: dict[str, ComponentInfo] = field(default_factory=dict)
    #: Observers by kind: the top-level profile table each reads (``notify``).
    observers: dict[str, ComponentInfo] = field(default_factory=dict)
    broken: list[Broken] = field(default_factory=list)
    #: Kinds registered by more than one distribution.
    conflicts: list[Conflict] = field(default_factory=list)
    #: Which distribution brought each plug-in module (by plug-in name), from its entry point.
    origins: dict[str, tuple[str, str]] = field(default_factory=dict)

    def application(self, kind: str, distribution: str | None = None) -> ComponentInfo:
        """The application plug-in ``kind`` (from ``distribution`` when given).

        :class:`PluginError` explains a missing, broken or ambiguous kind,
        :class:`ConfigError` (field ``distribution``) a distribution that does not provide it.
        """
        return self._find(kind, distribution, "application", "application plug-in")

    def backend(self, kind: str, distribution: str | None = None) -> ComponentInfo:
        """The backend ``kind`` (from ``distribution`` when given), as :meth:`application`."""
        return self._find(kind, distribution, "backend", "backend")

    def observer(self, kind: str, distribution: str | None = None) -> ComponentInfo:
        """The observer ``kind`` (from ``distribution`` when given), as :meth:`application`."""
        return self._find(kind, distribution, "observer", "observer")

    def table_of(self, category: ComponentType) -> dict[str, ComponentInfo]:
        """The components of ``category`` by kind."""
        return {
            "application": self.applications,
            "backend": self.backends,
            "observer": self.observers,
        }[category]

    def _find(
        self, kind: str, distribution: str | None, category: ComponentType, what: str
    ) -> ComponentInfo:
        table = self.table_of(category)
        conflict = next(
            (c for c in self.conflicts if c.kind == kind and c.category == category), None
        )
        candidates = conflict.candidates if conflict else (table[kind],) if kind in table else ()
        if distribution is not None and candidates:
            pinned = [
                c for c in candidates if normalized(c.distribution) == normalized(distribution)
            ]
            if len(pinned) == 1:
                return pinned[0]
            given = ", ".join(c.distribution for c in candidates)
            why = "registers it more than once" if pinned else f"provided by {given}"
            raise ConfigError(
                "distribution", f"{distribution!r} does not provide {what} {kind!r} ({why})"
            )
        if kind in table:
            return table[kind]
        if conflict is not None:
            raise PluginError(f"{conflict.problem()}: {conflict.hint()}")
        for b in self.broken:
            if b.kind == kind or b.name == kind:
                raise PluginError(f"{what} {kind!r} is broken ({b.distribution}): {b.error}")
        known = ", ".join(sorted(table)) or "none installed"
        raise PluginError(f"unknown {what} {kind!r} (installed: {known})")


def _distribution_of(obj: Any) -> tuple[str, str]:
    module = str(getattr(obj, "__module__", None) or getattr(obj, "__name__", ""))
    top = module.split(".")[0]
    dists = md.packages_distributions().get(top, [])
    if dists:
        name = dists[0]
        try:
            return name, md.version(name)
        except md.PackageNotFoundError:
            pass
    return f"<{module}>", "0"


def build_registry(
    *, entry_points: bool = True, modules: Iterable[ModuleType | object] = ()
) -> Registry:
    """A fresh registry: entry points (unless disabled) plus the given in-process modules."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    registry = Registry(pm)
    if entry_points and os.environ.get("FREEZEFRAME_DISABLE_PLUGIN_AUTOLOAD", "") in ("", "0"):
        _load_entry_points(registry)
    for module in modules:
        pm.register(module)
    while True:  # each plug-in with a misspelt hook is reported, not just the first
        try:
            pm.check_pending()
            break
        except pluggy.PluginValidationError as e:
            name = pm.get_name(e.plugin) or str(e.plugin)
            dist = registry.origins.get(name, _distribution_of(e.plugin))[0]
            registry.broken.append(Broken(name, dist, str(e)))
            pm.unregister(e.plugin)
    _collect(registry, "application", "freezeframe_register_applications", ApplicationPlugin)
    _collect(registry, "backend", "freezeframe_register_backends", Backend)
    _collect(registry, "observer", "freezeframe_register_observers", Observer)
    return registry


@functools.cache
def default_registry() -> Registry:
    """The registry of installed plug-ins, built once per process on first use."""
    return build_registry()


def _load_entry_points(registry: Registry) -> None:
    allow = os.environ.get("FREEZEFRAME_PLUGINS")
    allowed = {n.strip() for n in allow.split(",") if n.strip()} if allow else None
    for ep in md.entry_points(group=hookspecs.PROJECT):
        if allowed is not None and ep.name not in allowed:
            continue
        dist = ep.dist.name if ep.dist else "?"
        try:
            module = ep.load()
            registry.pm.register(module, name=ep.name)
            registry.origins[ep.name] = (dist, ep.dist.version if ep.dist else "0")
        except Exception as e:  # one broken plug-in must not take the CLI down
            registry.broken.append(Broken(ep.name, dist, f"{type(e).__name__}: {e}"))
            log.debug("plug-in %s failed to load", ep.name, exc_info=True)


def each_implementation(
    pm: pluggy.PluginManager, hook_name: str
) -> Iterator[tuple[pluggy.HookImpl, Callable[..., list[Any]]]]:
    """Each implementation of ``hook_name`` in pluggy's own call order (``tryfirst`` ones
    first, ``trylast`` ones last), with a caller for it alone.

    The caller is pluggy's hook caller, so the implementation gets only the arguments
    it names (a hookspec may grow an argument without breaking it); calling one at a
    time lets the caller keep one that raises from stopping the others.
    """
    impls = getattr(pm.hook, hook_name).get_hookimpls()
    for impl in reversed(impls):  # pluggy calls the last of the list first
        others = [i.plugin for i in impls if i is not impl]
        yield impl, pm.subset_hook_caller(hook_name, remove_plugins=others)


def _collect(registry: Registry, ctype: ComponentType, hook_name: str, base: type[Any]) -> None:
    found: dict[str, list[ComponentInfo]] = {}
    for impl, call in each_implementation(registry.pm, hook_name):
        dist, version = registry.origins.get(impl.plugin_name) or _distribution_of(impl.plugin)

        def register(cls: type[Any], _dist: str = dist, _version: str = version) -> None:
            problem = _class_problem(cls, base, ctype)
            kind: str = getattr(cls, "kind", "")
            if problem:
                registry.broken.append(Broken(getattr(cls, "__name__", "?"), _dist, problem, kind))
                return
            found.setdefault(kind, []).append(ComponentInfo(kind, ctype, cls, _dist, _version))

        try:
            call(register=register)
        except Exception as e:
            registry.broken.append(Broken(impl.plugin_name, dist, f"{type(e).__name__}: {e}"))
            log.debug("plug-in %s failed to register", impl.plugin_name, exc_info=True)
    table = registry.table_of(ctype)
    for kind, infos in found.items():
        if len(infos) == 1:
            table[kind] = infos[0]
            continue
        # The one named for the kind first, then the others by name: the same text every time.
        infos.sort(key=lambda c: (normalized(c.distribution) != owner_of(kind), c.distribution))
        conflict = Conflict(kind, ctype, tuple(infos))
        registry.conflicts.append(conflict)
        if conflict.unpinned is not None:
            table[kind] = conflict.unpinned


def _class_problem(cls: Any, base: type[Any], ctype: ComponentType) -> str | None:
    if not isinstance(cls, type) or not issubclass(cls, base):
        return f"registered {cls!r}, which is not a subclass of freezeframe.{base.__name__}"
    kind = getattr(cls, "kind", None)
    if not isinstance(kind, str) or not kind:
        return f"{cls.__name__} has no kind name"
    api = getattr(cls, "api_version", None)
    if api != API_VERSION:
        return (
            f"{cls.__name__} was written for plug-in API {api}; "
            f"this freezeframe supports API {API_VERSION}"
        )
    if ctype == "observer" and kind in ("profile", "application", "backup"):
        return f"{cls.__name__}: kind {kind!r} is a table of the core's; name it otherwise"
    if ctype == "backend" and getattr(cls, "role", None) not in tuple(Role):
        return f"{cls.__name__} has no role (snapshot or copy)"
    modes = getattr(cls, "capture_modes", ())
    if ctype == "application" and (
        not isinstance(modes, tuple) or not modes or not all(isinstance(m, str) for m in modes)
    ):
        return f"{cls.__name__}: capture_modes must be a non-empty tuple of mode names"
    missing = sorted(getattr(cls, "__abstractmethods__", ()))
    if missing:
        return f"{cls.__name__}: abstract methods not implemented: {', '.join(missing)}"
    return None
