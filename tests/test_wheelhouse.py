"""The distributions users install: one wheelhouse, one version, installable with no checkout.

``nox -s build`` builds a wheel and an sdist of every distribution into one
folder. These tests check what it refuses (a version, a licence or a core
requirement that disagrees), then build the wheelhouse once, install the
SQLite plug-in and two backends from it into a fresh virtual environment
outside the checkout (the core comes in as their dependency), and back up,
list and restore with that environment's own ``freezeframe`` command. The
vendor template (``examples/vendor-plugin``) is built into a wheel of its own
and installed beside the core's and the kit's wheels, where ``freezeframe
plugins`` lists it and its tests (the kit's contract tests and a backup) pass.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree

import pytest

from freezeframe_testing.plugin import (
    integrity,
    make_counter_db,
    need,
    read_counter,
    restored,
    sqlite_clone_profile,
)
from freezeframe_testing.wheels import (
    CORE,
    LICENSE,
    Venv,
    build_distribution,
    build_wheelhouse,
    distributions,
    inconsistency,
    pypi_reachable,
)

ROOT = Path(__file__).resolve().parents[1]
WHEELS_SCRIPT = ROOT / "testing" / "src" / "freezeframe_testing" / "wheels.py"
TEMPLATE = ROOT / "examples" / "vendor-plugin"


# -- what the build refuses (fast: nothing is built) -------------------------------


@pytest.fixture
def checkout_copy(tmp_path: Path) -> Path:
    """The checkout's top-level LICENSE and every distribution's pyproject.toml and LICENSE."""
    copy = tmp_path / "checkout"
    copy.mkdir()
    shutil.copy(ROOT / LICENSE, copy / LICENSE)
    for d in distributions(ROOT):
        folder = copy / d.folder.relative_to(ROOT)
        folder.mkdir(parents=True)
        for name in ("pyproject.toml", LICENSE):
            shutil.copy(d.folder / name, folder / name)
    return copy


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text, f"{old!r} is not in {path}"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


def test_every_distribution_is_found_and_agrees_with_the_core() -> None:
    dists = distributions(ROOT)
    folders = {d.folder for d in dists}
    assert ROOT / "core" in folders
    for group in ("plugins", "backends"):
        packages = {p for p in (ROOT / group).iterdir() if (p / "pyproject.toml").is_file()}
        assert packages and packages <= folders, f"a package under {group}/ is not found"
    assert inconsistency(ROOT, dists) is None


def test_a_version_other_than_the_cores_is_named(checkout_copy: Path) -> None:
    edit(checkout_copy / "plugins/redis/pyproject.toml", 'version = "0.1.0"', 'version = "0.1.1"')
    problem = inconsistency(checkout_copy, distributions(checkout_copy))
    assert problem == (
        "freezeframe-redis (plugins/redis/pyproject.toml) has version 0.1.1, "
        "the core freezeframe has 0.1.0"
    )


def test_a_core_requirement_the_core_does_not_satisfy_is_named(checkout_copy: Path) -> None:
    edit(
        checkout_copy / "backends/clone/pyproject.toml", "freezeframe>=0.1,<0.2", "freezeframe>=0.2"
    )
    problem = inconsistency(checkout_copy, distributions(checkout_copy))
    assert problem is not None and problem.startswith("freezeframe-clone (backends/clone/")
    assert "freezeframe>=0.2" in problem and "0.1.0" in problem


def test_a_distribution_without_the_core_requirement_is_named(checkout_copy: Path) -> None:
    edit(checkout_copy / "plugins/exec/pyproject.toml", '"freezeframe>=0.1,<0.2"', '"rich"')
    problem = inconsistency(checkout_copy, distributions(checkout_copy))
    assert (
        problem == "freezeframe-exec (plugins/exec/pyproject.toml) does not depend on freezeframe"
    )


def test_a_licence_file_that_differs_is_named(checkout_copy: Path) -> None:
    (checkout_copy / "backends/borg" / LICENSE).write_text("all rights reserved\n")
    problem = inconsistency(checkout_copy, distributions(checkout_copy))
    assert problem is not None and problem.startswith("freezeframe-borg (backends/borg/")
    assert "backends/borg/LICENSE must be a copy of the top-level LICENSE" in problem


def test_the_build_script_fails_with_one_line_naming_the_offender(
    checkout_copy: Path, tmp_path: Path
) -> None:
    edit(checkout_copy / "core/pyproject.toml", 'version = "0.1.0"', 'version = "0.2.0"')
    proc = subprocess.run(
        [sys.executable, str(WHEELS_SCRIPT), "--root", str(checkout_copy), str(tmp_path / "wh")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert (
        lines[0].startswith("build: freezeframe-") and "the core freezeframe has 0.2.0" in lines[0]
    )
    assert not (tmp_path / "wh").exists(), "nothing is built when the distributions disagree"


# -- the wheelhouse, built once, installed into a fresh environment ---------------


@pytest.fixture(scope="session")
def builder(tmp_path_factory: pytest.TempPathFactory) -> Venv:
    """The environment that builds: ``build`` and the build backend come from PyPI."""
    need(pypi_reachable(), "PyPI is unreachable: the build tools and dependencies come from it")
    base = tmp_path_factory.mktemp("builder")
    return Venv.create(base / "venv", cwd=base / "elsewhere")


@pytest.fixture(scope="session")
def wheelhouse(builder: Venv, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every distribution's wheel and sdist, built once per session (``nox -s build``'s code)."""
    dest = tmp_path_factory.mktemp("wheelhouse")
    build_wheelhouse(ROOT, dest, python=builder.python)
    return dest


