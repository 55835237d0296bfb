"""Loading a profile (TOML): resolve every component, collect every problem, then fail once.

Relative paths in a profile are taken from the profile's own folder.
"""

from __future__ import annotations

import difflib
import importlib.metadata as md
import os
import re
import sys
import tomllib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from freezeframe.components import Role
from freezeframe.config import Table, brief, read_regular_file
from freezeframe.dumps import DUMPS, DumpsView
from freezeframe.errors import ConfigError, PluginError, ProfileError
from freezeframe.keep import KeepPolicy
from freezeframe.registry import ComponentInfo, Registry
from freezeframe.specs import (
    DRILL_MODES,
    MAX_COPY_IN_WINDOW,
    ApplicationSpec,
    ObserverSpec,
    Profile,
    StageSpec,
    UserCheck,
    default_drill_dir,
)

__all__ = ["ApplicationSpec", "Profile", "StageSpec", "default_state_dir", "load_profile"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
THAW_MODES = ("after-snapshot", "after-backup")
ON_QUIESCE_FAILURE = ("fail", "crash-consistent")
#: The largest profile read: a profile of hundreds of applications is a few dozen KiB.
PROFILE_LIMIT = 1 << 20
#: The longest ``freeze_timeout``: an application frozen for longer is an outage, not a backup.
LONGEST_FREEZE = 86400.0


def default_state_dir() -> Path:
    """``$XDG_STATE_HOME/freezeframe``, or ``~/.local/state/freezeframe``."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "freezeframe"


def load_profile(path: Path, registry: Registry) -> Profile:
    """Read and validate ``path``; raise :class:`ProfileError` listing every problem.

    The profile must be a regular file (symlinks are followed) of at most
    :data:`PROFILE_LIMIT` bytes.
    """
    path = Path(path)
    try:
        raw, _ = read_regular_file(path, PROFILE_LIMIT)
        data = tomllib.loads(raw.decode("utf-8"))
    except FileNotFoundError:
        raise ProfileError([f"{path}: no such profile file"]) from None
    except UnicodeDecodeError:
        raise ProfileError([f"{path}: not UTF-8 text"]) from None
    except OSError as e:
        raise ProfileError([f"{path}: cannot read: {e.strerror}"]) from None
    except tomllib.TOMLDecodeError as e:
        raise ProfileError([f"{path}: invalid TOML: {e}"]) from None
    except RecursionError:
        raise ProfileError([f"{path}: invalid TOML: arrays or tables nested too deeply"]) from None
    except ValueError as e:  # what the file is, or an integer longer than Python converts
        if "integer string conversion" in str(e):
            e = ValueError(
                f"invalid TOML: an integer of more than {sys.get_int_max_str_digits()} digits"
            )
        raise ProfileError([f"{path}: {e}"]) from None
    return _Loader(path, registry).load(data)


def _user_checks_in(table: dict[str, Any]) -> bool:
    """Whether the table's ``check`` is the core's, ``[[application.check]]`` tables, rather
    than a plug-in's own field of that name (``exec``'s ``check = [argv]``, its preflight
    command): a plug-in that has no such field calls any other ``check`` unknown."""
    value = table.get("check")
    return isinstance(value, dict) or (
        isinstance(value, list) and any(isinstance(v, dict) for v in value)
    )


class _Loader:
    def __init__(self, path: Path, registry: Registry) -> None:
        self.path = path
        self.base_dir = path.resolve().parent
        self.registry = registry
        self.problems: list[str] = []
        #: (where, field) of unknown fields named already, beside a missing one
        self.named: set[tuple[str, str]] = set()

    def problem(self, where: str, message: str) -> None:
        self.problems.append(f"{self.path}: {where}: {message}")

    def _config_problem(self, where: str, e: ConfigError, unread: Sequence[str]) -> None:
        """Record ``e``. A missing field whose near-namesake the table has (``repo`` for
        ``repository``: a field nobody read) is named beside it, with a "did you mean"."""
        message = str(e)
        if e.message.startswith("missing"):
            near = difflib.get_close_matches(e.field, list(unread), n=1, cutoff=0.5)
            if near:
                message += f'; unknown field "{near[0]}": did you mean "{e.field}"?'
                self.named.add((where, near[0]))
        self.problem(where, message)

    def _unknown(self, where: str, key: str, table: Table, of: str = "") -> None:
        """Record ``key`` as a field nobody read, with a "did you mean" among the fields
        the component asked for (unless it was named beside a missing one already)."""
        if (where, key) in self.named:
            return
        near = difflib.get_close_matches(key, [k for k in table.asked() if k not in table], n=1)
        hint = f'; did you mean "{near[0]}"?' if near else ""
        self.problem(where, f'field "{key}": unknown field{of}{hint}')

    def load(self, data: dict[str, Any]) -> Profile:
        observers = self._observers(
            {k: v for k, v in data.items() if k not in ("profile", "application", "backup")}
        )
        fields = self._profile_table(data.get("profile"))
        applications = self._applications(self._array(data, "application"))
        stages = self._stages(self._array(data, "backup"), fields["state_dir"] / fields["name"])
        applications = [self._capture(a, stages) for a in applications]
        if self.problems:
            raise ProfileError(self.problems)
        return Profile(
            self.path,
            applications=tuple(applications),
            stages=tuple(stages),
            observers=tuple(observers),
            **fields,
        )

    def _observers(self, tables: dict[str, Any]) -> list[ObserverSpec]:
        """Every other top-level table configures the observer of its name: ``[[notify]]``
        (or one ``[notify]``) builds observers of kind ``notify``."""
        specs: list[ObserverSpec] = []
        for key, value in tables.items():
            try:
                info = self.registry.observer(key)
            except PluginError as e:
                hint = "use [profile], [[application]], [[backup]], or an observer's table"
                self.problem(key, f"unknown top-level key ({hint}: {e})")
                continue
            raws = [value] if isinstance(value, dict) else value
            if not isinstance(raws, list) or not all(isinstance(r, dict) for r in raws):
                self.problem(key, f"must be a table, or an array of tables written [[{key}]]")
                continue
            for i, raw in enumerate(raws):
                where = f"[[{key}]] #{i + 1}"
                table = dict(raw)
                name = table.pop("name", f"{key}-{i + 1}")
                if self._check_name(where, "name", name) is None:
                    continue
                where = f"[[{key}]] {name!r}"
                if any(s.name == name for s in specs):
                    self.problem(where, f'field "name": duplicate observer name {name!r}')
                    continue
                component = self._build(where, info, name, Table(table, base_dir=self.base_dir))
                if component is not None:
                    specs.append(ObserverSpec(name, info, component))
        return specs

    def _array(self, data: dict[str, Any], key: str) -> list[dict[str, Any]]:
        value = data.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            self.problem(key, f"must be an array of tables, written [[{key}]]")
            return []
        return value

    def _profile_table(self, raw: object) -> dict[str, Any]:
        """The ``[profile]`` fields, as :class:`Profile` takes them (defaults where a field
        is missing or wrong: the problem is recorded)."""
        missing = not isinstance(raw, dict)
        if missing:
            self.problem("[profile]", 'missing (it needs at least name = "...")')
        table = Table(raw if isinstance(raw, dict) else {}, base_dir=self.base_dir)
        where = "[profile]"
        raw_name = None if missing else self._field(where, None, table.get_str, "name")
        name = (self._check_name(where, "name", raw_name) if raw_name else None) or "?"
        fields = {
            "name": name,
            "freeze_timeout": self._field(
                where, 10.0, table.get_duration, "freeze_timeout", 10.0, maximum=LONGEST_FREEZE
            ),
            "thaw": self._field(
                where, THAW_MODES[0], table.get_choice, "thaw", THAW_MODES, THAW_MODES[0]
            ),
            "state_dir": self._field(
                where, default_state_dir(), table.get_path, "state_dir", default_state_dir()
            ),
            "max_copy_in_window": self._field(
                where, MAX_COPY_IN_WINDOW, table.get_size, "max_copy_in_window", MAX_COPY_IN_WINDOW
            ),
            "drill": self._field(
                where, DRILL_MODES[0], table.get_choice, "drill", DRILL_MODES, DRILL_MODES[0]
            ),
            "drill_dir": self._field(
                where, default_drill_dir(), table.get_path, "drill_dir", default_drill_dir()
            ),
        }
        for key in table.unread():
            self._unknown(where, key, table)
        return fields

    def _field(
        self, where: str, fallback: Any, read: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> Any:
        """``read(*args, **kwargs)``, or ``fallback`` after recording the problem it raised."""
        try:
            return read(*args, **kwargs)
        except ConfigError as e:
            owner = getattr(read, "__self__", None)  # the Table whose getter this is
            self._config_problem(where, e, owner.unread() if isinstance(owner, Table) else ())
            return fallback

    def _check_name(self, where: str, field: str, value: object) -> str | None:
        if not isinstance(value, str) or not _NAME.match(value):
            self.problem(
                where,
                f'field "{field}": {brief(value)} is not a valid name '
                "(letters, digits, '.', '_', '-'; at most 64)",
            )
            return None
        return value

    def _head(
        self, raw: dict[str, Any], section: str, index: int, type_field: str
    ) -> tuple[str, str | None, str | None]:
        where = f"[[{section}]] #{index + 1}"
        others = [k for k in raw if k not in ("name", type_field)]
        name = raw.get("name")
        if name is None:
            self._config_problem(where, ConfigError("name", "missing (required)"), others)
        elif (name := self._check_name(where, "name", name)) is not None:
            where = f"[[{section}]] {name!r}"
        kind = raw.get(type_field)
        if kind is None:
            self._config_problem(where, ConfigError(type_field, "missing (required)"), others)
        elif not isinstance(kind, str):
            self.problem(where, f'field "{type_field}": expected a string')
            kind = None
        return where, name, kind

    def _lookup(
        self,
        where: str,
        type_field: str,
        find: Callable[[str, str | None], ComponentInfo],
        kind: str,
        core: Table,
    ) -> ComponentInfo | None:
        """The component class for ``kind``, from the distribution the table pins if any."""
        pin = self._field(where, None, core.get_str, "distribution", None)
        try:
            return find(kind, pin)
        except ConfigError as e:  # the pinned distribution does not provide the kind
            self.problem(where, str(e))
        except PluginError as e:
            self.problem(where, f'field "{type_field}": {e}')
        return None

    def _build(self, where: str, info: ComponentInfo, name: str, table: Table) -> Any:
        try:
            component = info.cls(name, table)
        except ConfigError as e:
            self._config_problem(where, e, table.unread())
            return None
        except Exception as e:  # a plug-in's bug must still be one line
            self.problem(where, f"{info.distribution} failed to build it: {type(e).__name__}: {e}")
            return None
        for key in table.unread():
            self._unknown(where, key, table, f" for {info.category} {info.kind!r}")
        return component

    def _applications(self, raws: list[dict[str, Any]]) -> list[ApplicationSpec]:
        specs: list[ApplicationSpec] = []
        afters: dict[str, tuple[str, ...]] = {}
        seen: set[str] = set()
        for i, raw in enumerate(raws):
            where, name, kind = self._head(raw, "application", i, "plugin")
            if name is not None:
                if name in seen:
                    self.problem(where, f'field "name": duplicate application name {name!r}')
                seen.add(name)
            rest = {k: v for k, v in raw.items() if k not in ("name", "plugin")}
            core = Table(
                {
                    k: rest.pop(k)
                    for k in ("after", "on_quiesce_failure", "distribution", "capture")
                    if k in rest
                },
                base_dir=self.base_dir,
            )
            raw_checks = rest.pop("check") if _user_checks_in(rest) else None
            after = tuple(self._field(where, [], core.get_str_list, "after"))
            on_fail: str = self._field(
                where, "fail", core.get_choice, "on_quiesce_failure", ON_QUIESCE_FAILURE, "fail"
            )
            capture: str | None = self._field(where, None, core.get_str, "capture", None)
            if name is None or kind is None:
                continue
            afters[name] = after
            info = self._lookup(where, "plugin", self.registry.application, kind, core)
            if info is None:
                continue
            component = self._build(where, info, name, Table(rest, base_dir=self.base_dir))
            if component is None:
                continue
            if capture is not None and capture not in component.capture_modes:
                self.problem(
                    where,
                    f'field "capture": {brief(capture)} is not a capture mode of plug-in '
                    f"{kind!r} (it has: {', '.join(component.capture_modes)})",
                )
            else:
                # without it, _capture() picks the default once the stages are known
                checks = self._user_checks(where, raw_checks, kind, component.answers_sql)
                spec = ApplicationSpec(name, info, component, after, on_fail, capture, checks)
                specs.append(spec)
        self._check_after(afters)
        return specs

    def _user_checks(
        self, where: str, raw: object, kind: str, answers_sql: bool
    ) -> tuple[UserCheck, ...]:
        """The ``[[application.check]]`` tables: each a ``sql`` query with the value it must
        ``expect``, or a ``command`` (argv) that must exit 0; ``name`` and ``timeout``
        optional."""
        if raw is None:
            return ()
        if not isinstance(raw, list) or not all(isinstance(r, dict) for r in raw):
            self.problem(where, 'field "check": must be an array of tables, [[application.check]]')
            return ()
        checks: list[UserCheck] = []
        for i, one in enumerate(raw):
            at = f"{where} check #{i + 1}"
            table = Table(one, base_dir=self.base_dir)
            name = self._field(at, None, table.get_str, "name", None)
            if name is not None:
                if self._check_name(at, "name", name) is None:
                    continue
                at = f"{where} check {name!r}"
            said = len(self.problems)
            sql: str | None = self._field(at, None, table.get_str, "sql", None)
            command: list[str] = self._field(at, [], table.get_argv, "command", [])
            unreadable = len(self.problems) > said  # said once: no "give either" after it
            timeout: float = self._field(at, 300.0, table.get_duration, "timeout", 300.0)
            has_expect = "expect" in table
            expect = table.get_any("expect")
            for key in table.unread():
                self.problem(
                    at,
                    f'field "{key}": unknown field (a check has name, sql, expect, '
                    "command, timeout)",
                )
            if unreadable:
                continue
            if (sql is None) == (not command):
                self.problem(at, 'give either sql = "..." (with expect) or command = [...]')
                continue
            if sql is not None and not answers_sql:
                self.problem(
                    at,
                    f'field "sql": plug-in {kind!r} answers no SQL; check it with '
                    "command = [...] instead",
                )
                continue
            if sql is not None and not has_expect:
                self.problem(
                    at,
                    'field "expect": missing: a sql check needs the value its '
                    "query must return (expect = true, expect = 42, ...)",
                )
                continue
            if sql is not None and isinstance(expect, (dict, list)):
                self.problem(at, 'field "expect": expected a string, number, boolean or date')
                continue
            if command and has_expect:
                self.problem(
                    at, 'field "expect": a command check expects exit status 0; remove expect'
                )
                continue
            name = name or f"check-{i + 1}"
            if any(c.name == name for c in checks):
                self.problem(at, f'field "name": duplicate check name {name!r}')
                continue
            checks.append(UserCheck(name, sql, expect, tuple(command), timeout))
        return tuple(checks)

    @staticmethod
    def _capture(app: ApplicationSpec, stages: Sequence[StageSpec]) -> ApplicationSpec:
        """``app`` with its capture mode settled and told to its plug-in: the profile's,
        or the first mode of the plug-in consistent with the stages (``"snapshot"``
        needs snapshots of the kinds the plug-in is consistent on; a mode that completes
        needs snapshot views that take completions; the dumps view, which copies no file,
        takes only a self-contained mode)."""
        mode = app.chosen
        if not mode:
            snapshots = [s for s in stages if s.role == Role.SNAPSHOT]
            completable = bool(snapshots) and all(s.component.takes_completions for s in snapshots)
            consistent = all(
                s.component.snapshot_kind in app.component.consistent_on for s in snapshots
            )
            modes = app.component.capture_modes
            if any(isinstance(s.component, DumpsView) for s in snapshots):  # no file copied
                mode = next((m for m in modes if m in app.component.self_contained_modes), "")
            else:
                mode = next(
                    (m for m in modes if (consistent if m == "snapshot" else completable)), ""
                )
            mode = mode or modes[0]
        app.component.capture = mode
        return app

    def _check_after(self, afters: Mapping[str, Sequence[str]]) -> None:
        for name, after in afters.items():
            for other in after:
                if other not in afters:
                    self.problem(
                        f"[[application]] {name!r}",
                        f'field "after": no application named {other!r}',
                    )
                elif other == name:
                    self.problem(f"[[application]] {name!r}", 'field "after": names itself')
        state: dict[str, int] = {}  # 1 = on the path, 2 = done

        def visit(node: str, path: list[str]) -> None:
            state[node] = 1
            for nxt in afters.get(node, ()):
                if nxt not in afters or nxt == node:
                    continue
                if state.get(nxt) == 1:
                    cycle = " -> ".join([*path[path.index(nxt) :], nxt])
                    self.problem(f"[[application]] {node!r}", f'field "after": cycle {cycle}')
                elif state.get(nxt) is None:
                    visit(nxt, [*path, nxt])
            state[node] = 2

        for node in afters:
            if node not in state:
                visit(node, [node])

    def _stages(self, raws: list[dict[str, Any]], home: Path) -> list[StageSpec]:
        """The stages, after the core's dumps view (:mod:`freezeframe.dumps`) when the
        profile lists no snapshot stage: its copy stages then read the dumps."""
        if not raws:
            self.problem("[[backup]]", "the profile has no [[backup]] stage")
        heads = []  # each table's backend resolved once: the dumps view depends on the roles
        for i, raw in enumerate(raws):
            where, name, kind = self._head(raw, "backup", i, "backend")
            rest = {k: v for k, v in raw.items() if k not in ("name", "backend")}
            core = Table(
                {k: rest.pop(k) for k in ("source", "keep", "distribution") if k in rest},
                base_dir=self.base_dir,
            )
            info: ComponentInfo | None = None
            if kind is not None:
                info = self._lookup(where, "backend", self.registry.backend, kind, core)
            heads.append((where, name, rest, core, info))
        roles = [info.cls.role if info is not None else None for *_, info in heads]
        dumps = self._dumps([name for _, name, *_ in heads], roles, home)
        specs: list[StageSpec] = []
        seen: dict[str, Role | None] = {DUMPS: Role.SNAPSHOT} if dumps else {}
        for (where, name, rest, core, info), role in zip(heads, roles, strict=True):
            source: str | None = self._field(where, None, core.get_str, "source", None)
            keep_table = self._field(where, None, core.get_table, "keep")
            keep: KeepPolicy | None = None
            if keep_table is not None:
                keep = self._field(where, None, KeepPolicy.from_table, keep_table)
            if role == Role.COPY:
                source = self._resolve_source(where, source, seen)
            elif source is not None and role == Role.SNAPSHOT:
                self.problem(
                    where,
                    'field "source": a snapshot stage reads the applications, '
                    "not another stage; remove it",
                )
            if name is not None:
                if name in seen:
                    self.problem(where, f'field "name": duplicate stage name {name!r}')
                seen[name] = role
            if name is None or info is None or role is None:
                continue
            component = self._build(where, info, name, Table(rest, base_dir=self.base_dir))
            if component is not None:
                specs.append(StageSpec(name, info, component, role, source, keep))
        return [dumps, *specs] if dumps else specs

    def _dumps(
        self, names: list[str | None], roles: list[Role | None], home: Path
    ) -> StageSpec | None:
        """The dumps view, for a profile whose stages are all copies (none when one of its
        stages is, or may be, a snapshot stage, or when a stage takes the name)."""
        if not roles or any(r != Role.COPY for r in roles):
            return None
        if DUMPS in names:
            self.problem(
                f"[[backup]] {DUMPS!r}",
                f'field "name": {DUMPS!r} is the name of the view that the copy stages of a '
                "profile without a snapshot stage read; name the stage otherwise",
            )
            return None
        try:
            version = md.version("freezeframe")
        except md.PackageNotFoundError:  # run from a source tree
            version = "0"
        info = ComponentInfo(DumpsView.kind, "backend", DumpsView, "freezeframe", version)
        view = DumpsView(DUMPS, Table({"dir": str(home / DUMPS)}, base_dir=self.base_dir))
        return StageSpec(DUMPS, info, view, Role.SNAPSHOT)

    def _resolve_source(
        self, where: str, source: str | None, earlier: dict[str, Role | None]
    ) -> str | None:
        snapshots = [n for n, r in earlier.items() if r == Role.SNAPSHOT]
        if source is None:
            if not snapshots:
                self.problem(where, "a copy stage needs an earlier snapshot stage to read from")
                return None
            return snapshots[-1]
        if source not in earlier:
            self.problem(
                where,
                f'field "source": no earlier stage named {source!r}'
                + (f" (earlier snapshot stages: {', '.join(snapshots)})" if snapshots else ""),
            )
            return None
        if earlier[source] == Role.COPY:
            self.problem(
                where,
                f'field "source": stage {source!r} is a copy and has no view; '
                "name a snapshot stage",
            )
            return None
        return source
