"""Tests of repository.py: what the repository-tool backends (restic, borg) share."""

from __future__ import annotations

import re
import stat
import sys
from pathlib import Path

import pytest

from freezeframe.config import Table
from freezeframe.errors import ConfigError, FreezeframeError
from freezeframe.repository import (
    Repository,
    dotted,
    hide_credentials,
    parse_version,
    read_password,
    read_repository,
    ssh_address,
    ssh_argv,
    ssh_trouble,
    tool_version,
)

PW_ENV = "FF_TEST_REPOSITORY_PASSWORD"
_RESTIC = re.compile(r"^(sftp|rest|s3):")


def restic_like(raw: str) -> bool:
    return bool(_RESTIC.match(raw))


@pytest.fixture(autouse=True)
def password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PW_ENV, "correct horse")


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("rest:https://u:s3cr3t@host:8000/repo", "rest:https://u:***@host:8000/repo"),
        ("rest:https://:s3cr3t@host/repo", "rest:https://:***@host/repo"),
        (
            "Fatal: create repository at sftp://b:pw@h//r failed",
            "Fatal: create repository at sftp://b:***@h//r failed",
        ),
        ("rest:https://user@host/repo", "rest:https://user@host/repo"),  # no password
        ("/srv/restic:2024", "/srv/restic:2024"),
    ],
)
def test_hide_credentials_hides_the_password_of_a_url_only(text: str, shown: str) -> None:
    assert hide_credentials(text) == shown


def test_a_local_repository_is_resolved_from_the_profiles_folder(tmp_path: Path) -> None:
    table = Table({"repository": "backups/repo", "password_env": PW_ENV}, base_dir=tmp_path)
    repo = read_repository(table, remote=restic_like)
    assert repo == Repository(str(tmp_path / "backups/repo"), tmp_path / "backups/repo")
    assert repo.file is None


def test_a_local_prefix_and_a_home_folder_make_a_local_path(tmp_path: Path) -> None:
    table = Table({"repository": "local:~/repo"}, base_dir=tmp_path)
    repo = read_repository(table, remote=restic_like)
    assert repo.local == Path.home() / "repo"
    assert repo.location == str(Path.home() / "repo")


def test_a_remote_repository_is_kept_as_given(tmp_path: Path) -> None:
    repo = read_repository(
        Table({"repository": "sftp:h:/r"}, base_dir=tmp_path), remote=restic_like
    )
    assert (repo.location, repo.local, repo.shown) == ("sftp:h:/r", None, "sftp:h:/r")


def test_a_password_in_the_repository_field_is_refused_with_advice(tmp_path: Path) -> None:
    table = Table({"repository": "rest:https://u:pw@h/r"}, base_dir=tmp_path)
    with pytest.raises(ConfigError, match="repository_file") as e:
        read_repository(table, remote=restic_like, from_secret=True)
    assert e.value.field == "repository"
    with pytest.raises(ConfigError, match=r"profile \(use a key\)$"):
        read_repository(table, remote=restic_like, advice=" (use a key)")


def test_the_repository_from_a_file_keeps_its_file_for_the_tool(tmp_path: Path) -> None:
    named = tmp_path / "repo.url"
    named.write_text("rest:https://u:pw@h/r\n")
    named.chmod(0o600)
    table = Table({"repository_file": str(named)}, base_dir=tmp_path)
    repo = read_repository(table, remote=restic_like, from_secret=True)
    assert repo.location == "rest:https://u:pw@h/r"  # a password is allowed in a secret
    assert repo.shown == "rest:https://u:***@h/r"
    assert repo.file == named


