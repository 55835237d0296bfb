"""The documentation stays true: hooks documented, hooks.md generated, the example plug-in works.

The author guide's example distribution is extracted from the Markdown,
installed with pip, and driven through the real ``freezeframe`` command: a
reader who copies it gets a plug-in that installs, registers and backs up.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import re
import subprocess
import sys
import tarfile
import threading
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from freezeframe import hookspecs
from freezeframe.profile import ON_QUIESCE_FAILURE, THAW_MODES
from freezeframe.retention import RULES
from freezeframe_testing.plugin import run_cli

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
GUIDE = DOCS / "plugin-author-guide.md"


def hookspec_functions() -> dict[str, Callable[..., Any]]:
    """Every function of hookspecs.py that carries the hookspec marker."""
    marker = f"{hookspecs.PROJECT}_spec"
    return {
        name: obj
        for name, obj in vars(hookspecs).items()
        if inspect.isfunction(obj) and hasattr(obj, marker)
    }


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_hooks", DOCS / "gen_hooks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- the hook reference ---------------------------------------------------------


def test_every_hookspec_is_prefixed_and_has_a_docstring() -> None:
    specs = hookspec_functions()
    assert specs, "no hookspec found in freezeframe.hookspecs"
    for name, fn in specs.items():
        assert name.startswith("freezeframe_"), f"hook {name} lacks the freezeframe_ prefix"
        assert (fn.__doc__ or "").strip(), f"hook {name} has no docstring"
    assert (hookspecs.__doc__ or "").strip(), "hookspecs.py has no module docstring"


def test_hooks_page_is_the_generators_output() -> None:
    gen = load_generator()
    expected = gen.render()
    page = (DOCS / "hooks.md").read_text(encoding="utf-8")
    assert page == expected, "docs/hooks.md is stale: run python docs/gen_hooks.py --write"
    for name, fn in hookspec_functions().items():
        assert f"## `{name}(" in page, f"{name} is missing from docs/hooks.md"
        first_line = inspect.cleandoc(fn.__doc__ or "").splitlines()[0]
        assert first_line in page


def test_generator_script_prints_the_page() -> None:
    proc = subprocess.run(
        [sys.executable, str(DOCS / "gen_hooks.py")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == (DOCS / "hooks.md").read_text(encoding="utf-8")


# -- one page per package, and no dead links --------------------------------------


def component_packages() -> list[tuple[str, str, Path]]:
    """(``plugins``, ``backends`` or ``observers``, package dir name, its pyproject.toml) for
    every package."""
    return [
        (group, p.parent.name, p)
        for group in ("plugins", "backends", "observers")
        for p in sorted((ROOT / group).glob("*/pyproject.toml"))
    ]


def test_every_plugin_backend_and_observer_package_has_a_page() -> None:
    packages = component_packages()
    assert {g for g, _, _ in packages} == {"plugins", "backends", "observers"}
    index = (DOCS / "index.md").read_text(encoding="utf-8")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for group, name, pyproject in packages:
        page = DOCS / group / f"{name}.md"
        assert page.is_file(), f"{group}/{name} has no page {page.relative_to(ROOT)}"
        text = page.read_text(encoding="utf-8")
        project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
        assert f"`{project['name']}`" in text, f"{page.name} does not name {project['name']}"
        assert f"]({group}/{name}.md)" in index, f"docs/index.md does not link {page.name}"
        assert f"| `{project['name']}` |" in readme, f"README.md's table lacks {project['name']}"


def test_relative_links_in_the_docs_resolve() -> None:
    pages = sorted(DOCS.rglob("*.md"))
    assert len(pages) >= 8
    for page in pages:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text(encoding="utf-8")):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            path = (page.parent / target.split("#")[0]).resolve()
            assert path.exists(), f"{page.relative_to(ROOT)} links to missing {target}"


def test_every_cli_verb_has_a_section_in_the_user_guide() -> None:
    result = run_cli("--help")
    assert result.returncode == 0, result.stderr
    verbs = re.findall(r"^ {4}([a-z]+) {2,}\S", result.stdout, re.MULTILINE)
    assert {"backup", "restore", "prune"} <= set(verbs)
    guide = (DOCS / "user-guide.md").read_text(encoding="utf-8")
    for verb in verbs:
        assert f"### `{verb}`" in guide, f"verb {verb} has no section in docs/user-guide.md"


def test_profile_reference_names_every_choice() -> None:
    text = (DOCS / "profile.md").read_text(encoding="utf-8")
    for value in (*THAW_MODES, *ON_QUIESCE_FAILURE):
        assert f'"{value}"' in text, f"docs/profile.md does not mention {value!r}"
    for rule in RULES:
        assert f"`{rule}`" in text, f"docs/profile.md does not mention keep rule {rule!r}"


# -- the author guide's example plug-in, installed and used for real ---------------


def example_files() -> dict[str, tuple[str, str]]:
    """``{path: (fence language, content)}`` of the guide's ``# file:`` blocks."""
    text = GUIDE.read_text(encoding="utf-8")
    blocks = re.findall(
        r"^```(\w+)\n(# file: (\S+)\n.*?)^```$", text, flags=re.MULTILINE | re.DOTALL
    )
    return {path: (lang, body) for lang, body, path in blocks}


