"""Real restic and borg repositories for a test, and the tools themselves as a user runs them.

Fixtures (loaded with the kit's pytest plug-in):

``restic_env`` / ``borg_env``
    the tool installed (skip, or fail in CI, otherwise); its cache (and borg's
    keys and security records) in the test's folder; the password in
    :data:`RESTIC_PASSWORD_ENV` / :data:`BORG_PASSPHRASE_ENV`.
``restic_repo`` / ``borg_repo``
    an empty repository of the test's own at ``tmp_path / "repo"``, copied
    from one made once per session (``init`` takes seconds), with that password.

The passwords are throwaways; a test that checks no secret leaks looks for them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from freezeframe.plugin import run_tool
from freezeframe_testing.plugin import require_tool

RESTIC_PASSWORD = "correct horse battery staple 7f3a"  # noqa: S105 - a test's throwaway
RESTIC_PASSWORD_ENV = "FF_TEST_RESTIC_PASSWORD"  # noqa: S105 - a variable name
BORG_PASSPHRASE = "correct horse battery staple b0rg"  # noqa: S105 - a test's throwaway
BORG_PASSPHRASE_ENV = "FF_TEST_BORG_PASSPHRASE"  # noqa: S105 - a variable name


def restic(repository: str | Path, *args: str) -> str:
    """restic itself, as a user runs it, on a repository with :data:`RESTIC_PASSWORD`: stdout."""
    argv = [require_tool("restic"), "--repo", str(repository), *args]
    return run_tool(argv, env={"RESTIC_PASSWORD": RESTIC_PASSWORD}, timeout=120).stdout


def restic_snapshots(repository: str | Path) -> set[str]:
    """The ids of the repository's snapshots, as restic lists them."""
    return {s["id"] for s in json.loads(restic(repository, "snapshots", "--json"))}


def borg(*args: str, cwd: Path | None = None, rsh: Sequence[str] | None = None) -> str:
    """borg itself, as a user runs it, with :data:`BORG_PASSPHRASE`: stdout."""
    # the test reads, on its local path, repositories the backend reached over ssh
    env = {"BORG_PASSPHRASE": BORG_PASSPHRASE, "BORG_RELOCATED_REPO_ACCESS_IS_OK": "yes"}
    if rsh:
        env["BORG_RSH"] = " ".join(rsh)
    return run_tool([require_tool("borg"), *args], env=env, timeout=120, cwd=cwd).stdout


def borg_archives(repository: str | Path, rsh: Sequence[str] | None = None) -> list[str]:
    """The names of the repository's archives, as borg lists them."""
    listed = json.loads(borg("list", "--json", str(repository), rsh=rsh))
    return [a["name"] for a in listed["archives"]]


def copy_of(template: Path, dest: Path) -> Path:
    """A repository of our own, copied from a template (the password is the same)."""
    run_tool([require_tool("cp"), "-a", str(template), str(dest)], timeout=60)
    return dest


@pytest.fixture
def restic_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """restic installed; its cache in the test's folder; the password in the environment."""
    require_tool("restic")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv(RESTIC_PASSWORD_ENV, RESTIC_PASSWORD)


@pytest.fixture(scope="session")
def restic_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One empty repository made once (restic init calibrates its key derivation: seconds)."""
    path = tmp_path_factory.mktemp("restic-template") / "repo"
    restic(path, "init")
    return path


@pytest.fixture
def restic_repo(tmp_path: Path, restic_env: None, restic_template: Path) -> Path:
    """An empty repository at ``tmp_path / "repo"``."""
    return copy_of(restic_template, tmp_path / "repo")


@pytest.fixture
def borg_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """borg installed; its cache, keys and security records in the test's folder; the
    passphrase in the environment."""
    require_tool("borg")
    monkeypatch.setenv("BORG_BASE_DIR", str(tmp_path / "borg-home"))
    monkeypatch.setenv(BORG_PASSPHRASE_ENV, BORG_PASSPHRASE)


@pytest.fixture(scope="session")
def borg_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One empty repository made once (borg init takes seconds)."""
    path = tmp_path_factory.mktemp("borg-template") / "repo"
    run_tool(
        [require_tool("borg"), "init", "--encryption", "repokey", str(path)],
        env={"BORG_NEW_PASSPHRASE": BORG_PASSPHRASE, "BORG_BASE_DIR": str(path.parent / "home")},
        timeout=120,
    )
    return path


@pytest.fixture
def borg_repo(tmp_path: Path, borg_env: None, borg_template: Path) -> Path:
    """An empty repository at ``tmp_path / "repo"``."""
    return copy_of(borg_template, tmp_path / "repo")
