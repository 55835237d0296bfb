"""``plan``: what a backup would do, step by step, without doing it (the profile's
preflight answers, gathered for ``freezeframe plan`` and its ``--json``)."""

from __future__ import annotations

from typing import Any

from freezeframe.boundary import WindowEstimate
from freezeframe.errors import one_line
from freezeframe.preflight import data_paths, settle_captures, window_estimates, windowed_stages
from freezeframe.quiesce_order import quiesce_after, quiesce_levels
from freezeframe.session import Session

__all__ = ["plan"]


def plan(session: Session) -> dict[str, Any]:
    """What a backup would do, step by step, without doing it."""
    profile = session.profile
    apps = profile.applications
    try:
        settle_captures(session)  # as the backup's check will
        paths: list[str] | str = [str(p) for p in data_paths(session)]
    except Exception as e:
        paths = f"unknown until the applications are reachable: {one_line(e)}"
    windowed = windowed_stages(profile)
    try:
        estimates: dict[str, WindowEstimate] | str = window_estimates(session)
    except Exception as e:
        estimates = f"unknown until the applications are reachable: {one_line(e)}"
    return {
        "profile": profile.name,
        "freeze_timeout_s": profile.freeze_timeout,
        "thaw": profile.thaw,
        "state_dir": str(profile.home),
        "max_copy_in_window": profile.max_copy_in_window,
        "drill": profile.drill,
        "drill_dir": str(profile.drill_dir),
        "data_paths": paths,
        "quiesce_order": quiesce_levels(quiesce_after(profile)),
        "applications": [
            {
                "name": a.name,
                "plugin": a.info.kind,
                "on_quiesce_failure": a.on_quiesce_failure,
                "capture": a.capture,
                "crash_safety": str(a.component.crash_safety),
                "checks": [{"name": c.name, "kind": c.kind} for c in a.checks],
            }
            for a in apps
        ],
        "stages": [
            {
                "name": s.name,
                "backend": s.info.kind,
                "role": str(s.role),
                "source": s.source,
                "in_freeze_window": s in windowed,
                "keep": s.keep.to_json() if s.keep else None,
                "released_after_run": profile.released_after_run(s),
                "window": _window(estimates, s.name),
            }
            for s in profile.stages
        ],
    }


def _window(estimates: dict[str, WindowEstimate] | str, stage: str) -> dict[str, Any] | None:
    """A stage's estimate for ``plan --json``: ``None`` for a stage outside the window."""
    if isinstance(estimates, str):
        return {"how": "unknown", "bytes_copied": None, "note": estimates}
    e = estimates.get(stage)
    return None if e is None else {"how": e.how, "bytes_copied": e.bytes_copied, "note": e.note}
