"""Tests of the ``borg`` copy backend with the real borg 1.2, local and over a real sshd.

The source view is built by hand, as a snapshot backend lays one out: every
file under its original absolute path (``view/srv/shop/...`` for ``/srv/shop``).
What borg recorded is read back with borg itself, as a user would.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from freezeframe import (
    Artifact,
    Cancelled,
    ConfigError,
    FreezeframeError,
    RunStatus,
    StageContext,
    Table,
)
from freezeframe.engine import Engine
from freezeframe.profile import load_profile
from freezeframe.registry import Registry
from freezeframe_borg import BorgBackend
from freezeframe_testing.plugin import (
    make_counter_db,
    need,
    read_counter,
    restored,
    run_cli,
    writable_within,
)
from freezeframe_testing.procs import descendants
from freezeframe_testing.repositories import BORG_PASSPHRASE as PASSWORD
from freezeframe_testing.repositories import BORG_PASSPHRASE_ENV as PW_ENV
from freezeframe_testing.repositories import borg, copy_of
from freezeframe_testing.repositories import borg_archives as archives
from freezeframe_testing.sshd import Sshd, closed_port
from freezeframe_testing.trees import (
    AS_ROOT,
    Tree,
    build_tree,
    copy_view,
    du,
    flip_middle_byte,
)
from freezeframe_testing.trees import state as full_state

RUN = "20261129T093012Z-3fa2"
PROFILE = "nightly"
ARCHIVE = f"{PROFILE}-vault-{RUN}"
# borg cuts runs of zeros into chunks of up to 8 MiB; extract --sparse skips all-zero ones
SPARSE_HOLE = 20 << 20


# -- fixtures and helpers -----------------------------------------------------------------


pytestmark = pytest.mark.usefixtures("borg_env")


@pytest.fixture
def template(borg_template: Path) -> Path:
    return borg_template


@pytest.fixture
def repo(borg_repo: Path) -> Path:
    """An empty repository at ``tmp_path / "repo"``, where :func:`make_backend` looks."""
    return borg_repo


def make_backend(tmp_path: Path, **fields: Any) -> BorgBackend:
    table = {"repository": str(tmp_path / "repo"), "password_env": PW_ENV, "init": True, **fields}
    backend = BorgBackend("vault", Table(table, base_dir=tmp_path))
    backend.check()
    return backend


def state(root: Path) -> dict[str, dict[str, Any]]:
    """What a faithful copy of ``root`` must reproduce, extended attributes included."""
    return full_state(root, xattrs=True)


def tree_at(root: Path) -> Tree:
    """The kit's test tree, with extended attributes and a hole borg skips."""
    return build_tree(root, fraction_ns=123_456_789, xattrs=True, hole=SPARSE_HOLE)


def context(source: Artifact, run_id: str = RUN, **kw: Any) -> StageContext:
    return StageContext(run_id, PROFILE, "vault", (Path("/srv/shop"),), source=source, **kw)


@pytest.fixture
def view(tmp_path: Path) -> Path:
    return tmp_path / "view"


@pytest.fixture
def tree(view: Path) -> Tree:
    return tree_at(view / "srv" / "shop")


@pytest.fixture
def source(view: Path, tree: Tree) -> Artifact:
    return Artifact("snap-id", view=view, metadata={"paths": ["/srv/shop"]})


@pytest.fixture
def target(tmp_path: Path) -> Path:
    path = tmp_path / "restore"
    path.mkdir()
    return path


def borg_pids(verb: str | None = None) -> list[int]:
    """Running borg processes (borg is a Python program) of this test, doing ``verb``.

    Only this test's own (below its process): another borg on the machine is not ours.
    """
    return [p.pid for p in descendants() if p.runs("borg", *([verb] if verb else []))]


# -- configuration ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"password_env": None}, "password_env", "missing"),
        ({"password_env": "FF_TEST_UNSET_VARIABLE"}, "password_env", "is not set"),
        ({"repository": None}, "repository", "missing"),
        ({"ssh_command": ["ssh"]}, "ssh_command", "only remote"),
        ({"verify_data": "some"}, "verify_data", "expected one of"),
        ({"init": 1}, "init", "true or false"),
    ],
)
def test_fields_are_checked(
    tmp_path: Path, fields: dict[str, Any], field: str, message: str
) -> None:
    table = {"repository": str(tmp_path / "repo"), "password_env": PW_ENV, **fields}
    with pytest.raises(ConfigError, match=message) as e:
        BorgBackend(
            "vault", Table({k: v for k, v in table.items() if v is not None}, base_dir=tmp_path)
        )
    assert e.value.field == field


