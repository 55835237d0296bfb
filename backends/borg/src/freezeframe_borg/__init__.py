"""freezeframe copy backend ``borg``: one borg archive per run, deduplicated and encrypted.

The real ``borg`` (1.2) does the work. Each run becomes the archive
``<profile>-<stage>-<run id>`` in a local or ``ssh://`` repository, recording
every file under its *original* path (borg drops the leading ``/``: see
:func:`freezeframe.plugin.laid_out`), so ``cd / && borg extract REPO::ARCHIVE``
alone puts every file back where it was.

The passphrase is read once by the core (``password_env`` / ``password_file``)
and reaches borg only in its environment (``BORG_PASSPHRASE``); never argv,
logs, the catalog or an error message.
"""

from __future__ import annotations

import json
import logging
import re
import shlex
import subprocess
from collections.abc import Callable, Sequence
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

__all__ = ["BorgBackend"]

log = logging.getLogger(__name__)

#: borg 2 speaks another command line and repository format.
SUPPORTED = ((1, 2), (2, 0))
#: For quick commands (version, listing archives, opening the repository).
SHORT_TIMEOUT = 300.0
#: How long to wait, by default, for another borg (an operator's ``borg list``) to release
#: the repository. borg sleeps a tenth of it between two tries, also after it has removed
#: a stale lock: a long wait makes recovering from a killed borg slow.
LOCK_WAIT = 10.0
_REMOTE = re.compile(r"^(ssh://|[^/]*:)")
#: The repository (``BORG_REPO``) where borg wants a repository; ``::NAME`` for an archive.
_REPO = "::"
#: What ``borg extract`` says (exit 1) of a path asked for that the archive does not hold.
_NOT_MATCHED = re.compile(r"Include pattern '.*' never matched\.")


def _why(e: ToolError) -> str:
    """One line from what borg said on stderr: ssh's complaint, the first and last lines."""
    lines = [line.strip() for line in e.stderr.splitlines() if line.strip()]
    ssh = [line for line in lines if line.startswith("Remote: ssh:")]
    if not lines:
        return str(e) or "no message"
    parts = [ssh[-1].removeprefix("Remote:").strip()] if ssh else []
    if not ssh and len(lines) > 1:
        parts.append(lines[0])
    parts.append(lines[-1])
    return "; ".join(p[:300] for p in parts)


def _plain(stderr: str) -> str:
    """borg's ``--log-json`` stderr as the lines it would have written without it: each
    log message's text, its progress messages left out."""
    lines = []
    for line in stderr.splitlines():
        try:
            msg = json.loads(line)
        except ValueError:
            lines.append(line)
            continue
        if not isinstance(msg, dict):
            lines.append(line)
        elif msg.get("type") == "log_message":
            lines.append(str(msg.get("message", "")))
    return "".join(f"{line}\n" for line in lines)


def _progress(context: StageContext) -> Callable[[str], None]:
    """Pass ``borg create --progress --log-json``'s progress on as the stage's: the bytes
    and files it has read (the total is the core's estimate, the source's size)."""

    def line(text: str) -> None:
        try:
            msg = json.loads(text)
        except ValueError:
            return
        if (
            isinstance(msg, dict)
            and msg.get("type") == "archive_progress"
            and isinstance(msg.get("original_size"), int)
        ):
            context.progress_to(bytes=msg["original_size"], files=int(msg.get("nfiles") or 0))

    return line


def _version(borg: str) -> str:
    """borg's version (asked once per process: starting borg takes a good part of a second)."""
    version = tool_version("borg", borg, "--version")
    if not SUPPORTED[0] <= version[:2] < SUPPORTED[1]:
        raise FreezeframeError(
            f"borg {dotted(version)} is not supported: this backend speaks borg 1.2.x"
        )
    return dotted(version)


