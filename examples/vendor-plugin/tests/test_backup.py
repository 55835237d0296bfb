"""A whole backup through the real ``freezeframe`` command, while the demo application writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from freezeframe.plugin import under
from freezeframe_example.writer import consistent, writes_on
from freezeframe_testing.plugin import run_cli


def test_backups_taken_while_writing_restore_consistent_and_the_app_goes_on(
    app_dir: Path, tmp_path: Path
) -> None:
    pytest.importorskip("freezeframe_clone", reason="the backup needs the clone backend")
    profile = tmp_path / "profile.toml"
    profile.write_text(f"""
[profile]
name = "example"
freeze_timeout = "10s"
state_dir = {json.dumps(str(tmp_path / "state"))}

[[application]]
plugin = "example"
name = "app"
dir = {json.dumps(str(app_dir))}

[[backup]]
backend = "clone"
name = "snap"
dir = {json.dumps(str(tmp_path / "snaps"))}
""")
    listed = run_cli("plugins")
    assert listed.returncode == 0, listed.stderr
    assert "freezeframe-example" in listed.stdout
    for i in range(3):
        backup = run_cli("backup", profile, "--json")
        assert backup.returncode == 0, backup.stderr
        assert writes_on(app_dir, 5), "the application did not go on after the backup"
        target = tmp_path / f"restore-{i}"
        restore = run_cli("restore", profile, backup.json()["run_id"], "--to", target)
        assert restore.returncode == 0, restore.stderr
        assert consistent(under(target, app_dir)), "the backup was not taken while paused"
