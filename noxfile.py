"""Developer sessions: ``nox -s tests``, ``lint``, ``demo``, ``bench``.

Every session installs the core and every component package from this
checkout (editable), so a change anywhere is tested everywhere.
"""

from __future__ import annotations

from pathlib import Path

import nox

nox.options.sessions = ["lint", "tests"]
nox.options.reuse_existing_virtualenvs = True
nox.options.default_venv_backend = "venv"

ROOT = Path(__file__).parent
PACKAGES = [
    "core",
    "testing",
    *sorted(str(p.parent.relative_to(ROOT)) for p in ROOT.glob("plugins/*/pyproject.toml")),
    *sorted(str(p.parent.relative_to(ROOT)) for p in ROOT.glob("backends/*/pyproject.toml")),
]
#: Installed (editable) beside the packages where their tests or sources are checked: the
#: vendor template is what a plug-in author copies, not a package we ship.
TEMPLATES = ["examples/vendor-plugin"]
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
    session.run("mypy", *(f"{pkg}/src" for pkg in [*PACKAGES, *TEMPLATES]))


@nox.session
def demo(session: nox.Session) -> None:
    """Two live SQLite databases: quiesced together, snapshotted, archived, listed, restored."""
    install_packages(session)
    session.run("python", "examples/demo.py", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks (not tests): freeze windows and throughput against the raw tools."""
    install_packages(session)
    session.run("python", "bench/run.py", *session.posargs)
