"""The verbs that look after profiles rather than act on one: ``status`` (where each
profile stands, and ``--max-age`` for a monitoring check) and ``schedule`` (a systemd
timer or a crontab line that runs a profile's backup)."""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from pathlib import Path

from freezeframe import schedule
from freezeframe.errors import FreezeframeError, UsageError, lines_of, user_error
from freezeframe.profile import default_state_dir, load_profile
from freezeframe.profiles import default_profiles, profile_dirs
from freezeframe.registry import Registry
from freezeframe.session import Session
from freezeframe.status import ProfileStatus, summarize
from freezeframe.units import format_duration, parse_duration
from freezeframe.verbs import all_on_one_line, out

__all__ = ["cmd_schedule", "cmd_status", "profile_status", "schedule_usage"]


def profile_status(path: Path, registry: Registry) -> ProfileStatus:
    """Where the profile at ``path`` stands: its catalog read read-only, its lock probed
    (never taken), nothing reconciled: a crashed run is reported, not cleaned up."""
    profile = load_profile(path, registry)
    with Session(profile, registry).catalog(read_only=True) as catalog:
        return summarize(catalog, profile.name, lock=profile.home / "lock")


def _line(st: ProfileStatus, stale: bool | None, limit: str | None) -> str:
    """One line per profile: last run, last success and its age, last drill, retained,
    what is going on."""
    run, ok, drill = st.last_run, st.last_success, st.last_drill
    if run is None:
        parts = ["no runs yet"]
    else:
        parts = [f"last run {run.run_id} {run.status}"]
        if ok is not None and ok.run_id != run.run_id:
            parts.append(f"last success {ok.run_id}")
        if ok is None:
            parts.append("no success yet")
        else:
            parts[-1] += f" {format_duration(st.success_age or 0.0)} ago ({ok.proof})"
        if drill is not None:  # none: the proof says "not drilled"
            parts.append(f"last drill {drill.status}")
        parts.append(f"{st.retained} retained")
    going = st.in_progress
    if going is not None:
        details = [
            f"run {going['run_id']}" if going["run_id"] else None,
            f"pid {going['pid']}" if going["pid"] else None,
            f"since {going['since']}" if going["since"] else None,
        ]
        what = going["command"] or "a command"  # a holder that has not written itself yet
        parts.append(f"{what} in progress ({', '.join(d for d in details if d)})")
    parts += [f"run {r} crashed: the next command reconciles it" for r in st.crashed_runs]
    parts += [f"drill {d} crashed: the next command cleans it up" for d in st.crashed_drills]
    if stale:
        parts.append(f"STALE (no success within {limit})")
    return f"{st.profile}: " + "; ".join(parts)


def cmd_status(args: argparse.Namespace, registry: Registry) -> int:
    """``freezeframe status [PROFILE...] [--max-age DURATION]``."""
    limit = None
    if args.max_age is not None:
        try:
            limit = parse_duration(args.max_age)
        except ValueError as e:
            raise UsageError(f"--max-age {args.max_age!r}: {e}") from None
    paths = list(args.profiles) or default_profiles()
    if not paths:
        where = " or ".join(f"{d}/*.toml" for d in profile_dirs())
        raise UsageError(f"status: no PROFILE given, and no profile in {where}")
    entries: list[dict[str, object]] = []
    lines: list[str] = []
    complaints: list[str] = []
    code = 0
    for path in paths:
        try:
            st = profile_status(path, registry)
        except (FreezeframeError, OSError) as e:
            error = user_error(e)
            if error is None:
                raise  # our bug: the CLI reports it as such
            said = lines_of(error)
            entries.append(
                {
                    "path": os.path.abspath(path),
                    "error": said[0],
                    "errors": said,
                    "exit_code": error.exit_code,
                }
            )
            complaints.append(all_on_one_line(said))
            code = max(code, error.exit_code)
            continue
        stale = None if limit is None else st.stale(limit)
        entries.append({**st.to_json(), "path": os.path.abspath(path), "stale": stale})
        lines.append(_line(st, stale, args.max_age))
        if stale:
            code = max(code, 1)
            age = st.success_age
            complaints.append(
                f"profile {st.profile!r}: "
                + (
                    "no success yet"
                    if age is None
                    else f"last success {format_duration(age)} ago, older than {args.max_age}"
                )
            )

    def human() -> None:
        for line in lines:
            print(line)

    out(args, {"profiles": entries, "ok": code == 0}, human)
    for complaint in complaints:
        sys.stderr.write(f"freezeframe: error: {complaint}\n")
    return code


