"""freezeframe copy backend ``restic``: one restic snapshot per run, deduplicated and encrypted.

The real ``restic`` binary does the work. Each run becomes one snapshot of
the source stage's view, tagged ``freezeframe``, ``profile:<name>``,
``stage:<name>`` and ``run:<run id>``, recording every file under its
*original* absolute path (see :func:`freezeframe.plugin.laid_out`), so
``restic restore <id> --target /`` alone puts every file back where it was.

The password is read once by the core (``password_env`` / ``password_file``)
and reaches restic only in its environment (``RESTIC_PASSWORD``); never
argv, logs, the catalog or an error message.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from freezeframe.plugin import (
    Artifact,
    Backend,
    ConfigError,
    FreezeframeError,
    RestoreOptions,
    Role,
    Secret,
    StageContext,
    Table,
    ToolError,
    dotted,
    find_tool,
    hide_credentials,
    hookimpl,
    laid_out,
    read_password,
    read_repository,
    run_tool,
    ssh_address,
    ssh_argv,
    ssh_trouble,
    strip_special,
    tool_version,
    under,
)

__all__ = ["ResticBackend"]

log = logging.getLogger(__name__)

#: The oldest restic whose JSON output and repository format this backend was written for.
MIN_VERSION = (0, 14)
#: For quick commands (version, listing snapshots, opening the repository).
SHORT_TIMEOUT = 300.0
_VERIFY_DATA = re.compile(r"^(all|none|\d+(\.\d+)?%|\d+/\d+|\d+[kKmMgGtT]?)$")
_REMOTE = re.compile(r"^(sftp|rest|s3|b2|azure|gs|swift|rclone):")


class _Stall:
    """restic's JSON status lines, watched: a backup whose counts have not moved for
    ``seconds`` has stalled (restic 0.14 can deadlock after a failed write). Each is the
    stage's progress too (bytes and files done, and the total restic's scan found)."""

    def __init__(self, seconds: float, context: StageContext | None = None) -> None:
        self.seconds = seconds
        self.context = context
        self.last = time.monotonic()
        self.counts: tuple[object, ...] = ()

    def line(self, text: str) -> None:
        try:
            msg = json.loads(text)
        except ValueError:
            return
        if isinstance(msg, dict) and msg.get("message_type") == "status":
            counts = tuple(msg.get(k) for k in ("bytes_done", "files_done", "seconds_remaining"))
            if counts != self.counts:
                self.counts, self.last = counts, time.monotonic()
            if self.context is not None:
                total = msg.get("total_bytes")
                self.context.progress_to(
                    bytes=int(msg.get("bytes_done") or 0),
                    files=int(msg.get("files_done") or 0),
                    total=int(total) if isinstance(total, int) else None,
                )

    def check(self) -> str | None:
        if time.monotonic() - self.last < self.seconds:
            return None
        return f"no progress for {self.seconds:g}s (restic stalled; is the repository failing?)"


#: How long a local repository's filesystem may stay full before restic is stopped.
FULL_DISK_GRACE = 5.0
#: What restic retries for many minutes (its backend retries), though it will not pass.
_FATAL = ("no space left on device", "disk quota exceeded")


def _why(e: ToolError) -> str:
    """One line from what restic said on stderr: ssh's complaint, the first error, the fatal one.

    restic repeats the repository in some errors (``create repository at … failed``):
    a password in it is hidden.
    """
    lines = [hide_credentials(line.strip()) for line in e.stderr.splitlines() if line.strip()]
    ssh = [line for line in lines if line.startswith("subprocess ssh:")]
    fatal = next((i for i, line in enumerate(lines) if line.startswith("Fatal:")), None)
    parts = []
    if ssh:
        parts.append(ssh[-1].removeprefix("subprocess ssh:").strip())
    if fatal is not None:
        before = [line for line in lines[:fatal] if not line.startswith("subprocess ssh:")]
        if before:
            parts.append(before[0])
        parts.append(lines[fatal].removeprefix("Fatal:").strip())
    elif lines:
        parts.append(lines[-1])
    else:
        parts.append(str(e))
    return "; ".join(p[:300] for p in parts)


def _missing(e: ToolError) -> bool:
    """Whether restic failed to open the repository because there is none: restic 0.17+
    exits 10; older ones ask "Is there a repository at the following location?"."""
    return e.returncode == 10 or "Is there a repository at the following location?" in e.stderr


def _pattern(path: Path) -> str:
    """An ``--include`` pattern that matches ``path`` (and so all below it) and nothing else:
    restic reads ``*``, ``?``, ``[`` and ``\\`` as a glob's unless escaped."""
    return re.sub(r"([*?\[\\])", r"\\\1", str(path))


def _quote(arg: str) -> str:
    """``arg`` for restic's ``sftp.command`` splitter (quotes group words; no escapes)."""
    if not arg or any(c in arg for c in "\"'\\"):
        raise ConfigError("ssh_command", f"{arg!r}: restic cannot pass quotes or backslashes")
    return f'"{arg}"' if any(c.isspace() for c in arg) else arg


def _sftp_command(repository: str, ssh: Sequence[str]) -> list[str]:
    """The ``sftp.command`` restic runs for an ``sftp:`` repository: ssh, batch mode, host."""
    user, host, port = ssh_address(repository, "sftp", "sftp:")
    if not host:
        raise ConfigError(
            "repository", f"{hide_credentials(repository)}: no host in this sftp address"
        )
    return [*ssh_argv(ssh, user, host, port), "-s", "sftp"]


def _json_lines(text: str) -> list[dict[str, Any]]:
    """The JSON objects among restic's ``--json`` output lines."""
    out = []
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict):
                out.append(value)
    return out


