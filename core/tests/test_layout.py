"""The staging folder of :func:`freezeframe.layout.laid_out`, shared by no two runs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from freezeframe import Artifact
from freezeframe.layout import laid_out

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="laying out below a tmpfs needs root")


def elsewhere(tmp_path: Path) -> Artifact:
    """A snapshot whose image of a path missing on this machine is kept elsewhere."""
    image = tmp_path / "images" / "shop"
    image.mkdir(parents=True)
    (image / "orders.db").write_bytes(b"x")
    original = f"/srv/ff-layout-test-{os.getpid()}/shop"  # missing here: laid out below a tmpfs
    return Artifact(
        "a",
        view=tmp_path / "images",
        metadata={"paths": [original], "locations": {original: str(image)}},
    )


def staging_of(layout_prefix: tuple[str, ...]) -> Path:
    spec = layout_prefix[layout_prefix.index("freezeframe._namespace") + 1]
    return Path(json.loads(spec)["staging"])


def test_two_runs_of_the_same_names_never_share_the_staging_folder(tmp_path: Path) -> None:
    source = elsewhere(tmp_path)
    with laid_out(source, "nightly-vault") as first:
        assert first.method == "namespace"
        a = staging_of(first.prefix)
        # Another profile file of the same profile and stage names, at the same time:
        # the first one's folder looks empty from here, but it is in use.
        with laid_out(source, "nightly-vault") as second:
            b = staging_of(second.prefix)
            assert a != b
            assert a.is_dir() and b.is_dir()
        assert a.is_dir(), "the second run removed the first one's folder"
        assert not b.exists()
    assert not a.exists()
    with laid_out(source, "nightly-vault") as again:  # free again: the stable path
        assert staging_of(again.prefix) == a


def test_a_staging_folder_that_is_not_ours_is_not_taken(tmp_path: Path) -> None:
    source = elsewhere(tmp_path)
    with laid_out(source, "nightly-vault") as layout:
        stable = staging_of(layout.prefix)
    stable.mkdir(mode=0o755)  # someone else's, or left with the wrong mode
    try:
        with laid_out(source, "nightly-vault") as layout:
            assert staging_of(layout.prefix) != stable
    finally:
        stable.rmdir()
