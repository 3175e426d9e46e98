"""What happens during a run, as typed events, and the bus that carries them to subscribers.

A run session (agent.run.session) publishes; the terminal printer, the suite's progress and the web
console subscribe. The trace on disk stays the record: events say what happened *now*, the trace
says what happened. Every subscriber gets its own thread and queue, so none can slow or break a
run: a subscriber that falls behind loses frames (FrameCaptured), never anything else, and one
that raises is unsubscribed with its error kept.
"""
from __future__ import annotations

import queue
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

MAX_PENDING_FRAMES = 2  # frames queued for one subscriber; older ones are dropped first


@dataclass(frozen=True)
class Event:
    run_id: str
    t: float = field(default_factory=time.time, kw_only=True)


@dataclass(frozen=True)
class RunStarted(Event):
    task: str
    mode: str  # "loop", "flow", "replay" or "record"
    trace_dir: str
    display: str | None = None


@dataclass(frozen=True)
class FrameCaptured(Event):
    step: int
    image: Any  # a PIL image; not copied, not to be changed by subscribers


@dataclass(frozen=True)
class ModelAsked(Event):
    step: int


@dataclass(frozen=True)
class ModelAnswered(Event):
    step: int
    raw: str
    ms: float


@dataclass(frozen=True)
class ActionChecked(Event):
    step: int
    action: dict


@dataclass(frozen=True)
class ActionRefused(Event):
    step: int
    reason: str


@dataclass(frozen=True)
class ActionExecuted(Event):
    step: int
    action: dict
    pixel: tuple[int, int] | None = None


@dataclass(frozen=True)
class EffectChecked(Event):
    step: int
    ok: bool
    reason: str = ""


@dataclass(frozen=True)
class StepWritten(Event):
    step: dict  # Step.model_dump(mode="json"), as the trace holds it


@dataclass(frozen=True)
class FlowStepDone(Event):
    result: dict  # FlowStepResult.model_dump(mode="json"): a flow step's verdict, cache use, model calls


@dataclass(frozen=True)
class CheckDone(Event):
    name: str
    ok: bool
    detail: str = ""


@dataclass(frozen=True)
class RunEnded(Event):
    status: str
    reason: str


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]


class Subscription:
    """One subscriber: a thread that hands it events in order."""

    def __init__(self, bus: "EventBus", callback: Callable[[Event], None]):
        self._bus, self._callback = bus, callback
        self._queue: queue.Queue = queue.Queue()
        self._frames = 0
        self._lock = threading.Lock()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True, name="events")
        self._thread.start()

    def put(self, event: Event) -> None:
        if isinstance(event, FrameCaptured):
            with self._lock:
                if self._frames >= MAX_PENDING_FRAMES:
                    return  # a slow subscriber misses frames, never steps
                self._frames += 1
        self._queue.put(event)

    def _run(self) -> None:
        while True:
            event = self._queue.get()
            try:
                if event is None:
                    return
                if isinstance(event, FrameCaptured):
                    with self._lock:
                        self._frames -= 1
                if self.error is None:
                    self._callback(event)
            except BaseException as e:  # a broken subscriber is dropped; the run goes on
                self.error = e
                self._bus._remove(self)
            finally:
                self._queue.task_done()

    def drain(self, timeout_s: float = 5.0) -> bool:
        """Wait until every event published so far was handed over (at most timeout_s)."""
        deadline = time.monotonic() + timeout_s
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.005)
        return not self._queue.unfinished_tasks

    def close(self) -> None:
        self._bus._remove(self)
        self._queue.put(None)


class EventBus:
    def __init__(self):
        self._subs: list[Subscription] = []
        self._lock = threading.Lock()

    def subscribe(self, callback: Callable[[Event], None]) -> Subscription:
        sub = Subscription(self, callback)
        with self._lock:
            self._subs.append(sub)
        return sub

    def publish(self, event: Event) -> None:
        with self._lock:
            subs = list(self._subs)
        for sub in subs:
            sub.put(event)

    def drain(self, timeout_s: float = 5.0) -> None:
        """Let subscribers catch up (the end of a run: the printer shows the last step)."""
        with self._lock:
            subs = list(self._subs)
        for sub in subs:
            sub.drain(timeout_s)

    def _remove(self, sub: Subscription) -> None:
        with self._lock:
            if sub in self._subs:
                self._subs.remove(sub)