class BorgBackend(Backend):
    """Back up the source stage's view with borg; restore, verify and delete with it too."""

    kind = "borg"
    role = Role.COPY

    def __init__(self, name: str, table: Table) -> None:
        super().__init__(name, table)
        repo = read_repository(
            table,
            remote=lambda raw: (
                bool(_REMOTE.match(raw)) and not raw.startswith(("/", "./", "../", "~"))
            ),
            advice=" (ssh takes none from a URL): let ssh log in with a key (ssh_command, an "
            "ssh config); the passphrase goes in password_env or password_file",
        )
        self.repository: str = repo.location
        self.local: Path | None = repo.local
        if "::" in self.repository:  # borg splits REPOSITORY::ARCHIVE there, BORG_REPO too
            raise ConfigError("repository", "borg cannot use a repository whose path holds '::'")
        self._secret: Secret = read_password(table, why="borg encrypts: repokey", word="passphrase")
        self.init: bool = table.get_bool("init", False)
        self.ssh = table.get_argv("ssh_command", ["ssh"])
        if "ssh_command" in table and self.local is not None:
            raise ConfigError("ssh_command", "only remote (ssh://) repositories are reached by ssh")
        self.remote_path = table.get_str("remote_path", None)
        self.verify_data: str = table.get_choice("verify_data", ("all", "none"), "all")
        self.compression = table.get_str("compression", "lz4")
        #: Seconds to wait for a lock another borg holds (``--lock-wait``; whole seconds).
        self.lock_wait: float = float(max(1, round(table.get_duration("lock_wait", LOCK_WAIT))))
        #: Longest a create, extract, check or compact may run (None: no limit).
        self.timeout = table.get_duration("timeout", None)
        self._ready = False
        self.version = ""

    def __repr__(self) -> str:
        return f"BorgBackend({self.name!r}, {self.repository!r})"

    # -- running borg --------------------------------------------------------------
    def _env(self, *, new: bool = False) -> dict[str, str]:
        # BORG_PASSPHRASE wins over BORG_PASSCOMMAND and BORG_PASSPHRASE_FD in borg.
        # BatchMode: ssh never asks for a password or a host key on a terminal.
        # The repository goes in BORG_REPO, never argv, where every user sees it (`ps`).
        env = {
            "BORG_REPO": self.repository,
            "BORG_PASSPHRASE": self._secret.reveal(),
            "BORG_RSH": shlex.join(ssh_argv(self.ssh)),
            "BORG_RELOCATED_REPO_ACCESS_IS_OK": "no",
            "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "no",
            "BORG_DELETE_I_KNOW_WHAT_I_AM_DOING": "NO",
            "BORG_CHECK_I_KNOW_WHAT_I_AM_DOING": "NO",
            "BORG_DISPLAY_PASSPHRASE": "no",
            "BORG_NEW_PASSPHRASE": self._secret.reveal() if new else "",
        }
        return env

    def _argv(self, command: str, *args: str) -> list[str]:
        argv = [find_tool("borg"), command, "--lock-wait", f"{self.lock_wait:g}"]
        if self.remote_path:
            argv += ["--remote-path", self.remote_path]
        return [*argv, *args]

    def _borg(
        self,
        what: str,
        argv: Sequence[str],
        *,
        timeout: float | None = SHORT_TIMEOUT,
        context: StageContext | None = None,
        cwd: Path | None = None,
        check: bool = True,
        new: bool = False,
        on_stderr: Callable[[str], None] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run borg; a ``--log-json`` borg's stderr is given back as plain lines."""
        try:
            result = run_tool(
                argv,
                env=self._env(new=new),
                timeout=timeout,
                context=context,
                cwd=cwd,
                check=check,
                on_stderr=on_stderr,
            )
        except ToolError as e:
            e = ToolError(str(e), e.returncode, _plain(e.stderr))
            raise ToolError(
                f"borg {what} ({self.repository}): {self._trouble(e)}", e.returncode, e.stderr
            ) from None
        result.stderr = _plain(result.stderr)
        return result

    def _failed(self, what: str, result: subprocess.CompletedProcess[str]) -> ToolError:
        """The error of a borg run with ``check=False`` whose exit code says it failed."""
        why = self._trouble(ToolError("", result.returncode, result.stderr))
        return ToolError(
            f"borg {what} ({self.repository}) failed (exit {result.returncode}): {why}",
            result.returncode,
            result.stderr,
        )

    def _trouble(self, e: ToolError) -> str:
        """What went wrong, in one line; for a remote repository, what ssh says of it."""
        why = _why(e)
        if self.local is None and "Connection closed" in e.stderr and "ssh:" not in e.stderr:
            why = f"{self._ssh_trouble()}; {why}"
        return why

    def _ssh_trouble(self) -> str:
        """What ssh says when it runs by itself (borg may exit before it passes that on)."""
        user, host, port = ssh_address(self.repository, "ssh")
        return ssh_trouble(
            [*ssh_argv(self.ssh, user, str(host), port), "true"],
            "ssh connects, but borg does not answer there (is it installed? see remote_path)",
        )

    def _archives(self) -> list[dict[str, Any]]:
        """The repository's archives (name, id, time)."""
        out = self._borg("list", self._argv("list", "--json", _REPO)).stdout
        try:
            return list(json.loads(out)["archives"])
        except (ValueError, KeyError, TypeError):
            raise FreezeframeError(f"borg list ({self.repository}): output is not JSON") from None

    # -- check ---------------------------------------------------------------------
    def check(self) -> None:
        """borg is 1.2.x; the repository opens with the passphrase (or is created here,
        ``borg init -e repokey``, when missing and ``init = true``)."""
        self.version = _version(find_tool("borg"))
        if self.local is None:
            find_tool(self.ssh[0])
        self._open()

    def _open(self) -> None:
        """Open the repository (list its last archive); create it when missing and asked to."""
        if self._ready:
            return
        if self.init and self.local is not None and not self.local.exists():
            self._init()
            return
        try:
            self._borg("open", self._argv("list", "--last", "1", "--short", _REPO))
        except ToolError as opened:
            missing = "does not exist" in str(opened)
            if not self.init or not missing:
                # a wrong passphrase, an unreachable host: nothing init could mend
                hint = " (set init = true to create it)" if missing else ""
                raise ToolError(f"{opened}{hint}", opened.returncode, opened.stderr) from None
            try:
                self._init()
            except ToolError as e:
                why = str(e).split("): ", 1)[-1]
                message = f"{opened}; and init = true could not create it: {why}"
                raise ToolError(message, opened.returncode, opened.stderr) from None
        self._ready = True

    def _init(self) -> None:
        self._borg(
            "init",
            self._argv("init", "--encryption", "repokey", "--make-parent-dirs", _REPO),
            new=True,
        )
        log.info("stage %s: created borg repository %s", self.name, self.repository)
        self._ready = True

    def writes_to(self) -> list[Path]:
        """A local repository's folder."""
        return [self.local] if self.local is not None else []

    # -- run -----------------------------------------------------------------------
    def run(self, context: StageContext) -> Artifact:
        """``borg create`` of the source view into ``<profile>-<stage>-<run id>``."""
        source = context.source
        if source is None or source.view is None:
            raise FreezeframeError("borg needs a source stage with a view")
        self._open()
        name = f"{context.profile}-{self.name}-{context.run_id}"
        started = False
        try:
            writes = [self.local] if self.local is not None else []
            with laid_out(source, f"{context.profile}-{self.name}", writes) as layout:
                tool = self._argv(
                    "create",
                    "--json",
                    "--progress",
                    "--log-json",
                    "--compression",
                    self.compression,
                    "--comment",
                    f"freezeframe profile {context.profile} stage {self.name} run {context.run_id}",
                    f"{_REPO}{name}",
                    "--",
                )
                started = True
                result = self._borg(
                    "create",
                    layout.argv(tool),
                    timeout=self.timeout,
                    context=context,
                    cwd=layout.cwd,
                    check=False,
                    on_stderr=_progress(context),
                )
            if result.returncode != 0:
                # 1 is borg's "warning": a file it could not read. Not a complete backup.
                raise self._failed("create", result)
            try:
                archive = json.loads(result.stdout)["archive"]
                stats = archive["stats"]
            except (ValueError, KeyError, TypeError):
                raise FreezeframeError(
                    f"borg create ({self.repository}): output is not the JSON expected"
                ) from None
            context.progress_to(bytes=int(stats["original_size"]), files=int(stats["nfiles"]))
            # inside: a cancel that lands after borg finished must remove the archive too
            context.check()
        except BaseException:
            if started:
                self._clean_up(context.run_id)
            raise
        return Artifact(
            id=name,
            bytes=int(stats["original_size"]),
            files=int(stats["nfiles"]),
            metadata={
                "repository": self.repository,
                "archive": name,
                "archive_id": str(archive["id"]),
                "paths": [str(original) for original, _ in source.roots()],
                "added_bytes": int(stats["deduplicated_size"]),
                "compressed_bytes": int(stats["compressed_size"]),
                "layout": layout.method,
                "borg_version": self.version,
            },
        )

    def _clean_up(self, run_id: str) -> None:
        """After a failed create: delete any archive of the run, and compact, which also
        deletes the segments a killed borg wrote without committing them."""
        try:
            if not self._discard(run_id):
                self._borg("compact", self._argv("compact", _REPO), timeout=self.timeout)
        except Exception as e:  # the backup's own error matters more; discard runs again later
            log.warning("stage %s: could not clean up after run %s: %s", self.name, run_id, e)

    # -- restore, verify -----------------------------------------------------------
    def restore(
        self, artifact: Artifact, target: Path, *, options: RestoreOptions = RestoreOptions()
    ) -> list[Path]:
        """``borg extract --sparse`` in ``target``: files land at target + original path;
        with ``options.paths``, only each selected path (``pp:`` patterns: no glob).

        A borg archive holds the paths, not the folders above them, and borg would
        make those 0700; they are made here first, 0755 like ``mkdir -p``, so that a
        service user (postgres) can reach its restored data.
        """
        selected = options.within(artifact.metadata.get("paths", []))
        if options.paths and not selected:
            return []  # without a path borg would extract everything
        for p in selected:
            missing = []
            parent = under(target, p).parent
            while not parent.exists():
                missing.append(parent)
                parent = parent.parent
            for folder in reversed(missing):
                folder.mkdir(mode=0o755)
                folder.chmod(0o755)  # whatever the umask
        patterns = [f"pp:{p.relative_to('/')}" for p in selected] if options.paths else []
        argv = self._argv("extract", "--sparse", f"{_REPO}{artifact.id}", *patterns)
        result = self._borg("extract", argv, timeout=self.timeout, cwd=target, check=False)
        # 1: a warning; "never matched" only says a selected path is not in the archive
        warnings = [line.strip() for line in result.stderr.splitlines() if line.strip()]
        not_there = result.returncode == 1 and all(map(_NOT_MATCHED.fullmatch, warnings))
        if result.returncode != 0 and not not_there:
            raise self._failed("extract", result)
        if not options.preserve_special:  # the tool makes them: take them out again at once
            strip_special(target)
        return [under(target, p) for p in selected]

    def verify(self, artifact: Artifact) -> None:
        """The archive is there (the same one), then ``borg check [--verify-data]``."""
        found = next((a for a in self._archives() if a["name"] == artifact.id), None)
        if found is None:
            raise FreezeframeError(f"borg archive {artifact.id} is gone from {self.repository}")
        if artifact.metadata.get("archive_id") not in (None, found["id"]):
            raise FreezeframeError(
                f"borg archive {artifact.id} in {self.repository} is another archive "
                "than the one this run made (its id differs)"
            )
        args = ["--verify-data"] if self.verify_data == "all" else []
        self._borg(
            "check",
            self._argv("check", *args, f"{_REPO}{artifact.id}"),
            timeout=self.timeout,
        )

    # -- delete --------------------------------------------------------------------
    def delete(self, artifact: Artifact) -> None:
        """Delete the archive and compact the repository."""
        errors = self.delete_many([artifact])
        if errors:
            raise FreezeframeError(errors[artifact.id])

    def delete_many(self, artifacts: Sequence[Artifact]) -> dict[str, str]:
        """One ``borg delete`` of them all (borg skips names already gone), one ``borg compact``."""
        names = [a.id for a in artifacts]
        try:
            self._delete(names)
        except FreezeframeError as e:
            return {n: str(e) for n in names}
        return {}

    def _delete(self, names: Sequence[str]) -> None:
        if not names:  # `borg delete REPO` without names would delete the repository
            return
        argv = self._argv("delete", _REPO, *names)
        result = self._borg("delete", argv, timeout=self.timeout, check=False)
        if result.returncode not in (0, 1):  # 1: a warning, such as "Archive X not found"
            raise self._failed("delete", result)
        self._borg("compact", self._argv("compact", _REPO), timeout=self.timeout)

    def discard(self, run_id: str) -> None:
        """Delete the archive (or checkpoint archives) a failed or crashed run left.

        What a killed borg wrote without committing it is deleted by the next borg
        that writes to the repository (a failed run's own clean-up compacts at once).
        """
        self._discard(run_id)

    def _discard(self, run_id: str) -> bool:
        """Delete the run's archives; whether there were any (then the repository is compacted)."""
        if self.local is not None and not (self.local / "config").exists():
            return False  # no repository, so nothing of the run in it
        pattern = re.compile(
            rf"^.+-{re.escape(self.name)}-{re.escape(run_id)}(\.checkpoint(\.\d+)?)?$"
        )
        names = [a["name"] for a in self._archives() if pattern.match(a["name"])]
        self._delete(names)
        return bool(names)


@hookimpl
def freezeframe_register_backends(register: Callable[[type[Any]], None]) -> None:
    """Register the ``borg`` backend."""
    register(BorgBackend)
