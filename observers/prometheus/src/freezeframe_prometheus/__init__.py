"""freezeframe observer ``prometheus``: where a profile stands, as Prometheus metrics.

After every finished run and every drill verdict it builds the profile's whole state
(:mod:`freezeframe_prometheus._metrics`, from the :class:`ProfileStatus` the core hands
it) in a fresh registry and

- writes it to ``<textfile_dir>/freezeframe_<profile>.prom`` for node_exporter's textfile
  collector: a temporary file in the same folder (a name the collector ignores), mode
  0644 so that an exporter running as another user reads it, fsync'd, renamed over the
  old file, the folder fsync'd; the collector never sees half a file;
- and/or pushes it to a Pushgateway with ``PUT`` (job ``freezeframe``, grouping key
  ``profile``), which replaces what the previous push of that profile left.

Neither ever changes the run: what fails is logged as a warning naming the observer, and
the push's socket timeout is kept below ``timeout``, which is also how long the core
waits for the call. Credentials of the Pushgateway (``http://user:password@host``) come
only from ``pushgateway_env``/``pushgateway_file``; they are sent as a Basic
``Authorization`` header and never shown.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from freezeframe.plugin import (
    ConfigError,
    DrillRecord,
    Observer,
    ProfileStatus,
    RunRecord,
    Table,
    fsync_dir,
    hookimpl,
)
from freezeframe_prometheus._metrics import METRICS, registry_of

__all__ = ["JOB", "METRICS", "PrometheusObserver", "textfile_name"]

# below the core's logger: its warnings show as the core's do ("freezeframe: ...")
log = logging.getLogger("freezeframe.prometheus")

#: The Pushgateway job every push is grouped under (beside ``profile``).
JOB = "freezeframe"
#: The longest ``timeout`` a table may give: a run waits this long at most per call.
LONGEST_TIMEOUT = 300.0


def textfile_name(profile: str) -> str:
    """The file a profile's metrics go to in ``textfile_dir``."""
    return f"freezeframe_{profile}.prom"


class PrometheusObserver(Observer):
    """One ``[prometheus]`` (or ``[[prometheus]]``) table of a profile."""

    kind = "prometheus"

    def __init__(self, name: str, table: Table) -> None:
        super().__init__(name, table)
        self.textfile_dir: Path | None = table.get_path("textfile_dir", None)
        plain = table.get_str("pushgateway", None)
        secret = table.get_secret("pushgateway")
        if plain is not None and secret is not None:
            raise ConfigError(
                "pushgateway",
                'give either "pushgateway" or "pushgateway_env"/"pushgateway_file", not both',
            )
        self.url: str | None = None
        self._auth: tuple[str, str] | None = None
        if plain is not None:
            self.url, self._auth = _gateway("pushgateway", plain)
            if self._auth is not None and self._auth[1]:
                raise ConfigError(
                    "pushgateway",
                    "holds a password: put the URL in pushgateway_env or pushgateway_file",
                )
        elif secret is not None:
            self.url, self._auth = _gateway(
                "pushgateway_env" if "pushgateway_env" in table else "pushgateway_file",
                secret.reveal(),
            )
        if self.textfile_dir is None and self.url is None:
            raise ConfigError(
                "textfile_dir",
                "missing: give textfile_dir, pushgateway (or pushgateway_env/pushgateway_file), "
                "or both",
            )
        self.timeout = table.get_duration("timeout", 5.0, maximum=LONGEST_TIMEOUT)

    def run_finished(self, run: RunRecord, status: ProfileStatus) -> None:
        self.publish(status)

    def drill_finished(self, run: RunRecord, drill: DrillRecord, status: ProfileStatus) -> None:
        self.publish(status)

    def publish(self, status: ProfileStatus) -> None:
        """Write and/or push the whole state of ``status``'s profile; log what fails."""
        deadline = time.monotonic() + self.timeout
        registry = registry_of(status)
        if self.textfile_dir is not None:
            from prometheus_client import generate_latest

            name = textfile_name(status.profile)
            try:
                write_atomically(self.textfile_dir, name, generate_latest(registry))
            except OSError as e:
                self._warn(f"textfile_dir {self.textfile_dir}: cannot write {name}: {e.strerror}")
        if self.url is not None:
            # below what the core waits for this call, so the push reports its own timeout
            left = max(0.05, (deadline - time.monotonic()) * 0.8)
            try:
                self._push(status.profile, registry, left)
            except Exception as e:  # a gateway down, refusing, or hanging
                self._warn(f"pushgateway {self.url}: push failed: {_reason(e)}")

    def _push(self, profile: str, registry: Any, timeout: float) -> None:
        from prometheus_client import push_to_gateway
        from prometheus_client.exposition import basic_auth_handler, default_handler

        assert self.url is not None
        handler: Callable[..., Callable[[], None]] = default_handler
        if self._auth is not None:
            user, password = self._auth

            def handler(**kwargs: Any) -> Callable[[], None]:
                return basic_auth_handler(**kwargs, username=user, password=password)

        push_to_gateway(
            self.url,
            job=JOB,
            registry=registry,
            grouping_key={"profile": profile},
            timeout=timeout,
            handler=handler,
        )

    def _warn(self, message: str) -> None:
        log.warning("observer %r (%s): %s", self.name, self.kind, message)


def _gateway(key: str, url: str) -> tuple[str, tuple[str, str] | None]:
    """``url`` without its credentials, and the credentials (``None``: none); a
    :class:`ConfigError` on ``key`` that never repeats the URL (it may hold a password)."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        raise ConfigError(
            key, 'expected an http:// or https:// URL, e.g. "http://host:9091"'
        ) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(key, 'expected an http:// or https:// URL, e.g. "http://host:9091"')
    if port == 0:
        raise ConfigError(key, "port 0 is no port to push to")
    if parts.query or parts.fragment:
        raise ConfigError(key, "must have no ?query or #fragment: the path is the Pushgateway's")
    host = parts.netloc.rpartition("@")[2]
    auth = None
    if parts.username is not None:
        auth = (unquote(parts.username), unquote(parts.password or ""))
    return urlunsplit((parts.scheme, host, parts.path, "", "")), auth


def _reason(e: BaseException) -> str:
    """One line saying why a push failed (urllib wraps the reason of a connection error)."""
    from urllib.error import HTTPError, URLError

    if isinstance(e, HTTPError):
        return f"HTTP {e.code} {e.reason}"
    reason: object = e.reason if isinstance(e, URLError) else e
    if isinstance(reason, TimeoutError):
        return "timed out"
    text = reason.strerror if isinstance(reason, OSError) and reason.strerror else str(reason)
    return " ".join((text or type(reason).__name__).split())


def write_atomically(folder: Path, name: str, data: bytes) -> Path:
    """Replace ``folder/name`` with ``data`` whole: a temporary file in ``folder`` (a dot
    name ending ``.tmp``, which the textfile collector skips), mode 0644, fsync'd, renamed
    over ``name``, then the folder fsync'd. A failure leaves the old file as it was."""
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
    try:
        with open(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o644)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        target = folder / name
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(folder)
    return target


@hookimpl
def freezeframe_register_observers(register: Callable[[type[Any]], None]) -> None:
    """Register the ``prometheus`` observer."""
    register(PrometheusObserver)
