"""Tests of the ``restic`` copy backend with the real restic, local and over a real sshd.

The source view is built by hand, as a snapshot backend lays one out: every
file under its original absolute path (``view/srv/shop/...`` for ``/srv/shop``).
What restic recorded is read back with restic itself, as a user would.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
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
from freezeframe_restic import ResticBackend
from freezeframe_testing.plugin import (
    make_counter_db,
    need,
    read_counter,
    restored,
    run_cli,
    writable_within,
)
from freezeframe_testing.procs import descendants
from freezeframe_testing.repositories import RESTIC_PASSWORD as PASSWORD
from freezeframe_testing.repositories import RESTIC_PASSWORD_ENV as PW_ENV
from freezeframe_testing.repositories import copy_of, restic
from freezeframe_testing.sshd import Sshd, closed_port
from freezeframe_testing.trees import (
    AS_ROOT,
    SPARSE_HOLE,
    Tree,
    build_tree,
    copy_view,
    du,
    flip_middle_byte,
)
from freezeframe_testing.trees import state as full_state

RUN = "20261129T093012Z-3fa2"
PROFILE = "nightly"


# -- fixtures and helpers -----------------------------------------------------------------


pytestmark = pytest.mark.usefixtures("restic_env")


@pytest.fixture
def template(restic_template: Path) -> Path:
    return restic_template


@pytest.fixture
def repo(restic_repo: Path) -> Path:
    """An empty repository at ``tmp_path / "repo"``, where :func:`make_backend` looks."""
    return restic_repo


def make_backend(tmp_path: Path, **fields: Any) -> ResticBackend:
    table = {"repository": str(tmp_path / "repo"), "password_env": PW_ENV, "init": True, **fields}
    backend = ResticBackend("offsite", Table(table, base_dir=tmp_path))
    backend.check()
    return backend


def state(root: Path) -> dict[str, dict[str, Any]]:
    """What a faithful copy of ``root`` must reproduce, extended attributes included."""
    return full_state(root, xattrs=True)


def tree_at(root: Path) -> Tree:
    """The kit's test tree, with extended attributes."""
    return build_tree(root, fraction_ns=123_456_789, xattrs=True)


def context(source: Artifact, run_id: str = RUN, **kw: Any) -> StageContext:
    return StageContext(run_id, PROFILE, "offsite", (Path("/srv/shop"),), source=source, **kw)


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


# -- configuration ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"password_env": None}, "password_env", "missing"),
        ({"password_env": "FF_TEST_UNSET_VARIABLE"}, "password_env", "is not set"),
        ({"repository": None}, "repository", "missing"),
        ({"ssh_command": ["ssh"]}, "ssh_command", "only sftp"),
        ({"verify_data": "most"}, "verify_data", "expected"),
        ({"init": "yes"}, "init", "true or false"),
        (
            {"repository": "sftp:h:/r", "ssh_command": ["ssh", "-o", "ProxyCommand='x'"]},
            "ssh_command",
            "quotes",
        ),
    ],
)
def test_fields_are_checked(
    tmp_path: Path, fields: dict[str, Any], field: str, message: str
) -> None:
    table = {"repository": str(tmp_path / "repo"), "password_env": PW_ENV, **fields}
    with pytest.raises(ConfigError, match=message) as e:
        ResticBackend(
            "offsite", Table({k: v for k, v in table.items() if v is not None}, base_dir=tmp_path)
        )
    assert e.value.field == field


def test_a_wrong_password_is_said_alone_though_init_is_true(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """init = true creates a repository that is missing, never one that would not open:
    a wrong password is said as it is, without "init could not create it"."""
    monkeypatch.setenv("FF_TEST_OTHER_PASSWORD", "not the password")
    table = {"repository": str(repo), "password_env": "FF_TEST_OTHER_PASSWORD", "init": True}
    backend = ResticBackend("offsite", Table(table, base_dir=tmp_path))
    with pytest.raises(FreezeframeError) as e:
        backend.check()
    assert str(e.value) == f"restic open ({repo}): wrong password or no key found"
    # an empty folder holds no repository: init = true makes one there
    (tmp_path / "empty").mkdir()
    make_backend(tmp_path, repository=str(tmp_path / "empty"))
    assert (tmp_path / "empty" / "config").is_file()


def test_an_empty_password_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PW_ENV, "")
    with pytest.raises(ConfigError, match="empty"):
        ResticBackend("o", Table({"repository": "r", "password_env": PW_ENV}, base_dir=tmp_path))


