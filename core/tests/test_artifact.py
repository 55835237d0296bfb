"""Artifact.roots() and outer_roots(): where a snapshot keeps the image of each path."""

from __future__ import annotations

from pathlib import Path

import pytest

from freezeframe import Artifact, FreezeframeError


def test_roots_are_under_the_view_unless_located_elsewhere(tmp_path: Path) -> None:
    elsewhere = tmp_path / "subvolume-snapshot" / "shop"
    art = Artifact(
        "s",
        view=tmp_path,
        metadata={
            "paths": ["/srv/shop", "/etc/shop.conf"],
            "locations": {"/srv/shop": str(elsewhere)},
        },
    )
    assert art.roots() == [
        (Path("/srv/shop"), elsewhere),
        (Path("/etc/shop.conf"), tmp_path / "etc" / "shop.conf"),
    ]
    assert Artifact("s", view=tmp_path).roots() == [(Path("/"), tmp_path)]
    assert Artifact("s").roots() == []


def test_outer_roots_sorts_and_drops_paths_inside_another(tmp_path: Path) -> None:
    for rel in ("srv/shop/db", "srv/other", "etc"):
        (tmp_path / rel).mkdir(parents=True)
    paths = ["/srv/shop/db", "/srv/shop", "/etc", "/srv/other", "/srv/shop/db/wal"]
    art = Artifact("s", view=tmp_path, metadata={"paths": paths})
    assert art.outer_roots() == [
        (Path("/etc"), tmp_path / "etc"),
        (Path("/srv/other"), tmp_path / "srv" / "other"),
        (Path("/srv/shop"), tmp_path / "srv" / "shop"),
    ]


def test_outer_roots_names_a_missing_image(tmp_path: Path) -> None:
    (tmp_path / "srv" / "shop").mkdir(parents=True)
    art = Artifact("s", view=tmp_path, metadata={"paths": ["/srv/shop", "/srv/gone"]})
    with pytest.raises(FreezeframeError) as e:
        art.outer_roots()
    assert (
        str(e.value) == f"{tmp_path}/srv/gone (the image of /srv/gone) is missing from the snapshot"
    )


def test_outer_roots_of_a_snapshot_without_a_view_is_an_error() -> None:
    with pytest.raises(FreezeframeError, match="the source snapshot holds no paths"):
        Artifact("s").outer_roots()


def test_a_dangling_symlink_is_an_image_that_exists(tmp_path: Path) -> None:
    (tmp_path / "srv").mkdir()
    (tmp_path / "srv" / "current").symlink_to("release-that-is-gone")
    art = Artifact("s", view=tmp_path, metadata={"paths": ["/srv/current"]})
    assert art.outer_roots() == [(Path("/srv/current"), tmp_path / "srv" / "current")]


def test_completed_paths_join_the_view_once_each(tmp_path: Path) -> None:
    """A completed path is listed (with its files and bytes) unless it is inside a path
    the snapshot already holds (PostgreSQL's backup_label and pg_wal in its data
    directory): a restore then copies each tree once."""
    from freezeframe.freeze import _with_completions

    data = tmp_path / "srv" / "pg" / "data"
    (data / "pg_wal").mkdir(parents=True)
    (data / "backup_label").write_text("START WAL LOCATION: 0/2000028\n")
    dump = tmp_path / "srv" / "dumps" / "shop.sql"
    dump.parent.mkdir(parents=True)
    dump.write_text("-- 12 bytes\n")
    art = Artifact("s", view=tmp_path, files=7, bytes=70, metadata={"paths": ["/srv/pg/data"]})
    completed = {
        "pg": ["/srv/pg/data/backup_label", "/srv/pg/data/pg_wal"],
        "shop": ["/srv/dumps/shop.sql"],
    }
    done = _with_completions(art, completed)
    assert done.metadata["paths"] == ["/srv/pg/data", "/srv/dumps/shop.sql"]
    assert done.metadata["completed"] == completed
    # a completion wrote inside a path the view holds: the view is counted again (here
    # the backup_label and the dump, whatever the snapshot had counted)
    assert (done.files, done.bytes) == (2, 42)
    only_dump = _with_completions(art, {"shop": completed["shop"]})
    assert (only_dump.files, only_dump.bytes) == (8, 82)  # added to what the snapshot counted
