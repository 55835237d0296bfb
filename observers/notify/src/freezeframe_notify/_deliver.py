"""Where a notification goes: a Healthchecks ping URL or any Apprise URL; the bounded
retries of one delivery; and the URL as a log may show it, its secrets left out.

The URL is a secret as a whole (a Healthchecks UUID, a Slack token, an ntfy topic): only
``scheme://host`` is ever shown, the host only where it is a host name or an address
(``slack://TokenA/...`` shows ``slack://…``), and every message that could repeat a part
of the URL (an HTTP library's, Apprise's) has those parts cut out before anyone sees it.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, ClassVar

from freezeframe.plugin import FreezeframeError
from freezeframe_notify._message import Message

if TYPE_CHECKING:
    from apprise.plugins.base import NotifyBase

__all__ = ["AppriseUrl", "NotDelivered", "Ping", "Target", "budget", "deliver", "shown"]

#: The pause before the n-th retry (1 s, 2 s, 4 s, ...), at most this long.
LONGEST_PAUSE = 5.0
#: Kept from the budget the core waits for, so that a notifier's own error (naming what
#: failed) is logged rather than the core's "did not finish".
GRACE = 0.5
#: Stands for what is left out of a URL.
HIDDEN = "…"


class NotDelivered(FreezeframeError):
    """No attempt delivered the notification; the message names no secret."""


class Undelivered(Exception):
    """One attempt failed (its text may still hold parts of the URL: see ``scrub``)."""


def pause_before(attempt: int) -> float:
    """Seconds to wait before attempt number ``attempt`` (1 is the first retry)."""
    return min(2.0 ** (attempt - 1), LONGEST_PAUSE)


def budget(timeout: float, retries: int) -> float:
    """The longest a delivery of ``retries`` retries of ``timeout`` each may take."""
    pauses = sum(pause_before(a) for a in range(1, retries + 1))
    return (retries + 1) * timeout + pauses + GRACE


def _public_host(host: str) -> bool:
    """Whether ``host`` (from the URL's host position) is a host name or an address, not a
    token that an Apprise URL keeps there (``slack://TokenA/...``, ``ntfy://topic``)."""
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    labels = host.split(".")
    return host == "localhost" or (
        len(labels) > 1
        and all(re.fullmatch(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?", label) for label in labels)
        and labels[-1].isalpha()
    )


def _split(url: str) -> tuple[str, str | None, int | None]:
    """(scheme, host, port) of ``url``; host and port ``None`` where they do not parse."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if not re.fullmatch(r"[a-z][a-z0-9+.-]{0,31}", scheme):
        scheme = ""
    try:
        parts = urllib.parse.urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:
        return scheme, None, None
    return scheme, host, port


def shown(url: str) -> str:
    """``url`` as a log may show it: ``scheme://host``, the host only where it is public."""
    scheme, host, _ = _split(url)
    if not scheme:
        return f"a URL ({HIDDEN})"
    if host and _public_host(host):
        return f"{scheme}://{host}"
    return f"{scheme}://{HIDDEN}"


def scrubber(url: str) -> list[str]:
    """The parts of ``url`` no message may repeat, longest first: the whole URL and every
    piece between its separators (user, password, path segments, query values, a host
    that is a token), in their written, quoted and unquoted forms."""
    _, host, port = _split(url)
    public = {host or "", str(port)} if host and _public_host(host) else {str(port)}
    rest = url.split("://", 1)[-1]
    pieces = {url, rest}
    for piece in re.split(r"[/:@?&=#,;+\s]+", rest):
        if len(piece) >= 4 and piece.lower() not in public:
            pieces |= {piece, urllib.parse.unquote(piece), urllib.parse.quote(piece, safe="")}
    return sorted((p for p in pieces if len(p) >= 4), key=len, reverse=True)


class Target(ABC):
    """Where one notifier sends; ``url`` is the secret (revealed only to :meth:`send`)."""

    #: The events a notifier of this kind sends when its table has no ``on``.
    default_on: ClassVar[tuple[str, ...]]

    def __init__(self, url: str) -> None:
        self._url = url
        self.scheme = _split(url)[0]
        self.shown = shown(url)
        self._secret_parts = scrubber(url)

    def scrub(self, text: str) -> str:
        """``text`` with every part of the URL cut out, on one line."""
        for part in self._secret_parts:
            text = text.replace(part, HIDDEN)
        return " ".join(text.split()) or "no reason given"

    @abstractmethod
    def send(self, message: Message, log: list[str], timeout: float) -> None:
        """One attempt, waiting at most ``timeout`` seconds for each step; raises
        :class:`Undelivered` (or anything else) when it fails."""


class Ping(Target):
    """The Healthchecks ping protocol: ``<url>/start``, ``<url>``, ``<url>/fail``, with a
    text body. Healthchecks.io and its self-hosted server, Uptime Kuma's push monitors
    (success only) and other dead-man switches answer it."""

    default_on = ("start", "success", "failure")
    SUFFIX: ClassVar[dict[str, str]] = {
        "start": "/start",
        "success": "",
        "failure": "/fail",
        "drill-failure": "/fail",
    }
    #: The most body bytes sent: a self-hosted Healthchecks keeps 10 000 by default.
    BODY_LIMIT = 10_000

    @staticmethod
    def problem(url: str) -> str | None:
        """Why ``url`` cannot be pinged (naming no part of it), or ``None``."""
        scheme, host, _ = _split(url)
        if scheme not in ("http", "https"):
            return "expected an http:// or https:// URL"
        if not host:
            return "the URL names no host"
        return None

    def address(self, message: Message) -> str:
        """The URL this event pings: the suffix added to the path, the query kept, and
        ``rid`` (from the run id) so that Healthchecks pairs a run's start and end."""
        parts = urllib.parse.urlsplit(self._url)
        path = parts.path.rstrip("/") + self.SUFFIX[message.event]
        rid = uuid.uuid5(uuid.NAMESPACE_URL, f"freezeframe:{message.run.run_id}")
        query = "&".join(q for q in (parts.query, f"rid={rid}") if q)
        return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, query, ""))

    def body(self, message: Message, log: list[str]) -> bytes:
        """The headline, the details, the log tail (as much as fits), the JSON summary."""
        head = message.text().encode()
        tail = message.summary_text().encode()
        room = self.BODY_LIMIT - len(head) - len(tail) - 64
        lines: list[bytes] = []
        for line in reversed(log):
            encoded = line.encode()
            if len(encoded) + 1 > room:
                break
            lines.insert(0, encoded)
            room -= len(encoded) + 1
        logged = b"\n\nlog:\n" + b"\n".join(lines) if lines else b""
        return (head + logged + b"\n\nsummary:\n" + tail)[: self.BODY_LIMIT]

    def send(self, message: Message, log: list[str], timeout: float) -> None:
        request = urllib.request.Request(  # noqa: S310 (Ping.problem: http or https only)
            self.address(message),
            data=self.body(message, log),
            method="POST",
            headers={
                "Content-Type": "text/plain; charset=utf-8",
                "User-Agent": "freezeframe-notify",
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as answer:  # noqa: S310
                answer.read(4096)
        except urllib.error.HTTPError as e:
            e.close()
            raise Undelivered(f"HTTP {e.code} {e.reason}") from None
        except urllib.error.URLError as e:
            reason = e.reason
            if isinstance(reason, TimeoutError):
                raise Undelivered(f"no answer within {round(timeout, 1):g}s") from None
            raise Undelivered(str(reason)) from None
        except TimeoutError:
            raise Undelivered(f"no answer within {round(timeout, 1):g}s") from None


class AppriseUrl(Target):
    """Any Apprise URL: ntfy, Slack, Matrix, e-mail, Gotify, JSON/XML webhooks..."""

    default_on = ("failure", "drill-failure")
    #: Services that take a body for machines: they receive the JSON summary.
    WEBHOOKS = frozenset({"json", "jsons", "xml", "xmls", "form", "forms"})

    @staticmethod
    def problem(url: str) -> str | None:
        """Why Apprise cannot use ``url`` (naming no part of it but its scheme), or ``None``."""
        if AppriseUrl._plugin(url) is not None:
            return None
        scheme, _, _ = _split(url)
        if not scheme:
            return "not an Apprise URL (expected service://...)"
        return f"Apprise cannot use this {scheme}:// URL (an unknown service, or a part missing)"

    @staticmethod
    def _plugin(url: str) -> NotifyBase | None:
        import apprise

        asset = apprise.AppriseAsset(storage_mode="memory")
        with _apprise_log():  # its complaints name parts of the URL: never shown
            plugin: NotifyBase | None = apprise.Apprise.instantiate(
                url, asset=asset, suppress_exceptions=True
            )
        return plugin

    def send(self, message: Message, log: list[str], timeout: float) -> None:
        import apprise

        plugin = self._plugin(self._url)
        if plugin is None:
            raise Undelivered("Apprise no longer takes the URL")
        plugin.socket_connect_timeout = timeout
        plugin.socket_read_timeout = timeout
        webhook = self.scheme in self.WEBHOOKS
        kind = {
            "start": apprise.NotifyType.INFO,
            "success": apprise.NotifyType.SUCCESS,
        }.get(message.event, apprise.NotifyType.FAILURE)
        with _apprise_log() as said:
            delivered = plugin.notify(
                body=message.summary_text() if webhook else message.text(),
                title=message.headline,
                notify_type=kind,
                body_format=apprise.NotifyFormat.TEXT,
            )
        if not delivered:
            raise Undelivered("; ".join(said[-2:]) or "Apprise could not deliver it")


class _AppriseLog(logging.Handler):
    """Apprise's own log, kept per thread while :func:`_apprise_log` listens and shown
    nowhere else: its lines can name a host, a user or a token of the URL."""

    local = threading.local()

    def emit(self, record: logging.LogRecord) -> None:
        said: list[str] | None = getattr(self.local, "said", None)
        if said is not None and record.levelno >= logging.WARNING:
            try:
                said.append(record.getMessage())
            except Exception:  # a bad format string in Apprise's log call
                said.append(record.msg if isinstance(record.msg, str) else "")


_APPRISE_LOG = _AppriseLog()
_INSTALL = threading.Lock()


@contextmanager
def _apprise_log() -> Iterator[list[str]]:
    """What Apprise logs in this thread meanwhile (warnings and errors), and nowhere else."""
    with _INSTALL:
        logger = logging.getLogger("apprise")
        if _APPRISE_LOG not in logger.handlers:
            logger.addHandler(_APPRISE_LOG)
            logger.propagate = False
    said: list[str] = []
    _AppriseLog.local.said = said
    try:
        yield said
    finally:
        _AppriseLog.local.said = None


def deliver(
    target: Target, message: Message, log: list[str], *, timeout: float, retries: int
) -> None:
    """Send ``message``, retrying up to ``retries`` times after a pause, all within
    :func:`budget`; raises :class:`NotDelivered` (naming no secret) when no attempt did."""
    deadline = time.monotonic() + budget(timeout, retries) - GRACE
    reasons: list[str] = []
    for attempt in range(retries + 1):
        if attempt:
            pause = min(pause_before(attempt), deadline - time.monotonic())
            if pause > 0:
                time.sleep(pause)
        left = deadline - time.monotonic()
        if left <= 0:
            break
        try:
            target.send(message, log, min(timeout, left))
            return
        except Exception as e:  # any failure is one failed attempt; its text is scrubbed
            reasons.append(str(e) if isinstance(e, Undelivered) else f"{type(e).__name__}: {e}")
    tries = f"{len(reasons)} attempt" + ("s" if len(reasons) != 1 else "")
    last = target.scrub(reasons[-1]) if reasons else "no time left"
    raise NotDelivered(f"{target.shown}: {message.event} not delivered ({tries}): {last}")