def test_author_guide_has_exactly_the_two_example_files() -> None:
    files = example_files()
    assert sorted(files) == ["pyproject.toml", "src/freezeframe_flagfile/__init__.py"]
    assert files["pyproject.toml"][0] == "toml"
    assert files["src/freezeframe_flagfile/__init__.py"][0] == "python"
    project = tomllib.loads(files["pyproject.toml"][1])
    assert project["build-system"]["build-backend"] == "hatchling.build"
    assert project["project"]["entry-points"]["freezeframe"] == {"flagfile": "freezeframe_flagfile"}
    assert "freezeframe" in project["project"]["dependencies"]
    compile(files["src/freezeframe_flagfile/__init__.py"][1], "example", "exec")


@pytest.fixture(scope="module")
def example_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example distribution, built and installed with pip into a folder of its own."""
    base = tmp_path_factory.mktemp("flagfile")
    pkg, site = base / "pkg", base / "site"
    for rel, (_lang, body) in example_files().items():
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_text(body, encoding="utf-8")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-deps",
            "--target",
            str(site),
            str(pkg),  # absolute: a bare name would be looked up on the index
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, f"pip install of the example failed:\n{proc.stderr}"
    assert (site / "freezeframe_flagfile" / "__init__.py").is_file()
    return site


def with_site(site: Path) -> dict[str, str]:
    """The environment that makes the installed example importable by the CLI subprocess."""
    paths = [str(site), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {"PYTHONPATH": os.pathsep.join(paths)}


class FlagHonouringApp(threading.Thread):
    """The application the example describes: it appends to ``log.txt`` unless paused."""

    def __init__(self, folder: Path) -> None:
        super().__init__(name="flag-app", daemon=True)
        self.flag, self.ack, self.log = folder / "PAUSED", folder / "PAUSED.ack", folder / "log.txt"
        self.stop = threading.Event()
        self.writes = 0

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                until = float(self.flag.read_text())
            except (FileNotFoundError, ValueError):
                until = 0.0
            if until > time.time():
                self.ack.touch()
            else:
                self.ack.unlink(missing_ok=True)
                self.writes += 1
                with self.log.open("a") as f:
                    f.write(f"{self.writes}\n")
            time.sleep(0.002)


@pytest.fixture
def flag_app(tmp_path: Path) -> Iterator[FlagHonouringApp]:
    folder = tmp_path / "app"
    folder.mkdir()
    app = FlagHonouringApp(folder)
    app.start()
    yield app
    app.stop.set()
    app.join(5)


PROFILE = """
    [profile]
    name = "{name}"
    freeze_timeout = "{timeout}"

    [[application]]
    plugin = "flagfile"
    name = "app"
    dir = "app"

    [[backup]]
    backend = "clone"
    name = "snap"
    dir = "snaps"

    [[backup]]
    backend = "archive"
    name = "archive"
    dir = "archives"
