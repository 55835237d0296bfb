"""``freezeframe schedule``: a systemd service and timer that run a profile's backup, or the
crontab line that does on a machine without systemd.

The two units are named ``freezeframe-<profile name>.service`` and ``.timer``. The service
runs this very freezeframe (its absolute path) as ``backup <absolute profile path> --json``,
a ``oneshot`` at low CPU and I/O priority, with the hardening that no plug-in needs to be
without (see :data:`SERVICE`, whose comments say why each setting is or is not there).
Nothing here calls ``systemctl``: the operator runs what :func:`enable_hint` prints.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from freezeframe.errors import FreezeframeError, UsageError
from freezeframe.profiles import config_home
from freezeframe.units import parse_duration

__all__ = [
    "SYSTEM_UNIT_DIR",
    "Schedule",
    "Timer",
    "cron_line",
    "enable_hint",
    "list_timers",
    "remove",
    "this_freezeframe",
    "unit_name",
    "user_unit_dir",
    "validate_calendar",
    "validate_timespan",
    "write",
]

#: Where ``schedule`` writes system units (root's timers).
SYSTEM_UNIT_DIR = Path("/etc/systemd/system")
#: The first line of every unit ``schedule`` writes.
MARK = "# Written by freezeframe schedule"
#: How long ``systemd-analyze`` may take to judge one value.
_ANALYZE_TIMEOUT = 30.0


def user_unit_dir() -> Path:
    """Where ``schedule --user`` writes: ``$XDG_CONFIG_HOME/systemd/user``, by default
    ``~/.config/systemd/user``."""
    return config_home() / "systemd" / "user"


def unit_name(profile: str) -> str:
    """The units' name without suffix: ``freezeframe-<profile>`` (a profile's name holds
    only letters, digits, ``_``, ``.`` and ``-``, all valid in a unit name)."""
    return f"freezeframe-{profile}"


def this_freezeframe() -> list[str]:
    """The argv that runs this freezeframe: its console script, by absolute path (not
    resolved: ``/usr/local/bin/freezeframe`` stays valid across upgrades), or this Python
    with ``-m freezeframe`` when it was started some other way."""
    script = sys.argv[0] if sys.argv else ""
    if os.path.basename(script) == "freezeframe" and os.access(script, os.X_OK):
        return [os.path.abspath(script)]
    return [sys.executable, "-m", "freezeframe"]


@dataclass(frozen=True)
class Schedule:
    """One profile's schedule, as the command line gave it."""

    profile: str
    #: The profile's file, absolute.
    path: Path
    on_calendar: str
    randomized_delay: str | None = None
    persistent: bool = False
    #: For the user's own systemd instance (``--user``), not the system's.
    user: bool = False
    #: ``XDG_STATE_HOME`` the service must see (a profile that leaves ``state_dir`` to its
    #: default), so that its runs land in the catalog ``status`` reads from this shell.
    state_home: Path | None = None

    def command(self) -> list[str]:
        """What the service runs."""
        return [*this_freezeframe(), "backup", str(self.path), "--json"]


def _plain(value: str, what: str) -> str:
    """``value`` for one line of a unit file or a crontab: no control characters."""
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise UsageError(f"{what} {value!r} holds a control character: it cannot go in a unit")
    return value


def _unit_word(arg: str, *, variables: bool = True) -> str:
    """One word of ``ExecStart=`` (or, without ``variables``, of ``Environment=``, which
    expands no ``$``): ``%`` doubled (a specifier), ``$`` too, quoted when it holds
    anything but plain characters."""
    text = _plain(arg, "path").replace("%", "%%")
    if variables:
        text = text.replace("$", "$$")
    if re.fullmatch(r"[A-Za-z0-9_./:@+=,-]+", arg):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


