"""What a backend that drives a repository tool (restic, borg) needs once: where the
repository is, the password that opens it, the tool's version, and how ssh reaches a
remote repository; a password in a repository's URL is hidden from every message.

The tool-specific parts stay in each backend: which addresses are remote, the
environment variables the tool reads, the versions it supports, how it reports errors.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from freezeframe.config import Secret, Table
from freezeframe.errors import ConfigError, FreezeframeError
from freezeframe.tools import ToolError, run_tool

__all__ = [
    "Repository",
    "dotted",
    "hide_credentials",
    "parse_version",
    "read_password",
    "read_repository",
    "ssh_address",
    "ssh_argv",
    "ssh_trouble",
    "tool_version",
]

#: A password in a URL's authority (``rest:https://user:PW@host/``), up to its last "@".
_CREDENTIALS = re.compile(r"(://[^/@:]*:)[^/]*@")
#: For the quick commands run here (``restic version``, ssh on its own).
_TIMEOUT = 300.0
_INLINE = (
    ": put the whole repository in a file named by repository_file (mode 0600) or in a "
    "variable named by repository_env"
)


def hide_credentials(text: str) -> str:
    """``text`` (an address, or a tool's message that repeats it) with any password in a
    URL shown as ``***`` (``rest:https://u:***@host/``)."""
    return _CREDENTIALS.sub(r"\1***@", text)


@dataclass(frozen=True)
class Repository:
    """Where a backend's repository is, as its table names it."""

    #: What the tool is given: a remote address, or the local folder's absolute path.
    location: str
    #: The local folder (resolved from the profile's folder), or ``None`` for a remote one.
    local: Path | None
    #: The secret the location came from (``repository_env``/``repository_file``), if any.
    secret: Secret | None = None

    @property
    def shown(self) -> str:
        """The location for messages, the catalog and ``describe()``: credentials hidden."""
        return hide_credentials(self.location)

    @property
    def file(self) -> Path | None:
        """The ``repository_file`` a remote location was read from: a tool that reads such
        a file itself is pointed there rather than handed the address. ``None`` for a
        local repository (resolved here, from the profile's folder)."""
        if self.secret is None or self.local is not None:
            return None
        return self.secret.file


def _located(raw: str, base_dir: Path, remote: Callable[[str], bool]) -> tuple[str, Path | None]:
    """The location and local folder of address ``raw``: a remote one as given, a local one
    (``local:`` prefix optional, ``~`` expanded) absolute, relative to ``base_dir``."""
    if remote(raw):
        return raw, None
    path = Path(raw.removeprefix("local:")).expanduser()
    local = path if path.is_absolute() else (base_dir / path).resolve()
    return str(local), local


def read_repository(
    table: Table,
    *,
    remote: Callable[[str], bool],
    from_secret: bool = False,
    advice: str = _INLINE,
) -> Repository:
    """The ``repository`` of ``table``; with ``from_secret``, it may come from
    ``repository_env``/``repository_file`` instead (one of the two ways, required).

    ``remote`` tells the tool's remote addresses from local paths. A password written
    into ``repository`` itself is refused (``advice`` says what to do instead: by
    default, the secret fields), since secrets never sit in a profile.
    """
    secret = None
    if not from_secret:
        raw: str = table.get_str("repository")
    else:
        given: str | None = table.get_str("repository", None)
        secret = table.get_secret("repository")
        field = "repository_env" if "repository_env" in table else "repository_file"
        if given is not None and secret is not None:
            raise ConfigError(field, 'give either "repository" or this, not both')
        if given is None:
            if secret is None:
                raise ConfigError(
                    "repository", 'missing (required; or "repository_env"/"repository_file")'
                )
            given = secret.reveal().strip()
            if not given:
                raise ConfigError(field, f"the repository from {secret.source} is empty")
        raw = given
    if secret is None and _CREDENTIALS.search(raw):
        raise ConfigError(
            "repository", f"holds a password, and secrets never sit in a profile{advice}"
        )
    location, local = _located(raw, table.base_dir, remote)
    return Repository(location, local, secret)


def read_password(table: Table, *, why: str, word: str = "password") -> Secret:
    """The repository's password (``password_env``/``password_file``), required and not
    empty; ``why`` says why it is required (``"restic encrypts"``), ``word`` what the
    tool calls it."""
    secret = table.get_secret("password")
    if secret is None:
        raise ConfigError(
            "password_env", f'missing: give "password_env" or "password_file" ({why})'
        )
    if not secret.reveal():
        raise ConfigError("password_env", f"the {word} from {secret.source} is empty")
    return secret


def parse_version(tool: str, output: str) -> tuple[int, int, int]:
    """The version ``<tool> X.Y.Z`` in a tool's ``output``."""
    m = re.search(rf"{re.escape(tool)} (\d+)\.(\d+)\.(\d+)", output)
    if not m:
        raise FreezeframeError(f"cannot tell {tool}'s version from {output.strip()[:80]!r}")
    major, minor, patch = map(int, m.groups())
    return major, minor, patch


@functools.cache
def tool_version(tool: str, *argv: str) -> tuple[int, int, int]:
    """The version the command ``argv`` (``restic version``) prints, found as
    ``<tool> X.Y.Z``; run once per process, as starting a tool can take a good part of
    a second."""
    return parse_version(tool, run_tool(list(argv), timeout=_TIMEOUT).stdout)


def dotted(version: Sequence[int]) -> str:
    """``(0, 14, 2)`` as ``"0.14.2"``."""
    return ".".join(map(str, version))


def ssh_address(
    location: str, scheme: str, prefix: str = ""
) -> tuple[str | None, str | None, int | None]:
    """The user, host and port ssh logs in to for ``location``: a URL
    ``<scheme>://[user@]host[:port]/path``, or scp-like ``<prefix>[user@]host:path``
    (``sftp:`` for restic, none for borg). A part not given is ``None`` or empty."""
    if location.startswith(f"{scheme}://"):
        url = urlsplit(location)
        return url.username, url.hostname, url.port
    user, _, host = location.removeprefix(prefix).split(":", 1)[0].rpartition("@")
    return user, host, None


def ssh_argv(
    ssh: Sequence[str], user: str | None = None, host: str | None = None, port: int | None = None
) -> list[str]:
    """The ssh command (``ssh_command``) in batch mode, to ``host`` when given: it never
    asks for a password or a host key on a terminal, it fails instead."""
    argv = [*ssh, "-o", "BatchMode=yes"]
    if port:
        argv += ["-p", str(port)]
    if user:
        argv += ["-l", user]
    return [*argv, host] if host is not None else argv


def ssh_trouble(argv: Sequence[str], fallback: str) -> str:
    """What ssh says when the command ``argv`` runs it by itself (a tool may exit before
    it passes ssh's complaint on): its last line on stderr, or ``fallback`` if it works."""
    try:
        run_tool(list(argv), timeout=_TIMEOUT)
    except ToolError as e:
        lines = [line.strip() for line in e.stderr.splitlines() if line.strip()]
        return lines[-1] if lines else str(e)
    return fallback
