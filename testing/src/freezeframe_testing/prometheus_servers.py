"""A private Prometheus node exporter (textfile collector only) and Pushgateway for tests,
each on a free 127.0.0.1 port, scraped over HTTP as Prometheus would.

``node_exporter(textfile_dir)`` and ``pushgateway()`` (fixtures) start Debian's
``prometheus-node-exporter`` and ``prometheus-pushgateway`` and stop every one they
started at teardown, also when the test failed. Skips (fails in CI) when a binary or
``prometheus_client`` (whose parser reads the scrape) is missing.
"""

from __future__ import annotations

import base64
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from freezeframe_testing.plugin import need, require_tool, stop_all
from freezeframe_testing.postgres_server import free_port

__all__ = ["Exporter", "Samples", "node_exporter", "pushgateway", "start_exporter"]

#: ``{(metric name, sorted (label, value) pairs): value}`` of one scrape.
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@dataclass
class Exporter:
    """One exporter process started for a test."""

    proc: subprocess.Popen[bytes]
    port: int
    run_dir: Path  # its log

    @property
    def base(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.port}"

    def get(
        self, path: str = "/metrics", timeout: float = 10, auth: tuple[str, str] | None = None
    ) -> str:
        """The body of ``GET path``, with Basic ``auth`` if given (an HTTP error raises)."""
        request = urllib.request.Request(self.base + path)  # noqa: S310 (http://127.0.0.1)
        if auth is not None:
            token = base64.b64encode(":".join(auth).encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        with urllib.request.urlopen(request, timeout=timeout) as r:  # noqa: S310 (the same)
            return str(r.read().decode())

    def scrape(self, auth: tuple[str, str] | None = None) -> Samples:
        """Every sample of ``/metrics``, parsed by prometheus_client's parser."""
        from prometheus_client.parser import text_string_to_metric_families

        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(self.get(auth=auth))
            for s in family.samples
        }

    def log(self) -> str:
        """What it wrote to stdout and stderr."""
        path = self.run_dir / "exporter.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 s; wait; remove its run folder."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proc.wait(30)
        shutil.rmtree(self.run_dir, ignore_errors=True)


def start_exporter(
    argv: Callable[[int], Sequence[str]], ready: str = "/metrics", timeout: float = 30
) -> Exporter:
    """Start ``argv(port)`` on a free port and wait until ``GET ready`` answers 200;
    another port if one was taken meanwhile (a few tries), a RuntimeError if it never
    answers."""
    run_dir = Path(tempfile.mkdtemp(prefix="ffexporter-"))
    last = ""
    for _ in range(5):
        port = free_port()
        with open(run_dir / "exporter.log", "wb") as out:
            proc = subprocess.Popen(
                list(argv(port)),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        exporter = Exporter(proc, port, run_dir)
        end = time.monotonic() + timeout
        while proc.poll() is None and time.monotonic() < end:
            try:
                exporter.get(ready, timeout=2)
                return exporter
            except urllib.error.HTTPError:
                return exporter  # it answers (401 when its web config wants a password)
            except OSError:
                time.sleep(0.05)
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)
        lines = exporter.log().strip().splitlines()
        last = lines[-1] if lines else f"exit {proc.returncode}"
        if "address already in use" not in exporter.log():
            break
    shutil.rmtree(run_dir, ignore_errors=True)
    raise RuntimeError(f"{argv(0)[0]} did not start: {last}")


def _prometheus_client() -> None:
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        need(False, "prometheus_client is not installed")


@pytest.fixture
def node_exporter() -> Iterator[Callable[[Path], Exporter]]:
    """Start node exporters with only the textfile collector, reading the given folder:
    ``node_exporter(tmp_path / "textfiles").scrape()``."""
    binary = require_tool("prometheus-node-exporter")
    _prometheus_client()
    started: list[Exporter] = []

    def make(textfile_dir: Path) -> Exporter:
        exporter = start_exporter(
            lambda port: [
                binary,
                f"--web.listen-address=127.0.0.1:{port}",
                "--collector.disable-defaults",
                "--collector.textfile",
                f"--collector.textfile.directory={textfile_dir}",
            ]
        )
        started.append(exporter)
        return exporter

    yield make
    stop_all(started)


@pytest.fixture
def pushgateway() -> Iterator[Callable[..., Exporter]]:
    """Start Pushgateways keeping pushes in memory only (no persistence file), with the
    extra flags given: ``pushgateway("--web.config.file=web.yml")``."""
    binary = require_tool("prometheus-pushgateway")
    _prometheus_client()
    started: list[Exporter] = []

    def make(*flags: str) -> Exporter:
        exporter = start_exporter(
            lambda port: [binary, f"--web.listen-address=127.0.0.1:{port}", *flags],
            ready="/-/ready",
        )
        started.append(exporter)
        return exporter

    yield make
    stop_all(started)
