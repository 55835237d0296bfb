"""Where profiles are found when a command names none: ``/etc/freezeframe/*.toml`` (for
root) and ``*.toml`` in the user's configuration folder (``$XDG_CONFIG_HOME/freezeframe``,
by default ``~/.config/freezeframe``). ``status`` with no PROFILE reads them;
``backup --all`` runs them."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["SYSTEM_DIR", "config_home", "default_profiles", "profile_dirs", "user_dir"]

#: The system's profiles, root's to run (their state folders and catalogs are private).
SYSTEM_DIR = Path("/etc/freezeframe")


def config_home() -> Path:
    """``$XDG_CONFIG_HOME``, or ``~/.config`` when that variable is unset or not absolute
    (as the XDG base directory specification says)."""
    base = os.environ.get("XDG_CONFIG_HOME", "")
    return Path(base) if os.path.isabs(base) else Path.home() / ".config"


def user_dir() -> Path:
    """The user's own profiles: ``$XDG_CONFIG_HOME/freezeframe``, by default
    ``~/.config/freezeframe``."""
    return config_home() / "freezeframe"


def profile_dirs() -> tuple[Path, ...]:
    """The folders searched, in order: :data:`SYSTEM_DIR` when running as root, then
    :func:`user_dir` (once, should the two be one)."""
    dirs = [SYSTEM_DIR] if os.geteuid() == 0 else []
    if user_dir() not in dirs:
        dirs.append(user_dir())
    return tuple(dirs)


def default_profiles(dirs: tuple[Path, ...] | None = None) -> list[Path]:
    """Every profile in ``dirs`` (by default :func:`profile_dirs`): the files named
    ``*.toml`` directly in each folder, not hidden (``.name.toml``: an editor's), by name,
    folder after folder; the same file reached twice is listed once. A folder that does
    not exist holds none; one that cannot be read raises ``OSError`` naming it."""
    found: list[Path] = []
    seen: set[Path] = set()
    for folder in profile_dirs() if dirs is None else dirs:
        try:
            names = sorted(os.listdir(folder))
        except FileNotFoundError:
            continue
        except OSError as e:
            raise OSError(e.errno, e.strerror, str(folder)) from None
        for name in names:
            path = folder / name
            if name.startswith(".") or not name.endswith(".toml") or not path.is_file():
                continue
            if (real := path.resolve()) not in seen:
                seen.add(real)
                found.append(path)
    return found