def test_a_password_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text(PASSWORD)
    pw.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        ResticBackend("o", Table({"repository": "r", "password_file": str(pw)}, base_dir=tmp_path))


# -- the round trip -----------------------------------------------------------------------


def test_round_trip_under_the_original_paths_then_an_unchanged_run_adds_almost_nothing(
    repo: Path, tmp_path: Path, source: Artifact, tree: Tree, view: Path, target: Path
) -> None:
    backend = make_backend(tmp_path)
    before = state(tree.root)

    first = backend.run(context(source))

    assert len(first.id) == 64 and first.metadata["snapshot"] == first.id[:8]
    assert first.metadata["paths"] == ["/srv/shop"]
    # restic counts regular files, each hard-link name once, and every byte it read
    assert first.files == tree.files - tree.symlinks
    assert first.bytes == tree.bytes + tree.linked_bytes
    assert first.metadata["added_bytes"] >= tree.bytes - tree.hole  # random: nothing to squeeze
    # What restic itself recorded: the original paths, tags naming the run.
    out = restic(tmp_path / "repo", "ls", "--json", first.id).splitlines()
    snapshot, nodes = json.loads(out[0]), [json.loads(line) for line in out[1:]]
    assert sorted(snapshot["tags"]) == sorted(
        ["freezeframe", f"profile:{PROFILE}", "stage:offsite", f"run:{RUN}"]
    )
    paths = {n["path"] for n in nodes}
    assert {"/srv", "/srv/shop", "/srv/shop/nested/a/b/deep.txt"} <= paths
    assert not [p for p in paths if str(tmp_path) in p]

    view2 = tmp_path / "view2"
    copy_view(view, view2)  # the next run's snapshot: the same data in other files
    second = backend.run(
        context(Artifact("snap-2", view=view2, metadata={"paths": ["/srv/shop"]}), "RUN-2")
    )

    assert second.metadata["parent"] == first.id
    assert second.bytes == first.bytes
    assert second.metadata["added_bytes"] < min(64 << 10, first.metadata["added_bytes"] // 100)
    assert backend.restore(second, target) == [target / "srv" / "shop"]
    assert os.listdir(target) == ["srv"]
    assert state(target / "srv" / "shop") == before
    back = target / "srv" / "shop" / "sparse.img"
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
    nodes = restic(tmp_path / "repo", "ls", "--json", artifact.id).splitlines()[1:]
    paths = {json.loads(n)["path"] for n in nodes}
    assert {"/srv/shop/big.bin", "/etc/shop.conf"} <= paths
    assert not [p for p in paths if "subvol" in p]
    restic(tmp_path / "repo", "restore", artifact.id, "--target", str(target))  # restic alone
    assert state(target / "srv" / "shop") == state(tree.root)
    assert (target / "etc" / "shop.conf").read_bytes() == b"[shop]\n"
    staging = Path(os.environ.get("TMPDIR", "/tmp"))
    assert not list(staging.glob(f"freezeframe-layout-{PROFILE}-offsite*"))


def test_a_snapshot_is_recorded_as_the_live_paths_and_the_live_files_stay_untouched(
    repo: Path, tmp_path: Path, target: Path
) -> None:
    need(AS_ROOT, "mounting images over the original paths needs a mount namespace (root)")
    live = tree_at(tmp_path / "live" / "shop")  # the application's files: they exist here
    conf = tmp_path / "live" / "shop.conf"
    conf.write_bytes(b"[live]\n")
    view = tmp_path / "snaps" / RUN  # the snapshot keeps its images elsewhere, as btrfs does
    image = view / "subvol-0" / "shop"
    image.parent.mkdir(parents=True)
    copy_view(live.root, image)
    image_conf = view / "subvol-1" / "shop.conf"
    image_conf.parent.mkdir()
    image_conf.write_bytes(b"[snapshot]\n")
    (live.root / "tiny.txt").write_bytes(b"written after the snapshot")  # must not be backed up
    source = Artifact(
        RUN,
        view=view,
        metadata={
            "paths": [str(live.root), str(conf)],
            "locations": {str(live.root): str(image), str(conf): str(image_conf)},
        },
    )
    before = state(image)

    artifact = make_backend(tmp_path).run(context(source))

    assert artifact.metadata["layout"] == "original"
    (snapshot,) = json.loads(restic(tmp_path / "repo", "snapshots", "--json"))
    assert sorted(snapshot["paths"]) == sorted([str(live.root), str(conf)])  # restic's own record
    restic(tmp_path / "repo", "restore", artifact.id, "--target", str(target))  # restic alone
    assert state(target / live.root.relative_to("/")) == before
    assert (target / conf.relative_to("/")).read_bytes() == b"[snapshot]\n"
    # the mounts lived in restic's namespace only: the live files are as they were
    assert (live.root / "tiny.txt").read_bytes() == b"written after the snapshot"
    assert conf.read_bytes() == b"[live]\n"
    assert str(live.root) not in Path("/proc/self/mountinfo").read_text()


# -- retention, discard, verify -----------------------------------------------------------


def test_discard_delete_many_and_verify(repo: Path, tmp_path: Path, view: Path) -> None:
    backend = make_backend(tmp_path)
    artifacts = []
    for i in range(3):
        folder = view / f"run{i}" / "srv" / "shop"
        folder.mkdir(parents=True)
        (folder / "unique.bin").write_bytes(random.Random(i).randbytes(1 << 20))
        source = Artifact(f"s{i}", view=view / f"run{i}", metadata={"paths": ["/srv/shop"]})
        artifacts.append(backend.run(context(source, f"RUN-{i}")))
    data = tmp_path / "repo" / "data"
    size_before = du(data)

    backend.discard("RUN-1")  # as after a crash: found by its tags
    assert backend.delete_many(artifacts[:2]) == {}  # RUN-1's is gone already: fine

    left = json.loads(restic(tmp_path / "repo", "snapshots", "--json"))
    assert [s["id"] for s in left] == [artifacts[2].id]
    assert size_before - du(data) >= 2 << 20  # the two unique MiBs were pruned
    with pytest.raises(FreezeframeError, match="is gone"):
        backend.verify(artifacts[0])

    backend.verify(artifacts[2])
    packs = sorted(data.rglob("*"), key=lambda p: p.stat().st_size)
    flip_middle_byte(packs[-1])
    with pytest.raises(FreezeframeError, match=r"restic check .*does not match") as e:
        backend.verify(artifacts[2])
    assert "\n" not in str(e.value)


def test_a_cancel_after_restic_finished_removes_the_snapshot(
    repo: Path, tmp_path: Path, source: Artifact
) -> None:
    backend = make_backend(tmp_path)
    ctx = context(source)

    def cancel_once_restic_is_gone(done: int, files: int) -> None:
        if not restic_pids("backup"):  # its progress comes while it runs, too
            ctx.cancel_event.set()

    ctx.on_progress = cancel_once_restic_is_gone

    with pytest.raises(Cancelled):
        backend.run(ctx)

    assert json.loads(restic(tmp_path / "repo", "snapshots", "--json")) in ([], None)


def test_restic_progress_streams_with_its_total_while_it_runs(
    repo: Path, tmp_path: Path, view: Path
) -> None:
    """restic's own JSON status lines become the stage's progress as they come: the bar
    has restic's total and moves, rather than showing 0/? until restic ends."""
    folder = view / "srv" / "shop"
    folder.mkdir(parents=True)
    (folder / "big.bin").write_bytes(random.Random(6).randbytes(48 << 20))
    (folder / "small.txt").write_text("x" * 1000)
    backend = make_backend(tmp_path)
    ctx = context(Artifact("s", view=view, metadata={"paths": ["/srv/shop"]}))
    while_running: list[tuple[int, int, int | None]] = []
    calls: list[tuple[int, int]] = []

    def record(done: int, files: int) -> None:
        calls.append((done, files))
        if restic_pids("backup"):
            while_running.append((done, files, ctx.bytes_total))

    ctx.on_progress = record
    artifact = backend.run(ctx)

    total = (48 << 20) + 1000
    assert while_running, "no progress came while restic ran"
    # restic's scan counts the total as it goes: it grows to the whole, before the end
    assert all(t is not None and t <= total for _, _, t in while_running)
    assert any(t == total and done < total for done, _, t in while_running), while_running
    dones = [done for done, _ in calls]
    assert dones == sorted(dones)  # counts as restic counts them: they never go back
    assert calls[-1] == (artifact.bytes, artifact.files) == (total, 2)


def test_cancel_kills_restic_and_leaves_no_snapshot(repo: Path, tmp_path: Path, view: Path) -> None:
    folder = view / "srv" / "shop"
    folder.mkdir(parents=True)
    (folder / "big.bin").write_bytes(random.Random(5).randbytes(48 << 20))
    backend = make_backend(tmp_path)
    ctx = context(Artifact("s", view=view, metadata={"paths": ["/srv/shop"]}))
    seen = threading.Event()

    def cancel_when_restic_runs() -> None:
        while not seen.is_set():
            if restic_pids("backup"):
                seen.set()
                ctx.cancel_event.set()
            time.sleep(0.005)

    watcher = threading.Thread(target=cancel_when_restic_runs, daemon=True)
    watcher.start()
    try:
        with pytest.raises(Cancelled):
            backend.run(ctx)
    finally:
        seen.set()
        watcher.join()

    assert not restic_pids("backup")
    assert json.loads(restic(tmp_path / "repo", "snapshots", "--json")) in ([], None)
    assert du(tmp_path / "repo" / "data") < 1 << 20  # what it had sent was pruned


def restic_pids(verb: str | None = None) -> list[int]:
    """Running restic processes of this test (below its process) doing ``verb``."""
    return [p.pid for p in descendants() if p.runs("restic", *([verb] if verb else []))]


# -- over sftp -------------------------------------------------------------------------


def test_sftp_round_trip_and_delete(
    tmp_path: Path, sshd: Sshd, source: Artifact, tree: Tree, target: Path
) -> None:
    remote = tmp_path / "remote" / "repo"
    backend = make_backend(tmp_path, repository=sshd.sftp_url(remote), ssh_command=sshd.ssh_command)
    assert (remote / "config").is_file()  # init = true made it, over sftp

    artifact = backend.run(context(source))
    backend.restore(artifact, target)
    assert state(target / "srv" / "shop") == state(tree.root)
    assert backend.delete_many([artifact]) == {}

    assert json.loads(restic(remote, "snapshots", "--json")) in ([], None)
    assert du(remote / "data") == 0  # pruned
    assert sshd.idle()  # every ssh connection restic opened was closed


def test_an_unreachable_sftp_host_is_one_line(tmp_path: Path) -> None:
    port = closed_port()
    table = {
        "repository": f"sftp://nobody@127.0.0.1:{port}/{tmp_path}/repo",
        "password_env": PW_ENV,
        "init": True,
        "ssh_command": ["ssh", "-o", "StrictHostKeyChecking=yes"],
    }
    backend = ResticBackend("offsite", Table(table, base_dir=tmp_path))
    with pytest.raises(FreezeframeError) as e:
        backend.check()
    message = str(e.value)
    assert "\n" not in message
    assert f"port {port}: Connection refused" in message and "restic open" in message


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
    backend = "restic"
    name = "offsite"
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
    import sqlite3

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
        stage = run.stage("offsite")
        assert app.thaw_end is not None
        assert stage.started_at is None or app.thaw_end <= stage.started_at
    assert writable_within(db, 1.0)
    assert PASSWORD not in run.error


def test_faults_fail_the_run_in_one_line_and_keep_earlier_backups(
    tmp_path: Path, shop: Shop, registry: Registry, sshd: Sshd, monkeypatch: pytest.MonkeyPatch
) -> None:
    remote = tmp_path / "remote" / "repo"
    ssh = f"ssh_command = {json.dumps(sshd.ssh_command)}"
    good = shop.profile(sshd.sftp_url(remote), more=ssh, name="good.toml")
    bump(shop.db)
    first = backup(good, registry)
    assert first.status == RunStatus.SUCCEEDED, first.error
    monkeypatch.setenv("FF_TEST_OTHER_PASSWORD", "not the password")
    port = closed_port()
    faults = {
        "wrong password": (
            shop.profile(
                sshd.sftp_url(remote),
                password='password_env = "FF_TEST_OTHER_PASSWORD"',  # noqa: S106
                more=ssh,
                name="wrong-password.toml",
            ),
            ["wrong password or no key found"],
        ),
        "missing repository": (
            shop.profile(tmp_path / "nowhere", init=False, name="missing.toml"),
            ["unable to open config file", "set init = true"],
        ),
        "unreachable host": (
            shop.profile(
                f"sftp://{sshd.user}@127.0.0.1:{port}/{remote}", more=ssh, name="unreachable.toml"
            ),
            [f"port {port}: Connection refused"],
        ),
    }

    for profile, expected in faults.values():
        bump(shop.db)
        assert_failed_cleanly(backup(profile, registry), shop.db, "offsite", *expected)

    assert not (tmp_path / "nowhere").exists()
    engine = Engine(load_profile(good, registry), registry)
    engine.restore(first.run_id, tmp_path / "back")
    assert read_counter(restored(tmp_path / "back", shop.db)) == 1
    assert [s["id"] for s in json.loads(restic(remote, "snapshots", "--json"))] == [
        first.stage("offsite").artifact.id
    ]


def test_a_full_disk_fails_the_copy_after_the_thaw_and_leaves_nothing(
    template: Path, tmp_path: Path, shop: Shop, registry: Registry, loop_fs: Any
) -> None:
    fs = loop_fs("ext4", size_mb=24)
    repo = copy_of(template, fs.mountpoint / "repo")
    # restic 0.14 sometimes deadlocks after the failed write (about one run in six here):
    # the backend stops a backup that makes no progress (10 min by default)
    profile = shop.profile(repo, more='stall_timeout = "20s"')
    bump(shop.db)
    first = backup(profile, registry)
    assert first.status == RunStatus.SUCCEEDED, first.error
    used = du(repo)
    (shop.extra / "huge.bin").write_bytes(random.Random(2).randbytes(40 << 20))
    bump(shop.db)

    failed = backup(profile, registry)

    assert_failed_cleanly(failed, shop.db, "offsite")
    error = failed.error or ""
    assert "no space left on device" in error or "no progress for 20s (restic stalled" in error
    assert failed.applications[0].thaw_end is not None  # frozen, then thawed before the copy
    assert du(repo) - used < 1 << 20  # what the failed backup sent was pruned again
    snapshots = json.loads(restic(repo, "snapshots", "--json"))
    assert [s["id"] for s in snapshots] == [first.stage("offsite").artifact.id]
    engine = Engine(load_profile(profile, registry), registry)
    engine.restore(first.run_id, tmp_path / "back")
    assert read_counter(restored(tmp_path / "back", shop.db)) == 1
    restic(repo, "check", "--read-data")


def test_retention_keeps_exactly_what_the_policy_says(
    repo: Path, tmp_path: Path, shop: Shop, registry: Registry
) -> None:
    runs = []
    for _ in range(3):
        bump(shop.db)
        run = backup(shop.profile(repo, more="keep = { last = 2 }"), registry)
        assert run.status == RunStatus.SUCCEEDED, run.error
        runs.append(run)

    snapshots = json.loads(restic(repo, "snapshots", "--json"))
    tags = sorted(t for s in snapshots for t in s["tags"] if t.startswith("run:"))
    assert tags == sorted(f"run:{r.run_id}" for r in runs[1:])
    listed = run_cli("list", shop.profile(repo, more="keep = { last = 2 }"), "--json").json()
    deleted = {
        r["run_id"]: {s["name"]: s["deleted"] for s in r["stages"]}["offsite"] for r in listed
    }
    assert deleted == {r.run_id: i < 1 for i, r in enumerate(runs)}


def test_the_password_never_shows_in_argv_output_catalog_or_logs(
    tmp_path: Path, shop: Shop, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(PW_ENV)  # this profile reads a file: no variable of ours holds it
    pw_file = tmp_path / "restic.pass"
    pw_file.write_text(PASSWORD + "\n")
    pw_file.chmod(0o600)
    profile = shop.profile(tmp_path / "repo", password=f'password_file = "{pw_file}"')
    cmdlines: list[bytes] = []
    environs: list[bytes] = []
    stop = threading.Event()

    def spy() -> None:  # every restic process's argv and environment, while it runs
        while not stop.is_set():
            for pid in restic_pids():
                with contextlib.suppress(OSError):  # it may have exited
                    cmdlines.append(Path(f"/proc/{pid}/cmdline").read_bytes())
                    if environ := Path(f"/proc/{pid}/environ").read_bytes():  # b"": exited
                        environs.append(environ)
            time.sleep(0.002)

    watcher = threading.Thread(target=spy, daemon=True)
    watcher.start()
    try:
        outputs = [run_cli("backup", profile, "--json", "--debug")]
        outputs.append(run_cli("verify", profile, "--json"))
        pw_file.write_text("a wrong password\n")
        outputs.append(run_cli("backup", profile, "--json", "--debug"))
    finally:
        stop.set()
        watcher.join()

    assert [o.returncode for o in outputs] == [0, 0, 1]
    assert any(b"backup" in c for c in cmdlines), "the spy must have seen restic running"
    assert not [c for c in cmdlines if PASSWORD.encode() in c]
    # from a file, restic reads the password itself: not even its environment holds it
    assert environs and not [e for e in environs if PASSWORD.encode() in e]
    pointed = f"RESTIC_PASSWORD_FILE={pw_file}".encode()
    assert any(pointed in e.split(b"\0") for e in environs)  # pointed at the file instead
    for o in outputs:
        assert PASSWORD not in o.stdout and PASSWORD not in o.stderr
    assert "wrong password" in outputs[-1].stdout + outputs[-1].stderr
    for f in (tmp_path / "state").rglob("*"):
        if f.is_file():
            assert PASSWORD.encode() not in f.read_bytes(), f
