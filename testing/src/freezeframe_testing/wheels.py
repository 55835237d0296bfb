"""Wheels and fresh virtual environments: what a user gets from ``pip install``.

:func:`build_wheelhouse` builds a wheel and an sdist of every distribution of a
checkout into one folder, after checking that they agree (one version, a
``freezeframe`` requirement the core satisfies, one licence). :class:`Venv` is a
fresh virtual environment outside any checkout that installs from such a folder.

``nox -s build`` runs this file as a script (``python wheels.py --root ROOT DEST``)
in an environment that has only ``build`` (and so ``packaging``) installed, so it
imports only the standard library at the top.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tomllib
import urllib.error
import urllib.request
import venv
import zipfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from freezeframe_testing.plugin import CliResult

CORE = "freezeframe"
LICENSE = "LICENSE"
# Where distributions live in the checkout: the core and the kit at the top,
# one folder per plug-in and per backend. A new package needs no entry anywhere.
DISTRIBUTION_GLOBS = (
    "*/pyproject.toml",
    "plugins/*/pyproject.toml",
    "backends/*/pyproject.toml",
    "observers/*/pyproject.toml",
)
PYPI = "https://pypi.org/simple/pip/"
TIMEOUT = 600


class WheelhouseError(Exception):
    """The distributions disagree or do not build; the message is one line naming the culprit."""


@dataclass(frozen=True)
class Distribution:
    """One ``pyproject.toml`` of the checkout, as far as building and releasing go."""

    folder: Path
    project: dict[str, Any]
    build_requires: tuple[str, ...]
    packages: tuple[Path, ...]  # the import packages its wheel holds, as folders

    @classmethod
    def read(cls, folder: Path) -> Distribution:
        data = tomllib.loads((folder / "pyproject.toml").read_text(encoding="utf-8"))
        requires = data.get("build-system", {}).get("requires", [])
        wheel = data.get("tool", {}).get("hatch", {}).get("build", {}).get("targets", {})
        packages = wheel.get("wheel", {}).get("packages", [])
        return cls(
            folder, data.get("project", {}), tuple(requires), tuple(folder / p for p in packages)
        )

    @property
    def name(self) -> str:
        return str(self.project.get("name", self.folder.name))

    @property
    def version(self) -> str | None:
        version = self.project.get("version")
        return str(version) if version is not None else None

    @property
    def stem(self) -> str:
        """How wheel and sdist file names start: ``freezeframe_sqlite-0.1.0``."""
        return f"{self.name.replace('-', '_').replace('.', '_').lower()}-{self.version}"


def distributions(root: Path) -> list[Distribution]:
    """Every distribution of the checkout at ``root``, found by :data:`DISTRIBUTION_GLOBS`."""
    folders = {p.parent for pattern in DISTRIBUTION_GLOBS for p in root.glob(pattern)}
    return [Distribution.read(f) for f in sorted(folders)]


def inconsistency(root: Path, dists: list[Distribution]) -> str | None:
    """One line naming the first distribution that disagrees with the core, or None.

    Every distribution has the core's version, the core's licence with the
    checkout's ``LICENSE`` file beside its ``pyproject.toml``, and (but the core)
    a requirement on ``freezeframe`` that the core's version satisfies.
    """
    from packaging.requirements import InvalidRequirement, Requirement

    cores = [d for d in dists if d.name == CORE]
    if len(cores) != 1:
        return f"expected one distribution named {CORE!r} under {root}, found {len(cores)}"
    core = cores[0]
    licence = (root / LICENSE).read_bytes()
    for d in dists:
        where = f"{d.name} ({d.folder.relative_to(root)}/pyproject.toml)"
        if d.version != core.version:
            return f"{where} has version {d.version}, the core {CORE} has {core.version}"
        if d.project.get("license") != core.project.get("license"):
            theirs, ours = d.project.get("license"), core.project.get("license")
            return f"{where} declares license {theirs!r}, the core declares {ours!r}"
        if d.project.get("license-files") != [LICENSE]:
            return f'{where} must declare license-files = ["{LICENSE}"]'
        copy = d.folder / LICENSE
        if copy.is_symlink() or not copy.is_file() or copy.read_bytes() != licence:
            # Not a link: an sdist keeps a link as a link, and its wheel loses the file.
            return f"{where}: {copy.relative_to(root)} must be a copy of the top-level {LICENSE}"
        if d is core:
            continue
        try:
            reqs = [Requirement(r) for r in d.project.get("dependencies", [])]
        except InvalidRequirement as e:
            return f"{where} has an invalid dependency: {e}"
        on_core = [r for r in reqs if r.name == CORE]
        if not on_core:
            return f"{where} does not depend on {CORE}"
        for r in on_core:
            if not r.specifier.contains(core.version or "", prereleases=True):
                return f"{where} depends on {r}, which the core's {core.version} does not satisfy"
    return None


def _run(argv: list[str], what: str, cwd: Path | None = None) -> str:
    proc = subprocess.run(
        argv, capture_output=True, text=True, timeout=TIMEOUT, cwd=cwd, check=False
    )
    if proc.returncode != 0:
        last = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1:] or ["no output"]
        raise WheelhouseError(f"{what} failed (exit {proc.returncode}): {last[0]}")
    return proc.stdout


def install_build_tools(python: str, requires: set[str]) -> None:
    """Install ``build`` and the distributions' build requirements for ``python``."""
    _run(
        [python, "-m", "pip", "install", "--quiet", "build", *sorted(requires)],
        "installing the build tools",
    )


