"""Developer sessions: ``nox -s tests``, ``lint``, ``demo``, ``bench``, ``build``.

Every session installs the core and every component package from this
checkout (editable), so a change anywhere is tested everywhere. The packages
are found by glob (the test kit's ``wheels.DISTRIBUTION_GLOBS``): adding one
needs no list here.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import nox

nox.options.sessions = ["lint", "tests"]
nox.options.reuse_existing_virtualenvs = True
nox.options.default_venv_backend = "venv"

ROOT = Path(__file__).parent
WHEELS_SCRIPT = ROOT / "testing" / "src" / "freezeframe_testing" / "wheels.py"


def load_wheels() -> ModuleType:
    """The test kit's wheels module, by path: nox's own environment has no freezeframe."""
    spec = importlib.util.spec_from_file_location("freezeframe_wheels", WHEELS_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


DISTRIBUTIONS = load_wheels().distributions(ROOT)
PACKAGES = [str(d.folder.relative_to(ROOT)) for d in DISTRIBUTIONS]
SOURCES = [str(p.relative_to(ROOT)) for d in DISTRIBUTIONS for p in d.packages]
# Installed (editable) beside the packages where their tests or sources are checked: a
# vendor template is what a plug-in author copies, not a package we ship.
TEMPLATES = sorted(str(p.parent.relative_to(ROOT)) for p in ROOT.glob("examples/*/pyproject.toml"))
TEST_DEPS = ["pytest>=8", "hypothesis>=6"]


def install_packages(session: nox.Session, *extra: str) -> None:
    args: list[str] = []
    for pkg in [*PACKAGES, *extra]:
        args += ["-e", pkg]
    session.install(*args)


@nox.session
def tests(session: nox.Session) -> None:
    """Every test: unit tests of each package and the cross-package suite (real components)."""
    install_packages(session, *TEMPLATES)
    session.install(*TEST_DEPS)
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff (lint and format) everywhere; mypy --strict on every package's source."""
    install_packages(session, *TEMPLATES)
    session.install("ruff", "mypy", *TEST_DEPS)
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("mypy", *SOURCES, *(f"{t}/src" for t in TEMPLATES))


@nox.session
def demo(session: nox.Session) -> None:
    """Two live SQLite databases: quiesced together, snapshotted, archived, drilled, restored."""
    install_packages(session)
    session.run("python", "examples/demo.py", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks (not tests): freeze windows and throughput against the raw tools."""
    install_packages(session)
    session.run("python", "bench/run.py", *session.posargs)


@nox.session
def build(session: nox.Session) -> None:
    """A wheel and an sdist of every distribution, one version, into dist/wheelhouse (or ARG).

    Fails with one line naming a distribution whose version, licence or
    ``freezeframe`` requirement disagrees with the core's.
    """
    dest = Path(session.posargs[0]) if session.posargs else ROOT / "dist" / "wheelhouse"
    session.install("build")
    session.run("python", str(WHEELS_SCRIPT), "--root", str(ROOT), str(dest.resolve()))
