"""What each verb of the ``freezeframe`` command does with a loaded profile, and how it
prints: the human form, or ``--json``; progress bars on a terminal."""

from __future__ import annotations

import argparse
import functools
import json
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from freezeframe.config import format_size
from freezeframe.engine import Engine, ProgressFactory
from freezeframe.records import (
    ApplicationRecord,
    DrillRecord,
    DrillStatus,
    RunRecord,
    RunStatus,
    group_window_ms,
)

if TYPE_CHECKING:
    from rich.console import Console

__all__ = [
    "VERBS",
    "all_on_one_line",
    "out",
    "print_drill",
    "print_run",
    "progress_bars",
    "terminal",
]


def all_on_one_line(problems: Sequence[str]) -> str:
    """Every problem on one line: the first, then the others after it."""
    first, *more = problems
    return first if not more else f"{first} (and {len(more)} more: {'; '.join(more)})"


@functools.cache
def terminal() -> Console:
    """The console on stderr that log lines and progress bars share (stdout holds only
    the result: a bar or a log line never mixes into ``--json`` or a redirect)."""
    from rich.console import Console

    return Console(stderr=True)


@contextmanager
def progress_bars(args: argparse.Namespace) -> Iterator[ProgressFactory | None]:
    """Progress bars on a terminal, one per stage: bytes done of the total expected (a
    copy stage: its source's size, or what restic counted), files, and the time left;
    ``None`` otherwise (the log lines say enough)."""
    if args.quiet or args.json or not sys.stderr.isatty():
        yield None
        return
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeRemainingColumn,
    )

    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TextColumn("{task.fields[files]} files"),
        TimeRemainingColumn(),
        console=terminal(),
        transient=True,
    ) as bar:

        def factory(stage: str) -> Callable[[int, int, int | None], None]:
            task = bar.add_task(stage, total=None, files=0)

            def show(done: int, files: int, total: int | None) -> None:
                # an estimate that falls short never shows more than 100 %
                whole = None if total is None else max(total, done)
                bar.update(task, completed=done, total=whole, files=files)

            return show

        yield factory