# Each setting of the service, and why; a setting left out is named in a comment with why.
SERVICE = """\
{mark} for profile {profile}: {path}
# It is written again by the next `freezeframe schedule {profile}`, removed by
# `freezeframe schedule {profile} --remove`: put your own settings in a drop-in
# (`systemctl {scope}edit {name}.service`), for instance EnvironmentFile= with the
# variables the profile's *_env fields name.
[Unit]
Description=freezeframe backup of profile {profile}
{after}
[Service]
Type=oneshot
ExecStart={exec_start}
{environment}# The run's JSON record on stdout, the log on stderr: both go to the journal.
# Low priority: a backup must not slow the applications it freezes.
Nice=10
IOSchedulingClass=best-effort
IOSchedulingPriority=7
# Only freezeframe itself is told to stop: its watchdog, which thaws what never thaws by
# itself should freezeframe die, must outlive it (systemd would kill it with the unit).
KillMode=process
# A stopped run thaws, waits up to 60 s for its stages to cancel, removes their output.
TimeoutStopSec=5min
# Hardening that no plug-in needs to be without:
NoNewPrivileges=yes
LockPersonality=yes
RestrictRealtime=yes
# PrivateTmp=no: applications' sockets may be in /tmp (PostgreSQL's default), and a
# crashed drill's scratch folder must stay visible to the next command's clean-up.
PrivateTmp=no
# Not set, because they break plug-ins:
# ProtectSystem=, ProtectHome=, ReadWritePaths=: snapshot, clone, drill and state
#   folders may be anywhere, and fsfreeze/btrfs need CAP_SYS_ADMIN, which can remount.
# PrivateDevices=, DevicePolicy=, ProtectClock=: snapshot tools reach block devices.
# RestrictSUIDSGID=: a snapshot copies setuid files as they are.
# RestrictNamespaces=, SystemCallFilter=: restic and borg read a snapshot in a mount
#   namespace of their own; fsfreeze and btrfs use privileged system calls.
# MemoryDenyWriteExecute=: a drill starts servers that may compile code (PostgreSQL JIT).
# ProtectKernelTunables=, ProtectControlGroups=: little gain while CAP_SYS_ADMIN stays, and
#   each makes a mount namespace, where what a run or an exec hook mounts is not seen outside.
"""

TIMER = """\
{mark} for profile {profile}: {path}
[Unit]
Description=freezeframe backup of profile {profile}, on a schedule

[Timer]
OnCalendar={on_calendar}
{extra}
[Install]
WantedBy=timers.target
"""


def service_text(s: Schedule) -> str:
    """The ``.service`` unit of ``s``."""
    env = ""
    if s.state_home is not None:
        env = (
            "# the profile leaves state_dir to its default: the one where it was scheduled\n"
            f"Environment={_unit_word(f'XDG_STATE_HOME={s.state_home}', variables=False)}\n"
        )
    return SERVICE.format(
        mark=MARK,
        profile=s.profile,
        path=_plain(str(s.path), "profile path"),
        scope="--user " if s.user else "",
        name=unit_name(s.profile),
        # a user's manager has no network-online.target
        after="" if s.user else "Wants=network-online.target\nAfter=network-online.target\n",
        exec_start=" ".join(_unit_word(a) for a in s.command()),
        environment=env,
    )


def timer_text(s: Schedule) -> str:
    """The ``.timer`` unit of ``s``."""
    extra = ""
    if s.randomized_delay is not None:
        extra += f"RandomizedDelaySec={_plain(s.randomized_delay, 'delay')}\n"
    if s.persistent:
        extra += "Persistent=true\n"
    return TIMER.format(
        mark=MARK,
        profile=s.profile,
        path=_plain(str(s.path), "profile path"),
        on_calendar=_plain(s.on_calendar, "calendar"),
        extra=extra,
    )