def build_one(folder: Path, dest: Path, python: str) -> None:
    """An sdist of ``folder``, then a wheel built from that sdist, into ``dest``.

    Without isolation: the build requirements are already installed for
    ``python`` (``build`` refuses to go on when one is missing), which spares a
    fresh environment per distribution.
    """
    _run(
        [python, "-m", "build", "--no-isolation", "--outdir", str(dest), str(folder)],
        f"building {folder.name}",
    )


def build_distribution(folder: Path, dest: Path, python: str = sys.executable) -> Path:
    """The wheel of one distribution (a vendor's, say) built into ``dest``, with its sdist."""
    dist = Distribution.read(folder)
    install_build_tools(python, set(dist.build_requires))
    build_one(folder, dest, python)
    wheels = sorted(dest.glob(f"{dist.stem}-*.whl"))
    if len(wheels) != 1:
        raise WheelhouseError(f"{dist.name}: expected one wheel in {dest}, found {len(wheels)}")
    return wheels[0]


def build_wheelhouse(root: Path, dest: Path, python: str = sys.executable) -> list[Path]:
    """Check, then build, a wheel and an sdist of every distribution of ``root`` into ``dest``.

    Files of an earlier build of these distributions are removed first. Raises
    :class:`WheelhouseError` with one line naming the offender.
    """
    dists = distributions(root)
    problem = inconsistency(root, dists)
    if problem:
        raise WheelhouseError(problem)
    install_build_tools(python, {r for d in dists for r in d.build_requires})
    dest.mkdir(parents=True, exist_ok=True)
    prefixes = tuple(d.stem.split("-")[0] + "-" for d in dists)
    for old in dest.iterdir():
        if old.name.startswith(prefixes) and old.name.endswith((".whl", ".tar.gz")):
            old.unlink()
    with ThreadPoolExecutor(max_workers=4) as pool:
        # Builds mostly wait on process start-up: a few at once is faster even on 2 cores.
        for future in [pool.submit(build_one, d.folder, dest, python) for d in dists]:
            future.result()
    return [built for d in dists for built in check_built(root, d, dest)]


def check_built(root: Path, dist: Distribution, dest: Path) -> list[Path]:
    """The wheel and the sdist of ``dist`` in ``dest``; the wheel carries the licence."""
    wheels = sorted(dest.glob(f"{dist.stem}-*.whl"))
    sdists = sorted(dest.glob(f"{dist.stem}.tar.gz"))
    if len(wheels) != 1 or len(sdists) != 1:
        raise WheelhouseError(f"{dist.name}: expected one wheel and one sdist in {dest}")
    with zipfile.ZipFile(wheels[0]) as whl:
        metadata = whl.read(f"{dist.stem}.dist-info/METADATA").decode()
        try:
            text = whl.read(f"{dist.stem}.dist-info/licenses/{LICENSE}")
        except KeyError:
            text = b""
    if text != (root / LICENSE).read_bytes() or f"License-File: {LICENSE}" not in metadata:
        raise WheelhouseError(f"{wheels[0].name} does not carry {LICENSE}")
    return [wheels[0], sdists[0]]


def pypi_reachable(timeout: float = 10) -> bool:
    """Whether pip's default index answers (the fresh environments install from it)."""
    index = os.environ.get("PIP_INDEX_URL")
    url = f"{index.rstrip('/')}/pip/" if index else PYPI
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (pip's index)
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


@dataclass(frozen=True)
class Venv:
    """A fresh virtual environment, used from outside any checkout.

    Every command runs with ``cwd`` (a folder outside the checkout) and without
    ``PYTHONPATH`` or an active environment, so only what was installed is found.
    """

    path: Path
    cwd: Path

    @classmethod
    def create(cls, path: Path, cwd: Path) -> Venv:
        venv.EnvBuilder(with_pip=True, clear=True).create(path)
        cwd.mkdir(parents=True, exist_ok=True)
        return cls(path, cwd)

    @property
    def python(self) -> str:
        return str(self.path / "bin" / "python")

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        env["PATH"] = os.pathsep.join([str(self.path / "bin"), env.get("PATH", "")])
        env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
        return env

    def run(self, *argv: str | Path, timeout: float = TIMEOUT) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` (a program of this environment, e.g. ``python``) in :attr:`cwd`."""
        program, *args = map(str, argv)
        exe = self.path / "bin" / program
        return subprocess.run(
            [str(exe) if exe.exists() else program, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.cwd,
            env=self.env(),
            check=False,
        )

    def install(self, *requirements: str | Path, find_links: Sequence[Path]) -> None:
        """``pip install --find-links F ... REQUIREMENTS``; raises with pip's error output."""
        links = [arg for folder in find_links for arg in ("--find-links", str(folder))]
        proc = self.run("pip", "install", "--quiet", *links, *requirements)
        if proc.returncode != 0:
            names = " ".join(map(str, requirements))
            raise WheelhouseError(f"pip install {names} failed:\n{proc.stderr}")

    def freezeframe(self, *args: str | Path, timeout: float = 120) -> CliResult:
        """This environment's ``freezeframe`` command."""
        from freezeframe_testing.plugin import CliResult

        proc = self.run("freezeframe", *args, timeout=timeout)
        return CliResult(proc.returncode, proc.stdout, proc.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--root", type=Path, required=True, help="the checkout")
    parser.add_argument("dest", type=Path, help="the wheelhouse folder")
    args = parser.parse_args(argv)
    try:
        built = build_wheelhouse(args.root.resolve(), args.dest.resolve())
    except WheelhouseError as e:
        print(f"build: {e}", file=sys.stderr)
        return 1
    for path in built:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
