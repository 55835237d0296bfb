"""Tests of plugin.py: the plug-in API is the one module plug-ins and backends import."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import freezeframe
import freezeframe.plugin

ROOT = Path(__file__).resolve().parents[2]
SOURCES = sorted(
    p for pattern in ("plugins/*/src/**/*.py", "backends/*/src/**/*.py") for p in ROOT.glob(pattern)
)


def _core_imports(source: Path) -> list[str]:
    """Every module of the core package ``source`` imports (``freezeframe``, ``freezeframe.x``;
    not a plug-in's own ``freezeframe_x``), at any depth."""
    found = []
    for node in ast.walk(ast.parse(source.read_text(), str(source))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules = [node.module]
        elif isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        else:
            continue
        found += [m for m in modules if m == "freezeframe" or m.startswith("freezeframe.")]
    return found


def test_there_are_plugin_and_backend_sources_to_check() -> None:
    names = {p.relative_to(ROOT).parts[1] for p in SOURCES}
    assert {"sqlite", "postgresql", "restic", "borg", "clone"} <= names


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_plugins_and_backends_import_the_core_through_the_plugin_api_only(source: Path) -> None:
    others = [m for m in _core_imports(source) if m != "freezeframe.plugin"]
    assert others == [], f"{source.relative_to(ROOT)} imports {others}: use freezeframe.plugin"


def test_the_import_check_sees_every_way_of_importing_the_core(tmp_path: Path) -> None:
    source = tmp_path / "mod.py"
    source.write_text(
        "import freezeframe.fsutil\n"
        "from freezeframe import restoring\n"
        "from freezeframe.plugin import Table\n"
        "from freezeframe_sqlite import SQLitePlugin\n"
        "def f():\n    from freezeframe.tools import run_tool\n"
    )
    assert sorted(_core_imports(source)) == [
        "freezeframe",
        "freezeframe.fsutil",
        "freezeframe.plugin",
        "freezeframe.tools",
    ]


def test_every_name_of_the_api_exists_once_and_is_documented() -> None:
    names = freezeframe.plugin.__all__
    assert len(names) == len(set(names))
    missing = [n for n in names if not hasattr(freezeframe.plugin, n)]
    assert missing == []
    doc = freezeframe.plugin.__doc__ or ""
    undocumented = [n for n in names if f"``{n}``" not in doc]
    assert undocumented == [], "list each name of the API in plugin.py's docstring, by job"


def test_the_package_re_exports_keep_working() -> None:
    assert [n for n in freezeframe.__all__ if not hasattr(freezeframe, n)] == []
    shared = set(freezeframe.__all__) & set(freezeframe.plugin.__all__)
    assert {"Table", "Backend", "ApplicationPlugin", "hookimpl"} <= shared
    for name in shared:
        assert getattr(freezeframe, name) is getattr(freezeframe.plugin, name)


def test_running_the_module_lists_the_api() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "freezeframe.plugin"], capture_output=True, text=True, check=True
    ).stdout
    lines = out.splitlines()
    assert lines[0] == f"freezeframe plug-in API {freezeframe.plugin.API_VERSION}:"
    assert [line.strip() for line in lines[1:]] == freezeframe.plugin.__all__
