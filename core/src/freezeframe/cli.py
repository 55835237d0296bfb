"""The ``freezeframe`` command: one verb per task, each taking the profile, each with ``--json``.

Exit codes: 0 success; 1 a run, restore or verify failed (or ``plugins`` found a
kind registered twice); 2 bad profile or usage; 3 the profile is busy (another run
holds its lock); 128+N interrupted by signal N; 70 an internal error (a bug of ours:
``--debug`` shows its traceback).
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import signal
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

from freezeframe.catalog import CatalogError
from freezeframe.engine import Engine
from freezeframe.errors import FreezeframeError, ProfileError
from freezeframe.profile import load_profile
from freezeframe.records import ApplicationRecord, RunRecord, RunStatus
from freezeframe.registry import Registry, default_registry

__all__ = ["main"]

log = logging.getLogger("freezeframe")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"freezeframe: error: {message} (see freezeframe --help)\n")
        raise SystemExit(2)


#: errnos that say something of the machine (its disk, its limits), not of our code,
#: even when the call that met them named no file (a write to an open descriptor).
_THE_MACHINES = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.EMFILE, errno.ENFILE, errno.ENOMEM}
)


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
    )
    # The same options before the verb; after it they override (their default is SUPPRESS).
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    p.add_argument("--debug", action="store_true", help="log everything; show tracebacks")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    sub = p.add_subparsers(dest="verb", required=True, metavar="VERB", parser_class=_Parser)

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
    verb("backup", "run one backup of the profile")
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
        "--verify",
        action="store_true",
        help="ask each application plug-in to verify the restored data",
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
    sp = verb("prune", "apply the stages' keep rules now")
    sp.add_argument("--dry-run", action="store_true", help="only show what would be deleted")
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
            show_time=False, show_path=False, rich_tracebacks=False
        )
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("freezeframe: %(message)s"))
    logger.addHandler(handler)


@contextmanager
def _progress(args: argparse.Namespace) -> Iterator[Callable[[str], Any]]:
    """Progress bars on a terminal; nothing extra otherwise (the log lines say enough)."""
    if args.quiet or args.json or not sys.stderr.isatty():
        yield lambda stage: None
        return
    from rich.progress import DownloadColumn, Progress, SpinnerColumn, TextColumn

    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        DownloadColumn(),
        TextColumn("{task.fields[files]} files"),
        transient=True,
    ) as bar:

        def factory(stage: str) -> Callable[[int, int], None]:
            task = bar.add_task(stage, total=None, files=0)
            return lambda done, files: bar.update(task, completed=done, files=files)

        yield factory


def _out(args: argparse.Namespace, data: Any, human: Callable[[], None]) -> None:
    if args.json:
        json.dump(data, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    else:
        human()


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _frozen(apps: Sequence[ApplicationRecord]) -> str:
    """The longest freeze window; ``?`` when a quiesce began and no thaw was recorded
    (the run was killed while frozen), ``-`` when nothing was quiesced."""
    windows = [a.frozen_ms for a in apps if a.quiesce_start is not None]
    if not windows:
        return "-"
    if any(w is None for w in windows):
        return "?"
    return f"{max(w for w in windows if w is not None):.1f}"


def _print_run(run: RunRecord, *, detail: bool = False) -> None:
    took = f" in {run.finished_at - run.started_at:.1f} s" if run.finished_at else ""
    print(f"run {run.run_id} {run.status}{took}" + (f": {run.error}" if run.error else ""))
    for a in run.applications:
        frozen = "not frozen" if a.quiesce_start is None else f"frozen {_frozen([a])} ms"
        line = f"  application {a.name:<16} {a.plugin:<12} {a.mode:<16} {frozen}"
        print(line + (f"  ({a.error})" if a.error else ""))
        if detail and a.facts:
            for k, v in a.facts.items():
                print(f"      {k}: {v}")
    for s in run.stages:
        art = s.artifact
        what = f"{art.id}  {art.files} files, {_size(art.bytes)}" if art else "-"
        gone = "  (deleted)" if s.deleted_at else ""
        method = f"  [{art.metadata['method']}]" if art and "method" in art.metadata else ""
        print(
            f"  stage       {s.name:<16} {s.backend:<12} {s.status:<16} {what}{method}{gone}"
            + (f"  ({s.error})" if s.error else "")
        )


def _cmd_plugins(args: argparse.Namespace, registry: Registry) -> int:
    comps = [*registry.applications.values(), *registry.backends.values()]
    data = {
        "components": [c.to_json() for c in comps],
        "broken": [b.to_json() for b in registry.broken],
        "conflicts": [c.to_json() for c in registry.conflicts],
    }

    def human() -> None:
        for c in comps:
            extra = f"role {c.cls.role}" if c.category == "backend" else "application"
            print(f"{c.kind:<14} {extra:<16} {c.distribution} {c.version}")
        for b in registry.broken:
            print(f"BROKEN {b.name:<14} {b.distribution}: {b.error}")
        for k in registry.conflicts:
            print(f"CONFLICT {k.kind:<12} {k.problem()}\n  hint: {k.hint()}")

    _out(args, data, human)
    return 1 if registry.conflicts else 0


def _cmd_check(args: argparse.Namespace, engine: Engine) -> int:
    problems = engine.check()
    data = {"profile": engine.profile.name, "ok": not problems, "problems": problems}

    def human() -> None:
        if problems:
            for p in problems:
                print(f"problem: {p}")
        else:
            print(
                f"profile {engine.profile.name!r}: {len(engine.profile.applications)} "
                f"application(s), {len(engine.profile.stages)} stage(s): ready"
            )

    _out(args, data, human)
    if problems:
        sys.stderr.write(f"freezeframe: error: {_one_line(problems)}\n")
    return 1 if problems else 0


def _cmd_plan(args: argparse.Namespace, engine: Engine) -> int:
    plan = engine.plan()

    def human() -> None:
        print(
            f"profile {plan['profile']}: freeze_timeout {plan['freeze_timeout_s']:g}s, "
            f"thaw {plan['thaw']}"
        )
        print("1. check every application and stage")
        print("2. prepare each application, then syncfs the filesystems of its data:")
        paths = plan["data_paths"]
        for p in paths if isinstance(paths, list) else [paths]:
            print(f"     {p}")
        for i, level in enumerate(plan["quiesce_order"]):
            print(f"3.{i + 1} quiesce in parallel: {', '.join(level)}")
        for s in plan["stages"]:
            if s["in_freeze_window"]:
                print(f"4. stage {s['name']} ({s['backend']}, {s['role']}) while frozen")
        print("5. unquiesce every application (reverse order)")
        for s in plan["stages"]:
            if not s["in_freeze_window"]:
                print(f"6. stage {s['name']} ({s['backend']}) from the view of {s['source']}")
        for s in plan["stages"]:
            if s["keep"]:
                rules = ", ".join(f"{k} = {v}" for k, v in s["keep"].items())
                print(f"7. retention of {s['name']}: keep {rules}")
            elif s["released_after_run"]:
                print(f"7. release the snapshot of {s['name']} once its copies are made")

    _out(args, plan, human)
    return 0


def _cmd_backup(args: argparse.Namespace, engine: Engine) -> int:
    with _progress(args) as factory:
        engine.progress = factory
        run = engine.backup()
    _out(args, run.to_json(), lambda: _print_run(run))
    if run.status == RunStatus.SUCCEEDED and engine.interrupted_by:
        sys.stderr.write(
            f"freezeframe: error: interrupted by {signal.Signals(engine.interrupted_by).name} "
            f"after run {run.run_id} succeeded: retention stopped (it finishes at the next "
            "command); the backup is kept\n"
        )
        return 128 + engine.interrupted_by
    if run.status == RunStatus.SUCCEEDED:
        return 0
    sys.stderr.write(f"freezeframe: error: run {run.run_id} failed: {run.error}\n")
    return 128 + engine.interrupted_by if engine.interrupted_by else 1


def _cmd_list(args: argparse.Namespace, engine: Engine) -> int:
    with engine.catalog(read_only=True) as catalog:
        runs = catalog.runs()

    def human() -> None:
        if not runs:
            print(f"profile {engine.profile.name!r} has no runs yet")
        for r in runs:
            size = sum(s.artifact.bytes for s in r.stages if s.artifact and not s.deleted_at)
            print(
                f"{r.run_id}  {r.status:<9}  frozen {_frozen(r.applications):>8} ms  "
                f"{_size(size):>10}" + (f"  {r.error}" if r.error else "")
            )

    _out(args, [r.to_json() for r in runs], human)
    return 0


def _cmd_show(args: argparse.Namespace, engine: Engine) -> int:
    with engine.catalog(read_only=True) as catalog:
        run = engine.find_run(catalog, args.run)
        errors = catalog.errors(run.run_id)
    data = {**run.to_json(), "errors": errors}

    def human() -> None:
        _print_run(run, detail=True)
        for e in errors:
            print(f"  error: {e['source']}: {e['message']}")

    _out(args, data, human)
    return 0


def _cmd_restore(args: argparse.Namespace, engine: Engine) -> int:
    run, stage, paths = engine.restore(
        args.run,
        args.to,
        stage=args.stage,
        verify=args.verify,
        preserve_special=args.preserve_special,
    )
    data = {
        "run_id": run.run_id,
        "stage": stage,
        "to": str(args.to),
        "paths": [str(p) for p in paths],
        "verified": args.verify,
        "preserve_special": args.preserve_special,
    }

    def human() -> None:
        print(f"restored run {run.run_id} from stage {stage} under {args.to}:")
        for p in paths:
            print(f"  {p}")

    _out(args, data, human)
    return 0


def _cmd_verify(args: argparse.Namespace, engine: Engine) -> int:
    run, stages, problems, notes = engine.verify(args.run, stage=args.stage)
    data = {
        "run_id": run.run_id,
        "ok": not problems,
        "stages": [s.to_json() for s in stages],
        "problems": problems,
        "notes": notes,
    }

    def human() -> None:
        for s in stages:
            if s.name in notes:
                status = f"ok, but {notes[s.name]}"
            else:
                status = "ok" if s.verified_at else "FAILED"
            print(f"{run.run_id}  stage {s.name:<16} {status}")
        for p in problems:
            print(f"problem: {p}")

    _out(args, data, human)
    if problems:
        sys.stderr.write(f"freezeframe: error: verify failed: {_one_line(problems)}\n")
    return 1 if problems else 0


def _cmd_prune(args: argparse.Namespace, engine: Engine) -> int:
    deletions = engine.prune(dry_run=args.dry_run)
    data = {"dry_run": args.dry_run, "deleted": [d.to_json() for d in deletions]}

    def human() -> None:
        verb = "would delete" if args.dry_run else "deleted"
        if not deletions:
            print("nothing to prune")
        for d in deletions:
            print(f"{verb} {d.artifact} (stage {d.stage}, run {d.run_id}): {d.reason}")

    _out(args, data, human)
    return 0


_VERBS: dict[str, Callable[[argparse.Namespace, Engine], int]] = {
    "check": _cmd_check,
    "plan": _cmd_plan,
    "backup": _cmd_backup,
    "list": _cmd_list,
    "show": _cmd_show,
    "restore": _cmd_restore,
    "verify": _cmd_verify,
    "prune": _cmd_prune,
}


def _one_line(problems: Sequence[str]) -> str:
    """Every problem on one line: the first, then the others after it."""
    first, *more = problems
    return first if not more else f"{first} (and {len(more)} more: {'; '.join(more)})"


def main(argv: Sequence[str] | None = None, registry: Registry | None = None) -> int:
    """Run the CLI; returns the exit code (``registry`` lets tests bring their own plug-ins)."""
    args = _parser().parse_args(argv)
    _setup_logging(args)
    try:
        registry = registry or default_registry()
        if args.verb == "plugins":
            return _cmd_plugins(args, registry)
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
        return _VERBS[args.verb](args, engine)
    except BrokenPipeError:  # `freezeframe list | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit
        return 0
    except (FreezeframeError, OSError) as e:
        if isinstance(e, OSError) and e.filename is None and e.errno not in _THE_MACHINES:
            return _internal_error(args, e)  # not a file's fault, nor the disk's: our bug
        if isinstance(e, OSError):  # a file or disk the user can fix (read-only, full)
            if args.debug:
                traceback.print_exception(e)
            where = f"{e.filename}: " if e.filename is not None else ""
            e = FreezeframeError(f"{where}{e.strerror or e}")
        lines = e.problems if isinstance(e, ProfileError) else [str(e)]
        if args.json:
            json.dump(
                {"error": lines[0], "errors": lines, "exit_code": e.exit_code}, sys.stdout, indent=2
            )
            sys.stdout.write("\n")
        sys.stderr.write(f"freezeframe: error: {_one_line(lines)}\n")
        return e.exit_code
    except Exception as e:
        return _internal_error(args, e)


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
