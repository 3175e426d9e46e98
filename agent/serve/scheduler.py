"""The one thread that touches the device: admits requests into KV regions, prefills them, and
steps every decoding request together.

Each turn of the loop prefills at most one waiting request, then runs one batched decode step, so a
new arrival waits for at most one token of the others, and the others wait for one prefill at a
time. A request that finds no free region waits in the queue (first come, first served): with no
more clients than regions that never happens.

A request may ask for its tokens as they come (`on_tokens`: each run of new tokens, forced ones
included, right after the pass that made them) and may be cancelled (`cancel()`: a client that hung
up); a cancelled request leaves the queue or the batch at the loop's next turn, its region freed.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable

from agent.errors import VlagentError

log = logging.getLogger(__name__)


class DeviceError(VlagentError):
    """The device failed on a request (out of memory, a kernel error): worth retrying later."""


@dataclass(eq=False)
class Request:
    ids: list[int]
    images: list  # EngineImages, in placeholder order
    max_new: int
    stops: set
    matcher: object = None
    client: str | None = None  # the connection it came on (an agent's next step comes on the same)
    future: Future = field(default_factory=Future)
    queued: float = field(default_factory=time.perf_counter)
    # called on the device thread with each run of new tokens: it must only hand them on (no waiting)
    on_tokens: Callable[[list[int]], None] | None = None
    cancelled: bool = False  # set by cancel(), from any thread
    sent: int = field(default=0, init=False)  # tokens handed to on_tokens so far

    def cancel(self) -> None:
        """Drop the request at the scheduler's next turn (its future gets a "cancelled" Reply)."""
        self.cancelled = True


@dataclass
class Reply:
    tokens: list[int]
    prompt_tokens: int
    reused_tokens: int  # prompt tokens whose KV the region already held
    finish: str  # "stop", "length" or "cancelled"
    total_ms: float  # from submission to the last token, queueing included


class Scheduler:
    def __init__(self, batcher):
        self.batcher = batcher
        self._queue: deque[Request] = deque()
        self._cv = threading.Condition()
        self._stop = False
        self.error: str | None = None  # set when the loop died: every later request gets it
        # Totals since start, for /health and benchmarks: where the device time goes.
        self.stats = dict(requests=0, prompt_tokens=0, reused_tokens=0, new_tokens=0, prefill_ms=0.0,
                          decode_steps=0, decode_rows=0, decode_ms=0.0, cancelled=0)
        self._thread = threading.Thread(target=self._loop, name="vlagent-serve-scheduler", daemon=True)

    def start(self) -> "Scheduler":
        self._thread.start()
        return self

    def stop(self):
        with self._cv:
            self._stop = True
            self._cv.notify()
        self._thread.join(timeout=30)

    def submit(self, req: Request) -> Future:
        with self._cv:
            if self.error:
                req.future.set_exception(DeviceError(self.error))
                return req.future
            self._queue.append(req)
            self._cv.notify()
        return req.future

    def _loop(self):
        active: list[tuple[Request, object, int]] = []  # (request, row, reused tokens)
        try:
            while True:
                with self._cv:
                    while not self._stop and not self._queue and not active:
                        self._cv.wait()
                    if self._stop:
                        break
                    for r in [r for r in self._queue if r.cancelled]:
                        self._queue.remove(r)
                        self._settle(r, Reply([], len(r.ids), 0, "cancelled", (time.perf_counter() - r.queued) * 1e3))
                    for item in [a for a in active if a[0].cancelled]:
                        active.remove(item)
                        self._finish(*item, cancelled=True)
                    req = self._queue[0] if self._queue else None
                    region = self.batcher.pick(req.ids, [im.key for im in req.images], req.client) if req else None
                    if region is not None:
                        self._queue.popleft()
                if region is not None:
                    self._admit(req, region, active)
                if active:
                    self._step(active)
        except BaseException as e:  # the device failed (out of memory, a kernel error): say so to all
            log.exception("scheduler failed")
            self.error = f"the model server failed: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
            with self._cv:
                pending = list(self._queue) + [a[0] for a in active]
                self._queue.clear()
            for r in pending:
                self._settle(r, error=DeviceError(self.error))

    def _admit(self, req: Request, region, active: list):
        b = self.batcher
        region.client = req.client
        reused = b.prefix(region, req.ids, [im.key for im in req.images])
        t0 = time.perf_counter()
        try:
            row = b.prefill(region, req.ids, req.images, req.max_new, req.stops, req.matcher)
        except Exception as e:  # this request only (refused by the engine, out of memory in its prefill)
            region.busy = False
            log.warning("request failed in its prefill: %s", e)
            self._settle(req, error=e if isinstance(e, VlagentError) else
                         DeviceError(f"prefill failed: {str(e).splitlines()[0] if str(e) else type(e).__name__}"))
            return
        st = self.stats
        st["prefill_ms"] += (time.perf_counter() - t0) * 1e3
        st["requests"] += 1
        st["prompt_tokens"] += len(req.ids)
        st["reused_tokens"] += reused
        self._emit(req, row)
        if row.done:
            self._finish(req, row, reused)
        else:
            active.append((req, row, reused))

    def _step(self, active: list):
        t0 = time.perf_counter()
        self.batcher.step([row for _, row, _ in active])
        st = self.stats
        st["decode_ms"] += (time.perf_counter() - t0) * 1e3
        st["decode_steps"] += 1
        st["decode_rows"] += len(active)
        for req, row, _ in active:
            self._emit(req, row)
        done = [a for a in active if a[1].done]
        active[:] = [a for a in active if not a[1].done]
        for item in done:
            self._finish(*item)

    @staticmethod
    def _emit(req: Request, row) -> None:
        if req.on_tokens is not None and len(row.out) > req.sent:
            new, req.sent = row.out[req.sent:], len(row.out)
            req.on_tokens(new)

    def _finish(self, req: Request, row, reused: int, cancelled: bool = False):
        self.batcher.release(row)
        self.stats["new_tokens"] += len(row.out)
        self.stats["cancelled"] += cancelled
        stopped = bool(row.out) and row.out[-1] in req.stops or (row.matcher is not None and row.matcher.is_terminated())
        now = time.perf_counter()
        finish = "cancelled" if cancelled else "stop" if stopped else "length"
        self._settle(req, Reply(row.out, len(req.ids), reused, finish, (now - req.queued) * 1e3))

    @staticmethod
    def _settle(req: Request, reply: Reply | None = None, error: BaseException | None = None) -> None:
        """Complete a request's future, unless its waiter cancelled it (completing a cancelled
        future raises, and would end this thread for every client)."""
        if not req.future.set_running_or_notify_cancel():
            return
        if error is not None:
            req.future.set_exception(error)
        else:
            req.future.set_result(reply)