@pytest.fixture(scope="session")
def installed(wheelhouse: Path, tmp_path_factory: pytest.TempPathFactory) -> Venv:
    """A fresh environment outside the checkout with the SQLite plug-in and two backends."""
    base = tmp_path_factory.mktemp("installed")
    assert not base.is_relative_to(ROOT)
    env = Venv.create(base / "venv", cwd=base / "work")
    env.install(
        "freezeframe-sqlite", "freezeframe-clone", "freezeframe-archive", find_links=[wheelhouse]
    )
    return env


@pytest.mark.slow
def test_the_wheelhouse_holds_a_wheel_and_an_sdist_of_every_distribution(wheelhouse: Path) -> None:
    dists = distributions(ROOT)
    built = sorted(p.name for p in wheelhouse.iterdir())
    assert len(built) == 2 * len(dists), built
    for d in dists:
        assert f"{d.stem}.tar.gz" in built
        assert f"{d.stem}-py3-none-any.whl" in built


@pytest.mark.slow
def test_the_installed_environment_holds_no_checkout(installed: Venv) -> None:
    code = (
        "import json, sys, freezeframe, freezeframe_sqlite; "
        "print(json.dumps([freezeframe.__file__, freezeframe_sqlite.__file__, sys.path]))"
    )
    proc = installed.run("python", "-c", code)
    assert proc.returncode == 0, proc.stderr
    core_file, plugin_file, path = json.loads(proc.stdout)
    for module_file in (core_file, plugin_file):
        assert Path(module_file).is_relative_to(installed.path), module_file
    assert not [p for p in path if p and Path(p).resolve().is_relative_to(ROOT)], path

    listed = installed.run("pip", "list", "--format", "json")
    assert listed.returncode == 0, listed.stderr
    versions = {p["name"]: p for p in json.loads(listed.stdout)}
    # The core was pulled in as a dependency, from the wheelhouse, not as an editable checkout.
    assert versions[CORE]["version"] == "0.1.0"
    assert not [p for p in versions.values() if "editable_project_location" in p]
    assert "freezeframe-postgresql" not in versions


@pytest.mark.slow
def test_the_installed_command_lists_what_was_installed(installed: Venv) -> None:
    result = installed.freezeframe("plugins", "--json")
    assert result.returncode == 0, result.stderr
    data = result.json()
    assert data["broken"] == []
    kinds = {c["kind"]: c["distribution"] for c in data["components"]}
    assert kinds == {
        "sqlite": "freezeframe-sqlite",
        "clone": "freezeframe-clone",
        "archive": "freezeframe-archive",
    }


