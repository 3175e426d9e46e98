"""The one thread that touches the device: admits requests into KV regions, prefills them, and
steps every decoding request together.

Each turn of the loop prefills at most one waiting request, then runs one batched decode step, so a
new arrival waits for at most one token of the others, and the others wait for one prefill at a
time. A request that finds no free region waits in the queue (first come, first served): with no
more clients than regions that never happens.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field

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


@dataclass
class Reply:
    tokens: list[int]
    prompt_tokens: int
    reused_tokens: int  # prompt tokens whose KV the region already held
    finish: str  # "stop" or "length"
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
                          decode_steps=0, decode_rows=0, decode_ms=0.0)
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
                if not r.future.done():
                    r.future.set_exception(DeviceError(self.error))

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
            req.future.set_exception(e if isinstance(e, VlagentError) else
                                     DeviceError(f"prefill failed: {str(e).splitlines()[0] if str(e) else type(e).__name__}"))
            return
        st = self.stats
        st["prefill_ms"] += (time.perf_counter() - t0) * 1e3
        st["requests"] += 1
        st["prompt_tokens"] += len(req.ids)
        st["reused_tokens"] += reused
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
        done = [a for a in active if a[1].done]
        active[:] = [a for a in active if not a[1].done]
        for item in done:
            self._finish(*item)

    def _finish(self, req: Request, row, reused: int):
        self.batcher.release(row)
        self.stats["new_tokens"] += len(row.out)
        stopped = bool(row.out) and row.out[-1] in req.stops or (row.matcher is not None and row.matcher.is_terminated())
        now = time.perf_counter()
        req.future.set_result(Reply(row.out, len(req.ids), reused, "stop" if stopped else "length",
                                    (now - req.queued) * 1e3))