def _analyze(*args: str) -> subprocess.CompletedProcess[str] | None:
    """``systemd-analyze ARGS``, or ``None`` where there is none."""
    tool = shutil.which("systemd-analyze")
    if tool is None:
        return None
    try:
        return subprocess.run(
            [tool, *args],
            capture_output=True,
            text=True,
            timeout=_ANALYZE_TIMEOUT,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None


def validate_calendar(spec: str) -> None:
    """Refuse (one line, exit code 2) a calendar ``systemd-analyze calendar`` does not
    parse; unchecked where that tool is missing (``--cron`` checks its own forms)."""
    _plain(spec, "calendar")
    done = _analyze("calendar", "--", spec)
    if done is not None and done.returncode != 0:
        why = done.stderr.strip().splitlines()[-1:] or ["it does not parse"]
        raise UsageError(f"--on-calendar {spec!r} is not a systemd calendar: {why[0]}")


def validate_timespan(span: str) -> None:
    """Refuse (exit code 2) a time span systemd would not take (``systemd-analyze timespan``,
    or where it is missing, the durations freezeframe itself reads: ``30s``, ``10m``, ``1h``,
    ``1d``: systemd reads each the same way)."""
    _plain(span, "time span")
    done = _analyze("timespan", "--", span)
    if done is None:
        try:
            parse_duration(span)
        except ValueError as e:
            raise UsageError(f"--randomized-delay {span!r}: {e}") from None
    elif done.returncode != 0:
        raise UsageError(f"--randomized-delay {span!r} is not a systemd time span")


def _replace(path: Path, text: str) -> None:
    """Write ``path`` whole (a temporary file renamed over it), mode 0644."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fchmod(f.fileno(), 0o644)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write(s: Schedule, unit_dir: Path) -> list[Path]:
    """Write (or replace) the service and timer of ``s`` in ``unit_dir``; returns them."""
    service, timer = (unit_dir / f"{unit_name(s.profile)}.{k}" for k in ("service", "timer"))
    texts = {service: service_text(s), timer: timer_text(s)}  # both made before either is written
    unit_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
    for path, text in texts.items():
        _replace(path, text)
    return [service, timer]


def remove(profile: str, unit_dir: Path) -> list[Path]:
    """Remove the two units of ``profile`` from ``unit_dir`` and the links ``systemctl
    enable`` made to them there (``*.wants/``: left, they would point at nothing); returns
    what was removed. Refuses (exit code 1) when there is neither unit."""
    name = unit_name(profile)
    units = [unit_dir / f"{name}.{k}" for k in ("service", "timer")]
    if not any(u.exists() for u in units):
        raise FreezeframeError(f"no schedule of profile {profile!r} in {unit_dir}")
    removed = []
    for unit in units:
        for link in unit_dir.glob(f"*.wants/{unit.name}"):
            if link.is_symlink() and Path(os.readlink(link)).name == unit.name:
                link.unlink()
                removed.append(link)
        if unit.exists():
            unit.unlink()
            removed.append(unit)
    return removed


def enable_hint(profile: str, *, user: bool) -> str:
    """The command that loads and starts the timer of ``profile``."""
    ctl = "systemctl --user" if user else "systemctl"
    return f"{ctl} daemon-reload && {ctl} enable --now {unit_name(profile)}.timer"


@dataclass(frozen=True)
class Timer:
    """A freezeframe timer found in a unit folder."""

    path: Path
    on_calendar: tuple[str, ...]
    randomized_delay: str | None
    persistent: bool
    #: The profile's file, when the unit says (one ``schedule`` wrote).
    profile_path: str | None

    @property
    def profile(self) -> str:
        """The profile's name, from the unit's."""
        return self.path.name.removeprefix("freezeframe-").removesuffix(".timer")

    def to_json(self) -> dict[str, object]:
        """The ``--json`` form (``schedule --list``)."""
        return {
            "profile": self.profile,
            "timer": str(self.path),
            "on_calendar": list(self.on_calendar),
            "randomized_delay": self.randomized_delay,
            "persistent": self.persistent,
            "profile_path": self.profile_path,
            "service": self.path.with_suffix(".service").exists(),
        }


def _read_timer(path: Path) -> Timer:
    section, keys, profile_path = "", [], None
    for raw in path.read_text(errors="replace").splitlines():
        line = raw.strip()
        if line.startswith(MARK) and ": " in line:
            profile_path = line.split(": ", 1)[1]
        elif line.startswith("["):
            section = line
        elif section == "[Timer]" and "=" in line and not line.startswith(("#", ";")):
            key, value = (x.strip() for x in line.split("=", 1))
            keys.append((key, value))
    last = {k: v for k, v in keys}
    return Timer(
        path,
        tuple(v for k, v in keys if k == "OnCalendar" and v),
        last.get("RandomizedDelaySec"),
        last.get("Persistent", "").lower() in ("1", "yes", "true", "on"),
        profile_path,
    )


def list_timers(unit_dir: Path) -> list[Timer]:
    """Every ``freezeframe-*.timer`` in ``unit_dir``, by name."""
    if not unit_dir.is_dir():
        return []
    return [_read_timer(p) for p in sorted(unit_dir.glob("freezeframe-*.timer")) if p.is_file()]


# -- cron ---------------------------------------------------------------------------------

_KEYWORDS = {
    "minutely": "* * * * *",
    "hourly": "0 * * * *",
    "daily": "0 0 * * *",
    "weekly": "0 0 * * 1",  # systemd's weeks begin on Monday
    "monthly": "0 0 1 * *",
    "yearly": "0 0 1 1 *",
    "annually": "0 0 1 1 *",
}
_SIMPLE = re.compile(
    r"^(?:(?P<days>[A-Za-z.,]+)\s+)?(?:\*-\*-\*\s+)?"
    r"(?P<hour>\*|\d{1,2}):(?P<minute>\d{1,2})(?::(?P<second>\d{1,2}))?$"
)
#: Weekdays as systemd spells them, as cron numbers them (Sunday 0).
_DAYS = {
    name: i
    for i, day in enumerate(("sunday", "monday", "tuesday", "wednesday", "thursday", "friday"))
    for name in (day, day[:3])
} | {"saturday": 6, "sat": 6}


def _day(name: str) -> int:
    return _DAYS[name.lower()]  # KeyError: not a weekday


def _weekdays(spec: str) -> str:
    """``Mon..Fri,Sun`` as cron's ``0,1,2,3,4,5``; a range across the week's end (it ends
    on Sunday) raises ``ValueError``."""
    days: set[int] = set()
    for part in spec.split(","):
        first, dots, last = part.partition("..")
        a = _day(first)
        b = _day(last) if dots else a
        if b == 0 and a > 0:
            b = 7  # Sunday closes a week that begins on Monday
        if b < a:
            raise ValueError(part)
        days.update(d % 7 for d in range(a, b + 1))
    return ",".join(map(str, sorted(days)))


def cron_line(on_calendar: str, command: Sequence[str]) -> str:
    """The crontab line (five fields and the command) that runs ``command`` when
    ``on_calendar`` says, for the simple calendars cron can say: ``minutely``, ``hourly``,
    ``daily``, ``weekly``, ``monthly``, ``yearly``, and ``[WEEKDAYS] [*-*-*] HH:MM[:00]``
    (``HH`` may be ``*``). Any other is refused in one line (exit code 2)."""
    spec = " ".join(on_calendar.split())
    fields = _KEYWORDS.get(spec.lower())
    if fields is None and (m := _SIMPLE.match(spec)):
        hour, minute, second = m["hour"], int(m["minute"]), int(m["second"] or 0)
        try:
            dow = _weekdays(m["days"]) if m["days"] else "*"
        except (KeyError, ValueError):
            dow = None
        if dow is not None and second == 0 and minute < 60 and (hour == "*" or int(hour) < 24):
            fields = f"{minute} {hour if hour == '*' else int(hour)} * * {dow}"
    if fields is None:
        raise UsageError(
            f"--on-calendar {on_calendar!r} has no crontab form: --cron takes minutely, hourly, "
            "daily, weekly, monthly, yearly or [WEEKDAYS] HH:MM"
        )
    # cron hands the line to /bin/sh, and reads % as a newline unless escaped
    line = " ".join(shlex.quote(_plain(a, "argument")) for a in command).replace("%", "\\%")
    return f"{fields} {line} >/dev/null"
