"""freezeframe.digests: the manifest of a view, and the check that reads every byte against it.

Views here are plain folders laid out as a snapshot backend lays them out
(original absolute paths below the view), on the test's own filesystem.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from freezeframe import Artifact, FreezeframeError, digests
from freezeframe_testing.damage import flip_byte


def view_of(tmp_path: Path, run_id: str = "r1") -> tuple[Artifact, Path]:
    """A view holding one data folder with odd names, a hard link, a symlink and a FIFO."""
    original = Path("/srv/shop")
    view = tmp_path / "snaps" / run_id
    data = view / "srv" / "shop"
    (data / "sub").mkdir(parents=True)
    (data / "orders.db").write_bytes(os.urandom(3 << 20))  # more than one read of 1 MiB
    (data / "sub" / "line\nbreak").write_bytes(b"a name with a newline")
    (data / os.fsdecode(b"latin-\xe9")).write_bytes(b"a name that is not UTF-8")
    os.link(data / "orders.db", data / "sub" / "hard-link.db")
    (data / "current").symlink_to("orders.db")
    os.mkfifo(data / "fifo")
    return Artifact(run_id, view=view, metadata={"paths": [str(original)]}), data


def test_a_sealed_view_checks_and_every_inode_is_read_once(tmp_path: Path) -> None:
    artifact, _ = view_of(tmp_path)
    sealed = digests.seal(artifact)
    recorded = sealed.metadata["manifest"]
    assert recorded["file"] == str(tmp_path / "snaps" / "r1.manifest")
    assert (recorded["entries"], recorded["files"]) == (8, 4)  # 2 folders, link, FIFO
    assert recorded["bytes"] == (3 << 20) + 21 + 24
    assert digests.sealed(sealed) and not digests.sealed(artifact)
    digests.check(sealed)
    assert sorted(p.name for p in (tmp_path / "snaps").iterdir()) == ["r1", "r1.manifest"]


def test_odd_names_are_named_as_they_are(tmp_path: Path) -> None:
    artifact, data = view_of(tmp_path)
    sealed = digests.seal(artifact)
    latin = os.fsdecode(b"latin-\xe9")
    flip_byte(tmp_path, data / latin, Path("-"))
    (data / "sub" / "line\nbreak").unlink()
    with pytest.raises(FreezeframeError) as e:
        digests.check(sealed)
    assert str(e.value) == (
        f"{artifact.view} does not match its manifest: "
        f"srv/shop/{latin} changed, srv/shop/sub/line\nbreak missing"
    )


def test_a_changed_type_and_a_re_pointed_symlink_are_named(tmp_path: Path) -> None:
    artifact, data = view_of(tmp_path)
    sealed = digests.seal(artifact)
    (data / "fifo").unlink()
    (data / "fifo").write_bytes(b"")
    (data / "current").unlink()
    (data / "current").symlink_to("/etc/passwd")
    with pytest.raises(FreezeframeError) as e:
        digests.check(sealed)
    assert "srv/shop/current changed (points to '/etc/passwd', pointed to 'orders.db')" in str(
        e.value
    )
    assert "srv/shop/fifo is a file, was a special file" in str(e.value)


def test_a_missing_manifest_is_named(tmp_path: Path) -> None:
    artifact, _ = view_of(tmp_path)
    sealed = digests.seal(artifact)
    Path(sealed.metadata["manifest"]["file"]).unlink()
    with pytest.raises(FreezeframeError, match=r"manifest .*/r1\.manifest is missing$"):
        digests.check(sealed)


@pytest.mark.parametrize("how", ["another run's", "truncated", "emptied"])
def test_a_manifest_that_is_not_the_recorded_one_is_named(tmp_path: Path, how: str) -> None:
    artifact, _ = view_of(tmp_path)
    sealed = digests.seal(artifact)
    manifest = Path(sealed.metadata["manifest"]["file"])
    if how == "another run's":
        other, _ = view_of(tmp_path, "r2")
        digests.seal(other)
        os.replace(tmp_path / "snaps" / "r2.manifest", manifest)
    elif how == "truncated":
        manifest.write_bytes(manifest.read_bytes()[:-10])
    else:
        manifest.write_bytes(b"")
    with pytest.raises(FreezeframeError, match=r"is not the one recorded"):
        digests.check(sealed)


def test_remove_takes_the_manifest_and_a_half_written_one(tmp_path: Path) -> None:
    artifact, _ = view_of(tmp_path)
    assert artifact.view is not None
    digests.seal(artifact)
    (tmp_path / "snaps" / ".r1.manifest.partial").write_bytes(b"half")
    shutil.rmtree(artifact.view)
    digests.remove(artifact.view)
    digests.remove(artifact.view)  # gone already: fine
    assert list((tmp_path / "snaps").iterdir()) == []
