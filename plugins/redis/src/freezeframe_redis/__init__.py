"""freezeframe application plug-in for Redis.

Quiesce pauses every client's writes with ``CLIENT PAUSE <ms> WRITE``, where
``<ms>`` is what is left of the freeze deadline, so the server resumes by
itself if freezeframe dies (``CrashSafety.SERVER_TIMEOUT``). It then makes
the files on disk hold everything written before the pause:

- RDB: it waits for any background save or AOF rewrite already running,
  then runs ``BGSAVE`` and waits for it; Redis writes the dump to a temporary
  file, fsyncs it, renames it over ``dbfilename`` and fsyncs the folder.
- AOF (Redis 7's multi-part AOF): it waits for any rewrite to end (and runs
  now a rewrite that Redis is about to start, when a per-file snapshot
  follows) and for Redis's AOF buffer to be written, then fsyncs the
  manifest, the files it lists and their folder itself.

Unquiesce checks that the pause held while the snapshot was taken (no write
reached the data, the pause did not run out, no AOF rewrite swapped the
files under a per-file copy, a replica did not resynchronise) and sends
``CLIENT UNPAUSE``; a broken pause fails the run rather than passing off an
inconsistent snapshot.

``capture = "logical"`` (the default with snapshot stages
that take completions) keeps only the fork inside the window: under the
same pause it runs ``BGSAVE``, whose reply comes once Redis has forked (the
child's image of the data is fixed from then on), and the thaw unpauses at
once. The completion waits for that child's dump, opens it only if no
other save followed (``rdb_saves``: an automatic save could have renamed a
later dump over it), and copies it whole into each view at
``dir/dbfilename`` (with the AOF on: as the RDB base of a manifest of its
own in the AOF folder, which is what such a server loads). Nothing
backup-specific is ever written in the data folder, so a kill of
freezeframe leaves nothing behind there.

A server that persists nothing (``save ""``, ``appendonly no``) is refused
unless the profile sets ``persistence = "rdb"``: then the same ``BGSAVE``
writes a dump for the backup at ``dir/dbfilename``, in either capture, and
it stays there as Redis leaves any dump.

The password (``password_env``/``password_file``)
reaches only redis-py's connect call; every message is scrubbed of it.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from freezeframe.plugin import (
    ApplicationPlugin,
    Artifact,
    ConfigError,
    CrashSafety,
    Deadline,
    DrillContext,
    FreezeframeError,
    QuiesceError,
    Running,
    SnapshotKind,
    Table,
    ToolError,
    find_tool,
    hookimpl,
)
from freezeframe_redis._complete import put_dump
from freezeframe_redis._drill import drill_copy
from freezeframe_redis._layout import Layout
from freezeframe_redis._persist import (
    Fork,
    complete_aof,
    fork_rdb,
    incomplete_aof_images,
    no_child,
    open_forked_dump,
    save_rdb,
    window_state,
)
from freezeframe_redis._restore import restored_layout, tidy_restored
from freezeframe_redis._server import Server, ServerError, parse_url, version_tuple
from freezeframe_redis._verify import load_in_temporary_server

__all__ = ["RedisPlugin"]

log = logging.getLogger(__name__)

#: CLIENT PAUSE ... WRITE came with Redis 6.2; the multi-part AOF with 7.0.
MIN_VERSION = (6, 2)
MIN_AOF_VERSION = (7, 0)
#: How long ``prepare`` waits for a background save that is already running.
PREPARE_WAIT = 300.0
#: How long a logical capture's completion waits for the dump of its fork.
COMPLETE_WAIT = 3600.0


class RedisPlugin(ApplicationPlugin):
    """One Redis server (``url``), paused for writes while its files are snapshotted."""

    kind = "redis"
    # Once quiesced, the files hold every acknowledged write and nothing changes them
    # until the thaw (unquiesce fails the run if something did): any snapshot will do.
    consistent_on = frozenset({SnapshotKind.ATOMIC, SnapshotKind.PER_FILE})
    crash_safety = CrashSafety.SERVER_TIMEOUT
    # logical first: only the fork is inside the window, whatever the size of the data
    capture_modes = ("logical", "snapshot")
    answers_sql = False

    def __init__(self, name: str, table: Table) -> None:
        super().__init__(name, table)
        url = table.get_str("url")
        try:
            self.endpoint = parse_url(url)
        except ValueError as e:
            raise ConfigError("url", str(e)) from None
        secret = table.get_secret("password")
        if secret is not None and not secret.reveal():
            field = "password_env" if "password_env" in table else "password_file"
            raise ConfigError(field, "the password is empty")
        #: The server's data folder as this machine sees it (default: ``CONFIG GET dir``).
        self.dir = table.get_path("dir", None)
        #: ``persistence = "rdb"``: a server that persists nothing is backed up all the same,
        #: from a dump its ``BGSAVE`` writes for the backup at ``dir/dbfilename``.
        self.dump_for_backup = (
            "persistence" in table and table.get_choice("persistence", ("rdb",), "rdb") == "rdb"
        )
        self._server = Server(self.endpoint, secret)
        self._lock = threading.Lock()
        self._layout: Layout | None = None
        self._kinds: frozenset[SnapshotKind] = frozenset(SnapshotKind)
        self._paused = False
        self._pause_until = 0.0
        self._baseline: dict[str, Any] | None = None
        #: auto-aof-rewrite-percentage and -min-size, when CONFIG can tell them.
        self._auto_rewrite: tuple[int, int] | None = None
        self._facts: dict[str, Any] = {}
        self._fork: Fork | None = None  # logical: the BGSAVE forked inside the window
        self._interrupted = threading.Event()

    @property
    def where(self) -> str:
        """The server, for messages."""
        return f"Redis at {self.endpoint.where}"

    # -- what the server is and where its files are --------------------------
    def _read_layout(self) -> tuple[Layout, bool]:
        """The server's data files as this machine sees them, and whether it persists anything."""
        server = self._server
        config_dir = server.config_get("dir")
        if config_dir is None:
            if self.dir is None:
                raise FreezeframeError(
                    f"{self.where}: CONFIG GET is renamed, disabled or not permitted, so "
                    "where its files are is unknown: set the field dir to its data folder"
                )
            aof = bool(server.info("persistence").get("aof_enabled"))
            # Without CONFIG the save points cannot be read: a BGSAVE still writes a dump.
            return Layout(self.dir, aof=aof, whole_dir=True), True
        aof = server.config_get("appendonly") == "yes"
        saves = bool((server.config_get("save") or "").strip())
        percentage = server.config_get("auto-aof-rewrite-percentage") or ""
        min_size = server.config_get("auto-aof-rewrite-min-size") or ""
        self._auto_rewrite = (
            (int(percentage), int(min_size))
            if percentage.isdigit() and min_size.isdigit()
            else None
        )
        names = {k: server.config_get(k) for k in ("dbfilename", "appenddirname", "appendfilename")}
        layout = Layout(
            self.dir or Path(config_dir),
            aof=aof,
            dbfilename=names["dbfilename"] or "dump.rdb",
            appenddirname=names["appenddirname"] or "appendonlydir",
            appendfilename=names["appendfilename"] or "appendonly.aof",
        )
        return layout, aof or saves

    def check(self) -> None:
        """Reachable, authenticated, 6.2 or later, persisting (or ``persistence = "rdb"``),
        loaded, data folder here."""
        info = self._server.info("server")
        version = str(info.get("redis_version", "?"))
        if version_tuple(version) < MIN_VERSION:
            raise FreezeframeError(
                f"{self.where}: version {version} is too old: CLIENT PAUSE ... WRITE needs 6.2 "
                "or later"
            )
        persistence = self._server.info("persistence")
        if persistence.get("loading") or persistence.get("async_loading"):
            raise FreezeframeError(f"{self.where}: still loading its data set; try again later")
        layout, persists = self._read_layout()
        if not persists and not self.dump_for_backup:
            raise ConfigError(
                "persistence",
                f'{self.where} persists nothing (save "" and appendonly no), so there is no '
                'file to back up: set persistence = "rdb" to have each backup write a dump '
                "(it stays at dir/dbfilename, and a restart loads it), or enable RDB snapshots "
                "(save) or the AOF (appendonly yes)",
            )
        if persists and self.dump_for_backup:
            log.info(
                '%s: persistence = "rdb" changes nothing: the server persists (%s)',
                self.name,
                "appendonly yes: its AOF is backed up" if layout.aof else "save points",
            )
        if layout.aof and version_tuple(version) < MIN_AOF_VERSION:
            raise FreezeframeError(
                f"{self.where}: version {version} keeps its AOF in one file; freezeframe backs "
                "up the multi-part AOF of Redis 7 or later (or turn the AOF off and use RDB)"
            )
        source = "dir" if self.dir is not None else "CONFIG GET dir"
        if not layout.dir.is_dir():
            raise FreezeframeError(
                f"{self.where}: its data folder {layout.dir} ({source}) does not exist on this "
                "machine: run freezeframe where Redis's files are, or set dir to where they "
                "are mounted here"
            )
        if not os.access(layout.dir, os.R_OK | os.X_OK):
            raise FreezeframeError(f"{self.where}: its data folder {layout.dir} is not readable")
        if self.capture == "logical":
            self._check_logical(layout)
        self._layout = layout
        replication = self._server.info("replication")
        self._facts.update(
            redis_version=version, role=replication.get("role"), persistence=layout.mode
        )

    def _check_logical(self, layout: Layout) -> None:
        """The logical capture needs the files' names and ``rdb_saves`` (Redis 7)."""
        why = ""
        if layout.whole_dir:
            why = "needs CONFIG GET to know its files' names"
        elif "rdb_saves" not in self._server.info("persistence"):
            why = "needs INFO persistence rdb_saves (Redis 7.0 or later)"
        if why:
            raise ConfigError("capture", f'{self.where}: "logical" {why}: use capture = "snapshot"')

    def prepare(self, snapshot_kinds: frozenset[SnapshotKind]) -> None:
        """Read where the files are; let a background save already running end before the window."""
        self._kinds = snapshot_kinds
        self._facts = {k: v for k, v in self._facts.items() if k in ("redis_version", "role")}
        self._layout, persists = self._read_layout()
        self._facts.update(persistence=self._layout.mode, dir=str(self._layout.dir))
        if not persists:  # persistence = "rdb" (check refuses it otherwise)
            self._facts["dump_for_backup"] = True
        try:
            self._server.wait("saving in the background", no_child, Deadline.after(PREPARE_WAIT))
        except ServerError as e:
            if e.reason != "timeout":
                raise
            log.warning("%s; the freeze window will wait for it", e)

    def data_paths(self) -> Sequence[Path]:
        """The RDB file, or the AOF folder, or with CONFIG disabled the whole data folder;
        nothing in the logical capture, whose completion writes the dump."""
        if self.capture == "logical":
            return ()
        if self._layout is None:
            self._layout, _ = self._read_layout()
        return self._layout.data_paths()

    def completed_paths(self) -> Sequence[Path]:
        """In the logical capture, the RDB file, or with the AOF on the AOF folder."""
        if self.capture != "logical":
            return ()
        if self._layout is None:
            self._layout, _ = self._read_layout()
        return (self._layout.aof_dir if self._layout.aof else self._layout.dump,)

    # -- the freeze -------------------------------------------------------------
    def quiesce(self, deadline: Deadline) -> None:
        """CLIENT PAUSE until the deadline, then make the files on disk complete."""
        with self._lock:
            layout = self._layout
            if layout is None:
                layout, _ = self._read_layout()
                self._layout = layout
            ms = math.ceil(deadline.remaining() * 1000)
            if ms < 1:
                raise QuiesceError(f"{self.where}: no time left before the deadline")
            started = time.monotonic()
            # Flagged before it is sent: if the reply is lost, the pause may still be in force.
            self._paused, self._pause_until, self._baseline = True, started + ms / 1000, None
            try:
                with self._server.bounded(deadline):
                    self._quiesce(layout, ms, deadline)
            except BaseException as e:
                try:
                    # bounded too: a server too busy to answer ends the pause by itself
                    with self._server.bounded(deadline):
                        self._unpause()
                except Exception as again:
                    log.warning("%s: unpause after a failed quiesce failed: %s", self.name, again)
                if isinstance(e, ServerError):
                    raise QuiesceError(str(e)) from None
                raise

    def _quiesce(self, layout: Layout, ms: int, deadline: Deadline) -> None:
        """The pause, then the files on disk made complete."""
        self._server.call("CLIENT", "PAUSE", ms, "WRITE")
        self._facts["pause_ms"] = ms
        self._settle_replica(deadline)
        if self.capture == "logical":  # the fork is the capture, with the AOF on or not
            self._fork = fork_rdb(self._server, deadline)
            self._facts.update(wait_ms=self._fork.wait_ms)
            self._baseline = window_state(self._server)
        elif layout.aof:
            # A per-file copy must not meet a rewrite: run one that is due now.
            rewrite = self._auto_rewrite if SnapshotKind.PER_FILE in self._kinds else None
            while True:  # a rewrite that started meanwhile would swap the files
                self._facts.update(complete_aof(self._server, layout, deadline, rewrite))
                self._baseline = window_state(self._server)
                if not self._baseline["aof_rewriting"]:
                    break
        else:
            self._facts.update(save_rdb(self._server, layout, deadline))
            self._baseline = window_state(self._server)
        # Writes, and with them key expiry, are paused: the count of the data on disk.
        self._facts["keys"] = self._baseline["keys"]
        self._facts["keyspace"] = self._baseline["keyspace"]

    def _settle_replica(self, deadline: Deadline) -> None:
        """A replica must not be loading a full resync from its master (it replaces everything)."""
        info = self._server.wait(
            "loading a full resynchronisation from its master",
            lambda i: not i.get("master_sync_in_progress"),
            deadline,
            section="replication",
        )
        if info.get("role") == "slave":
            self._facts["master_link_status"] = info.get("master_link_status")
            self._facts["replica_offset"] = info.get("slave_repl_offset")

    def _window_problems(self, base: Mapping[str, Any], snapshots: Sequence[Artifact]) -> list[str]:
        """Why the snapshot just taken may not be one instant of the data (empty if it is)."""
        problems = []
        if time.monotonic() > self._pause_until:
            problems.append("the pause ran out (freeze_timeout) before the thaw")
        now = window_state(self._server)
        if isinstance(now["dirty"], int) and now["dirty"] > (base["dirty"] or 0):
            problems.append(
                f"{now['dirty'] - (base['dirty'] or 0)} write(s) reached the data during the "
                "pause (did another client run CLIENT UNPAUSE?)"
            )
        if now["aof_rewrites"] != base["aof_rewrites"] or now["aof_rewriting"]:
            # Same data (writes were paused), new files: a per-file copy may hold a mix.
            if SnapshotKind.PER_FILE in self._kinds and self._layout is not None:
                problems += incomplete_aof_images(self._layout, snapshots)
        elif now["aof_size"] != base["aof_size"]:
            problems.append("the AOF grew during the pause")
        # A replica's offset may move (PINGs from its master); a new replication id, or a
        # load, means it resynchronised: its data set was replaced during the pause.
        if now["loading"] or now["syncing"] or now["replid"] != base["replid"]:
            problems.append("the replica resynchronised from its master during the pause")
        return problems

    def _unpause(self) -> None:
        try:
            self._server.call("CLIENT", "UNPAUSE")
        except ServerError as e:
            if e.reason != "connect":
                raise
            self._server.close()  # a fresh connection, once
            self._server.call("CLIENT", "UNPAUSE")
        self._paused = False

    def unquiesce(self, snapshots: Sequence[Artifact]) -> None:
        """Check that the pause held, then CLIENT UNPAUSE (idempotent: only a pause of ours)."""
        with self._lock:
            if not self._paused:
                return
            base, self._baseline = self._baseline, None
            problems: list[str] = []
            if base is not None:
                try:
                    problems = self._window_problems(base, snapshots)
                except ServerError as e:
                    problems = [f"could not check that the pause held: {e}"]
            try:
                self._unpause()
            except ServerError as e:
                left = max(0.0, self._pause_until - time.monotonic())
                raise QuiesceError(
                    f"{e}; writes resume by themselves when the pause ends (in {left:.1f}s)"
                ) from None
            if problems:
                raise QuiesceError(
                    f"{self.where}: " + "; ".join(problems) + ": the snapshot may be inconsistent"
                )

    def complete(self, snapshots: Sequence[Artifact]) -> None:
        """Wait for the dump of the fork made inside the window; put it whole into each
        view: at ``dir/dbfilename``, or with the AOF on as the base of an AOF folder."""
        fork, layout = self._fork, self._layout
        if fork is None or layout is None:
            raise FreezeframeError(f"{self.where}: no BGSAVE forked at the capture to complete")
        fd = open_forked_dump(
            self._server, layout, fork, Deadline.after(COMPLETE_WAIT), self._interrupted.is_set
        )
        try:
            written = time.monotonic()
            for snapshot in (s for s in snapshots if s.view is not None):
                put_dump(fd, layout, snapshot, self._interrupted.is_set, self.where)
        finally:
            os.close(fd)
        log.info(
            "%s: the dump of the capture took %.0f ms after the fork, copied in %.0f ms",
            self.name,
            (written - fork.began) * 1000,
            (time.monotonic() - written) * 1000,
        )

    def release(self) -> None:
        """Forget the fork of the capture (its child ends by itself; nothing else is held)."""
        self._fork = None
        self._interrupted.clear()

    def interrupt(self) -> None:
        """Make a completion under way give up at its next look (within ``POLL``)."""
        self._interrupted.set()

    def describe(self) -> Mapping[str, Any]:
        """Version, role, persistence, files and sizes, pause and save times, key count."""
        return {"server": self.endpoint.where, **self._facts}

    # -- restore -----------------------------------------------------------------
    def _original_layout(self) -> Layout:
        """Where the data was when it was backed up: ``dir``, else what the server says now."""
        if self._layout is not None:
            return self._layout
        try:
            layout, _ = self._read_layout()
        except FreezeframeError as e:
            if self.dir is None:
                raise FreezeframeError(
                    f"application {self.name!r}: cannot tell where its data was restored "
                    f"({e}); set the field dir to the server's data folder"
                ) from None
            return Layout(self.dir, aof=False, whole_dir=True)
        return layout

    def _restored(self, root: Path) -> Layout | None:
        """The restored files below ``root``, and whether they are an AOF or a dump."""
        return restored_layout(self._original_layout(), root)

    def prepare_restored(self, root: Path) -> None:
        """Remove what Redis must not find beside the restored data: temp files, AOF history.

        Nothing here is needed to load the data, so a restore whose location this
        plug-in cannot tell (server down, no ``dir``) goes on with a warning.
        """
        try:
            layout = self._restored(root)
        except FreezeframeError as e:
            log.warning("%s: nothing prepared: %s", self.name, e)
            return
        if layout is None:
            return
        try:  # nothing through a symlink inside the restored tree
            tidy_restored(layout, root)
        except FreezeframeError as e:
            raise FreezeframeError(f"application {self.name!r}: {e}") from None

    def verify_restored(self, root: Path) -> None:
        """Load the restored data in a temporary redis-server (persisting nothing) and PING it."""
        layout = self._restored(root)
        if layout is None:
            where = self._original_layout().under(root).dir
            raise FreezeframeError(f"application {self.name!r}: no Redis data restored in {where}")
        try:
            binary = find_tool("redis-server")
        except ToolError as e:
            raise FreezeframeError(f"application {self.name!r}: cannot verify: {e}") from None
        what = layout.manifest if layout.aof else layout.dump
        try:
            facts = load_in_temporary_server(binary, layout)
        except FreezeframeError as e:
            raise FreezeframeError(f"application {self.name!r}: {what}: {e}") from None
        log.info("%s: %s loads (%d keys in %.2fs)", self.name, what, facts["keys"], facts["load_s"])

    def _restored_for_drill(self, ctx: DrillContext) -> tuple[Layout | None, str]:
        """The restored files of the run drilled, and where they were looked for: below
        the data folder the run recorded (``dir``), with the file names the server has
        there now, or found in it when it has moved or cannot be asked."""
        recorded = ctx.facts.get("dir")
        aof = ctx.facts.get("persistence") == "aof"
        found = Layout(Path(recorded), aof=aof, whole_dir=True) if recorded else None
        try:
            original = self._original_layout()
        except FreezeframeError as e:
            if found is None:
                return None, str(e)
            original = found
        if found is not None and original.dir != found.dir:
            original = found
        where = original.under(ctx.root).dir
        return restored_layout(original, ctx.root), f"no Redis data restored in {where}"

    @contextmanager
    def drill(self, ctx: DrillContext) -> Iterator[Running | None]:
        """``redis-check-rdb`` or ``redis-check-aof`` on the restored files, a private
        redis-server that loads them (as ``restore --verify`` starts it: a unix socket in
        ``ctx.work``, persisting nothing), and its key count per database against the
        one recorded at the capture; yields its ``SOCKET`` (or ``HOST``, ``PORT``) and
        ``URL``, and ``REDIS_URL`` for the application's own clients."""
        layout, missing = self._restored_for_drill(ctx)
        with drill_copy(ctx, layout, missing) as running:
            yield running


@hookimpl
def freezeframe_register_applications(register: Callable[[type[Any]], None]) -> None:
    """Register the ``redis`` application plug-in."""
    register(RedisPlugin)
