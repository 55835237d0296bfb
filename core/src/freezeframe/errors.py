"""Exceptions a user can cause, each carrying what to name in a one-line message.

The CLI turns every :class:`FreezeframeError` into one line on stderr and an
exit code; anything else is our bug and shows a traceback only with ``--debug``.
"""

from __future__ import annotations

import errno
from collections.abc import Sequence

__all__ = [
    "BusyError",
    "Cancelled",
    "CompletionError",
    "ConfigError",
    "FreezeframeError",
    "Interrupted",
    "PluginError",
    "ProfileError",
    "QuiesceError",
    "StageError",
    "UsageError",
    "lines_of",
    "one_line",
    "user_error",
]


class FreezeframeError(Exception):
    """Base of every error a user can cause or fix; ``exit_code`` is what the CLI returns."""

    exit_code = 1


class ConfigError(FreezeframeError):
    """A component's table has a bad field; raised by constructors and :class:`Table`."""

    exit_code = 2

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f'field "{field}": {message}')
        self.field = field
        self.message = message


class ProfileError(FreezeframeError):
    """The profile cannot be used; ``problems`` holds every problem found, one line each."""

    exit_code = 2

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = list(problems)


class PluginError(FreezeframeError):
    """A plug-in or backend could not be loaded, registered or used."""

    exit_code = 2


class UsageError(FreezeframeError):
    """The command asks what cannot be (an application the run does not have, a relative
    path where an absolute one is meant)."""

    exit_code = 2


class QuiesceError(FreezeframeError):
    """An application could not be quiesced or unquiesced."""


class CompletionError(FreezeframeError):
    """An application could not complete (or release) what its capture fixed in the window."""


class StageError(FreezeframeError):
    """A backup stage failed; the message names the stage."""


class BusyError(FreezeframeError):
    """Another run holds the profile's lock."""

    exit_code = 3


class Cancelled(FreezeframeError):
    """The run was cancelled (deadline, signal); long work raises it from ``context.check()``."""


class Interrupted(FreezeframeError):
    """A signal (SIGINT, SIGTERM) asked freezeframe to stop."""

    def __init__(self, signum: int, name: str) -> None:
        super().__init__(f"interrupted by {name}")
        self.signum = signum
        self.exit_code = 128 + signum


def one_line(e: BaseException) -> str:
    """``e`` as one line for a log, a record or stderr: its text, prefixed with its type
    unless it is a :class:`FreezeframeError` (whose text is written for the user)."""
    text = str(e).strip().replace("\n", "; ") or type(e).__name__
    return text if isinstance(e, FreezeframeError) else f"{type(e).__name__}: {text}"


#: errnos that say something of the machine (its disk, its limits), not of our code,
#: even when the call that met them named no file (a write to an open descriptor).
_THE_MACHINES = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.EMFILE, errno.ENFILE, errno.ENOMEM}
)


def user_error(e: FreezeframeError | OSError) -> FreezeframeError | None:
    """``e`` as an error the user can fix: itself, or an ``OSError`` of a file or of the
    disk (read-only, full) as one line naming the file; ``None`` for an ``OSError`` that
    names no file and says nothing of the machine: our bug."""
    if isinstance(e, FreezeframeError):
        return e
    if e.filename is None and e.errno not in _THE_MACHINES:
        return None
    where = f"{e.filename}: " if e.filename is not None else ""
    return FreezeframeError(f"{where}{e.strerror or e}")


def lines_of(e: FreezeframeError) -> list[str]:
    """The lines that say what is wrong: every problem of a profile, or the one message."""
    return e.problems if isinstance(e, ProfileError) else [str(e)]