def out(args: argparse.Namespace, data: Any, human: Callable[[], None]) -> None:
    """``data`` as JSON on stdout with ``--json`` (kept in ``args.collect`` instead where
    one document gathers several: ``backup --all``), else ``human()``."""
    if args.json and getattr(args, "collect", None) is not None:
        args.collect.append(data)
    elif args.json:
        json.dump(data, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    else:
        human()


def _frozen(apps: Sequence[ApplicationRecord]) -> str:
    """The freeze window of ``apps`` together, from the first quiesce to the last thaw;
    ``?`` when a quiesce began and no thaw was recorded (the run was killed while
    frozen), ``-`` when nothing was quiesced."""
    if not any(a.quiesce_start is not None for a in apps):
        return "-"
    window = group_window_ms(apps)
    return "?" if window is None else f"{window:.1f}"


def print_run(run: RunRecord, *, detail: bool = False) -> None:
    took = f" in {run.finished_at - run.started_at:.1f} s" if run.finished_at else ""
    group = f", group frozen {run.frozen_ms:.1f} ms" if run.frozen_ms is not None else ""
    print(f"run {run.run_id} {run.status}{took}{group}" + (f": {run.error}" if run.error else ""))
    for a in run.applications:
        frozen = "not frozen" if a.quiesce_start is None else f"frozen {_frozen([a])} ms"
        line = f"  application {a.name:<16} {a.plugin:<12} {a.mode:<16} {frozen}"
        if a.writes_blocked_ms is not None and a.writes_blocked_ms != a.frozen_ms:
            line += f", writes blocked {a.writes_blocked_ms:.1f} ms"
        if a.capture != "snapshot":
            line += f"  [capture {a.capture}]"
        print(line + (f"  ({a.error})" if a.error else ""))
        if detail and a.facts:
            for k, v in a.facts.items():
                print(f"      {k}: {v}")
    for s in run.stages:
        art = s.artifact
        what = f"{art.id}  {art.files} files, {format_size(art.bytes)}" if art else "-"
        gone = "  (deleted)" if s.deleted_at else ""
        method = f"  [{art.metadata['method']}]" if art and "method" in art.metadata else ""
        print(
            f"  stage       {s.name:<16} {s.backend:<12} {s.status:<16} {what}{method}{gone}"
            + (f"  ({s.error})" if s.error else "")
        )


def print_drill(drill: DrillRecord) -> None:
    took = f" in {drill.finished_at - drill.started_at:.1f} s" if drill.finished_at else ""
    print(
        f"drill {drill.drill_id} of run {drill.run_id} (stage {drill.stage}): "
        f"{drill.status}{took}" + (f": {drill.error}" if drill.error else "")
    )
    for a in drill.applications:
        print(
            f"  application {a.name:<16} {a.plugin:<12} restored {a.restored_files} files, "
            f"{format_size(a.restored_bytes)}"
        )
        for c in a.checks:
            kind = "" if c.kind == "deep" else f" ({c.kind})"
            detail = f"  {c.detail}" if c.detail else ""
            print(f"    {c.status:<8} {c.name + kind:<24} {c.seconds:6.1f} s{detail}")


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

    out(args, data, human)
    if problems:
        sys.stderr.write(f"freezeframe: error: {all_on_one_line(problems)}\n")
    return problems.exit_code if problems else 0


#: What ends an application's quiesce if freezeframe dies, in words (``plan``).
_CRASH_SAFETY = {
    "process-exit": "if freezeframe dies, its lock or connection goes and the quiesce ends",
    "server-timeout": "if freezeframe dies, the server resumes by itself after its pause",
    "watchdog": "if freezeframe dies, the watchdog runs its thaw command",
}


def _plan_steps(plan: dict[str, Any]) -> list[str]:
    """``plan``'s steps in words, numbered once, in the order a backup takes them; the
    lines under a step are indented."""
    steps: list[tuple[str, list[str]]] = []

    def step(text: str, *under: str) -> None:
        steps.append((text, list(under)))

    step("check every application and stage")
    paths = plan["data_paths"]
    if paths:
        step(
            "prepare each application, then syncfs the filesystems of its data:",
            *(paths if isinstance(paths, list) else [paths]),
        )
    else:
        step("prepare each application (no data path to sync: each completes after the thaw)")
    apps = {a["name"]: a for a in plan["applications"]}
    for i, level in enumerate(plan["quiesce_order"]):
        once = "once those are quiesced, " if i else ""
        step(
            f"{once}quiesce in parallel: {', '.join(level)}",
            *(
                f"{n} ({apps[n]['plugin']}): capture {apps[n]['capture']}; crash safety "
                f"{apps[n]['crash_safety']} ("
                + _CRASH_SAFETY.get(apps[n]["crash_safety"], "see its plug-in's page")
                + ")"
                for n in level
                if n in apps
            ),
        )
    stages = plan["stages"]
    for s in stages:
        if s["in_freeze_window"]:
            step(
                f"stage {s['name']} ({s['backend']}, {s['role']}) while frozen"
                + _window(s["window"], plan["max_copy_in_window"])
            )
    step("unquiesce every application (reverse order)")
    for s in stages:
        if not s["in_freeze_window"] and s["role"] == "snapshot":
            step(
                f"stage {s['name']} ({s['backend']}, snapshot) after the thaw: "
                "the window holds only the captures"
            )
    for a in plan["applications"]:
        if a["capture"] != "snapshot":
            step(f"complete {a['name']} (capture {a['capture']}) into the views")
    for s in stages:
        if not s["in_freeze_window"] and s["role"] != "snapshot":
            step(f"stage {s['name']} ({s['backend']}) from the view of {s['source']}")
    for s in stages:
        if s["keep"]:
            rules = ", ".join(f"{k} = {v}" for k, v in s["keep"].items())
            step(f"retention of {s['name']}: keep {rules}")
        elif s["released_after_run"]:
            step(f"release the snapshot of {s['name']} once its copies are made")
    if plan["drill"] != "none":
        checks = sum(len(a["checks"]) for a in plan["applications"])
        step(
            f"drill the new run in {plan['drill_dir']}: restore it, start each "
            f"application on it, run its deep checks and the profile's {checks} check(s)"
        )
    lines = []
    for n, (text, under) in enumerate(steps, 1):
        lines.append(f"{n}. {text}")
        lines += [f"     {u}" for u in under]
    return lines


def _cmd_plan(args: argparse.Namespace, engine: Engine) -> int:
    plan = engine.plan()

    def human() -> None:
        print(
            f"profile {plan['profile']}: freeze_timeout {plan['freeze_timeout_s']:g}s, "
            f"thaw {plan['thaw']}"
        )
        for line in _plan_steps(plan):
            print(line)

    out(args, plan, human)
    return 0


def _window(estimate: dict[str, Any] | None, limit: int) -> str:
    """What a stage does inside the window, in words: ": reflinks" or ": copies 1.0 GiB"."""
    if estimate is None:
        return ""
    if estimate["how"] == "reflink":
        return ": reflinks every file (no data copied)"
    if estimate["bytes_copied"] is None:
        return f": copies an unknown amount ({estimate['note']})" if estimate["note"] else ""
    if not estimate["bytes_copied"]:
        return ": copies nothing inside the window"
    over = " (over max_copy_in_window)" if estimate["bytes_copied"] > limit else ""
    return f": copies {format_size(estimate['bytes_copied'])} inside the window{over}"


def _cmd_backup(args: argparse.Namespace, engine: Engine) -> int:
    with progress_bars(args) as factory:
        result = engine.backup(progress=factory)
    run, signum, drill = result.record, result.interrupted_by, result.drill

    def human() -> None:
        print_run(run)
        if drill is not None:
            print_drill(drill)

    data = run.to_json()
    if engine.profile.drill != "none":
        data["drill"] = drill.to_json() if drill is not None else None
    out(args, data, human)
    if run.status == RunStatus.SUCCEEDED and signum:
        sys.stderr.write(
            f"freezeframe: error: interrupted by {signal.Signals(signum).name} "
            f"after run {run.run_id} succeeded: retention stopped (it finishes at the next "
            "command); the backup is kept\n"
        )
        return 128 + signum
    if run.status == RunStatus.SUCCEEDED and drill is not None and drill.failures:
        sys.stderr.write(
            f"freezeframe: error: run {run.run_id} succeeded and is kept, but its drill "
            f"{drill.drill_id} failed: {all_on_one_line(drill.failures)}\n"
        )
        return 1
    if run.status == RunStatus.SUCCEEDED:
        return 0
    sys.stderr.write(f"freezeframe: error: run {run.run_id} failed: {run.error}\n")
    return 128 + signum if signum else 1


def _cmd_list(args: argparse.Namespace, engine: Engine) -> int:
    with engine.catalog(read_only=True) as catalog:
        runs = catalog.runs()

    def human() -> None:
        if not runs:
            print(f"profile {engine.profile.name!r} has no runs yet")
        for r in runs:
            size = sum(s.artifact.bytes for s in r.stages if s.artifact and not s.deleted_at)
            # a pruned run has nothing left: not a backup to count on, nor a size
            status = "pruned" if r.pruned else str(r.status)
            proof = r.proof if r.status == RunStatus.SUCCEEDED and not r.pruned else ""
            shown = "-" if r.pruned else format_size(size)
            print(
                f"{r.run_id}  {status:<9}  {proof:<12}  frozen {_frozen(r.applications):>8} ms"
                f"  {shown:>10}" + (f"  {r.error}" if r.error else "")
            )

    out(args, [r.to_json() for r in runs], human)
    return 0


def _cmd_show(args: argparse.Namespace, engine: Engine) -> int:
    with engine.catalog(read_only=True) as catalog:
        run = engine.find_run(catalog, args.run)
        errors = catalog.errors(run.run_id)
        drills = engine.drills(catalog, run.run_id)
    data = {**run.to_json(), "errors": errors, "drills": [d.to_json() for d in drills]}

    def human() -> None:
        print_run(run, detail=True)
        if run.status == RunStatus.SUCCEEDED:
            print(f"  proof       {run.proof}")
        for e in errors:
            print(f"  error: {e['source']}: {e['message']}")
        for d in drills:
            print_drill(d)

    out(args, data, human)
    return 0


def _cmd_restore(args: argparse.Namespace, engine: Engine) -> int:
    done = engine.restore(
        args.run,
        args.to,
        stage=args.stage,
        verify=args.verify,
        preserve_special=args.preserve_special,
        apps=args.app,
        paths=args.path,
    )
    data = {
        "run_id": done.run.run_id,
        "stage": done.stage,
        "to": str(args.to),
        "paths": [str(p) for p in done.paths],
        "applications": list(done.applications),
        "selected_paths": [str(p) for p in done.selected],
        "verified": args.verify,
        "verified_applications": list(done.verified),
        "preserve_special": args.preserve_special,
    }

    def human() -> None:
        print(f"restored run {done.run.run_id} from stage {done.stage} under {args.to}:")
        for p in done.paths:
            print(f"  {p}")
        if not args.verify:
            return
        unchecked = [a for a in done.applications if a not in done.verified]
        if done.verified:
            print(
                f"verify passed: {', '.join(done.verified)}: the restored data "
                "passed its plug-in's check"
            )
        if unchecked:
            print(f"not verified: {', '.join(unchecked)}: no check of its restored data ran")

    out(args, data, human)
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

    out(args, data, human)
    if problems:
        sys.stderr.write(f"freezeframe: error: verify failed: {all_on_one_line(problems)}\n")
    return 1 if problems else 0


def _cmd_drill(args: argparse.Namespace, engine: Engine) -> int:
    drills = engine.drill(args.run, stage=args.stage, every=args.all_undrilled)
    failed = [d for d in drills if d.status != DrillStatus.PASSED]
    data = {
        "profile": engine.profile.name,
        "ok": not failed,
        "drills": [d.to_json() for d in drills],
    }

    def human() -> None:
        if not drills:
            print(f"profile {engine.profile.name!r}: every succeeded run is drilled already")
        for d in drills:
            print_drill(d)

    out(args, data, human)
    for d in failed:
        sys.stderr.write(
            f"freezeframe: error: drill {d.drill_id} of run {d.run_id} failed: "
            f"{all_on_one_line(d.failures)}\n"
        )
    return 1 if failed else 0


def _cmd_prune(args: argparse.Namespace, engine: Engine) -> int:
    deletions = engine.prune(dry_run=args.dry_run)
    data = {"dry_run": args.dry_run, "deleted": [d.to_json() for d in deletions]}

    def human() -> None:
        verb = "would delete" if args.dry_run else "deleted"
        if not deletions:
            print("nothing to prune")
        for d in deletions:
            if d.error is not None:
                print(
                    f"could not delete {d.artifact} (stage {d.stage}, run {d.run_id}; "
                    f"will retry): {d.error}"
                )
            else:
                print(f"{verb} {d.artifact} (stage {d.stage}, run {d.run_id}): {d.reason}")

    out(args, data, human)
    return 0


VERBS: dict[str, Callable[[argparse.Namespace, Engine], int]] = {
    "check": _cmd_check,
    "plan": _cmd_plan,
    "backup": _cmd_backup,
    "list": _cmd_list,
    "show": _cmd_show,
    "restore": _cmd_restore,
    "verify": _cmd_verify,
    "prune": _cmd_prune,
    "drill": _cmd_drill,
}
