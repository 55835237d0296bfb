"""A plug-in's drill on a real backup: back up, restore the run, hand the plug-in the
:class:`~freezeframe.plugin.DrillContext` the core's drill would give it."""

from __future__ import annotations

from pathlib import Path

from freezeframe.engine import Engine
from freezeframe.plugin import ApplicationPlugin, DrillContext, under
from freezeframe.records import RunRecord, RunStatus

__all__ = [
    "BAD_DRILL_FIELDS",
    "LEDGER_DRILL",
    "backed_up",
    "drill_context",
    "drill_the_ledger",
    "ledger_drill",
    "results",
    "unbalance",
]


def backed_up(engine: Engine) -> RunRecord:
    """One backup run of ``engine``'s profile, which must succeed."""
    run = engine.backup().record
    assert run.status == RunStatus.SUCCEEDED, run.error
    return run


def drill_context(engine: Engine, run: RunRecord, application: str, folder: Path) -> DrillContext:
    """Restore ``run`` under ``folder/root`` (its fix-ups done, as the drill's scratch
    copy is), make the application's private folder (``folder/work/<application>``, mode
    0711 as the core makes it) and return the context with the run's facts and capture."""
    root = folder / "root"
    engine.restore(run.run_id, root)
    work = folder / "work" / application
    work.mkdir(parents=True)
    work.chmod(0o711)
    (app,) = (a for a in run.applications if a.name == application)
    return DrillContext(application, root, work, facts=app.facts, capture=app.capture)


def results(ctx: DrillContext) -> dict[str, tuple[str, str]]:
    """The checks a drill recorded so far: name → (status, detail)."""
    return {r.name: (r.status, r.detail) for r in ctx.results}


#: A profile's drill command (``drill = ["./drill.sh", LEDGER]``): the restored ledger,
#: found under ``$FREEZEFRAME_RESTORED_ROOT`` at its original path, must still read
#: ``balance 42``; it says where it runs and what it read, and exits 3 otherwise.
LEDGER_DRILL = """#!/bin/sh
echo "in $PWD"
cat "$FREEZEFRAME_RESTORED_ROOT$1" || exit 3
grep -qx "balance 42" "$FREEZEFRAME_RESTORED_ROOT$1" && exit 0
echo "the ledger does not balance" >&2
exit 3
"""


def ledger_drill(folder: Path, ledger: Path) -> list[str]:
    """Write ``ledger`` (``balance 42``) and ``folder/drill.sh`` (:data:`LEDGER_DRILL`);
    the ``drill`` field that runs it, relative to a profile in ``folder``."""
    ledger.write_text("balance 42\n")
    script = folder / "drill.sh"
    script.write_text(LEDGER_DRILL)
    script.chmod(0o755)
    return ["./drill.sh", str(ledger)]


def drill_the_ledger(plugin: ApplicationPlugin, ctx: DrillContext) -> tuple[str, str]:
    """Run ``plugin``'s drill (a :func:`ledger_drill` command) on ``ctx``: it must start
    nothing; the one check it recorded (``drill``) as (status, detail)."""
    with plugin.drill(ctx) as running:
        assert running is None
    (found,) = results(ctx).items()
    assert found[0] == "drill", found
    return found[1]


def unbalance(ctx: DrillContext, ledger: Path) -> str:
    """Damage the restored ``ledger``; the detail the failed ``drill`` check must give."""
    under(ctx.root, ledger).write_text("balance 0\n")
    return f"drill.sh failed (exit 3): in {ctx.work} | balance 0 | the ledger does not balance"


#: Bad ``drill``/``drill_timeout`` values of an exec or fsfreeze table: (fields, the field
#: the one-line ConfigError names, what it says).
BAD_DRILL_FIELDS: list[tuple[dict[str, object], str, str]] = [
    ({"drill": "check.sh --all"}, "drill", 'list of strings (argv, no shell), e.g. ["check.sh"'),
    ({"drill": []}, "drill", "expected a non-empty list of strings"),
    ({"drill": ["check.sh", 3]}, "drill", "expected a non-empty list of strings"),
    ({"drill": [" "]}, "drill", "the program (first item) must not be empty"),
    ({"drill": ["check.sh"], "drill_timeout": "soon"}, "drill_timeout", 'such as "10s"'),
    ({"drill": ["check.sh"], "drill_timeout": 0}, "drill_timeout", "greater than zero"),
    ({"drill_timeout": "1m"}, "drill_timeout", 'given without a "drill" command'),
]