def test_a_local_repository_from_a_file_is_resolved_here(tmp_path: Path) -> None:
    named = tmp_path / "repo.path"
    named.write_text("repo\n")
    named.chmod(stat.S_IRUSR | stat.S_IWUSR)
    table = Table({"repository_file": str(named)}, base_dir=tmp_path)
    repo = read_repository(table, remote=restic_like, from_secret=True)
    assert repo.local == tmp_path / "repo"
    assert repo.file is None  # the tool gets the resolved path, not the file


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({}, "repository", 'missing \\(required; or "repository_env"/"repository_file"\\)'),
        ({"repository": "r", "repository_env": PW_ENV}, "repository_env", "not both"),
        ({"repository_env": "FF_TEST_BLANK"}, "repository_env", "is empty"),
    ],
)
def test_repository_field_errors(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fields: dict[str, object],
    field: str,
    message: str,
) -> None:
    monkeypatch.setenv("FF_TEST_BLANK", "  \n")
    with pytest.raises(ConfigError, match=message) as e:
        read_repository(Table(fields, base_dir=tmp_path), remote=restic_like, from_secret=True)
    assert e.value.field == field


def test_without_from_secret_the_repository_field_is_required(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        read_repository(Table({}, base_dir=tmp_path), remote=restic_like)
    assert e.value.field == "repository"


def test_read_password(tmp_path: Path) -> None:
    table = Table({"password_env": PW_ENV}, base_dir=tmp_path)
    assert read_password(table, why="x encrypts").reveal() == "correct horse"
    with pytest.raises(ConfigError, match=r'"password_file" \(borg encrypts\)$') as e:
        read_password(Table({}, base_dir=tmp_path), why="borg encrypts")
    assert e.value.field == "password_env"


@pytest.mark.parametrize(
    ("tool", "output", "version"),
    [
        ("restic", "restic 0.16.4 compiled with go1.22 on linux/amd64\n", (0, 16, 4)),
        ("borg", "borg 1.2.8\n", (1, 2, 8)),
    ],
)
def test_parse_version(tool: str, output: str, version: tuple[int, int, int]) -> None:
    assert parse_version(tool, output) == version
    assert dotted(version) == output.split()[1]


def test_parse_version_names_what_it_could_not_read() -> None:
    with pytest.raises(
        FreezeframeError, match=r"cannot tell borg's version from 'restic 0\.16\.4'"
    ):
        parse_version("borg", "restic 0.16.4\n")


def test_tool_version_runs_the_tool_once(tmp_path: Path) -> None:
    counter = tmp_path / "runs"
    script = tmp_path / "fake-tool"
    script.write_text(f"#!/bin/sh\necho x >> {counter}\necho 'faketool 3.1.4'\n")
    script.chmod(0o755)
    assert tool_version("faketool", str(script), "--version") == (3, 1, 4)
    assert tool_version("faketool", str(script), "--version") == (3, 1, 4)
    assert counter.read_text() == "x\n"


@pytest.mark.parametrize(
    ("location", "scheme", "prefix", "address"),
    [
        ("sftp://backup@vault:2222//srv/r", "sftp", "sftp:", ("backup", "vault", 2222)),
        ("sftp:backup@vault:/srv/r", "sftp", "sftp:", ("backup", "vault", None)),
        ("sftp:vault:/srv/r", "sftp", "sftp:", ("", "vault", None)),
        ("ssh://vault/./r", "ssh", "", (None, "vault", None)),
        ("me@vault:r", "ssh", "", ("me", "vault", None)),
    ],
)
def test_ssh_address(
    location: str, scheme: str, prefix: str, address: tuple[str | None, str, int | None]
) -> None:
    assert ssh_address(location, scheme, prefix) == address


def test_ssh_argv_runs_in_batch_mode() -> None:
    assert ssh_argv(["ssh", "-i", "k"]) == ["ssh", "-i", "k", "-o", "BatchMode=yes"]
    assert ssh_argv(["ssh"], "me", "vault", 2222) == [
        "ssh", "-o", "BatchMode=yes", "-p", "2222", "-l", "me", "vault"
    ]  # fmt: skip
    assert ssh_argv(["ssh"], "", "vault") == ["ssh", "-o", "BatchMode=yes", "vault"]


def test_ssh_trouble_is_the_last_line_ssh_said_or_the_fallback() -> None:
    said = [
        sys.executable,
        "-c",
        "import sys; sys.stderr.write('x\\nPermission denied\\n'); sys.exit(255)",
    ]
    assert ssh_trouble(said, "fine") == "Permission denied"
    assert ssh_trouble([sys.executable, "-c", "pass"], "ssh connects") == "ssh connects"
