"""One backup stage at a time: run it in a worker thread (bounded by the freeze
deadline inside the window), journal and announce its outcome, and seal what ran in
the window once the applications have thawed."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from freezeframe._faults import point
from freezeframe.components import Artifact, Deadline, Role, StageContext
from freezeframe.copying import tree_counts
from freezeframe.errors import Interrupted, StageError, one_line
from freezeframe.preflight import completed_paths
from freezeframe.profile import StageSpec
from freezeframe.running import Run
from freezeframe.session import Session

__all__ = ["ProgressFactory", "run_stage", "seal_all"]

log = logging.getLogger("freezeframe")

#: Given a stage name, returns the callback that receives its progress: (bytes done,
#: files done, bytes expected or None).
ProgressFactory = Callable[[str], Callable[[int, int, int | None], None] | None]


def _progress_of(
    ctx: StageContext, progress: ProgressFactory | None
) -> tuple[Callable[[int, int], None], Callable[[Artifact], None]]:
    """The stage's ``on_progress``, shown with the total the context expects (a copy
    stage: its source's size, until its tool counts better) from the start; and what
    shows the stage done (what it counted, or its artifact's size, is then the whole)."""
    shown = progress(ctx.stage) if progress is not None else None
    if shown is not None:
        shown(0, 0, ctx.bytes_total)

    def report(done: int, files: int) -> None:
        point(f"stage.progress.{ctx.stage}")
        if shown is not None:
            shown(done, files, ctx.bytes_total)

    def finished(artifact: Artifact) -> None:
        if shown is not None:
            done = ctx.bytes_done or artifact.bytes
            shown(done, ctx.files_done or artifact.files, done)

    return report, finished


def _expected(source: Artifact | None) -> int | None:
    """What a copy stage will read: its source's size, or (a snapshot that counts none:
    btrfs) the sizes of the files in its view."""
    if source is None:
        return None
    return source.bytes or tree_counts([image for _, image in source.roots()])[1] or None


def run_stage(
    session: Session,
    run: Run,
    spec: StageSpec,
    paths: tuple[Path, ...],
    deadline: Deadline | None,
    progress: ProgressFactory | None = None,
) -> Artifact:
    """Run stage ``spec``; inside the window (``deadline``) it is cancelled when the
    deadline passes. A failure is recorded, announced and raised as :class:`StageError`."""
    profile = session.profile
    source = None
    if spec.source is not None:
        rec = run.record.stage(spec.source)
        source = rec.artifact if rec else None
        if source is None or source.view is None:
            raise StageError(f"stage {spec.name!r}: its source {spec.source!r} made no view")
    ctx = StageContext(
        run.record.run_id,
        profile.name,
        spec.name,
        paths,
        source,
        completed_paths(session) if spec.role == Role.SNAPSHOT else (),
        bytes_total=_expected(source) if progress is not None else None,
    )
    ctx.on_progress, finished = _progress_of(ctx, progress)
    run.cancel_events.append(ctx.cancel_event)
    run.stage(spec.name, status="running", started_at=time.time())
    # journal: this stage may leave output behind (inside the window, not waiting for the
    # disk: it outlives a crash of freezeframe; a power cut loses it, and the reconcile
    # then discards whatever a snapshot stage of the run left all the same)
    run.save(durable=deadline is None)
    result: list[Artifact] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            artifact = spec.component.run(ctx)
            result.append(artifact)
            point(f"stage.end.{spec.name}")
        except BaseException as e:
            errors.append(e)

    point(f"stage.start.{spec.name}")
    worker = threading.Thread(target=work, name=f"stage-{spec.name}", daemon=True)
    run.workers.append(worker)
    worker.start()
    try:
        while worker.is_alive():
            wait = 0.5 if deadline is None else min(0.5, deadline.remaining())
            worker.join(wait)
            if deadline is not None and deadline.expired() and worker.is_alive():
                raise StageError(
                    f"stage {spec.name!r}: freeze_timeout ({profile.freeze_timeout:g}s) "
                    "passed before it finished; applications thawed, stage cancelled"
                )
        if errors:
            e = errors[0]
            raise StageError(f"stage {spec.name!r} ({spec.info.kind}): {one_line(e)}") from e
        artifact = result[0]
    except BaseException as e:
        ctx.cancel_event.set()
        stage = run.stage(spec.name, status="failed", finished_at=time.time(), error=one_line(e))
        run.save()
        session.notify("freezeframe_stage_finished", run=run.record, stage=stage)
        raise
    finished(artifact)
    stage = run.stage(spec.name, status="succeeded", finished_at=time.time(), artifact=artifact)
    run.save(durable=deadline is None)
    log.info(
        "stage %s made %s (%d files, %d bytes)",
        spec.name,
        artifact.id,
        artifact.files,
        artifact.bytes,
    )
    session.notify("freezeframe_stage_finished", run=run.record, stage=stage)
    return artifact


def seal_all(session: Session, run: Run, stages: Sequence[StageSpec]) -> None:
    """After the thaw, each stage that ran in the window finishes its artifact (the
    snapshot backends read every file for content digests: no freeze time).

    A snapshot released once its copies are made is not sealed: nothing would ever
    verify it, and reading it all would only double the run's reads.
    """
    for spec in stages:
        st = run.record.stage(spec.name)
        if st is None or st.artifact is None or session.profile.released_after_run(spec):
            continue
        started = time.monotonic()
        try:
            sealed = spec.component.seal(st.artifact)
        except BaseException as e:
            run.stage(spec.name, status="failed", error=f"seal failed: {one_line(e)}")
            run.save()
            if isinstance(e, Interrupted) or not isinstance(e, Exception):
                raise
            raise StageError(
                f"stage {spec.name!r} ({spec.info.kind}): seal failed: {one_line(e)}"
            ) from e
        if sealed is not st.artifact:
            run.stage(spec.name, artifact=sealed)
            run.save()
            log.info("stage %s sealed in %.1f s", spec.name, time.monotonic() - started)