"""


def archive_members(path: Path) -> dict[str, bytes]:
    import zstandard

    members = {}
    with (
        open(path, "rb") as raw,
        zstandard.ZstdDecompressor().stream_reader(raw) as zr,
        tarfile.open(fileobj=zr, mode="r|") as tar,
    ):
        for member in tar:
            f = tar.extractfile(member)
            members[member.name] = f.read() if f is not None else b""
    return members


@pytest.mark.slow
def test_example_plugin_is_listed_with_its_distribution(example_site: Path) -> None:
    without = run_cli("plugins", "--json")
    assert without.returncode == 0, without.stderr
    assert "flagfile" not in {c["kind"] for c in without.json()["components"]}

    result = run_cli("plugins", "--json", env=with_site(example_site))
    assert result.returncode == 0, result.stderr
    data = result.json()
    broken = [b for b in data["broken"] if "flagfile" in f"{b['distribution']} {b['kind']}"]
    assert broken == [], broken
    found = [c for c in data["components"] if c["kind"] == "flagfile"]
    assert len(found) == 1
    assert found[0]["type"] == "application"
    assert found[0]["distribution"] == "freezeframe-flagfile"
    assert found[0]["crash_safety"] == "server-timeout"


@pytest.mark.slow
def test_example_plugin_quiesces_for_the_snapshot_and_thaws(
    example_site: Path, flag_app: FlagHonouringApp, tmp_path: Path, write_profile: Any
) -> None:
    env = with_site(example_site)
    profile = write_profile(PROFILE.format(name="flags", timeout="10s"))
    app_dir = tmp_path / "app"
    started = time.time()

    result = run_cli("backup", profile, "--json", env=env)
    assert result.returncode == 0, result.stderr
    run = result.json()
    assert run["status"] == "succeeded", run["error"]
    [app] = run["applications"]
    assert (app["plugin"], app["distribution"], app["mode"]) == (
        "flagfile",
        "freezeframe-flagfile",
        "quiesced",
    )
    assert app["frozen_ms"] is not None and app["frozen_ms"] > 0
    snap, archive = run["stages"]
    assert (snap["status"], archive["status"]) == ("succeeded", "succeeded")
    assert not Path(snap["view"]).exists(), "the snapshot is released once archived"

    # The flag and the application's ack were there while the snapshot was taken ...
    members = archive_members(Path(archive["metadata"]["file"]))
    rel = str(app_dir.relative_to(app_dir.anchor))
    assert f"{rel}/PAUSED" in members and f"{rel}/PAUSED.ack" in members
    assert float(members[f"{rel}/PAUSED"]) > started
    assert f"{rel}/log.txt" in members

    # ... and the thaw removed the flag, so the application writes again.
    assert not (app_dir / "PAUSED").exists()
    writes_after_backup = flag_app.writes
    deadline = time.monotonic() + 10
    while flag_app.writes <= writes_after_backup + 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert flag_app.writes > writes_after_backup + 5, "the application did not resume"

    # A restore holds the data but not the pause (prepare_restored).
    drill = tmp_path / "drill"
    restored = run_cli("restore", profile, "latest", "--to", drill, env=env)
    assert restored.returncode == 0, restored.stderr
    assert (drill / rel / "log.txt").is_file()
    assert not (drill / rel / "PAUSED").exists()
    assert not (drill / rel / "PAUSED.ack").exists()


@pytest.mark.slow
def test_example_plugin_fails_the_run_when_nothing_acknowledges(
    example_site: Path, tmp_path: Path, write_profile: Any
) -> None:
    (tmp_path / "app").mkdir()
    profile = write_profile(PROFILE.format(name="unheard", timeout="300ms"))

    result = run_cli("backup", profile, "--json", env=with_site(example_site))
    assert result.returncode == 1, result.stdout + result.stderr
    run = result.json()
    assert run["status"] == "failed"
    # The plug-in gives up at the deadline, as the core does: either message may win.
    assert re.search(r"PAUSED\.ack did not appear|did not quiesce within", run["error"])
    assert run["applications"][0]["mode"] == "failed"
    assert not (tmp_path / "app" / "PAUSED").exists(), "unquiesce must remove the flag"
    assert list((tmp_path / "archives").iterdir()) == []
    assert list((tmp_path / "snaps").iterdir()) == []
