"""The ``freezeframe`` command: one verb per task, each taking the profile, each with ``--json``.

Exit codes: 0 success; 1 a run, restore, verify or drill failed (or ``plugins`` found a
kind registered twice); 2 bad profile or usage; 3 the profile is busy (another run
holds its lock); 128+N interrupted by signal N; 70 an internal error (a bug of ours:
``--debug`` shows its traceback).
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import logging
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from freezeframe import completion
from freezeframe.catalog import CatalogError
from freezeframe.completion import SHELLS
from freezeframe.engine import Engine
from freezeframe.errors import FreezeframeError, UsageError, lines_of, user_error
from freezeframe.operate import cmd_schedule, cmd_status, schedule_usage
from freezeframe.profile import load_profile
from freezeframe.profiles import default_profiles, profile_dirs
from freezeframe.registry import Registry, default_registry
from freezeframe.verbs import VERBS, out, terminal

__all__ = ["main"]

log = logging.getLogger("freezeframe")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"freezeframe: error: {message} (see freezeframe --help)\n")
        raise SystemExit(2)


class _Formatter(argparse.HelpFormatter):
    """argparse measures a verb's name at the indent of VERB and prints it indented once
    more: a long verb (``completion``) then pushes its help to the next line. Measured
    where it is printed, every verb's help starts on its own line."""

    def add_argument(self, action: argparse.Action) -> None:
        super().add_argument(action)
        if action.help is argparse.SUPPRESS:
            return
        self._indent()
        for sub in getattr(action, "_get_subactions", list)():
            width = len(self._format_action_invocation(sub)) + self._current_indent
            self._action_max_length = max(self._action_max_length, width)
        self._dedent()


def _parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print one JSON document on stdout",
    )
    common.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="log everything; show tracebacks of internal errors",
    )
    common.add_argument(
        "-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="no progress lines"
    )
    p = _Parser(
        prog="freezeframe",
        description="Application-consistent backups: quiesce, snapshot, thaw, copy.",
        formatter_class=_Formatter,
    )
    # The same options before the verb; after it they override (their default is SUPPRESS).
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    p.add_argument("--debug", action="store_true", help="log everything; show tracebacks")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    p.add_argument(
        "--version",
        action="store_true",
        help="print the version (with --json, every installed distribution's too)",
    )
    # required, but checked in main: --version needs none
    sub = p.add_subparsers(dest="verb", metavar="VERB", parser_class=_Parser)

    def verb(name: str, text: str, profile: str = "required") -> argparse.ArgumentParser:
        sp = sub.add_parser(name, parents=[common], help=text, description=text)
        if profile == "required":
            sp.add_argument("profile", type=Path, help="the profile (TOML)")
        else:
            sp.add_argument("profile", type=Path, nargs="?", help="the profile (TOML)")
        return sp

    verb("plugins", "list installed plug-ins and backends, and broken ones", "optional")
    verb("check", "validate the profile and preflight every component")
    verb("plan", "show what a backup would do, step by step")
    sp = verb("backup", "run one backup of the profile", "optional")
    sp.add_argument(
        "--all",
        action="store_true",
        help="back up every profile in /etc/freezeframe/*.toml and "
        "$XDG_CONFIG_HOME/freezeframe/*.toml (~/.config/freezeframe), one after another",
    )
    verb("list", "list the profile's runs, newest first")
    sp = verb("show", "show one run's full record")
    sp.add_argument("run", help="run id, unique prefix, or 'latest'")
    sp = verb("restore", "restore a run's files under DIR at their original paths")
    sp.add_argument("run", help="run id, unique prefix, or 'latest'")
    sp.add_argument(
        "--to",
        type=Path,
        required=True,
        metavar="DIR",
        help="new or empty directory; files land at DIR/<original absolute path>",
    )
    sp.add_argument("--stage", help="restore from this stage (default: the last one left)")
    sp.add_argument(
        "--app",
        action="append",
        default=[],
        metavar="NAME",
        help="restore only this application's data, then only its fix-ups (repeatable)",
    )
    sp.add_argument(
        "--path",
        action="append",
        default=[],
        type=Path,
        metavar="ORIGINAL_PATH",
        help="restore only the file or tree at this original absolute path (repeatable)",
    )
    sp.add_argument(
        "--verify",
        action="store_true",
        help="ask each application plug-in restored to verify the restored data",
    )
    sp.add_argument(
        "--preserve-special",
        action="store_true",
        help="also make device nodes and FIFOs and keep setuid/setgid bits "
        "(only from an artifact verified genuine: see SECURITY.md); left out by default",
    )
    sp = verb("verify", "verify a run's artifacts")
    sp.add_argument("run", nargs="?", default="latest", help="run id, prefix or 'latest'")
    sp.add_argument("--stage", help="verify only this stage")
    sp = verb(
        "drill",
        "prove a run: restore it into a scratch folder, start its applications on it, check them",
    )
    sp.add_argument(
        "run",
        nargs="?",
        default=None,
        help="run id, prefix or 'latest' (default: the newest succeeded run not yet drilled)",
    )
    sp.add_argument("--stage", help="restore from this stage (default: the last one left)")
    sp.add_argument(
        "--all-undrilled",
        action="store_true",
        help="drill every succeeded run not yet drilled, newest first",
    )
    sp = verb("prune", "apply the stages' keep rules now")
    sp.add_argument("--dry-run", action="store_true", help="only show what would be deleted")
    text = (
        "where each profile stands: last run, last success and its age, last drill, runs going on"
    )
    sp = sub.add_parser("status", parents=[common], help=text, description=text)
    sp.add_argument(
        "profiles",
        type=Path,
        nargs="*",
        metavar="PROFILE",
        help="the profiles (TOML); default: every *.toml in /etc/freezeframe (as root) "
        "and in ~/.config/freezeframe",
    )
    sp.add_argument(
        "--max-age",
        metavar="DURATION",
        help="exit 1 when a profile's newest success is older than this (26h, 90m, 2d) "
        "or there is none: a monitoring check",
    )
    sp = verb(
        "schedule", "run a profile's backup on a schedule: a systemd timer, or cron", "optional"
    )
    sp.add_argument(
        "--on-calendar", metavar="SPEC", help="when, in systemd's calendar syntax (daily, 03:00)"
    )
    sp.add_argument(
        "--randomized-delay",
        metavar="DURATION",
        help="start up to this much later, at random (systemd time span: 30min)",
    )
    sp.add_argument(
        "--persistent", action="store_true", help="run at boot a start missed while off"
    )
    sp.add_argument(
        "--cron", action="store_true", help="print the crontab line instead of writing units"
    )
    sp.add_argument(
        "--list", action="store_true", help="list the freezeframe timers in the unit folder"
    )
    sp.add_argument("--remove", action="store_true", help="remove the profile's two units")
    sp.add_argument(
        "--user",
        action="store_true",
        help="a timer of your own systemd instance (~/.config/systemd/user), not the system's",
    )
    sp.add_argument(
        "--unit-dir",
        type=Path,
        metavar="DIR",
        help="write units here (default: /etc/systemd/system, or with --user your own)",
    )
    sp = sub.add_parser(
        "completion",
        help="print the shell completion script for bash, zsh or fish",
        description="print the shell completion script for bash, zsh or fish "
        "(bash: source <(freezeframe completion bash))",
    )
    sp.add_argument("shell", choices=SHELLS, help="the shell")
    return p


