"""Contract tests: every "must" of the plug-in author guide, checked against a real component.

A plug-in's test module subclasses :class:`ApplicationPluginContract` or
:class:`BackendContract` and provides fixtures that describe one configured
instance; pytest then collects every ``test_*`` method of the class::

    class TestContract(ApplicationPluginContract):
        @pytest.fixture
        def plugin_class(self) -> type[ApplicationPlugin]:
            return MyPlugin

        @pytest.fixture
        def plugin_table(self, my_server) -> dict[str, Any]:
            return {"socket": str(my_server.socket)}

Fixtures an application plug-in's subclass provides (``plugin_class`` and
``plugin_table`` are required, the rest optional):

``plugin_class``
    the :class:`ApplicationPlugin` subclass.
``plugin_table``
    its ``[[application]]`` table (without ``plugin`` and ``name``) for a real,
    running application; paths relative to ``base_dir``.
``base_dir``
    the profile's folder (default: the test's ``tmp_path``).
``plugin``
    a configured instance (default: built from the two above).
``resumed``
    ``() -> bool``: whether the application is running normally right now (it
    takes a write). Without it, the tests check only what the calls return.
``blocker``
    ``() -> ContextManager``: while it is entered, a quiesce cannot finish (a
    long transaction holds the lock; the application stopped answering).
    Without it, the deadline is only checked with an expired one.
``bad_tables``
    a list of ``(table, field)``: each table must be refused with a
    :class:`ConfigError` naming ``field``.
``secrets``
    strings that must never appear in ``describe()``, ``data_paths()``,
    ``watchdog_thaw_command()`` or an error message.
``crash_seconds``
    the deadline the crash test quiesces with (default 3 s).

A backend's subclass provides ``backend_class`` and ``backend_table`` (and may
override ``backend``, ``base_dir``, ``bad_tables``, ``secrets``, and):

``data_root``
    the folder the test data is built in (default ``tmp_path / "data"``); a
    snapshot backend that needs its own filesystem puts it there (btrfs).
``leftovers``
    ``() -> set[str]``: what the backend holds right now (default: every entry
    below its ``writes_to()`` folders); a repository backend lists its snapshots.

The tree every backend test backs up is :func:`freezeframe_testing.trees.build_tree`;
a copy backend reads it through a hand-made snapshot view (:func:`snapshot_view`).
"""

from __future__ import annotations

import inspect
import json
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, suppress
from pathlib import Path
from typing import Any, ClassVar

import pytest

from freezeframe.plugin import (
    ApplicationPlugin,
    Artifact,
    Backend,
    Cancelled,
    ConfigError,
    CrashSafety,
    Deadline,
    FreezeframeError,
    RestoreOptions,
    Role,
    SnapshotKind,
    StageContext,
    Table,
    under,
)
from freezeframe_testing.child import kill_child, spec_of, start_child
from freezeframe_testing.components import run_freezeframe
from freezeframe_testing.plugin import wait_until
from freezeframe_testing.trees import build_tree, contents, walk

__all__ = ["ApplicationPluginContract", "BackendContract", "snapshot_view"]

#: How long a call that must not block (interrupt, a quiesce past its deadline) may take.
GRACE = 5.0
#: How long an application may take to resume once its quiesce has ended.
RESUME_WITHIN = 10.0
RUN_ID = "20260101T000000Z-c0de"
#: The original path of the tree a copy backend is given.
ORIGINAL = Path("/srv/contract")

AppFactory = Callable[[], ApplicationPlugin]
Probe = Callable[[], bool]


