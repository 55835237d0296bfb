"""Tests of _ordered.py: one thread per item, each waiting for its dependencies."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from freezeframe._ordered import run_ordered


class Recorder:
    """Calls ``actions[item]`` (if any) for each item and records when each call ran."""

    def __init__(self, actions: dict[str, Callable[[], object]] | None = None) -> None:
        self.actions = actions or {}
        self.lock = threading.Lock()
        self.start: dict[str, float] = {}
        self.finish: dict[str, float] = {}
        self.threads: dict[str, str] = {}

    def __call__(self, item: str) -> None:
        with self.lock:
            self.start[item] = time.monotonic()
            self.threads[item] = threading.current_thread().name
        try:
            self.actions.get(item, lambda: time.sleep(0.05))()
        finally:
            with self.lock:
                self.finish[item] = time.monotonic()


def test_dependencies_are_respected() -> None:
    rec = Recorder()
    outcome = run_ordered(
        ["c", "b", "a", "d"],
        {"c": ["a", "b"], "b": ["a"], "d": ["c"]},
        rec,
        timeout=None,
        stop_on_failure=True,
        thread_name="test",
    )
    assert sorted(outcome.done) == ["a", "b", "c", "d"]
    assert outcome.started == ["a", "b", "c", "d"]
    assert outcome.failed == {}
    assert outcome.unfinished == []
    assert rec.start["b"] >= rec.finish["a"]
    assert rec.start["c"] >= rec.finish["a"]
    assert rec.start["c"] >= rec.finish["b"]
    assert rec.start["d"] >= rec.finish["c"]
    assert rec.threads["a"] == "test-a"
    assert set(outcome.threads) == {"a", "b", "c", "d"}


def test_independent_items_run_at_the_same_time() -> None:
    # Each call waits for the other to be inside its call too: only parallel calls pass.
    barrier = threading.Barrier(2, timeout=5)
    rec = Recorder({"a": barrier.wait, "b": barrier.wait})
    outcome = run_ordered(["a", "b"], {}, rec, timeout=10, stop_on_failure=True, thread_name="test")
    assert outcome.failed == {}
    assert sorted(outcome.done) == ["a", "b"]
    assert rec.start["b"] < rec.finish["a"]
    assert rec.start["a"] < rec.finish["b"]


def test_returns_only_when_every_item_is_done() -> None:
    rec = Recorder({"slow": lambda: time.sleep(0.3)})
    begun = time.monotonic()
    outcome = run_ordered(
        ["fast", "slow"], {}, rec, timeout=None, stop_on_failure=False, thread_name="test"
    )
    assert time.monotonic() - begun >= 0.3
    assert sorted(outcome.done) == ["fast", "slow"]


def test_stop_on_failure_skips_dependents() -> None:
    d_started = threading.Event()

    def fail() -> None:
        assert d_started.wait(5)  # let the independent item begin first
        raise ValueError("cannot quiesce")

    rec = Recorder({"a": fail, "d": d_started.set})
    outcome = run_ordered(
        ["a", "b", "c", "d"],
        {"b": ["a"], "c": ["b"]},
        rec,
        timeout=10,
        stop_on_failure=True,
        thread_name="test",
    )
    assert list(outcome.failed) == ["a"]
    assert isinstance(outcome.failed["a"], ValueError)
    assert str(outcome.failed["a"]) == "cannot quiesce"
    assert "b" not in rec.start
    assert "c" not in rec.start
    assert sorted(outcome.started) == ["a", "d"]
    assert outcome.done == ["d"]
    assert outcome.unfinished == []


def test_without_stop_on_failure_dependents_still_run() -> None:
    def fail() -> None:
        raise RuntimeError("unquiesce failed")

    rec = Recorder({"a": fail})
    outcome = run_ordered(
        ["a", "b"], {"b": ["a"]}, rec, timeout=10, stop_on_failure=False, thread_name="test"
    )
    assert list(outcome.failed) == ["a"]
    assert outcome.done == ["b"]
    assert rec.start["b"] >= rec.finish["a"]


def test_timeout_returns_with_the_unfinished_listed() -> None:
    release = threading.Event()
    rec = Recorder({"stuck": lambda: release.wait(10)})
    begun = time.monotonic()
    try:
        outcome = run_ordered(
            ["stuck", "quick"], {}, rec, timeout=0.2, stop_on_failure=True, thread_name="test"
        )
        took = time.monotonic() - begun
        assert 0.15 <= took < 2
        assert outcome.unfinished == ["stuck"]
        assert outcome.done == ["quick"]
        assert outcome.threads["stuck"].is_alive()  # it keeps going, as documented
    finally:
        release.set()
    outcome.threads["stuck"].join(5)
    assert "stuck" in outcome.done
    assert outcome.unfinished == []


def test_dependencies_outside_the_items_are_ignored() -> None:
    rec = Recorder()
    outcome = run_ordered(
        ["a"], {"a": ["not-an-item"]}, rec, timeout=5, stop_on_failure=True, thread_name="t"
    )
    assert outcome.done == ["a"]


def test_nothing_starts_after_a_timeout() -> None:
    release = threading.Event()
    rec = Recorder({"a": lambda: release.wait(10)})
    outcome = run_ordered(
        ["a", "b"], {"b": ["a"]}, rec, timeout=0.1, stop_on_failure=True, thread_name="test"
    )
    assert outcome.unfinished == ["a"]
    assert "b" not in outcome.started
    release.set()  # the stuck quiesce finally returns, after the caller gave up
    outcome.threads["a"].join(5)
    outcome.threads["b"].join(5)
    assert "b" not in rec.start
