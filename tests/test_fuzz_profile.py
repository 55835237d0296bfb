"""Profiles are untrusted text: whatever they hold, the loader answers with a ProfileError
(one line per problem, naming the file) or a profile — never a traceback."""

from __future__ import annotations

import io
import math
import sqlite3
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from freezeframe.cli import main
from freezeframe.errors import ProfileError
from freezeframe.profile import _Loader, load_profile
from freezeframe.registry import Registry, build_registry

KEYS = [
    "profile",
    "application",
    "backup",
    "name",
    "plugin",
    "backend",
    "path",
    "dir",
    "paths",
    "source",
    "keep",
    "last",
    "daily",
    "after",
    "freeze_timeout",
    "thaw",
    "state_dir",
    "on_quiesce_failure",
    "level",
    "threads",
    "password_env",
    "password_file",
    "x",
]
scalars = st.one_of(
    st.text(max_size=12),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    # beyond TOML's 64 bits: Python's reader takes 0x followed by any number of digits
    st.sampled_from([2**63, -(2**63) - 1, 16**1000, -(16**1000)]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.sampled_from(
        [
            "sqlite",
            "clone",
            "archive",
            "after-backup",
            "10s",
            "0s",
            "nan",
            "a",
            "/",
            "..",
            "~",
            "after-snapshot",
            "crash-consistent",
        ]
    ),
)
documents = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.sampled_from(KEYS), inner, max_size=6),
    ),
    max_leaves=25,
).filter(lambda d: isinstance(d, dict))

REGISTRY: Registry = build_registry()
FUZZ = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@FUZZ
@given(data=documents)
def test_any_structure_is_a_profile_or_a_profile_error(tmp_path: Path, data: dict) -> None:
    path = tmp_path / "fuzz.toml"
    try:
        _Loader(path, REGISTRY).load(data)
    except ProfileError as e:
        assert e.problems
        for line in e.problems:
            assert "\n" not in line and line.startswith(f"{path}: ")


VALID = """\
[profile]
name = "shop"
freeze_timeout = "5s"
state_dir = "{state}"

[[application]]
plugin = "sqlite"
name = "orders"
path = "{db}"
after = []

[[backup]]
backend = "clone"
name = "snap"
dir = "{root}/snaps"

[[backup]]
backend = "archive"
name = "archive"
source = "snap"
dir = "{root}/archives"
keep = {{ last = 2, daily = 7 }}
"""


def mutate(text: str, edits: list[tuple[int, int, str]]) -> str:
    for pos, cut, insert in edits:
        at = pos % (len(text) + 1)
        text = text[:at] + insert + text[at + cut :]
    return text


@FUZZ
@given(
    edits=st.lists(
        st.tuples(
            st.integers(0, 10_000),
            st.integers(0, 8),
            st.sampled_from(
                [
                    "",
                    "[",
                    "]",
                    "=",
                    '"',
                    "\n",
                    "x",
                    "0",
                    "{",
                    "}",
                    ",",
                    "[[",
                    "'",
                    "\\",
                    "#",
                    "name",
                    "\x00",
                    "é",
                    "nan",
                ]
            ),
        ),
        min_size=1,
        max_size=6,
    )
)
def test_mutated_profiles_never_raise_past_the_cli(tmp_path: Path, edits: list) -> None:
    db = tmp_path / "orders.db"
    if not db.exists():
        sqlite3.connect(db).close()
    text = mutate(VALID.format(state=tmp_path / "state", db=db, root=tmp_path), edits)
    path = tmp_path / "mutant.toml"
    path.write_text(text, encoding="utf-8", errors="surrogateescape")
    err = io.StringIO()
    with redirect_stdout(io.StringIO()), redirect_stderr(err):
        code = main(["plan", str(path)], registry=REGISTRY)
    assert code in (0, 2), err.getvalue()  # 70 would be an internal error
    if code == 2:
        lines = err.getvalue().strip().splitlines()
        assert lines and all(line.startswith("freezeframe: error: ") for line in lines)
        assert "Traceback" not in err.getvalue()


def _number(kind: str, digits: int) -> str:
    return {"dec": "9" * digits, "hex": "0x" + "f" * digits, "neg": "-" + "9" * digits}[kind]


def _nested(kind: str, depth: int) -> str:
    if kind == "array":
        return "[" * depth + "1" + "]" * depth
    return "{a=" * depth + "1" + "}" * depth


values = st.one_of(
    st.builds(_number, st.sampled_from(["dec", "hex", "neg"]), st.integers(1, 6000)),
    st.builds(_nested, st.sampled_from(["array", "table"]), st.integers(1, 3000)),
)


@FUZZ
@given(
    line=st.sampled_from(
        [
            'freeze_timeout = "5s"',
            "keep = {{ last = 2, daily = 7 }}",
            "after = []",
            'source = "snap"',
            'backend = "archive"',
        ]
    ),
    field=st.sampled_from(["freeze_timeout", "keep", "last", "level", "threads", "after", "x"]),
    value=values,
)
def test_huge_numbers_and_deep_nesting_never_raise_past_the_cli(
    tmp_path: Path, line: str, field: str, value: str
) -> None:
    db = tmp_path / "orders.db"
    if not db.exists():
        sqlite3.connect(db).close()
    template = VALID.replace(line, f"{line}\n{field} = {{value}}", 1)
    if field == "last":
        template = VALID.replace("last = 2", "last = {value}")
    text = template.format(state=tmp_path / "state", db=db, root=tmp_path, value=value)
    path = tmp_path / "huge.toml"
    path.write_text(text, encoding="utf-8")
    err = io.StringIO()
    with redirect_stdout(io.StringIO()), redirect_stderr(err):
        code = main(["plan", str(path)], registry=REGISTRY)
    assert code in (0, 2), err.getvalue()  # 70 would be an internal error
    lines = err.getvalue().strip().splitlines()
    if code == 2:
        assert len(lines) == 1 and lines[0].startswith(f"freezeframe: error: {path}: ")


def test_the_unmutated_profile_is_valid(tmp_path: Path) -> None:
    db = tmp_path / "orders.db"
    sqlite3.connect(db).close()
    path = tmp_path / "p.toml"
    path.write_text(VALID.format(state=tmp_path / "state", db=db, root=tmp_path))
    profile = load_profile(path, REGISTRY)
    assert profile.freeze_timeout == 5.0 and not math.isnan(profile.freeze_timeout)
