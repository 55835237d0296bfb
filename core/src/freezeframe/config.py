"""Reading one TOML table of a profile: typed getters that name the field on error.

Every component receives its own table as a :class:`Table` and reads its fields
through it; the core then reports any field nobody read as unknown. Secret
handling lives here once, for every package; durations and sizes are parsed by
:mod:`freezeframe.units` (re-exported here).
"""

from __future__ import annotations

import json
import os
import shlex
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, TypeVar, overload

from freezeframe.errors import ConfigError
from freezeframe.units import (
    INT_MAX,
    LONGEST_DURATION,
    brief,
    format_size,
    parse_duration,
    parse_size,
)

__all__ = [
    "INT_MAX",
    "SECRET_ENV_NAMES",
    "SECRET_FILE_LIMIT",
    "Secret",
    "Table",
    "brief",
    "format_size",
    "parse_duration",
    "parse_size",
    "read_regular_file",
]

#: Environment variables that hold a secret a profile named (``password_env``). Tools
#: started with :func:`freezeframe.tools.run_tool` do not inherit them unless handed one.
SECRET_ENV_NAMES: set[str] = set()

_REQUIRED: Final = object()
#: The type of a getter's ``default``: ``get_str("x", None)`` is ``str | None``.
_D = TypeVar("_D")
#: The largest ``*_file`` secret read; a password or key is far smaller.
SECRET_FILE_LIMIT: Final = 64 * 1024