def test_an_empty_passphrase_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PW_ENV, "")
    with pytest.raises(ConfigError, match="empty"):
        BorgBackend("v", Table({"repository": "r", "password_env": PW_ENV}, base_dir=tmp_path))


def test_remote_and_local_repositories_are_told_apart(tmp_path: Path) -> None:
    def repo_of(value: str) -> tuple[str, Path | None]:
        b = BorgBackend(
            "v", Table({"repository": value, "password_env": PW_ENV}, base_dir=tmp_path)
        )
        return b.repository, b.local

    assert repo_of("ssh://u@h:2222/srv/borg") == ("ssh://u@h:2222/srv/borg", None)
    assert repo_of("u@h:borg") == ("u@h:borg", None)
    assert repo_of("backups/borg") == (str(tmp_path / "backups/borg"), tmp_path / "backups/borg")
    assert repo_of("/srv/borg") == ("/srv/borg", Path("/srv/borg"))


# -- the round trip -----------------------------------------------------------------------


def test_round_trip_under_the_original_paths_then_an_unchanged_run_adds_almost_nothing(
    repo: Path, tmp_path: Path, source: Artifact, tree: Tree, view: Path, target: Path
) -> None:
    backend = make_backend(tmp_path)
    before = state(tree.root)

    first = backend.run(context(source))

    assert first.id == ARCHIVE and first.metadata["paths"] == ["/srv/shop"]
    assert len(first.metadata["archive_id"]) == 64
    # borg counts regular files and their bytes, a hard-linked one once, and its own metadata
    assert first.files == tree.inodes
    assert tree.bytes <= first.bytes < tree.bytes + (64 << 10)
    assert first.metadata["added_bytes"] >= tree.bytes - tree.hole  # random: nothing to squeeze
    # What borg itself recorded: the original paths (borg drops the leading "/").
    items = [
        json.loads(line) for line in borg("list", "--json-lines", f"{repo}::{ARCHIVE}").splitlines()
    ]
    paths = {i["path"] for i in items}
    assert {"srv/shop", "srv/shop/nested/a/b/deep.txt", "srv/shop/link-abs"} <= paths
    assert not [p for p in paths if not p.startswith("srv/shop")]

    view2 = tmp_path / "view2"
    copy_view(view, view2)  # the next run's snapshot: the same data in other files
    second = backend.run(
        context(Artifact("snap-2", view=view2, metadata={"paths": ["/srv/shop"]}), "RUN-2")
    )

    assert second.files == first.files
    assert abs(second.bytes - first.bytes) < 4096  # the same data; the metadata differs a little
    assert second.metadata["added_bytes"] < min(64 << 10, first.metadata["added_bytes"] // 100)
    assert backend.restore(second, target) == [target / "srv" / "shop"]
    assert os.listdir(target) == ["srv"]
    assert state(target / "srv" / "shop") == before
    back = target / "srv" / "shop" / "sparse.img"
    assert back.stat().st_blocks * 512 <= SPARSE_HOLE // 2  # the hole is a hole again
    with open(back, "rb") as f:
        assert f.read(SPARSE_HOLE) == bytes(SPARSE_HOLE) and f.read() == b"tail"


def test_snapshots_laid_out_elsewhere_are_recorded_under_their_original_paths(
    repo: Path, tmp_path: Path, target: Path
) -> None:
    need(AS_ROOT, "laying images out under their original paths needs a mount namespace (root)")
    view = tmp_path / "snaps" / RUN
    tree = tree_at(view / "subvol-0" / "shop")
    conf = view / "subvol-1" / "shop.conf"
    conf.parent.mkdir()
    conf.write_bytes(b"[shop]\n")
    source = Artifact(
        RUN,
        view=view,
        metadata={
            "paths": ["/srv/shop", "/etc/shop.conf"],
            "locations": {"/srv/shop": str(tree.root), "/etc/shop.conf": str(conf)},
        },
    )
    backend = make_backend(tmp_path)

    artifact = backend.run(context(source))

    assert artifact.metadata["layout"] == "namespace"
    borg("extract", f"{repo}::{artifact.id}", cwd=target)  # borg alone
    assert sorted(os.listdir(target)) == ["etc", "srv"]
    assert state(target / "srv" / "shop") == state(tree.root)
    assert (target / "etc" / "shop.conf").read_bytes() == b"[shop]\n"


# -- retention, discard, verify -----------------------------------------------------------


def test_discard_delete_many_and_verify(repo: Path, tmp_path: Path, view: Path) -> None:
    backend = make_backend(tmp_path)
    made = []
    for i in range(3):
        folder = view / f"run{i}" / "srv" / "shop"
        folder.mkdir(parents=True)
        (folder / "unique.bin").write_bytes(random.Random(i).randbytes(1 << 20))
        source = Artifact(f"s{i}", view=view / f"run{i}", metadata={"paths": ["/srv/shop"]})
        made.append(backend.run(context(source, f"RUN-{i}")))
    size_before = du(repo / "data")

    backend.discard("RUN-1")  # as after a crash: found by its name
    assert backend.delete_many(made[:2]) == {}  # RUN-1's is gone already: fine

    assert archives(repo) == [made[2].id]
    assert size_before - du(repo / "data") >= 2 << 20  # compacted: the unique MiBs are gone
    with pytest.raises(FreezeframeError, match="is gone"):
        backend.verify(made[0])

    backend.verify(made[2])
    segments = sorted((repo / "data").rglob("*"), key=lambda p: p.stat().st_size)
    flip_middle_byte(segments[-1])
    with pytest.raises(FreezeframeError, match=r"borg check .*(integrity|checksum)") as e:
        backend.verify(made[2])
    assert "\n" not in str(e.value)


def test_a_cancel_after_borg_finished_removes_the_archive(
    repo: Path, tmp_path: Path, source: Artifact
) -> None:
    backend = make_backend(tmp_path)
    ctx = context(source)

    def cancel_once_borg_is_gone(done: int, files: int) -> None:
        if not borg_pids("create"):  # its progress comes while it runs, too
            ctx.cancel_event.set()

    ctx.on_progress = cancel_once_borg_is_gone

    with pytest.raises(Cancelled):
        backend.run(ctx)

    assert archives(repo) == []


def test_borg_progress_streams_while_it_runs(repo: Path, tmp_path: Path, view: Path) -> None:
    """borg's own progress (--progress --log-json) is the stage's as it comes: the bar
    moves while borg reads, rather than standing still until borg ends."""
    folder = view / "srv" / "shop"
    folder.mkdir(parents=True)
    (folder / "big.bin").write_bytes(random.Random(6).randbytes(96 << 20))
    backend = make_backend(tmp_path)
    ctx = context(Artifact("s", view=view, metadata={"paths": ["/srv/shop"]}))
    while_running: list[int] = []
    calls: list[tuple[int, int]] = []

    def record(done: int, files: int) -> None:
        calls.append((done, files))
        if borg_pids("create"):
            while_running.append(done)

    ctx.on_progress = record
    artifact = backend.run(ctx)

    assert any(0 < done < 96 << 20 for done in while_running), while_running
    dones = [done for done, _ in calls]
    assert dones == sorted(dones)
    assert calls[-1] == (artifact.bytes, artifact.files) and artifact.files == 1


def test_a_wrong_passphrase_is_said_alone_though_init_is_true(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FF_TEST_OTHER_PASSPHRASE", "not the passphrase")
    table = {"repository": str(repo), "password_env": "FF_TEST_OTHER_PASSPHRASE", "init": True}
    backend = BorgBackend("offsite", Table(table, base_dir=tmp_path))
    with pytest.raises(FreezeframeError) as e:
        backend.check()
    assert "is incorrect" in str(e.value) and "init" not in str(e.value), str(e.value)
    assert "\n" not in str(e.value)


def test_cancel_kills_borg_and_leaves_no_archive(repo: Path, tmp_path: Path, view: Path) -> None:
    folder = view / "srv" / "shop"
    folder.mkdir(parents=True)
    (folder / "big.bin").write_bytes(random.Random(5).randbytes(160 << 20))
    backend = make_backend(tmp_path)
    ctx = context(Artifact("s", view=view, metadata={"paths": ["/srv/shop"]}))
    stop = threading.Event()
    cancelled_mid_create: list[bool] = []

    def cancel_once_borg_writes() -> None:
        while not stop.is_set():
            if borg_pids("create") and du(repo / "data") > 4 << 20:
                ctx.cancel_event.set()
                cancelled_mid_create.append(bool(borg_pids("create")))
                return
            time.sleep(0.005)

    watcher = threading.Thread(target=cancel_once_borg_writes, daemon=True)
    watcher.start()
    try:
        with pytest.raises(Cancelled):
            backend.run(ctx)
    finally:
        stop.set()
        watcher.join()

    assert cancelled_mid_create == [True]  # borg was still writing: it was killed
    assert not borg_pids("create")
    assert archives(repo) == []
    assert du(repo / "data") < 1 << 20  # what it had written was rolled back


# -- over ssh ---------------------------------------------------------------------------


def test_ssh_round_trip_and_delete(
    tmp_path: Path, sshd: Sshd, source: Artifact, tree: Tree, target: Path
) -> None:
    remote = tmp_path / "remote" / "repo"
    backend = make_backend(tmp_path, repository=sshd.ssh_url(remote), ssh_command=sshd.ssh_command)
    assert (remote / "config").is_file()  # init = true made it, over ssh

    artifact = backend.run(context(source))
    backend.restore(artifact, target)
    assert state(target / "srv" / "shop") == state(tree.root)
    assert backend.delete_many([artifact]) == {}

    assert archives(remote) == []
    assert du(remote / "data") < 64 << 10  # compacted
    assert sshd.idle()  # every borg serve it started has ended


def test_an_unreachable_ssh_host_is_one_line(tmp_path: Path) -> None:
    port = closed_port()
    table = {
        "repository": f"ssh://nobody@127.0.0.1:{port}{tmp_path}/repo",
        "password_env": PW_ENV,
        "init": True,
        "ssh_command": ["ssh", "-o", "StrictHostKeyChecking=yes"],
    }
    backend = BorgBackend("vault", Table(table, base_dir=tmp_path))
    with pytest.raises(FreezeframeError) as e:
        backend.check()
    message = str(e.value)
    assert "\n" not in message
    assert f"port {port}: Connection refused" in message and "borg open" in message


# -- through the engine: faults, retention, secrets ---------------------------------------

PROFILE_TOML = """
    [profile]
    name = "shop"

    [[application]]
    plugin = "sqlite"
    name = "orders"
    path = "{db}"

    [[backup]]
    backend = "clone"
    name = "snap"
    dir = "{snaps}"
    paths = ["{extra}"]

    [[backup]]
    backend = "borg"
    name = "vault"
    repository = "{repository}"
    {password}
    init = {init}
    {more}
"""


@dataclass
class Shop:
    db: Path
    extra: Path
    snaps: Path
    write: Any

    def profile(
        self,
        repository: str | Path,
        *,
        init: bool = True,
        password: str = "",
        more: str = "",
        name: str = "profile.toml",
    ) -> Path:
        path: Path = self.write(
            PROFILE_TOML.format(
                db=self.db,
                snaps=self.snaps,
                extra=self.extra,
                repository=repository,
                password=password or f'password_env = "{PW_ENV}"',
                init=str(init).lower(),
                more=more,
            ),
            name,
        )
        return path


@pytest.fixture
def shop(tmp_path: Path, write_profile: Any) -> Shop:
    data = tmp_path / "data"
    data.mkdir()
    extra = tmp_path / "files"
    extra.mkdir()
    (extra / "a.bin").write_bytes(random.Random(9).randbytes(256 << 10))
    return Shop(make_counter_db(data / "orders.db"), extra, tmp_path / "snaps", write_profile)


def bump(db: Path) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE counter SET n = n + 1")
    conn.close()


def backup(profile: Path, registry: Registry) -> Any:
    return Engine(load_profile(profile, registry), registry).backup().record


def assert_failed_cleanly(run: Any, db: Path, *expected: str) -> None:
    """Failed, one line naming the cause, the application never left frozen."""
    assert run.status == RunStatus.FAILED
    assert run.error and "\n" not in run.error
    for text in expected:
        assert text in run.error, run.error
    app = run.applications[0]
    if app.quiesce_start is not None:  # it was frozen: it was thawed before the copy stage
        stage = run.stage("vault")
        assert app.thaw_end is not None
        assert stage.started_at is None or app.thaw_end <= stage.started_at
    assert writable_within(db, 1.0)
    assert PASSWORD not in run.error


def test_faults_fail_the_run_in_one_line_and_keep_earlier_backups(
    tmp_path: Path,
    template: Path,
    shop: Shop,
    registry: Registry,
    sshd: Sshd,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    remote = copy_of(template, tmp_path / "remote-repo")
    ssh = f"ssh_command = {json.dumps(sshd.ssh_command)}"
    good = shop.profile(sshd.ssh_url(remote), more=ssh, name="good.toml")
    bump(shop.db)
    first = backup(good, registry)
    assert first.status == RunStatus.SUCCEEDED, first.error
    monkeypatch.setenv("FF_TEST_OTHER_PASSPHRASE", "not the passphrase")
    port = closed_port()
    faults = {
        "wrong passphrase": (
            shop.profile(
                sshd.ssh_url(remote),
                password='password_env = "FF_TEST_OTHER_PASSPHRASE"',  # noqa: S106
                more=ssh,
                name="wrong-passphrase.toml",
            ),
            ["passphrase supplied in BORG_PASSPHRASE", "is incorrect"],
        ),
        "missing repository": (
            shop.profile(tmp_path / "nowhere", init=False, name="missing.toml"),
            ["does not exist", "set init = true"],
        ),
        "unreachable host": (
            shop.profile(
                f"ssh://{sshd.user}@127.0.0.1:{port}{remote}", more=ssh, name="unreachable.toml"
            ),
            [f"port {port}: Connection refused"],
        ),
    }

    for profile, expected in faults.values():
        bump(shop.db)
        assert_failed_cleanly(backup(profile, registry), shop.db, "vault", *expected)

    assert not (tmp_path / "nowhere").exists()
    engine = Engine(load_profile(good, registry), registry)
    engine.restore(first.run_id, tmp_path / "back")
    assert read_counter(restored(tmp_path / "back", shop.db)) == 1
    assert archives(remote) == [first.stage("vault").artifact.id]


def test_a_full_disk_fails_the_copy_after_the_thaw_and_leaves_nothing(
    template: Path, tmp_path: Path, shop: Shop, registry: Registry, loop_fs: Any
) -> None:
    fs = loop_fs("ext4", size_mb=24)
    repo = copy_of(template, fs.mountpoint / "repo")
    profile = shop.profile(repo)
    bump(shop.db)
    first = backup(profile, registry)
    assert first.status == RunStatus.SUCCEEDED, first.error
    used = du(repo)
    (shop.extra / "huge.bin").write_bytes(random.Random(2).randbytes(40 << 20))
    bump(shop.db)

    failed = backup(profile, registry)

    assert_failed_cleanly(failed, shop.db, "vault", "No space left on device")
    assert failed.applications[0].thaw_end is not None  # frozen, then thawed before the copy
    assert du(repo) - used < 1 << 20  # borg rolled the half-written transaction back
    assert archives(repo) == [first.stage("vault").artifact.id]
    engine = Engine(load_profile(profile, registry), registry)
    engine.restore(first.run_id, tmp_path / "back")
    assert read_counter(restored(tmp_path / "back", shop.db)) == 1
    borg("check", "--verify-data", str(repo))


def test_retention_keeps_exactly_what_the_policy_says(
    repo: Path, tmp_path: Path, shop: Shop, registry: Registry
) -> None:
    profile = shop.profile(repo, more="keep = { last = 2 }")
    runs = []
    for _ in range(3):
        bump(shop.db)
        run = backup(profile, registry)
        assert run.status == RunStatus.SUCCEEDED, run.error
        runs.append(run)

    assert sorted(archives(repo)) == sorted(f"shop-vault-{r.run_id}" for r in runs[1:])
    listed = run_cli("list", profile, "--json").json()
    deleted = {r["run_id"]: {s["name"]: s["deleted"] for s in r["stages"]}["vault"] for r in listed}
    assert deleted == {r.run_id: i < 1 for i, r in enumerate(runs)}


def test_the_passphrase_never_shows_in_argv_output_catalog_or_logs(
    tmp_path: Path, shop: Shop
) -> None:
    pw_file = tmp_path / "borg.pass"
    pw_file.write_text(PASSWORD + "\n")
    pw_file.chmod(0o600)
    profile = shop.profile(tmp_path / "repo", password=f'password_file = "{pw_file}"')
    cmdlines: list[bytes] = []
    stop = threading.Event()

    def spy() -> None:  # every borg process's argv, while it runs
        while not stop.is_set():
            for pid in borg_pids():
                with contextlib.suppress(OSError):  # it may have exited
                    cmdlines.append(Path(f"/proc/{pid}/cmdline").read_bytes())
            time.sleep(0.002)

    watcher = threading.Thread(target=spy, daemon=True)
    watcher.start()
    try:
        outputs = [run_cli("backup", profile, "--json", "--debug")]
        outputs.append(run_cli("verify", profile, "--json"))
        pw_file.write_text("a wrong passphrase\n")
        outputs.append(run_cli("backup", profile, "--json", "--debug"))
    finally:
        stop.set()
        watcher.join()

    assert [o.returncode for o in outputs] == [0, 0, 1]
    assert any(b"create" in c for c in cmdlines), "the spy must have seen borg running"
    assert not [c for c in cmdlines if PASSWORD.encode() in c]
    for o in outputs:
        assert PASSWORD not in o.stdout and PASSWORD not in o.stderr
    assert "is incorrect" in outputs[-1].stdout + outputs[-1].stderr
    for f in (tmp_path / "state").rglob("*"):
        if f.is_file():
            assert PASSWORD.encode() not in f.read_bytes(), f