def _setup_logging(args: argparse.Namespace) -> None:
    logger = logging.getLogger("freezeframe")
    logger.handlers.clear()
    logger.propagate = False
    level = logging.DEBUG if args.debug else logging.WARNING if args.quiet else logging.INFO
    logger.setLevel(level)
    if sys.stderr.isatty():
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(
            console=terminal(), show_time=False, show_path=False, rich_tracebacks=False
        )
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("freezeframe: %(message)s"))
    logger.addHandler(handler)


def _cmd_plugins(args: argparse.Namespace, registry: Registry) -> int:
    comps = [
        *registry.applications.values(),
        *registry.backends.values(),
        *registry.observers.values(),
    ]
    data = {
        "components": [c.to_json() for c in comps],
        "broken": [b.to_json() for b in registry.broken],
        "conflicts": [c.to_json() for c in registry.conflicts],
    }

    def human() -> None:
        for c in comps:
            extra = {
                "backend": f"role {getattr(c.cls, 'role', '?')}",
                "observer": f"observer [[{c.kind}]]",
            }.get(c.category, "application")
            print(f"{c.kind:<14} {extra:<16} {c.distribution} {c.version}")
        for b in registry.broken:
            print(f"BROKEN {b.name:<14} {b.distribution}: {b.error}")
        for k in registry.conflicts:
            print(f"CONFLICT {k.kind:<12} {k.problem()}\n  hint: {k.hint()}")

    out(args, data, human)
    return 1 if registry.conflicts else 0