def read_regular_file(path: Path, limit: int) -> tuple[bytes, os.stat_result]:
    """The bytes of ``path`` and its status, if it is a regular file of at most ``limit`` bytes.

    Symlinks are followed. Opened without blocking (a FIFO would wait for a writer
    forever) and checked on the open descriptor, so what is read is what was checked;
    at most ``limit + 1`` bytes are read, so a file that grows meanwhile is still
    refused and ``/dev/zero`` never fills memory. Raises :class:`OSError` when it cannot
    be opened or read, :class:`ValueError` saying what is wrong with it otherwise.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"is {_file_type(st.st_mode)}, not a regular file")
        chunks: list[bytes] = []
        left = limit + 1
        while left > 0 and (chunk := os.read(fd, min(left, 1 << 20))):
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
    finally:
        os.close(fd)
    if st.st_size > limit or len(data) > limit:
        raise ValueError(f"is larger than {_bytes(limit)}")
    return data, st


def _file_type(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a file"


def _bytes(n: int) -> str:
    return f"{n >> 20} MiB" if n >= 1 << 20 and n % (1 << 20) == 0 else f"{n >> 10} KiB"


class Secret:
    """A password read from an environment variable or a file; never printed.

    ``str()`` and ``repr()`` show where it came from, not the value: hand
    :meth:`reveal` only to the place that needs it (an environment variable of
    a child process, a driver's connect call), never to argv, logs or the catalog.
    """

    __slots__ = ("_value", "file", "source")

    def __init__(self, value: str, source: str, file: Path | None = None) -> None:
        self._value = value
        self.source = source
        #: The file it was read from (a tool that reads a password file can be pointed
        #: there instead of being handed the value), or ``None``.
        self.file = file

    def reveal(self) -> str:
        """The secret itself."""
        return self._value

    def __repr__(self) -> str:
        return f"Secret({self.source})"

    __str__ = __repr__


def _splits(text: str) -> bool:
    try:
        return bool(shlex.split(text))
    except ValueError:  # an unclosed quote
        return False


class Table:
    """One profile table handed to a component; getters raise :class:`ConfigError` naming the field.

    Relative paths are resolved against ``base_dir`` (the profile's folder).
    """

    def __init__(self, data: Mapping[str, Any], *, base_dir: Path) -> None:
        self._data = dict(data)
        self._read: set[str] = set()
        self.base_dir = base_dir

    # -- bookkeeping -------------------------------------------------------
    def unread(self) -> list[str]:
        """Fields present in the table that no getter asked for."""
        return sorted(k for k in self._data if k not in self._read)

    def asked(self) -> list[str]:
        """Fields a getter asked for, present in the table or not: what the component reads
        (the candidates of a "did you mean" for a field nobody read)."""
        return sorted(self._read)

    def __contains__(self, key: str) -> bool:
        return key in self._data

    def _get(self, key: str, default: object) -> object:
        self._read.add(key)
        if key in self._data:
            return self._data[key]
        if default is _REQUIRED:
            raise ConfigError(key, "missing (required)")
        return default

    @staticmethod
    def _kind(value: object) -> str:
        return {
            bool: "a boolean",
            int: "an integer",
            float: "a number",
            str: "a string",
            list: "a list",
            dict: "a table",
        }.get(type(value), type(value).__name__)

    # -- getters -----------------------------------------------------------
    @overload
    def get_str(self, key: str) -> str: ...
    @overload
    def get_str(self, key: str, default: _D) -> str | _D: ...
    def get_str(self, key: str, default: Any = _REQUIRED) -> Any:
        """A non-empty string (or ``default`` when the field is absent)."""
        value = self._get(key, default)
        if value is default and default is not _REQUIRED:
            return value
        if not isinstance(value, str):
            raise ConfigError(key, f"expected a string, got {self._kind(value)}")
        if not value.strip():
            raise ConfigError(key, "must not be empty")
        return value

    def get_choice(self, key: str, choices: tuple[str, ...], default: str) -> str:
        """One of ``choices``."""
        value = self.get_str(key, default)
        if value not in choices:
            raise ConfigError(
                key, f"expected one of {', '.join(map(repr, choices))}, got {brief(value)}"
            )
        return value

    @overload
    def get_int(self, key: str, *, minimum: int | None = None, maximum: int = INT_MAX) -> int: ...
    @overload
    def get_int(
        self, key: str, default: _D, *, minimum: int | None = None, maximum: int = INT_MAX
    ) -> int | _D: ...
    def get_int(
        self,
        key: str,
        default: Any = _REQUIRED,
        *,
        minimum: int | None = None,
        maximum: int = INT_MAX,
    ) -> Any:
        """An integer, at least ``minimum`` when given and at most ``maximum``.

        Give every field the ``maximum`` it can really use: a value that passes
        ``check`` must not fail every run (zstd's ``threads = 10**18``).
        """
        value = self._get(key, default)
        if value is default and default is not _REQUIRED:
            return value
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, f"expected an integer, got {self._kind(value)}")
        if minimum is not None and value < minimum:
            raise ConfigError(key, f"must be at least {minimum}, got {brief(value)}")
        if value > maximum:
            raise ConfigError(key, f"must be at most {maximum}, got {brief(value)}")
        return value

    def get_bool(self, key: str, default: bool) -> bool:
        """``true`` or ``false``."""
        value = self._get(key, default)
        if not isinstance(value, bool):
            raise ConfigError(key, f"expected true or false, got {self._kind(value)}")
        return value

    @overload
    def get_duration(self, key: str, *, maximum: float = LONGEST_DURATION) -> float: ...
    @overload
    def get_duration(
        self, key: str, default: _D, *, maximum: float = LONGEST_DURATION
    ) -> float | _D: ...
    def get_duration(
        self, key: str, default: Any = _REQUIRED, *, maximum: float = LONGEST_DURATION
    ) -> Any:
        """Seconds, from ``"10s"``/``"500ms"``/``"2m"`` or a number of seconds; at most
        ``maximum`` (a year unless the field knows better)."""
        value = self._get(key, default)
        if value is default and default is not _REQUIRED:
            return value
        try:
            return parse_duration(value, maximum=maximum)
        except ValueError as e:
            raise ConfigError(key, str(e)) from None

    def get_size(self, key: str, default: int) -> int:
        """Bytes, from an integer or ``"64MiB"``/``"1GiB"`` (:func:`parse_size`)."""
        value = self._get(key, default)
        try:
            return parse_size(value)
        except ValueError as e:
            raise ConfigError(key, str(e)) from None

    @overload
    def get_path(self, key: str, *, must_exist: bool = False) -> Path: ...
    @overload
    def get_path(self, key: str, default: _D, *, must_exist: bool = False) -> Path | _D: ...
    def get_path(self, key: str, default: Any = _REQUIRED, *, must_exist: bool = False) -> Any:
        """An absolute path; relative ones are taken from the profile's folder; ``~`` expands."""
        value = self._get(key, default)
        if value is default and default is not _REQUIRED:
            return value
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(key, f"expected a path, got {self._kind(value)}")
        path = self._absolute(value)
        if must_exist and not path.exists():
            raise ConfigError(key, f"{path} does not exist")
        return path

    def get_paths(self, key: str, *, must_exist: bool = False) -> list[Path]:
        """A list of paths (empty when absent)."""
        value = self._get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise ConfigError(key, "expected a list of paths")
        paths = [self._absolute(v) for v in value]
        for p in paths:
            if must_exist and not p.exists():
                raise ConfigError(key, f"{p} does not exist")
        return paths

    def get_str_list(self, key: str) -> list[str]:
        """A list of non-empty strings (empty when absent)."""
        value = self._get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise ConfigError(key, "expected a list of strings")
        return list(value)

    @overload
    def get_argv(self, key: str) -> list[str]: ...
    @overload
    def get_argv(self, key: str, default: _D) -> list[str] | _D: ...
    def get_argv(self, key: str, default: Any = _REQUIRED) -> Any:
        """A command to run without a shell: a non-empty list of strings (or ``default``)."""
        value = self._get(key, default)
        if value is default and default is not _REQUIRED:
            return value
        if isinstance(value, str):
            example = json.dumps(shlex.split(value)) if _splits(value) else '["program", "arg"]'
            raise ConfigError(key, f"expected a list of strings (argv, no shell), e.g. {example}")
        if not value or not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(key, "expected a non-empty list of strings (argv, no shell)")
        if not value[0].strip():
            raise ConfigError(key, "the program (first item) must not be empty")
        return list(value)

    def get_any(self, key: str) -> Any:
        """The value as the TOML file gives it (``None`` when absent): for a field whose
        caller checks its type itself."""
        return self._get(key, None)

    def get_table(self, key: str) -> dict[str, Any] | None:
        """A sub-table as a dict, or ``None`` when absent."""
        value = self._get(key, None)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise ConfigError(key, f"expected a table, got {self._kind(value)}")
        return dict(value)

    def get_secret(self, prefix: str = "password") -> Secret | None:
        """The secret named by ``<prefix>_env`` or ``<prefix>_file`` (at most one), or ``None``.

        A file must be a regular file of at most :data:`SECRET_FILE_LIMIT` bytes
        that neither group nor others may read, as libpq demands of ``.pgpass``;
        its trailing newline is dropped.
        """
        env_key, file_key = f"{prefix}_env", f"{prefix}_file"
        env_name = self.get_str(env_key, None)
        file_path = self.get_path(file_key, None)
        if env_name is not None and file_path is not None:
            raise ConfigError(env_key, f'give either "{env_key}" or "{file_key}", not both')
        if env_name is not None:
            if env_name not in os.environ:
                raise ConfigError(env_key, f"environment variable {env_name} is not set")
            if not os.environ[env_name]:
                raise ConfigError(env_key, f"environment variable {env_name} is empty")
            SECRET_ENV_NAMES.add(env_name)
            return Secret(os.environ[env_name], f"${env_name}")
        if file_path is not None:
            try:
                data, st = read_regular_file(file_path, SECRET_FILE_LIMIT)
            except OSError as e:
                raise ConfigError(file_key, f"cannot read {file_path}: {e.strerror}") from None
            except ValueError as e:
                raise ConfigError(file_key, f"{file_path} {e}") from None
            if st.st_mode & 0o077:
                raise ConfigError(
                    file_key,
                    f"{file_path} is open to group or others "
                    f"(mode {stat.filemode(st.st_mode)}); chmod 600 it",
                )
            try:
                value = data.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError:
                raise ConfigError(file_key, f"{file_path} is not UTF-8 text") from None
            if not value:
                raise ConfigError(file_key, f"{file_path} is empty")
            return Secret(value, str(file_path), file=file_path)
        return None

    def _absolute(self, value: str) -> Path:
        path = Path(value).expanduser()
        return path if path.is_absolute() else (self.base_dir / path).resolve()
