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
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Literal

import pluggy

from freezeframe import hookspecs
from freezeframe.components import API_VERSION, ApplicationPlugin, Backend, Role
from freezeframe.errors import PluginError

__all__ = ["Broken", "ComponentInfo", "Registry", "build_registry", "default_registry"]

log = logging.getLogger(__name__)

ComponentType = Literal["application", "backend"]


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
        if self.category == "backend":
            out["role"] = str(self.cls.role)
            if self.cls.role == Role.SNAPSHOT:
                out["snapshot_kind"] = str(self.cls.snapshot_kind)
        else:
            out["consistent_on"] = sorted(str(k) for k in self.cls.consistent_on)
            out["crash_safety"] = str(self.cls.crash_safety)
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


@dataclass
class Registry:
    """Every component class known to this process, and every plug-in that broke."""

    pm: pluggy.PluginManager
    applications: dict[str, ComponentInfo] = field(default_factory=dict)
    backends: dict[str, ComponentInfo] = field(default_factory=dict)
    broken: list[Broken] = field(default_factory=list)
    #: Which distribution brought each plug-in module (by plug-in name), from its entry point.
    origins: dict[str, tuple[str, str]] = field(default_factory=dict)

    def application(self, kind: str) -> ComponentInfo:
        """The application plug-in ``kind``; :class:`PluginError` explains a missing one."""
        return self._find(kind, self.applications, "application plug-in")

    def backend(self, kind: str) -> ComponentInfo:
        """The backend ``kind``; :class:`PluginError` explains a missing one."""
        return self._find(kind, self.backends, "backend")

    def _find(self, kind: str, table: dict[str, ComponentInfo], what: str) -> ComponentInfo:
        if kind in table:
            return table[kind]
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
    table = registry.applications if ctype == "application" else registry.backends
    for impl, call in each_implementation(registry.pm, hook_name):
        dist, version = registry.origins.get(impl.plugin_name) or _distribution_of(impl.plugin)

        def register(cls: type[Any], _dist: str = dist, _version: str = version) -> None:
            problem = _class_problem(cls, base, ctype)
            kind: str = getattr(cls, "kind", "")
            if problem:
                registry.broken.append(Broken(getattr(cls, "__name__", "?"), _dist, problem, kind))
                return
            if kind in table:
                other = table.pop(kind)
                registry.broken.append(
                    Broken(
                        kind,
                        f"{other.distribution} and {_dist}",
                        f"{ctype} kind {kind!r} is registered by both "
                        f"{other.distribution} and {_dist}",
                        kind,
                    )
                )
                return
            if any(b.kind == kind and " and " in b.distribution for b in registry.broken):
                return  # already a conflict: a third registration does not win
            table[kind] = ComponentInfo(kind, ctype, cls, _dist, _version)

        try:
            call(register=register)
        except Exception as e:
            registry.broken.append(Broken(impl.plugin_name, dist, f"{type(e).__name__}: {e}"))
            log.debug("plug-in %s failed to register", impl.plugin_name, exc_info=True)


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
    if ctype == "backend" and getattr(cls, "role", None) not in tuple(Role):
        return f"{cls.__name__} has no role (snapshot or copy)"
    return None