def main(argv: Sequence[str] | None = None, registry: Registry | None = None) -> int:
    """Run the CLI; returns the exit code (``registry`` lets tests bring their own plug-ins)."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.version:
        try:
            return _cmd_version(args)
        except BrokenPipeError:
            return _reader_gone()
    if args.verb is None:
        parser.error("the following arguments are required: VERB")
    if args.verb == "completion":
        sys.stdout.write(completion.script(parser, args.shell))
        return 0
    if args.verb == "drill" and args.all_undrilled and args.run is not None:
        parser.error("drill: give a RUN or --all-undrilled, not both")
    if args.verb == "schedule" and (problem := schedule_usage(args)):
        parser.error(problem)
    if args.verb == "backup" and args.all == (args.profile is not None):
        parser.error(
            "backup: give a PROFILE or --all, not both"
            if args.all
            else "backup: give a PROFILE, or --all for every profile in the default places"
        )
    _setup_logging(args)
    if args.verb == "backup" and args.all:
        return _backup_all(args, registry)
    return _run(args, registry)


def _cmd_version(args: argparse.Namespace) -> int:
    """The core's version; with ``--json``, every installed freezeframe distribution's: the
    core and each one that registers plug-ins (its entry points in group ``freezeframe``)."""
    core = md.version("freezeframe")
    found = {"freezeframe": core}
    for ep in md.entry_points(group="freezeframe"):
        if ep.dist is not None:
            found.setdefault(ep.dist.name, ep.dist.version)
    data = {
        "freezeframe": core,
        "distributions": [{"name": n, "version": v} for n, v in sorted(found.items())],
    }
    out(args, data, lambda: print(f"freezeframe {core}"))
    return 0


def _backup_all(args: argparse.Namespace, registry: Registry | None) -> int:
    """``backup --all``: every profile of the default places, one after another; the exit
    code is the worst of theirs. A signal that interrupts one stops the rest."""
    profiles = default_profiles()
    if not profiles:
        return _fail(
            args,
            UsageError(
                f"backup --all: no profile (*.toml) in {', '.join(map(str, profile_dirs()))}"
            ),
        )
    results: list[dict[str, object]] = []
    worst = 0
    for i, path in enumerate(profiles):
        one = argparse.Namespace(**{**vars(args), "profile": path, "collect": []})
        if not args.json:
            print(f"profile {path}:", flush=True)
        code = _run(one, registry)
        result = one.collect[-1] if one.collect else None
        results.append({"profile": str(path), "exit_code": code, "result": result})
        worst = max(worst, code)
        if code >= 128 and i + 1 < len(profiles):
            left = ", ".join(str(p) for p in profiles[i + 1 :])
            sys.stderr.write(f"freezeframe: error: interrupted: not backed up: {left}\n")
            break
    out(args, {"profiles": results, "exit_code": worst}, lambda: None)
    return worst


def _run(args: argparse.Namespace, registry: Registry | None) -> int:
    """One verb on the profile ``args.profile``: its exit code (errors printed)."""
    try:
        registry = registry or default_registry()
        if args.verb == "plugins":
            return _cmd_plugins(args, registry)
        if args.verb == "status":  # reads; takes no lock and reconciles nothing
            return cmd_status(args, registry)
        if args.verb == "schedule":
            return cmd_schedule(args, registry)
        profile = load_profile(args.profile, registry)
        engine = Engine(profile, registry)
        writable = engine.state_writable()
        if args.verb in ("backup", "prune") and not writable:
            raise FreezeframeError(
                f"state folder {profile.home} cannot be written: {args.verb} records there "
                "(list, show, restore and verify can read a read-only one)"
            )
        # backup and prune reconcile under their own lock; a read-only catalog is read as
        # it is (a run it shows as running is then not known to be dead)
        if args.verb not in ("backup", "prune") and writable:
            try:
                engine.reconcile_if_idle()
            except CatalogError as e:  # damaged: the reading verbs still read what they can
                log.warning("%s", e)
        return VERBS[args.verb](args, engine)
    except BrokenPipeError:
        return _reader_gone()
    except (FreezeframeError, OSError) as e:
        error = user_error(e)
        if error is None:
            return _internal_error(args, e)  # not a file's fault, nor the disk's: our bug
        if isinstance(e, OSError) and args.debug:  # a file or disk the user can fix
            traceback.print_exception(e)
        return _fail(args, error)
    except Exception as e:
        return _internal_error(args, e)


def _reader_gone() -> int:
    """``freezeframe list | head``: the reader has what it wanted."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit
    return 0


def _fail(args: argparse.Namespace, e: FreezeframeError) -> int:
    """An error the user can fix: with ``--json`` its document on stdout; on stderr one
    line, or one line per problem of a profile (each names its file, table and field)."""
    lines = lines_of(e)
    out(args, {"error": lines[0], "errors": lines, "exit_code": e.exit_code}, lambda: None)
    for line in lines:
        sys.stderr.write(f"freezeframe: error: {line}\n")
    return e.exit_code


def _internal_error(args: argparse.Namespace, e: BaseException) -> int:
    if args.debug:
        traceback.print_exception(e)
    sys.stderr.write(
        f"freezeframe: internal error: {type(e).__name__}: {e}"
        + ("" if args.debug else " (run with --debug for the traceback)")
        + "\n"
    )
    return 70


def entry() -> NoReturn:
    """The console-script entry point."""
    raise SystemExit(main())
