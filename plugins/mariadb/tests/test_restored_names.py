"""A MariaDB datadir restored under a folder whose name a shell or an option file would misread.

The private server that ``restore --verify`` starts on the copy gets every
path as one ``--option=value`` argument (no shell, no option file), so any
folder name works.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from freezeframe import Table
from freezeframe_mariadb import MariadbPlugin
from freezeframe_testing.mariadb_server import MariaDB


def test_a_copy_restored_under_an_odd_folder_starts_and_checks(
    mariadb: MariaDB, tmp_path: Path
) -> None:
    mariadb.sql(
        "CREATE DATABASE shop",
        "CREATE TABLE shop.t (id INT PRIMARY KEY, v INT NOT NULL) ENGINE=InnoDB",
        "INSERT INTO shop.t VALUES (1, 42)",
    )
    mariadb.stop()
    root = tmp_path / 'restore #1? it\'s "q" 100%41 ünï $HOME -x'
    image = root / mariadb.datadir.relative_to("/")
    shutil.copytree(mariadb.datadir, image, symlinks=True)
    # the server is gone: the plug-in works from datadir and what it finds in the copy
    table = {"user": "root", "unix_socket": str(tmp_path / "gone.sock")}
    p = MariadbPlugin("shop", Table({**table, "datadir": str(mariadb.datadir)}, base_dir=tmp_path))
    p.prepare_restored(root)
    p.verify_restored(root)