def toml_value(value: Any) -> str:
    """``value`` (a string, number, boolean, list or table) written as TOML."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a TOML basic string
    if isinstance(value, Mapping):
        return (
            "{ " + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + " }"
        )
    return "[" + ", ".join(toml_value(v) for v in value) + "]"


def _no_secret_in(what: str, text: str, secrets: Sequence[str]) -> None:
    leaked = [s for s in secrets if s and s in text]
    assert not leaked, f"{what} holds a secret: {text!r}"


class _Contract:
    """What both contracts share: where the profile is, bad tables, secrets."""

    #: The prefix of the subclass's fixtures: ``plugin_class``, ``backend_table``.
    role: ClassVar[str]

    @pytest.fixture
    def base_dir(self, tmp_path: Path) -> Path:
        return tmp_path

    @pytest.fixture
    def bad_tables(self) -> Sequence[tuple[Mapping[str, Any], str]]:
        return ()

    @pytest.fixture
    def secrets(self) -> Sequence[str]:
        return ()

    def test_config_errors_name_the_field(
        self,
        request: pytest.FixtureRequest,
        base_dir: Path,
        bad_tables: Sequence[tuple[Mapping[str, Any], str]],
    ) -> None:
        """Each bad table refused with a ConfigError naming its field; a field of the good
        table given a value of no type any getter accepts (a table) is refused naming that
        field, or accepted: never another exception."""
        component = request.getfixturevalue(f"{self.role}_class")
        table = request.getfixturevalue(f"{self.role}_table")
        for bad, field in bad_tables:
            with pytest.raises(ConfigError) as e:
                component("contract", Table(dict(bad), base_dir=base_dir))
            assert e.value.field == field, f"{bad}: the error names {e.value.field!r}: {e.value}"
        for key in table:
            try:
                component("contract", Table({**table, key: {"not": "this"}}, base_dir=base_dir))
            except ConfigError as e:
                assert e.field == key, f"a bad {key!r} was reported as field {e.field!r}: {e}"


class ApplicationPluginContract(_Contract):
    """The rules an application plug-in must keep; subclass it with the fixtures above."""

    role = "plugin"

    # -- fixtures the subclass may override ---------------------------------------------

    @pytest.fixture
    def make_plugin(
        self, plugin_class: type[ApplicationPlugin], plugin_table: Mapping[str, Any], base_dir: Path
    ) -> AppFactory:
        """Build another configured instance (as another freezeframe command would)."""
        return lambda: plugin_class("contract", Table(dict(plugin_table), base_dir=base_dir))

    @pytest.fixture
    def plugin(self, make_plugin: AppFactory) -> Iterator[ApplicationPlugin]:
        app = make_plugin()
        yield app
        with suppress(Exception):  # a test that checks unquiesce reports its failure itself
            app.unquiesce(())  # never leave the application quiesced, whatever the test did
        with suppress(Exception):
            app.release()

    @pytest.fixture
    def resumed(self) -> Probe | None:
        return None

    @pytest.fixture
    def blocker(self) -> Callable[[], AbstractContextManager[Any]] | None:
        return None

    @pytest.fixture
    def crash_seconds(self) -> float:
        return 3.0

    @pytest.fixture
    def kinds(self, plugin: ApplicationPlugin) -> frozenset[SnapshotKind]:
        return frozenset(plugin.consistent_on)

    # -- helpers -----------------------------------------------------------------------

    @staticmethod
    def _assert_resumed(resumed: Probe | None, after: str) -> None:
        if resumed is not None:
            assert wait_until(resumed, RESUME_WITHIN), (
                f"the application did not resume after {after}"
            )

    @staticmethod
    def _quiesce_may_fail(plugin: ApplicationPlugin, deadline: Deadline) -> float:
        """Quiesce, accepting a FreezeframeError; returns how long it took."""
        start = time.monotonic()
        with suppress(FreezeframeError):
            plugin.quiesce(deadline)
        return time.monotonic() - start

    # -- the rules ---------------------------------------------------------------------

    def test_check_passes_and_data_paths_are_absolute(self, plugin: ApplicationPlugin) -> None:
        plugin.check()
        paths = list(plugin.data_paths())
        assert all(Path(p).is_absolute() for p in paths), paths

    def test_unquiesce_is_idempotent(
        self, plugin: ApplicationPlugin, resumed: Probe | None, kinds: frozenset[SnapshotKind]
    ) -> None:
        plugin.prepare(kinds)
        plugin.quiesce(Deadline.after(30))
        plugin.unquiesce(())
        plugin.unquiesce(())
        self._assert_resumed(resumed, "two unquiesces")
        plugin.prepare(kinds)  # and the next run can quiesce it again
        plugin.quiesce(Deadline.after(30))
        plugin.unquiesce(())
        self._assert_resumed(resumed, "a second quiesce")

    def test_each_capture_mode_completes_and_releases(
        self,
        make_plugin: AppFactory,
        resumed: Probe | None,
        kinds: frozenset[SnapshotKind],
        tmp_path: Path,
    ) -> None:
        """In every capture mode ``release`` is idempotent and the application takes writes
        after it (the core calls it for every application whose quiesce began); in each mode
        that completes after the thaw, ``complete`` writes every ``completed_paths()`` into
        the view, and ``release`` also works without ``complete`` (a failed run)."""
        for mode in make_plugin().capture_modes:
            for completing in (True, False) if mode != "snapshot" else (False,):
                app = make_plugin()
                app.capture = mode
                view = tmp_path / f"view-{mode}-{completing}"
                view.mkdir()
                try:
                    app.check()
                    app.prepare(kinds)
                    app.quiesce(Deadline.after(30))
                    app.unquiesce(())
                    self._assert_resumed(resumed, f"unquiesce, capture {mode!r} held")
                    if completing:
                        app.complete((Artifact("contract-snapshot", view=view),))
                        for original in app.completed_paths():
                            assert os.path.lexists(under(view, original)), (
                                f"capture {mode!r}: {original} is not in the view"
                            )
                finally:
                    app.unquiesce(())
                    app.release()
                    app.release()
                self._assert_resumed(resumed, f"release in capture mode {mode!r}")

    def test_unquiesce_without_a_quiesce(
        self, plugin: ApplicationPlugin, resumed: Probe | None, kinds: frozenset[SnapshotKind]
    ) -> None:
        """The core unquiesces every prepared application, also when its quiesce never began."""
        plugin.prepare(kinds)
        plugin.unquiesce(())
        self._assert_resumed(resumed, "an unquiesce without a quiesce")

    def test_quiesce_with_an_expired_deadline_returns_and_unquiesce_resumes(
        self, plugin: ApplicationPlugin, resumed: Probe | None, kinds: frozenset[SnapshotKind]
    ) -> None:
        plugin.prepare(kinds)
        took = self._quiesce_may_fail(plugin, Deadline(time.monotonic() - 1))
        assert took < GRACE, f"a quiesce with an expired deadline took {took:.1f}s"
        plugin.unquiesce(())
        self._assert_resumed(resumed, "a quiesce past its deadline")

    def test_quiesce_honours_the_deadline_when_it_cannot_finish(
        self,
        plugin: ApplicationPlugin,
        resumed: Probe | None,
        blocker: Callable[[], AbstractContextManager[Any]] | None,
        kinds: frozenset[SnapshotKind],
    ) -> None:
        if blocker is None:
            pytest.skip("no blocker fixture: nothing here keeps this quiesce from finishing")
        plugin.prepare(kinds)
        with blocker():
            start = time.monotonic()
            with pytest.raises(FreezeframeError):
                plugin.quiesce(Deadline.after(1.0))
            took = time.monotonic() - start
            assert took < 1.0 + GRACE, f"a quiesce with a 1 s deadline took {took:.1f}s"
            plugin.unquiesce(())
        self._assert_resumed(resumed, "a quiesce that failed")

    def test_interrupt_does_not_block_and_unquiesce_resumes(
        self,
        plugin: ApplicationPlugin,
        resumed: Probe | None,
        blocker: Callable[[], AbstractContextManager[Any]] | None,
        kinds: frozenset[SnapshotKind],
    ) -> None:
        """``interrupt`` from another thread, during a quiesce (held back by the blocker
        when there is one), returns at once; the quiesce ends; unquiesce resumes."""
        plugin.prepare(kinds)
        overrides = type(plugin).interrupt is not ApplicationPlugin.interrupt
        seconds = 20.0 if overrides else 1.0  # the default waits for the deadline
        with blocker() if blocker is not None else _nothing():
            quiesce = threading.Thread(
                target=self._quiesce_may_fail, args=(plugin, Deadline.after(seconds)), daemon=True
            )
            quiesce.start()
            time.sleep(0.2)
            start = time.monotonic()
            plugin.interrupt()
            assert time.monotonic() - start < 1.0, "interrupt() blocked"
            quiesce.join(seconds + GRACE)
            assert not quiesce.is_alive(), "the interrupted quiesce did not end"
        plugin.unquiesce(())
        self._assert_resumed(resumed, "an interrupted quiesce")

    def test_crash_safety_as_declared(
        self,
        plugin_class: type[ApplicationPlugin],
        plugin_table: Mapping[str, Any],
        base_dir: Path,
        plugin: ApplicationPlugin,
        resumed: Probe | None,
        crash_seconds: float,
        secrets: Sequence[str],
        kinds: frozenset[SnapshotKind],
    ) -> None:
        """A process that quiesced is killed: the application resumes by itself
        (``process-exit``, ``server-timeout``) or by the watchdog's command (``watchdog``)."""
        safety = plugin.crash_safety
        command = plugin.watchdog_thaw_command()
        if safety == CrashSafety.WATCHDOG:
            assert command, "crash_safety is WATCHDOG but watchdog_thaw_command() returns none"
            _no_secret_in("watchdog_thaw_command()", json.dumps(list(command)), secrets)
        if resumed is None:
            pytest.skip("no resumed fixture: cannot tell whether the application came back")
        spec = {**spec_of(plugin_class, "contract", plugin_table, base_dir), "do": "quiesce"}
        proc, said = start_child({**spec, "seconds": crash_seconds, "kinds": sorted(kinds)})
        err = kill_child(proc)
        assert said == "quiesced", f"the child did not quiesce: {err}"
        if safety == CrashSafety.WATCHDOG:
            import subprocess

            assert command is not None
            subprocess.run(list(command), check=True, timeout=60)
        within = GRACE + (crash_seconds if safety == CrashSafety.SERVER_TIMEOUT else 0)
        assert wait_until(resumed, within), f"{safety}: the application stayed quiesced"
        plugin.unquiesce(())  # after the watchdog thawed it: still no error

    def test_a_backup_through_the_cli_succeeds_and_shows_no_secret(
        self,
        plugin_class: type[ApplicationPlugin],
        plugin_table: Mapping[str, Any],
        base_dir: Path,
        kinds: frozenset[SnapshotKind],
        secrets: Sequence[str],
        tmp_path: Path,
        resumed: Probe | None,
    ) -> None:
        """A real ``freezeframe backup --json`` of the application (the plug-in found through
        its entry point; a copy of its data paths as the snapshot), then ``list --json``:
        it succeeds, the application goes on, and no output holds a secret."""
        atomic = SnapshotKind.PER_FILE not in kinds
        snapshot = "copy-snapshot-atomic" if atomic else "copy-snapshot"
        fields = "\n".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in plugin_table.items())
        profile = base_dir / "contract-profile.toml"
        profile.write_text(
            f'[profile]\nname = "contract"\nfreeze_timeout = "30s"\n'
            f"state_dir = {json.dumps(str(tmp_path / 'state'))}\n\n"
            f'[[application]]\nplugin = "{plugin_class.kind}"\nname = "contract"\n{fields}\n\n'
            f'[[backup]]\nbackend = "{snapshot}"\nname = "snap"\n'
            f"dir = {json.dumps(str(tmp_path / 'snaps'))}\n"
        )
        backup = run_freezeframe("backup", profile, "--json")
        listed = run_freezeframe("list", profile, "--json")
        for what, done in (("backup --json", backup), ("list --json", listed)):
            _no_secret_in(what, done.stdout + done.stderr, secrets)
        assert backup.returncode == 0, f"the backup failed: {backup.stderr}"
        assert json.loads(listed.stdout), "the backup is not listed"
        self._assert_resumed(resumed, "a backup")

    def test_no_secret_in_describe_or_paths(
        self, plugin: ApplicationPlugin, secrets: Sequence[str], kinds: frozenset[SnapshotKind]
    ) -> None:
        plugin.prepare(kinds)
        plugin.quiesce(Deadline.after(30))
        plugin.unquiesce(())
        described = json.dumps(dict(plugin.describe()))  # JSON-serialisable, too
        _no_secret_in("describe()", described, secrets)
        _no_secret_in("data_paths()", repr(list(plugin.data_paths())), secrets)
        _no_secret_in("watchdog_thaw_command()", repr(plugin.watchdog_thaw_command()), secrets)


