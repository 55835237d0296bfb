"""The example profiles load as they are written, with every installed package: a field
misspelt in an example is a user's first error."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from freezeframe.profile import load_profile
from freezeframe.registry import build_registry

EXAMPLES = Path(__file__).parent.parent / "examples"


def test_the_production_example_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only where its secrets and folders are is changed: every field stays as written."""
    text = (EXAMPLES / "production.toml").read_text()
    for name in ("orders.password", "restic.password"):
        secret = tmp_path / name
        secret.write_text("s3cret\n")
        secret.chmod(0o600)
        text = text.replace(f"/etc/freezeframe/{name}", str(secret))
    for folder in ("/var/lib/freezeframe", "/srv/.drills", "/var/lib/prometheus/node-exporter"):
        text = text.replace(f'"{folder}"', f'"{tmp_path}{folder}"')
        (tmp_path / folder.lstrip("/")).mkdir(parents=True)
    monkeypatch.setenv("REDIS_PASSWORD", "s3cret")
    monkeypatch.setenv("SHOP_HC_PING_URL", "https://hc-ping.com/0f5a1b2c")
    monkeypatch.setenv("SHOP_NTFY_URL", "ntfys://ntfy.sh/shop-on-call-7f3a")
    profile = tmp_path / "shop.toml"
    profile.write_text(text)
    loaded = load_profile(profile, build_registry())
    assert [a.info.kind for a in loaded.applications] == ["postgresql", "redis", "exec"]
    assert [s.info.kind for s in loaded.stages] == ["btrfs", "restic"]
    assert [o.info.kind for o in loaded.observers] == ["notify", "notify", "prometheus"]
    assert loaded.drill == "after-backup"
    assert [c.name for a in loaded.applications for c in a.checks] == [
        "money-balances",
        "invoices-uploaded",
    ]
    assert os.environ["SHOP_NTFY_URL"] not in profile.read_text()
