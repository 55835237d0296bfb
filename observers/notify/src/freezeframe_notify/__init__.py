"""freezeframe observer ``notify``: tells people and dead-man switches how backups went.

Each ``[[notify]]`` table of a profile is one notifier, with exactly one of

- ``url``: any Apprise URL (ntfy, Slack, Matrix, e-mail, Gotify, Pushover, JSON/XML
  webhooks...), sent a one-line headline and, where the service takes a body for
  machines (``json://``, ``xml://``, ``form://``), the run's JSON summary;
- ``ping``: the Healthchecks protocol (``<ping>/start``, ``<ping>``, ``<ping>/fail``),
  with the headline, the run's log tail and its JSON summary as the body.

Either may come from the environment or a file (``url_env``, ``url_file``,
``ping_env``, ``ping_file``): the URL is a secret, shown nowhere but as
``scheme://host``. ``on`` picks the events; ``timeout`` and ``retries`` bound each
delivery, and the core waits for a notifier no longer than that budget. A notifier that
fails is logged with its name and changes neither the run nor the exit code.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from freezeframe.plugin import (
    ConfigError,
    DrillRecord,
    DrillStatus,
    Observer,
    ProfileStatus,
    RunRecord,
    Table,
    hookimpl,
)
from freezeframe_notify._deliver import AppriseUrl, Ping, Target, budget, deliver
from freezeframe_notify._message import EVENTS, LogTail, Message

__all__ = ["Notify"]

#: The longest ``timeout`` of one attempt, and the most ``retries``.
LONGEST_TIMEOUT = 120.0
MOST_RETRIES = 5


class Notify(Observer):
    """One ``[[notify]]`` table: a URL, the events it is sent, its timeout and retries."""

    kind = "notify"

    def __init__(self, name: str, table: Table) -> None:
        super().__init__(name, table)
        self.target = _target(table)
        self.on = _events(table, self.target.default_on)
        self.attempt_timeout = table.get_duration("timeout", 10.0, maximum=LONGEST_TIMEOUT)
        self.retries = table.get_int("retries", 2, minimum=0, maximum=MOST_RETRIES)
        self.timeout = budget(self.attempt_timeout, self.retries)
        self._tail: LogTail | None = None

    def _send(self, message: Message, log: list[str] | None = None) -> None:
        if message.event in self.on:
            deliver(
                self.target,
                message,
                log or [],
                timeout=self.attempt_timeout,
                retries=self.retries,
            )

    def run_started(self, run: RunRecord) -> None:
        if self._tail is not None:  # a run that ended without run_finished (a crash)
            self._tail.stop()
        self._tail = LogTail()
        self._tail.start()
        self._send(Message("start", run))

    def run_finished(self, run: RunRecord, status: ProfileStatus) -> None:
        tail, self._tail = self._tail, None
        log = tail.stop() if tail is not None else []
        self._send(Message.finished(run), log)

    def drill_finished(self, run: RunRecord, drill: DrillRecord, status: ProfileStatus) -> None:
        if drill.status == DrillStatus.FAILED:
            self._send(Message("drill-failure", run, drill))


def _target(table: Table) -> Target:
    """The notifier's URL, from exactly one of its six fields."""
    given: dict[str, tuple[str, str]] = {}  # kind: (field, url)
    for kind in ("url", "ping"):
        inline = table.get_str(kind, None)
        secret = table.get_secret(kind)
        if inline is not None and secret is not None:
            raise ConfigError(kind, f'give one of "{kind}", "{kind}_env" and "{kind}_file"')
        if secret is not None:
            field = f"{kind}_env" if secret.file is None else f"{kind}_file"
            given[kind] = (field, secret.reveal().strip())
        elif inline is not None:
            given[kind] = (kind, inline.strip())
    if not given:
        raise ConfigError(
            "url", 'missing: give "url" (an Apprise URL) or "ping" (a Healthchecks ping URL)'
        )
    if len(given) > 1:
        raise ConfigError("ping", 'give either "url" or "ping", not both')
    ((kind, (field, url)),) = given.items()
    cls = Ping if kind == "ping" else AppriseUrl
    problem = cls.problem(url)
    if problem is not None:
        raise ConfigError(field, problem)
    return cls(url)


def _events(table: Table, default: tuple[str, ...]) -> frozenset[str]:
    if "on" not in table:
        return frozenset(default)
    events = table.get_str_list("on")
    wrong = [e for e in events if e not in EVENTS]
    if wrong:
        choices = ", ".join(map(repr, EVENTS))
        raise ConfigError("on", f"expected events from {choices}, got {wrong[0]!r}")
    if not events:
        raise ConfigError("on", "names no event: leave it out for the defaults")
    return frozenset(events)


@hookimpl
def freezeframe_register_observers(register: Callable[[type[Any]], None]) -> None:
    register(Notify)
