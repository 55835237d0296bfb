"""Tests of config.py: duration parsing, the Table getters, and secrets from env or file."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from freezeframe.config import (
    INT_MAX,
    SECRET_FILE_LIMIT,
    Secret,
    Table,
    parse_duration,
    read_regular_file,
)
from freezeframe.errors import ConfigError
from freezeframe.units import format_duration

# -- parse_duration -------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("250ms", 0.25),
        ("10s", 10.0),
        ("2m", 120.0),
        ("1h", 3600.0),
        ("1d", 86400.0),
        ("1.5s", 1.5),
        (" 3 s ", 3.0),
        ("7", 7.0),
        (3, 3.0),
        (0.5, 0.5),
    ],
)
def test_parse_duration_accepts(text: object, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("value", ["", "abc", "10 parsecs", "-1s", "1.5.2s", True, False, None])
def test_parse_duration_rejects_what_is_not_a_duration(value: object) -> None:
    with pytest.raises(ValueError, match="expected a duration"):
        parse_duration(value)


@pytest.mark.parametrize("value", [0, 0.0, -1, "0s", "0ms"])
def test_parse_duration_rejects_zero_and_negative(value: object) -> None:
    with pytest.raises(ValueError, match="greater than zero"):
        parse_duration(value)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_parse_duration_rejects_nan_and_infinity(value: float) -> None:
    with pytest.raises(ValueError):
        parse_duration(value)


@pytest.mark.parametrize("value", [2**63, 16**3000, -(16**3000)])
def test_parse_duration_refuses_integers_too_big_for_a_float_in_words(value: int) -> None:
    # float(16**3000) raises OverflowError: that was an internal error (exit 70)
    with pytest.raises(ValueError, match="a duration must be") as info:
        parse_duration(value)
    assert len(str(info.value)) < 100  # the number itself is not echoed


def test_parse_duration_takes_a_smaller_maximum() -> None:
    assert parse_duration("1d", maximum=86400.0) == 86400.0
    with pytest.raises(ValueError, match="at most 1 day"):
        parse_duration("25h", maximum=86400.0)
    with pytest.raises(ValueError, match="at most 365 days"):
        parse_duration("366d")


@pytest.mark.parametrize(
    ("seconds", "words"),
    [
        (0, "0 s"),
        (59.9, "59 s"),
        (60, "1 min"),
        (3599, "59 min"),
        (3600, "1 h"),
        (3 * 3600 + 12 * 60 + 30, "3 h 12 min"),
        (86400, "1 d"),
        (2 * 86400 + 4 * 3600 + 59 * 60, "2 d 4 h"),
        (-5, "0 s"),
    ],
)
def test_format_duration_says_the_two_largest_units(seconds: float, words: str) -> None:
    assert format_duration(seconds) == words


# -- read_regular_file ---------------------------------------------------------


def test_read_regular_file_follows_a_symlink_and_reads_up_to_the_limit(tmp_path: Path) -> None:
    (tmp_path / "real").write_bytes(b"x" * 100)
    (tmp_path / "link").symlink_to(tmp_path / "real")
    data, st = read_regular_file(tmp_path / "link", 100)
    assert data == b"x" * 100 and st.st_size == 100


def test_read_regular_file_refuses_one_byte_over_the_limit(tmp_path: Path) -> None:
    (tmp_path / "big").write_bytes(b"x" * 101)
    with pytest.raises(ValueError, match="larger than"):
        read_regular_file(tmp_path / "big", 100)


def test_read_regular_file_refuses_a_fifo_without_waiting_for_a_writer(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    outcome: list[BaseException] = []

    def read() -> None:
        try:
            read_regular_file(fifo, 100)
        except BaseException as e:
            outcome.append(e)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(10)
    if reader.is_alive():  # unblock it: open the other end
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("reading a FIFO blocked")
    assert isinstance(outcome[0], ValueError) and "FIFO" in str(outcome[0])


@pytest.mark.parametrize(("path", "kind"), [("/dev/zero", "character device"), ("/", "directory")])
def test_read_regular_file_refuses_devices_and_directories(path: str, kind: str) -> None:
    with pytest.raises(ValueError, match=f"is a {kind}, not a regular file"):
        read_regular_file(Path(path), 100)


# -- Table getters --------------------------------------------------------------


def table(tmp_path: Path, fields: dict[str, object] | None = None, **more: object) -> Table:
    return Table({**(fields or {}), **more}, base_dir=tmp_path)


def test_unread_lists_only_the_fields_no_getter_asked_for(tmp_path: Path) -> None:
    t = table(tmp_path, path="/x", level=3, typo=1, other="y")
    assert t.unread() == ["level", "other", "path", "typo"]
    t.get_str("path")
    t.get_int("level")
    assert t.unread() == ["other", "typo"]


def test_asking_for_an_absent_field_with_a_default_does_not_make_it_known(tmp_path: Path) -> None:
    t = table(tmp_path, typo=1)
    assert t.get_int("level", 3) == 3
    assert t.unread() == ["typo"]


def test_missing_required_field_names_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        table(tmp_path).get_str("path")
    assert info.value.field == "path"
    assert str(info.value) == 'field "path": missing (required)'


@pytest.mark.parametrize(
    ("getter", "value", "message"),
    [
        (lambda t: t.get_str("f"), 3, "expected a string, got an integer"),
        (lambda t: t.get_str("f"), "  ", "must not be empty"),
        (lambda t: t.get_int("f"), "3", "expected an integer, got a string"),
        (lambda t: t.get_int("f"), True, "expected an integer, got a boolean"),
        (lambda t: t.get_int("f", minimum=1), 0, "must be at least 1, got 0"),
        (lambda t: t.get_int("f", maximum=256), 10**18, "must be at most 256, got 10000000000"),
        (lambda t: t.get_int("f"), INT_MAX + 1, f"must be at most {INT_MAX}, got a number of"),
        (lambda t: t.get_int("f", minimum=0), -(16**3000), "at least 0, got a number of more"),
        (lambda t: t.get_duration("f"), 16**3000, "a duration must be at most 365 days"),
        (lambda t: t.get_duration("f", maximum=60.0), "2m", "a duration must be at most 60s"),
        (lambda t: t.get_bool("f", False), "yes", "expected true or false, got a string"),
        (lambda t: t.get_duration("f"), "soon", "expected a duration"),
        (lambda t: t.get_path("f"), 3, "expected a path, got an integer"),
        (lambda t: t.get_paths("f"), "/one", "expected a list of paths"),
        (lambda t: t.get_str_list("f"), ["a", 1], "expected a list of strings"),
        (lambda t: t.get_table("f"), [1], "expected a table, got a list"),
        (lambda t: t.get_choice("f", ("a", "b"), "a"), "c", "expected one of 'a', 'b', got 'c'"),
    ],
)
def test_mistyped_field_is_refused_naming_it(
    tmp_path: Path, getter: Callable[[Table], object], value: object, message: str
) -> None:
    t = table(tmp_path, f=value)
    with pytest.raises(ConfigError) as info:
        getter(t)
    assert info.value.field == "f"
    assert message in str(info.value)
    assert str(info.value).startswith('field "f": ')


def test_getters_return_typed_values(tmp_path: Path) -> None:
    t = table(tmp_path, s="x", i=4, b=True, d="2m", names=["a", "b"], sub={"k": 1})
    assert t.get_str("s") == "x"
    assert t.get_int("i", minimum=4) == 4
    assert t.get_bool("b", False) is True
    assert t.get_duration("d") == 120.0
    assert t.get_str_list("names") == ["a", "b"]
    assert t.get_table("sub") == {"k": 1}
    assert t.get_table("absent") is None
    assert t.unread() == []


def test_relative_paths_resolve_from_base_dir(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    t = table(tmp_path, one="data", many=["data", "/abs/x"])
    assert t.get_path("one", must_exist=True) == tmp_path / "data"
    assert t.get_paths("many") == [tmp_path / "data", Path("/abs/x")]


def test_path_that_must_exist_and_does_not_is_refused(tmp_path: Path) -> None:
    t = table(tmp_path, one="nowhere.db")
    with pytest.raises(ConfigError, match=r'field "one": .*nowhere\.db does not exist'):
        t.get_path("one", must_exist=True)


# -- secrets --------------------------------------------------------------------


def test_secret_from_environment_is_never_printed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FF_TEST_PASSWORD", "hunter2-s3cret")
    secret = table(tmp_path, {"password_env": "FF_TEST_PASSWORD"}).get_secret()
    assert isinstance(secret, Secret)
    assert secret.reveal() == "hunter2-s3cret"
    assert "hunter2" not in repr(secret)
    assert "hunter2" not in str(secret)
    assert "hunter2" not in f"{secret}"
    assert "FF_TEST_PASSWORD" in repr(secret)


def test_secret_from_a_private_file_drops_the_trailing_newline(tmp_path: Path) -> None:
    f = tmp_path / "pw"
    f.write_text("hunter2-s3cret\n")
    f.chmod(0o600)
    secret = table(tmp_path, {"password_file": "pw"}).get_secret()
    assert secret is not None
    assert secret.reveal() == "hunter2-s3cret"
    assert "hunter2" not in repr(secret)
    assert str(f) in repr(secret)


def test_secret_keeps_inner_whitespace_of_the_file(tmp_path: Path) -> None:
    f = tmp_path / "pw"
    f.write_text(" two words \r\n")
    f.chmod(0o400)
    secret = table(tmp_path, {"password_file": str(f)}).get_secret()
    assert secret is not None
    assert secret.reveal() == " two words "


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_secret_file_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    f = tmp_path / "pw"
    f.write_text("hunter2\n")
    f.chmod(mode)
    with pytest.raises(ConfigError) as info:
        table(tmp_path, {"password_file": str(f)}).get_secret()
    assert info.value.field == "password_file"
    assert "chmod 600" in str(info.value)
    assert str(f) in str(info.value)
    assert "hunter2" not in str(info.value)


def test_secret_file_larger_than_the_limit_is_refused_unread(tmp_path: Path) -> None:
    f = tmp_path / "pw"
    f.write_bytes(b"x" * (SECRET_FILE_LIMIT + 1))
    f.chmod(0o600)
    with pytest.raises(ConfigError, match="larger than 64 KiB") as info:
        table(tmp_path, {"password_file": str(f)}).get_secret()
    assert info.value.field == "password_file" and str(f) in str(info.value)
    f.write_bytes(b"x" * SECRET_FILE_LIMIT)
    secret = table(tmp_path, {"password_file": str(f)}).get_secret()
    assert secret is not None and len(secret.reveal()) == SECRET_FILE_LIMIT


def test_secret_file_that_is_a_device_or_fifo_is_refused(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo", 0o600)
    for path in (Path("/dev/zero"), tmp_path / "fifo"):
        with pytest.raises(ConfigError, match="not a regular file") as info:
            table(tmp_path, {"password_file": str(path)}).get_secret()
        assert info.value.field == "password_file"


def test_secret_file_through_a_symlink_is_read(tmp_path: Path) -> None:
    f = tmp_path / "pw"
    f.write_text("hunter2\n")
    f.chmod(0o600)
    (tmp_path / "link").symlink_to(f)
    secret = table(tmp_path, {"password_file": str(tmp_path / "link")}).get_secret()
    assert secret is not None and secret.reveal() == "hunter2"


def test_secret_file_that_is_a_directory_is_refused(tmp_path: Path) -> None:
    d = tmp_path / "pwdir"
    d.mkdir(mode=0o700)
    with pytest.raises(ConfigError, match="not a regular file") as info:
        table(tmp_path, {"password_file": str(d)}).get_secret()
    assert info.value.field == "password_file"


def test_missing_secret_file_is_refused_naming_the_field(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read") as info:
        table(tmp_path, {"password_file": "absent"}).get_secret()
    assert info.value.field == "password_file"


def test_secret_from_both_env_and_file_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FF_TEST_PASSWORD", "x")
    f = tmp_path / "pw"
    f.write_text("y")
    f.chmod(0o600)
    with pytest.raises(ConfigError) as info:
        table(tmp_path, {"password_env": "FF_TEST_PASSWORD", "password_file": str(f)}).get_secret()
    assert "password_env" in str(info.value)
    assert "password_file" in str(info.value)
    assert "not both" in str(info.value)


def test_secret_from_unset_environment_variable_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FF_TEST_UNSET", raising=False)
    with pytest.raises(ConfigError, match="FF_TEST_UNSET is not set") as info:
        table(tmp_path, {"password_env": "FF_TEST_UNSET"}).get_secret()
    assert info.value.field == "password_env"


def test_no_secret_fields_means_no_secret_and_a_prefix_changes_the_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert table(tmp_path).get_secret() is None
    monkeypatch.setenv("FF_TEST_TOKEN", "tok")
    t = table(tmp_path, {"token_env": "FF_TEST_TOKEN"})
    secret = t.get_secret("token")
    assert secret is not None
    assert secret.reveal() == "tok"
    assert t.unread() == []


def test_an_empty_secret_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FF_EMPTY_SECRET", "")
    with pytest.raises(ConfigError, match=r'"password_env".*FF_EMPTY_SECRET is empty'):
        Table({"password_env": "FF_EMPTY_SECRET"}, base_dir=tmp_path).get_secret()
    empty = tmp_path / "pw"
    empty.write_text("\n")
    empty.chmod(0o600)
    with pytest.raises(ConfigError, match=r'"password_file".*is empty'):
        Table({"password_file": str(empty)}, base_dir=tmp_path).get_secret()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("fsfreeze -f /srv", 'e.g. ["fsfreeze", "-f", "/srv"]'),
        ("echo 'unclosed", 'e.g. ["program", "arg"]'),
        ([], "expected a non-empty list of strings (argv, no shell)"),
        (["ok", 1], "expected a non-empty list of strings (argv, no shell)"),
        ({"program": "x"}, "expected a non-empty list of strings (argv, no shell)"),
        (["", "arg"], "the program (first item) must not be empty"),
    ],
)
def test_get_argv_wants_a_list_and_shows_what_a_string_would_be(
    tmp_path: Path, value: object, message: str
) -> None:
    with pytest.raises(ConfigError) as e:
        Table({"command": value}, base_dir=tmp_path).get_argv("command")
    assert e.value.field == "command"
    assert message in str(e.value)


def test_get_argv_returns_a_copy_or_the_default(tmp_path: Path) -> None:
    argv = ["ssh", "-p", "2222"]
    table = Table({"command": argv}, base_dir=tmp_path)
    got = table.get_argv("command")
    assert got == argv and got is not argv
    assert table.get_argv("absent", ["ssh"]) == ["ssh"]
    assert table.get_argv("absent", None) is None
