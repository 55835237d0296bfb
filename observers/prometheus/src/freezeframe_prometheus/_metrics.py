"""Where a profile stands, as Prometheus metric families: one fresh registry per write,
holding the whole state (never a difference from the previous write)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from freezeframe.plugin import ProfileStatus, RunRecord, RunStatus

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

#: Every metric: name, help text, labels beside ``profile``. The docs page lists the same.
METRICS: dict[str, tuple[str, tuple[str, ...]]] = {
    "freezeframe_last_run_timestamp_seconds": (
        "When the newest run of the profile finished (Unix time; when it started if it has "
        "no end).",
        (),
    ),
    "freezeframe_last_run_success": ("Whether the newest run succeeded (1) or failed (0).", ()),
    "freezeframe_last_run_duration_seconds": (
        "How long the newest run took, from its start to its end.",
        (),
    ),
    "freezeframe_last_success_timestamp_seconds": (
        "When the newest succeeded run finished (Unix time; 0 when none has succeeded).",
        (),
    ),
    "freezeframe_last_success_proven": (
        "Whether a drill passed on the newest succeeded run (1) or not (0).",
        (),
    ),
    "freezeframe_freeze_window_seconds": (
        "The newest succeeded run's freeze window of each application: from the start of its "
        "quiesce to the end of its thaw.",
        ("application",),
    ),
    "freezeframe_writes_blocked_seconds": (
        "How long the newest succeeded run blocked each application's own writes (0 for a "
        "plug-in whose quiesce blocks no write).",
        ("application",),
    ),
    "freezeframe_group_freeze_window_seconds": (
        "The newest succeeded run's freeze window of all its applications together: from the "
        "first quiesce to the last thaw.",
        (),
    ),
    "freezeframe_stage_bytes": (
        "Bytes of each stage's artifact in the newest succeeded run.",
        ("stage",),
    ),
    "freezeframe_stage_files": (
        "Files in each stage's artifact in the newest succeeded run.",
        ("stage",),
    ),
    "freezeframe_stage_duration_seconds": (
        "How long each stage of the newest succeeded run took.",
        ("stage",),
    ),
    "freezeframe_last_drill_success": (
        "Whether the newest drill with a verdict passed (1) or failed (0).",
        (),
    ),
    "freezeframe_last_drill_timestamp_seconds": (
        "When the newest drill with a verdict finished (Unix time).",
        (),
    ),
    "freezeframe_retained_backups": (
        "Succeeded runs with at least one artifact left: the backups there are to restore.",
        (),
    ),
}


def _ended(run: RunRecord) -> float:
    return run.finished_at if run.finished_at is not None else run.started_at


def samples(status: ProfileStatus) -> list[tuple[str, dict[str, str], float]]:
    """``(metric, labels beside profile, value)`` for everything ``status`` says; a metric
    with nothing to say (no drill yet, no succeeded run's sizes) has no sample."""
    out: list[tuple[str, dict[str, str], float]] = []

    def put(name: str, value: float | None, **labels: str) -> None:
        if value is not None:
            out.append((name, labels, float(value)))

    last, ok, drill = status.last_run, status.last_success, status.last_drill
    if last is not None:
        put("freezeframe_last_run_timestamp_seconds", _ended(last))
        put("freezeframe_last_run_success", last.status == RunStatus.SUCCEEDED)
        if last.finished_at is not None:
            put("freezeframe_last_run_duration_seconds", last.finished_at - last.started_at)
    # 0 when nothing has succeeded yet: an age alert fires rather than sees no series
    put("freezeframe_last_success_timestamp_seconds", 0.0 if ok is None else _ended(ok))
    proven = status.last_proven
    put(
        "freezeframe_last_success_proven",
        ok is not None and proven is not None and proven.run_id == ok.run_id,
    )
    if ok is not None:
        for app in ok.applications:
            if app.frozen_ms is not None:
                put("freezeframe_freeze_window_seconds", app.frozen_ms / 1000, application=app.name)
            if app.writes_blocked_ms is not None:
                put(
                    "freezeframe_writes_blocked_seconds",
                    app.writes_blocked_ms / 1000,
                    application=app.name,
                )
        if ok.frozen_ms is not None:
            put("freezeframe_group_freeze_window_seconds", ok.frozen_ms / 1000)
        for stage in ok.stages:
            if stage.artifact is not None:
                put("freezeframe_stage_bytes", stage.artifact.bytes, stage=stage.name)
                put("freezeframe_stage_files", stage.artifact.files, stage=stage.name)
            if stage.started_at is not None and stage.finished_at is not None:
                put(
                    "freezeframe_stage_duration_seconds",
                    stage.finished_at - stage.started_at,
                    stage=stage.name,
                )
    if drill is not None:
        put("freezeframe_last_drill_success", drill.status == "passed")
        put(
            "freezeframe_last_drill_timestamp_seconds",
            drill.finished_at if drill.finished_at is not None else drill.started_at,
        )
    put("freezeframe_retained_backups", status.retained)
    return out


def registry_of(status: ProfileStatus) -> CollectorRegistry:
    """A fresh registry holding :func:`samples` of ``status``, every sample labelled with
    its profile; metric families without a sample are left out."""
    from prometheus_client import CollectorRegistry, Gauge

    registry = CollectorRegistry(auto_describe=True)
    gauges: dict[str, Any] = {}
    for name, labels, value in samples(status):
        if name not in gauges:
            text, names = METRICS[name]
            gauges[name] = Gauge(name, text, ("profile", *names), registry=registry)
        gauges[name].labels(profile=status.profile, **labels).set(value)
    return registry
