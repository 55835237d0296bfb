"""Tests of copying.py's make_parents: the parents of a path in a view."""

from __future__ import annotations

import stat
from pathlib import Path

from freezeframe.copying import make_parents


def test_make_parents_copies_the_modes_of_the_parents_it_finds(tmp_path: Path) -> None:
    live, view = tmp_path / "live", tmp_path / "view"
    (live / "srv" / "shop").mkdir(parents=True)
    (live / "srv").chmod(0o711)
    dst = make_parents(Path("/srv/shop/orders.db"), view, live)
    assert dst == view / "srv" / "shop" / "orders.db"
    assert stat.S_IMODE((view / "srv").stat().st_mode) == 0o711
    assert dst.parent.is_dir() and not dst.exists()


def test_make_parents_makes_parents_that_the_live_system_lacks(tmp_path: Path) -> None:
    """A completion's folder (a dump path) may exist only in the view."""
    live, view = tmp_path / "live", tmp_path / "view"
    (live / "srv").mkdir(parents=True)
    dst = make_parents(Path("/srv/freezeframe-dumps/ledger/x"), view, live)
    assert dst.parent.is_dir() and dst.parent == view / "srv" / "freezeframe-dumps" / "ledger"
    assert make_parents(Path("/srv/freezeframe-dumps/ledger/x"), view, live) == dst  # again