def _version(restic: str) -> str:
    """restic's version (asked once per process), refused when older than :data:`MIN_VERSION`."""
    version = tool_version("restic", restic, "version")
    if version[:2] < MIN_VERSION:
        raise FreezeframeError(
            f"restic {dotted(version)} is too old: this backend needs "
            f"{dotted(MIN_VERSION)} or newer"
        )
    return dotted(version)


class ResticBackend(Backend):
    """Back up the source stage's view with restic; restore, verify and forget with it too."""

    kind = "restic"
    role = Role.COPY

    def __init__(self, name: str, table: Table) -> None:
        super().__init__(name, table)
        # The repository may be a secret itself (``repository_env``/``repository_file``):
        # a URL that holds the credentials of a REST server, say.
        self._repo = read_repository(
            table, remote=lambda raw: bool(_REMOTE.match(raw)), from_secret=True
        )
        self.repository: str = self._repo.location
        self.local: Path | None = self._repo.local
        self._secret: Secret = read_password(table, why="restic encrypts")
        self.init: bool = table.get_bool("init", False)
        self.ssh = table.get_argv("ssh_command", ["ssh"])
        #: For sftp: the ssh command restic runs (``sftp.command``).
        self.sftp_argv: list[str] = []
        if self.repository.startswith("sftp:"):
            self.sftp_argv = _sftp_command(self.repository, self.ssh)
            for arg in self.sftp_argv:
                _quote(arg)
        elif "ssh_command" in table:
            raise ConfigError("ssh_command", "only sftp: repositories are reached through ssh")
        self.verify_data = table.get_str("verify_data", "all")
        if not _VERIFY_DATA.match(self.verify_data):
            raise ConfigError(
                "verify_data",
                f'expected "all", "none", a percentage ("10%"), "n/t" or a size ("2G"), '
                f"got {self.verify_data!r}",
            )
        self.cache_dir = table.get_path("cache_dir", None)
        #: Longest a backup, restore, check or prune may run (None: no limit).
        self.timeout = table.get_duration("timeout", None)
        #: Longest a backup may go without progress before it is stopped.
        self.stall_timeout = table.get_duration("stall_timeout", 600.0)
        self._ready = False
        #: This stage's snapshots as :meth:`check` found them (the run's parent is among them).
        self._listed: list[dict[str, Any]] | None = None
        self.version = ""

    def __repr__(self) -> str:
        return f"ResticBackend({self.name!r}, {self._repo.shown!r})"

    # -- running restic ------------------------------------------------------------
    def _env(self) -> dict[str, str]:
        # restic reads the profile's password file itself; a password from the environment
        # goes in RESTIC_PASSWORD. The repository goes in the environment too, never argv,
        # where every user sees it (`ps`); a remote one from repository_file is read by
        # restic itself. Empty values switch off what the caller's environment might set.
        file, where = self._secret.file, self._repo.file
        return {
            "RESTIC_PASSWORD": "" if file else self._secret.reveal(),
            "RESTIC_PASSWORD_FILE": str(file) if file else "",
            "RESTIC_PASSWORD_COMMAND": "",
            "RESTIC_REPOSITORY": "" if where else self.repository,
            "RESTIC_REPOSITORY_FILE": str(where) if where else "",
        }

    def _argv(self, *args: str) -> list[str]:
        argv = [find_tool("restic")]
        if self.sftp_argv:
            command = " ".join(_quote(a) for a in self.sftp_argv)
            argv += ["--option", f"sftp.command={command}"]
        if self.cache_dir is not None:
            argv += ["--cache-dir", str(self.cache_dir)]
        return [*argv, *args]

    def _restic(
        self,
        what: str,
        argv: Sequence[str],
        *,
        timeout: float | None = SHORT_TIMEOUT,
        context: StageContext | None = None,
        cwd: Path | None = None,
        check: bool = True,
        stall: _Stall | None = None,
    ) -> subprocess.CompletedProcess[str]:
        full = self._full_disk_watch()

        def watch() -> str | None:
            return (full() if full else None) or (stall.check() if stall else None)

        try:
            return run_tool(
                argv,
                env=self._env(),
                timeout=timeout,
                context=context,
                cwd=cwd,
                check=check,
                fatal=_FATAL,
                watch=watch,
                on_stdout=stall.line if stall else None,
            )
        except ToolError as e:
            why = _why(e)
            if self.sftp_argv and "sftp session" in e.stderr and "subprocess ssh:" not in e.stderr:
                why = f"{self._ssh_trouble()}; {why}"
            raise ToolError(
                f"restic {what} ({self._repo.shown}): {why}",
                e.returncode,
                hide_credentials(e.stderr),
            ) from None

    def _full_disk_watch(self) -> Callable[[], str | None] | None:
        """For a local repository: a reason to stop restic once the repository's filesystem
        has had no free block for 5 s. restic can stall there for many minutes without a
        word (its backend retries the write that failed)."""
        if self.local is None:
            return None
        full_since: float | None = None

        def full() -> str | None:
            nonlocal full_since
            try:
                st = os.statvfs(self.local or "/")
            except OSError:
                return None
            if st.f_bfree * st.f_frsize >= 1 << 20:
                full_since = None
                return None
            full_since = full_since or time.monotonic()
            if time.monotonic() - full_since < FULL_DISK_GRACE:
                return None
            return f"no space left on device: {self.local} has been full for {FULL_DISK_GRACE:g}s"

        return full

    def _ssh_trouble(self) -> str:
        """What ssh says when it runs restic's sftp command by itself (restic may exit
        before it passes ssh's complaint on)."""
        return ssh_trouble(self.sftp_argv, "ssh connects, but no sftp session starts")

    def _snapshots(self, *tags: str, what: str = "snapshots") -> list[dict[str, Any]]:
        """The repository's snapshots (with every tag of ``tags``, when given), oldest first."""
        args = ["snapshots", "--json", "--no-lock"]
        if tags:
            args += ["--tag", ",".join(tags)]
        out = self._restic(what, self._argv(*args)).stdout
        try:
            found = json.loads(out or "[]")
        except ValueError:
            raise FreezeframeError(
                f"restic snapshots ({self._repo.shown}): output is not JSON"
            ) from None
        return list(found or [])

    def _exclusive(self, what: str, *args: str) -> None:
        """Run a command that locks the repository exclusively (forget, prune, check).

        A restic that was killed (a cancelled run) leaves its lock behind, and restic
        0.14 lets no exclusive lock be taken beside it: then ``restic unlock``, which
        removes only stale locks (of dead processes, or older than 30 minutes), and once more.
        """
        try:
            self._restic(what, self._argv(*args), timeout=self.timeout)
        except ToolError as e:
            if "already locked" not in e.stderr:
                raise
            self._restic("unlock", self._argv("unlock"))
            self._restic(what, self._argv(*args), timeout=self.timeout)

    # -- check ---------------------------------------------------------------------
    def check(self) -> None:
        """restic is recent enough; the repository opens with the password (or is created
        here when missing and ``init = true``)."""
        self.version = _version(find_tool("restic"))
        if self.sftp_argv:
            find_tool(self.ssh[0])
        self._open()

    def _open(self) -> None:
        """Open the repository: list this stage's snapshots (kept for :meth:`run` to find
        its parent in); create the repository if it is missing and ``init = true``."""
        if self._ready:
            return
        if self.init and self.local is not None and not self.local.exists():
            self._init()
            return
        try:
            self._listed = self._snapshots(f"stage:{self.name}", what="open")
        except ToolError as opened:
            if not self.init or not _missing(opened):
                # a wrong password, an unreachable host: nothing init could mend
                hint = ""
                if (
                    not self.init
                    and self.local is not None
                    and not (self.local / "config").exists()
                ):
                    hint = " (no repository there: set init = true to create it)"
                raise ToolError(f"{opened}{hint}", opened.returncode, opened.stderr) from None
            try:
                self._init()
            except ToolError as e:
                why = str(e).split("): ", 1)[-1]
                message = f"{opened}; and init = true could not create it: {why}"
                raise ToolError(message, opened.returncode, opened.stderr) from None
        self._ready = True

    def _init(self) -> None:
        self._restic("init", self._argv("init"))
        log.info("stage %s: created restic repository %s", self.name, self._repo.shown)
        self._listed = []
        self._ready = True

    def writes_to(self) -> list[Path]:
        """A local repository's folder."""
        return [self.local] if self.local is not None else []

    # -- run -----------------------------------------------------------------------
    def run(self, context: StageContext) -> Artifact:
        """``restic backup`` of the source view, original paths recorded, tagged with the run."""
        source = context.source
        if source is None or source.view is None:
            raise FreezeframeError("restic needs a source stage with a view")
        self._open()
        tags = ["freezeframe", f"profile:{context.profile}", f"stage:{self.name}"]
        listed, self._listed = self._listed, None  # fresh from check(), or listed now
        if listed is None:
            listed = self._snapshots(*tags)
        ours = [s for s in listed if set(tags) <= set(s.get("tags") or ())]
        parent = max(ours, key=lambda s: str(s["time"]))["id"] if ours else None
        tags.append(f"run:{context.run_id}")
        started = False
        try:
            writes = [p for p in (self.local, self.cache_dir) if p is not None]
            with laid_out(source, f"{context.profile}-{self.name}", writes) as layout:
                args = ["backup", "--json", "--tag", ",".join(tags)]
                if parent:
                    # The view's path changes every run: name the parent, or restic finds none.
                    args += ["--parent", parent]
                argv = layout.argv([*self._argv(*args), "--"])
                started = True
                result = self._restic(
                    "backup",
                    argv,
                    timeout=self.timeout,
                    context=context,
                    cwd=layout.cwd,
                    check=False,
                    stall=_Stall(self.stall_timeout, context),
                )
            summary, errors = self._summary(result)
            if result.returncode != 0 or summary is None:
                raise self._backup_failed(result, errors)
            short = str(summary["snapshot_id"])
            full = next(
                (s for s in self._snapshots(f"run:{context.run_id}") if s["id"].startswith(short)),
                None,
            )
            if full is None:
                raise FreezeframeError(
                    f"restic backup ({self._repo.shown}): snapshot {short} "
                    "is not in the repository after restic made it"
                )
            context.progress_to(
                bytes=int(summary.get("total_bytes_processed", 0)),
                files=int(summary.get("total_files_processed", 0)),
            )
            # inside: a cancel that lands after restic finished must remove the snapshot too
            context.check()
        except BaseException:
            if started:
                self._clean_up(context.run_id)
            raise
        return Artifact(
            id=str(full["id"]),
            bytes=int(summary.get("total_bytes_processed", 0)),
            files=int(summary.get("total_files_processed", 0)),
            metadata={
                "repository": self._repo.shown,
                "snapshot": short,
                "tags": tags,
                "paths": [str(original) for original, _ in source.roots()],
                "parent": parent,
                "added_bytes": int(summary.get("data_added", 0)),
                "files_new": int(summary.get("files_new", 0)),
                "files_changed": int(summary.get("files_changed", 0)),
                "files_unmodified": int(summary.get("files_unmodified", 0)),
                "layout": layout.method,
                "restic_version": self.version,
            },
        )

    @staticmethod
    def _summary(
        result: subprocess.CompletedProcess[str],
    ) -> tuple[Mapping[str, Any] | None, list[str]]:
        summary, errors = None, []
        for msg in _json_lines(result.stdout) + _json_lines(result.stderr):
            kind = msg.get("message_type")
            if kind == "summary":
                summary = msg
            elif kind == "error":
                err = msg.get("error")
                text = err.get("message") if isinstance(err, dict) else err
                errors.append(f"{msg.get('item', '')}: {text}".strip(": "))
        return summary, errors

    def _backup_failed(
        self, result: subprocess.CompletedProcess[str], errors: list[str]
    ) -> FreezeframeError:
        where = f"restic backup ({self._repo.shown})"
        if result.returncode == 3:
            first = errors[0] if errors else "see restic's output"
            return FreezeframeError(
                f"{where}: some files could not be read ({len(errors)} errors; first: {first}); "
                "an incomplete snapshot is no backup: removed it"
            )
        err = ToolError("", result.returncode, result.stderr)
        why = _why(err) if result.stderr.strip() else (errors[0] if errors else "no message")
        return ToolError(
            f"{where} failed (exit {result.returncode}): {why}",
            result.returncode,
            hide_credentials(result.stderr),
        )

    def _clean_up(self, run_id: str) -> None:
        """After a failed backup: forget any snapshot of the run and prune the data it sent."""
        try:
            self._discard(run_id, prune=True)
        except Exception as e:  # the backup's own error matters more; discard runs again later
            log.warning("stage %s: could not clean up after run %s: %s", self.name, run_id, e)

    # -- restore, verify -----------------------------------------------------------
    def restore(
        self, artifact: Artifact, target: Path, *, options: RestoreOptions = RestoreOptions()
    ) -> list[Path]:
        """``restic restore <id> --target <target>``: files land at target + original path;
        with ``options.paths``, only what ``--include`` of each selected path takes.

        Holes of sparse files are kept when this restic can (``restore --sparse``; 0.14 cannot).
        """
        selected = options.within(artifact.metadata.get("paths", []))
        if options.paths and not selected:
            return []  # without an --include restic would restore everything
        args = ["restore", artifact.id, "--target", str(target)]
        if options.paths:
            args += [f"--include={_pattern(p)}" for p in selected]
        usage = run_tool([find_tool("restic"), "restore", "--help"], timeout=SHORT_TIMEOUT)
        if "--sparse" in usage.stdout:
            args.append("--sparse")
        self._restic("restore", self._argv(*args), timeout=self.timeout)
        if not options.preserve_special:  # the tool makes them: take them out again at once
            strip_special(target)
        return [under(target, p) for p in selected]

    def verify(self, artifact: Artifact) -> None:
        """The snapshot is there, then ``restic check`` reading ``verify_data`` of the packs."""
        if not any(s["id"] == artifact.id for s in self._snapshots()):
            raise FreezeframeError(
                f"restic snapshot {artifact.id[:8]} is gone from {self._repo.shown}"
            )
        args = ["check"]
        if self.verify_data == "all":
            args.append("--read-data")
        elif self.verify_data != "none":
            args.append(f"--read-data-subset={self.verify_data}")
        self._exclusive("check", *args)

    # -- delete --------------------------------------------------------------------
    def delete(self, artifact: Artifact) -> None:
        """Forget the snapshot and prune what only it used."""
        errors = self.delete_many([artifact])
        if errors:
            raise FreezeframeError(errors[artifact.id])

    def delete_many(self, artifacts: Sequence[Artifact]) -> dict[str, str]:
        """One ``restic forget --prune`` of them all (restic skips ids already gone)."""
        ids = [a.id for a in artifacts]
        if not ids:
            return {}
        try:
            self._exclusive("forget", "forget", "--prune", *ids)
        except FreezeframeError as e:
            return {i: str(e) for i in ids}
        return {}

    def discard(self, run_id: str) -> None:
        """Forget any snapshot a crashed or failed run ``run_id`` left (found by its tags).

        Data a killed backup sent without making its snapshot is unreferenced; the
        next prune (retention, or a failed run's own clean-up) removes it.
        """
        self._discard(run_id, prune=False)

    def _discard(self, run_id: str, *, prune: bool) -> None:
        if self.local is not None and not (self.local / "config").exists():
            return  # no repository, so nothing of the run in it
        left = [s["id"] for s in self._snapshots(f"run:{run_id}", f"stage:{self.name}")]
        if left:
            self._exclusive("forget", "forget", *left)
        if prune:
            # Only packs nothing uses are deleted: no repacking of packs in use.
            self._exclusive("prune", "prune", "--max-unused", "unlimited")


@hookimpl
def freezeframe_register_backends(register: Callable[[type[Any]], None]) -> None:
    """Register the ``restic`` backend."""
    register(ResticBackend)