@pytest.mark.slow
def test_the_installed_command_backs_up_lists_and_restores(installed: Venv) -> None:
    work = installed.cwd / "shop"
    work.mkdir()
    db = make_counter_db(work / "orders.db")
    archives = json.dumps(str(work / "archives"))
    archive = f'[[backup]]\nbackend = "archive"\nname = "archive"\ndir = {archives}\n'
    profile = sqlite_clone_profile(work, db, name="installed", then=archive)

    backed_up = installed.freezeframe("backup", profile, "--json")
    assert backed_up.returncode == 0, backed_up.stderr
    run = backed_up.json()
    assert run["status"] == "succeeded", run["error"]
    assert [a["distribution"] for a in run["applications"]] == ["freezeframe-sqlite"]

    # The database moves on after the backup; the restore must bring back the counter as it was.
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE counter SET n = 41 WHERE id = 1")
    conn.close()

    listed = installed.freezeframe("list", profile, "--json")
    assert listed.returncode == 0, listed.stderr
    assert [(r["run_id"], r["status"]) for r in listed.json()] == [(run["run_id"], "succeeded")]

    drill = installed.cwd / "drill"
    back = installed.freezeframe("restore", profile, "latest", "--to", drill, "--verify", "--json")
    assert back.returncode == 0, back.stderr
    assert back.json()["run_id"] == run["run_id"] and back.json()["stage"] == "archive"
    assert integrity(restored(drill, db)) == ["ok"]
    assert read_counter(restored(drill, db)) == 0
    assert read_counter(db) == 41


# -- the vendor template: its own wheel, beside the core's and the kit's -----------


@pytest.fixture(scope="session")
def vendor(builder: Venv, wheelhouse: Path, tmp_path_factory: pytest.TempPathFactory) -> Venv:
    """A fresh environment with the template's wheel, its test extra (the kit, from the
    wheelhouse) and the clone backend; the core comes in as a dependency."""
    base = tmp_path_factory.mktemp("vendor")
    wheel = build_distribution(TEMPLATE, base / "wheels", python=builder.python)
    assert wheel.name.startswith("freezeframe_example-")
    env = Venv.create(base / "venv", cwd=base / "work")
    env.install(
        "freezeframe-example[test]", "freezeframe-clone", find_links=[wheelhouse, wheel.parent]
    )
    return env


@pytest.mark.slow
def test_the_installed_template_is_listed(vendor: Venv) -> None:
    listed = vendor.freezeframe("plugins")
    assert listed.returncode == 0, listed.stderr
    assert "example" in listed.stdout and "freezeframe-example" in listed.stdout
    data = vendor.freezeframe("plugins", "--json").json()
    assert data["broken"] == []
    [example] = [c for c in data["components"] if c["kind"] == "example"]
    assert (example["type"], example["distribution"]) == ("application", "freezeframe-example")


@pytest.mark.slow
def test_the_kits_contract_tests_and_a_backup_pass_against_the_installed_template(
    vendor: Venv,
) -> None:
    tests = vendor.cwd / "template-tests"
    shutil.copytree(TEMPLATE / "tests", tests, ignore=shutil.ignore_patterns("__pycache__"))
    report = vendor.cwd / "report.xml"
    proc = vendor.run(
        "python", "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}", tests
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    suite = ElementTree.parse(report).getroot().find("testsuite")  # noqa: S314 (our pytest wrote it)
    assert suite is not None
    counts = {k: int(suite.get(k, "0")) for k in ("tests", "failures", "errors", "skipped")}
    assert counts["failures"] == counts["errors"] == counts["skipped"] == 0, counts
    cases = [c.get("classname", "") for c in suite.iter("testcase")]
    contract = [c for c in cases if c.endswith("TestExampleContract")]
    assert len(contract) >= 5, cases  # the kit's tests ran, not only the template's own
    # The template's own test backs up and restores its running application through this
    # environment's freezeframe (the clone backend installed beside it, so it did not skip).
    assert [c for c in cases if c.endswith("test_backup")], cases