class _nothing(AbstractContextManager[None]):
    def __exit__(self, *exc: object) -> None:
        return None


def snapshot_view(view: Path, original: Path = ORIGINAL) -> tuple[Artifact, Path]:
    """A hand-made snapshot view as a snapshot backend lays one out: the test tree at
    ``view`` + ``original``. Returns the snapshot's artifact and the tree's image."""
    image = under(view, original)
    image.parent.mkdir(parents=True, exist_ok=True)
    build_tree(image)
    return Artifact("contract-snapshot", view=view, metadata={"paths": [str(original)]}), image


class BackendContract(_Contract):
    """The rules a backend must keep; subclass it with the fixtures above."""

    role = "backend"

    # -- fixtures the subclass may override ---------------------------------------------

    @pytest.fixture
    def backend(
        self, backend_class: type[Backend], backend_table: Mapping[str, Any], base_dir: Path
    ) -> Backend:
        made = backend_class("contract", Table(dict(backend_table), base_dir=base_dir))
        made.check()
        return made

    @pytest.fixture
    def data_root(self, tmp_path: Path) -> Path:
        return tmp_path / "data"

    @pytest.fixture
    def leftovers(self, backend: Backend) -> Callable[[], set[str]]:
        def below_its_folders() -> set[str]:
            return {str(p) for d in backend.writes_to() if d.is_dir() for p in walk(d)}

        return below_its_folders

    @pytest.fixture
    def stage_input(
        self, backend: Backend, data_root: Path, tmp_path: Path
    ) -> tuple[tuple[Path, ...], Artifact | None, dict[str, Path]]:
        """``(data_paths, source, {original: where its data is now})`` for a stage."""
        if backend.role == Role.SNAPSHOT:
            tree = data_root / "app"
            tree.parent.mkdir(parents=True, exist_ok=True)
            build_tree(tree)
            return (tree,), None, {str(tree): tree}
        source, image = snapshot_view(tmp_path / "snapshot-view")
        return (ORIGINAL,), source, {str(ORIGINAL): image}

    # -- helpers -----------------------------------------------------------------------

    @staticmethod
    def _context(
        stage_input: tuple[tuple[Path, ...], Artifact | None, dict[str, Path]], run_id: str = RUN_ID
    ) -> StageContext:
        paths, source, _ = stage_input
        return StageContext(run_id, "contract", "contract", paths, source=source)

    @staticmethod
    def _run(backend: Backend, context: StageContext) -> Artifact:
        artifact = backend.run(context)
        return backend.seal(artifact) if backend.role == Role.SNAPSHOT else artifact

    # -- the rules ---------------------------------------------------------------------

    def test_restore_puts_every_file_at_its_original_path(
        self,
        backend: Backend,
        stage_input: tuple[tuple[Path, ...], Artifact | None, dict[str, Path]],
        tmp_path: Path,
        secrets: Sequence[str],
    ) -> None:
        artifact = self._run(backend, self._context(stage_input))
        _no_secret_in("the artifact", json.dumps(dict(artifact.metadata)), secrets)
        _no_secret_in("the artifact", repr(artifact), secrets)
        note = backend.verify(artifact)
        assert note is None or isinstance(note, str)
        target = tmp_path / "restore"
        target.mkdir()
        restored = backend.restore(artifact, target)
        assert restored and all(Path(p).is_relative_to(target) for p in restored), restored
        for original, data in stage_input[2].items():
            assert contents(under(target, original)) == contents(data), original
        backend.delete(artifact)

    def test_restore_of_a_selection_restores_it_alone(
        self,
        backend: Backend,
        stage_input: tuple[tuple[Path, ...], Artifact | None, dict[str, Path]],
        tmp_path: Path,
    ) -> None:
        """``RestoreOptions.paths``: a tree (its ``data-link.db`` a hard link of ``data.db``,
        which is not selected) and a file come back at their original paths, and nothing
        else; a path the artifact lacks makes nothing and is no error (the core says that
        nothing was there)."""
        restore: Callable[..., list[Path]] = backend.restore
        if "options" not in inspect.signature(restore).parameters:
            pytest.skip("restore declares no options: restore --app/--path refuse its stage")
        artifact = self._run(backend, self._context(stage_input))
        (original, data), *_ = stage_input[2].items()
        tree, file = Path(original, "nested"), Path(original, "tiny.txt")
        target = tmp_path / "restore"
        target.mkdir()

        restored = restore(artifact, target, options=RestoreOptions(paths=(tree, file)))

        assert sorted(map(Path, restored)) == [under(target, tree), under(target, file)]
        taken = {
            k: v for k, v in contents(data).items() if k.split("/")[0] in ("nested", "tiny.txt")
        }
        assert contents(under(target, original)) == taken  # nothing else
        for lacking in (Path(original, "nope"), Path("/elsewhere/freezeframe")):
            empty = tmp_path / f"restore-{lacking.name}"
            empty.mkdir()
            restore(artifact, empty, options=RestoreOptions(paths=(lacking,)))
            assert [p for p in walk(empty) if not p.is_dir()] == [], lacking
        backend.delete(artifact)

    def test_delete_of_a_gone_artifact_succeeds(
        self,
        backend: Backend,
        stage_input: tuple[tuple[Path, ...], Artifact | None, dict[str, Path]],
        leftovers: Callable[[], set[str]],
    ) -> None:
        before = leftovers()
        artifact = self._run(backend, self._context(stage_input))
        backend.delete(artifact)
        assert leftovers() == before, "delete left something behind"
        backend.delete(artifact)  # already gone: not an error
        assert backend.delete_many([artifact]) == {}
        with pytest.raises(FreezeframeError):
            backend.verify(artifact)

    def test_a_cancelled_stage_leaves_nothing(
        self,
        backend: Backend,
        stage_input: tuple[tuple[Path, ...], Artifact | None, dict[str, Path]],
        leftovers: Callable[[], set[str]],
    ) -> None:
        before = leftovers()
        context = self._context(stage_input)
        context.on_progress = lambda done_bytes, done_files: context.cancel_event.set()
        context.cancel_event.set()
        with pytest.raises(Cancelled):
            self._run(backend, context)
        assert leftovers() == before, "a cancelled stage left something behind"

    def test_discard_removes_a_crashed_runs_leftovers(
        self,
        backend_class: type[Backend],
        backend_table: Mapping[str, Any],
        base_dir: Path,
        backend: Backend,
        stage_input: tuple[tuple[Path, ...], Artifact | None, dict[str, Path]],
        leftovers: Callable[[], set[str]],
    ) -> None:
        """A process running the stage is killed at its first progress report; discard
        then removes whatever it left."""
        before = leftovers()
        paths, source, _ = stage_input
        spec = {
            **spec_of(backend_class, "contract", backend_table, base_dir),
            "do": "run",
            "run_id": RUN_ID,
            "data_paths": [str(p) for p in paths],
            "source": None
            if source is None
            else {"id": source.id, "view": str(source.view), "metadata": dict(source.metadata)},
        }
        staging = Path(tempfile.gettempdir())
        layouts = set(staging.glob("freezeframe-layout-*"))
        try:
            proc, said = start_child(spec)
            err = kill_child(proc)
        finally:
            # a run killed mid-stage leaves its private layout folder for the next run of
            # the stage to reuse (freezeframe.layout); this test's own is removed
            for folder in set(staging.glob("freezeframe-layout-*")) - layouts:
                with suppress(OSError):
                    folder.rmdir()
        assert said in ("progress", "finished"), f"the stage failed: {err}"
        backend.discard(RUN_ID)
        assert leftovers() == before, f"discard left what the crashed run ({said}) made"
        backend.discard(RUN_ID)  # nothing left: still no error
