"""Values a profile gives in units: durations (``"10s"``), sizes (``"64MiB"``), and how
any value is shown in a one-line message; the largest integer a field takes."""

from __future__ import annotations

import math
import re
from typing import Final

__all__ = [
    "INT_MAX",
    "LONGEST_DURATION",
    "brief",
    "format_duration",
    "format_size",
    "parse_duration",
    "parse_size",
]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
LONGEST_DURATION = 365 * 86400.0
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]iB|[kKMGT]B|B)?\s*$")
_UNIT_BYTES: dict[str | None, int] = {
    None: 1,
    "B": 1,
    **{f"{u}iB": 1024 ** (i + 1) for i, u in enumerate("KMGT")},
    **{f"{u}B": 1000 ** (i + 1) for i, u in enumerate("KMGT")},
    "kB": 1000,
}
#: The largest integer any field takes: TOML's own limit (a signed 64-bit integer), which
#: Python's reader does not enforce (``0x`` followed by a thousand ``f`` parses).
INT_MAX: Final = 2**63 - 1


def _days(seconds: float) -> str:
    if seconds >= 86400 and seconds % 86400 == 0:
        n = seconds / 86400
        return f"{n:g} day" + ("s" if n != 1 else "")
    return f"{seconds:g}s"


def brief(value: object) -> str:
    """``value`` for a one-line message: cut short, and never an integer of thousands of
    digits (whose ``repr`` raises ``ValueError`` past 4300 of them)."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > INT_MAX:
        return "a number of more than 19 digits"
    try:
        text = repr(value)
    except (ValueError, RecursionError):
        return f"a {type(value).__name__} too large to show"
    return text if len(text) <= 80 else text[:77] + "..."


def parse_duration(value: object, *, maximum: float = LONGEST_DURATION) -> float:
    """Seconds from ``"250ms"``, ``"10s"``, ``"2m"``, ``"1h"``, ``"1d"`` or a number of seconds,
    at most ``maximum`` seconds (a year unless the field knows better)."""
    if isinstance(value, bool):
        raise ValueError('expected a duration such as "10s"')
    if isinstance(value, int) and abs(value) > INT_MAX:  # float() of it raises OverflowError
        seconds = math.inf if value > 0 else -1.0
    elif isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
    else:
        raise ValueError(f'expected a duration such as "10s" or "500ms", got {brief(value)}')
    if seconds <= 0 or (not math.isfinite(seconds) and not isinstance(value, int)):
        raise ValueError("a duration must be a finite number greater than zero")
    if seconds > maximum:
        raise ValueError(f"a duration must be at most {_days(maximum)}")
    return seconds


def parse_size(value: object) -> int:
    """Bytes from an integer or ``"64MiB"``, ``"1.5GiB"``, ``"500MB"`` (``KiB``... ``TiB``
    are powers of 1024, ``kB``... ``TB`` of 1000, ``B`` or no unit bytes); at least 0."""
    if isinstance(value, bool):
        raise ValueError('expected a size such as "64MiB"')
    if isinstance(value, int):
        size = value
    elif isinstance(value, str) and (m := _SIZE.match(value)):
        size = int(float(m.group(1)) * _UNIT_BYTES[m.group(2)])
    else:
        raise ValueError(
            'expected a size: bytes as an integer, or such as "64MiB" or "1GiB", '
            f"got {brief(value)}"
        )
    if not 0 <= size <= INT_MAX:
        raise ValueError(f"a size must be from 0 to {INT_MAX} bytes, got {brief(value)}")
    return size


def format_size(size: int) -> str:
    """``size`` bytes in the largest binary unit that leaves at least 1: ``"1.0 GiB"``."""
    value, unit = float(size), "B"
    for u in ("KiB", "MiB", "GiB", "TiB"):
        if value < 1024:
            break
        value, unit = value / 1024, u
    return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"


def format_duration(seconds: float) -> str:
    """``seconds`` in words, to the two largest units: ``"42 s"``, ``"12 min"``,
    ``"3 h 12 min"``, ``"2 d 4 h"`` (cut down, never up: 59.9 s is ``"59 s"``)."""
    whole = max(0, int(seconds))
    if whole < 60:
        return f"{whole} s"
    minutes = whole // 60
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"
