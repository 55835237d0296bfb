"""What a notification says: the event, its one-line headline, the run's JSON summary, a
short text for people, and the tail of freezeframe's log during the run."""

from __future__ import annotations

import collections
import json
import logging
from dataclasses import dataclass
from typing import Any

from freezeframe.plugin import DrillRecord, RunRecord, RunStatus

__all__ = ["EVENTS", "LogTail", "Message"]

#: What a notifier can be told of, in the order of a run.
EVENTS = ("start", "success", "failure", "drill-failure")
#: The most drill failures a text names (the JSON summary has them all).
SHOWN_FAILURES = 10


@dataclass(frozen=True)
class Message:
    """One notification: ``event`` of ``run`` (and of ``drill`` for ``drill-failure``)."""

    event: str
    run: RunRecord
    drill: DrillRecord | None = None

    @classmethod
    def finished(cls, run: RunRecord) -> Message:
        """The message of a finished run: ``success`` or ``failure``."""
        return cls("success" if run.status == RunStatus.SUCCEEDED else "failure", run)

    @property
    def headline(self) -> str:
        """One line: ``freezeframe: profile P run R failed: <error>``."""
        run, drill = self.run, self.drill
        where = f"freezeframe: profile {run.profile} run {run.run_id}"
        if self.event == "start":
            return f"{where} started"
        if self.event == "success":
            return f"{where} succeeded"
        if self.event == "failure":
            return f"{where} failed: {run.error or 'no cause recorded'}"
        assert drill is not None
        failures = drill.failures
        first = failures[0] if failures else "no cause recorded"
        more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
        return f"{where}: drill {drill.drill_id} failed: {first}{more}"

    def summary(self) -> dict[str, Any]:
        """The run's JSON summary (and the failed drill's, for ``drill-failure``)."""
        run, recorded = self.run, self.run.to_json()
        keys = ("name", "backend", "role", "status", "bytes", "files", "seconds", "error")
        data: dict[str, Any] = {
            "event": self.event,
            "message": self.headline,
            "run_id": run.run_id,
            "profile": run.profile,
            "status": str(run.status),
            "error": run.error,
            "started_at": recorded["started_at"],
            "finished_at": recorded["finished_at"],
            "frozen_ms": run.frozen_ms,
            "stages": [{k: stage[k] for k in keys} for stage in recorded["stages"]],
            "proof": run.proof,
        }
        if self.drill is not None:
            drill = self.drill.to_json()
            data["drill"] = {
                k: drill[k] for k in ("drill_id", "stage", "status", "seconds", "failures")
            }
        return data

    def summary_text(self) -> str:
        """:meth:`summary` as indented JSON text."""
        return json.dumps(self.summary(), indent=2)

    def details(self) -> list[str]:
        """The lines a person reads under the headline: the error or the drill's failures,
        the freeze window, each stage."""
        run = self.run
        lines: list[str] = []
        if self.drill is not None:
            failures = self.drill.failures
            lines += failures[:SHOWN_FAILURES]
            if len(failures) > SHOWN_FAILURES:
                lines.append(f"... and {len(failures) - SHOWN_FAILURES} more")
        if run.frozen_ms is not None:
            lines.append(f"applications frozen for {run.frozen_ms:g} ms")
        lines += [
            f"stage {s.name} ({s.backend}): {s.status}" + (f": {s.error}" if s.error else "")
            for s in run.stages
            if self.event != "start"
        ]
        return lines

    def text(self) -> str:
        """The text for people (chat, push, e-mail): the headline and :meth:`details`."""
        return "\n".join([self.headline, *self.details()])


class LogTail(logging.Handler):
    """The last ``lines`` messages (INFO and above) freezeframe logs while it is attached:
    the log a ping carries. Attach it with :meth:`start`, read and detach with :meth:`stop`."""

    def __init__(self, lines: int = 40) -> None:
        super().__init__(logging.INFO)
        self._lines: collections.deque[str] = collections.deque(maxlen=lines)
        self._logger = logging.getLogger("freezeframe")

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage().replace("\n", "; ")
        except Exception:  # a bad format string in someone's log call
            return
        level = "" if record.levelno == logging.INFO else f"{record.levelname.lower()}: "
        self._lines.append(level + text)  # under the handler's lock (Handler.handle)

    def start(self) -> None:
        """Listen from now on."""
        self._logger.addHandler(self)

    def stop(self) -> list[str]:
        """Stop listening; the lines heard, oldest first."""
        self._logger.removeHandler(self)
        self.acquire()
        try:
            return list(self._lines)
        finally:
            self.release()