def schedule_usage(args: argparse.Namespace) -> str | None:
    """What is wrong with ``schedule``'s arguments, or ``None``."""
    options = {
        "--on-calendar": args.on_calendar is not None,
        "--randomized-delay": args.randomized_delay is not None,
        "--persistent": args.persistent,
    }
    given = [name for name, on in options.items() if on]
    if args.list:
        if args.profile is not None or given or args.remove or args.cron:
            return "schedule --list takes no PROFILE and no other option but --user or --unit-dir"
        return None
    if args.profile is None:
        return "schedule: give a PROFILE (or --list)"
    if args.remove:
        if given or args.cron:
            return f"schedule --remove takes no {(given or ['--cron'])[0]}"
        return None
    if args.on_calendar is None:
        return "schedule: give --on-calendar SPEC (or --remove, or --list)"
    if args.cron:
        for name in ("--randomized-delay", "--persistent"):
            if name in given:
                return f"schedule --cron: cron has no {name}"
        if args.user or args.unit_dir is not None:
            return "schedule --cron writes no unit: it takes no --user or --unit-dir"
    return None


def _unit_dir(args: argparse.Namespace) -> Path:
    if args.unit_dir is not None:
        return Path(os.path.abspath(args.unit_dir))
    return schedule.user_unit_dir() if args.user else schedule.SYSTEM_UNIT_DIR


def _profile_name(arg: Path, registry: Registry) -> str:
    """The name of the profile ``arg`` names: its file's ``name``, or, when there is no
    such file (``--remove`` of a profile since deleted), ``arg`` itself."""
    if arg.exists() or "/" in str(arg):
        return load_profile(arg, registry).name
    return str(arg)


def cmd_schedule(args: argparse.Namespace, registry: Registry) -> int:
    """``freezeframe schedule``: write, list or remove a profile's timer; ``--cron``
    prints the crontab line instead."""
    unit_dir = _unit_dir(args)
    if args.list:
        timers = schedule.list_timers(unit_dir)

        def listed() -> None:
            if not timers:
                print(f"no freezeframe timers in {unit_dir}")
            for t in timers:
                extra = "".join(
                    [
                        f"  RandomizedDelaySec={t.randomized_delay}" if t.randomized_delay else "",
                        "  Persistent=true" if t.persistent else "",
                        f"  profile {t.profile_path}" if t.profile_path else "",
                    ]
                )
                calendar = ", ".join(t.on_calendar) or "(no OnCalendar)"
                print(f"{t.path.name:<32} OnCalendar={calendar}{extra}")

        out(args, {"unit_dir": str(unit_dir), "timers": [t.to_json() for t in timers]}, listed)
        return 0
    if args.remove:
        name = _profile_name(args.profile, registry)
        removed = schedule.remove(name, unit_dir)
        ctl = "systemctl --user" if args.user else "systemctl"
        unit = schedule.unit_name(name)
        hint = f"{ctl} stop {unit}.timer; {ctl} daemon-reload"

        def said() -> None:
            for p in removed:
                print(f"removed {p}")
            print(f"then: {hint}")

        out(args, {"profile": name, "removed": [str(p) for p in removed], "next": hint}, said)
        return 0
    schedule.validate_calendar(args.on_calendar)
    if args.randomized_delay is not None:
        schedule.validate_timespan(args.randomized_delay)
    profile = load_profile(args.profile, registry)
    s = schedule.Schedule(
        profile=profile.name,
        path=Path(os.path.abspath(args.profile)),
        on_calendar=args.on_calendar,
        randomized_delay=args.randomized_delay,
        persistent=args.persistent,
        user=args.user,
        state_home=profile.state_dir.parent if profile.state_dir == default_state_dir() else None,
    )
    if args.cron:
        command = [*schedule.this_freezeframe(), "backup", str(s.path), "--quiet"]
        line = schedule.cron_line(s.on_calendar, command)
        out(args, {"profile": s.profile, "cron": line}, lambda: print(line))
        return 0
    if args.unit_dir is None and not args.user and os.geteuid() != 0:
        raise UsageError(
            f"schedule: writing system units in {unit_dir} takes root; "
            "give --user for a timer of your own"
        )
    units = schedule.write(s, unit_dir)
    hint = schedule.enable_hint(s.profile, user=s.user)
    linger = f"loginctl enable-linger {getpass.getuser()}" if s.user else None

    def wrote() -> None:
        for p in units:
            print(f"wrote {p}")
        print(f"then: {hint}")
        if linger:
            print(f"and, for it to run while you are logged out: {linger}")

    data = {
        "profile": s.profile,
        "unit_dir": str(unit_dir),
        "units": [str(p) for p in units],
        "command": s.command(),
        "on_calendar": s.on_calendar,
        "next": hint,
    }
    out(args, data, wrote)
    return 0
