"""A run as the console sees it while it happens: what its events said so far, as a numbered log of
page updates (each viewer's event stream replays it from where it is), the live display's frames,
the pending proposal of an attended run, and the person's own input while they hold the display.

Everything a page shows is built here from the events and redacted (agent.secrets) before it
leaves: step cards are the report's own (agent/report templates), escaped by Jinja.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import asdict
from pathlib import Path

from PIL import Image

from agent import secrets
from agent.run import events as ev
from agent.ui.attend import Attendant, Decision, Lease, Proposal
from agent.ui.frames import FrameSource
from agent.ui.views import checks_html, files_url, proposal_view, step_html

log = logging.getLogger(__name__)
MAX_LOG = 5000  # page updates kept per run (a step is one or two)


class LiveRun:
    def __init__(self, run_id: str, session, *, url_id: str, attendant: Attendant | None = None, mode: str = "loop"):
        """`session`: the RunSession (its bus, control, trace, environment); `url_id`: the run's id in
        the console's URLs (the trace folder's path under the runs folder)."""
        self.id, self.url_id, self.session, self.mode = run_id, url_id, session, mode
        self.task = session.task.name
        self.goal = str(getattr(session.task, "goal", "") or "")
        self.attendant = attendant or Attendant(lease=Lease())
        self.lease = self.attendant.lease
        self.control = session.control
        self.status, self.reason = "starting", ""
        self.ended = False
        self.log: list[dict] = []
        self._lock = threading.Lock()
        self.viewers = 0  # open event streams: a page is watching
        self.listeners: list = []  # called after each page update (thread-safe wake-ups of event streams)
        self.frames: FrameSource | None = None
        self.model_state = ""
        self.steps = 0
        self.checks: list[dict] = []
        self.started = time.time()
        self.attendant.askers.append(self._proposed)
        self.attendant.watched = lambda: self.viewers > 0
        self.attendant.stopped = lambda: self.control.stopped is not None
        self.sub = session.bus.subscribe(self._on_event)

    # ---- state for pages

    @property
    def remote(self) -> bool:
        """The run is in another process (agent/ui/relay.py): watched and steered, not taken over."""
        return getattr(self.session, "remote", False)

    @property
    def folder(self) -> Path:
        return Path(self.session.folder)

    @property
    def display(self) -> str | None:
        result = getattr(self.session, "result", None)
        return (result.display if result is not None else None) or self.session.display

    def state(self) -> str:
        if self.ended:
            return self.status
        if self.lease.held:
            return "taken over"
        if self.attendant.pending is not None:
            return "waiting for you"
        if self.control.paused:
            return "paused"
        return self.status

    def summary(self) -> dict:
        return {"id": self.url_id, "task": self.task, "status": self.state(), "reason": secrets.redact(self.reason),
                "steps": self.steps, "live": not self.ended, "started": self.started,
                "checks": [c["ok"] for c in self.checks], "model": self.model_state}

    def push(self, kind: str, **data) -> None:
        with self._lock:
            self.log.append({"seq": len(self.log) + 1, "type": kind, **secrets.redact_data(data),
                             "state": self.state()})
            if len(self.log) > MAX_LOG:  # (seq stays the position: older entries become placeholders)
                self.log[len(self.log) - MAX_LOG - 1] = {"seq": len(self.log) - MAX_LOG, "type": "dropped"}
            wake = list(self.listeners)
        for notify in wake:  # the pages' event streams (each wakes on its own event loop)
            notify()

    def since(self, seq: int) -> list[dict]:
        with self._lock:
            return self.log[seq:]

    def frame_source(self) -> FrameSource | None:
        display = self.display
        if display is None or self.ended or (self.remote and self.session.masked):
            return None  # (a run in another process masks with secrets this process does not hold)
        if self.frames is None or self.frames.display != display:
            self.frames = FrameSource(display, mask=None if self.remote else self._mask(),
                                      xauthority=getattr(self.session, "xauthority", None))
        return self.frames

    def _mask(self):
        """What the page's frames hide, as the model's frames do: the task's `mask:` boxes (or a remote
        model's password fields) and secrets on screen (mask_screenshots); None when nothing is."""
        boxes, text = getattr(self.session, "masks", False), secrets.mask_screens
        if not boxes and not text:
            return None

        def mask(image):
            if boxes:
                masker = self.session.frame_mask()
                # (during setup the desktop has no masker yet: nothing shows until it has)
                image = masker(image) if masker is not None else Image.new("RGB", image.size)
            return secrets.mask(image) if text else image
        return mask

    # ---- events (the bus's subscriber thread)

    def _on_event(self, e: ev.Event) -> None:
        try:
            self._show(e)
        except Exception as exc:  # a bug in showing one event must not end the live view (the run goes on anyway)
            log.exception("console: cannot show %s", type(e).__name__)
            self.push("model", text=f"(the console could not show a {type(e).__name__}: {exc})")
            if isinstance(e, ev.RunEnded):
                self.status, self.reason, self.ended = e.status, e.reason, True
                self.push("ended", status=e.status, reason=e.reason, html="")

    def _show(self, e: ev.Event) -> None:
        if isinstance(e, ev.RunStarted):
            self.status = "running"
            self.push("status", text=f"started ({e.mode})")
        elif isinstance(e, ev.ModelAsked):
            self.model_state = f"step {e.step}: the model is thinking"
            self.push("model", step=e.step, text=self.model_state)
        elif isinstance(e, ev.ModelAnswered):
            self.model_state = f"step {e.step}: answered in {e.ms:.0f} ms"
            self.push("model", step=e.step, text=self.model_state, raw=e.raw)
        elif isinstance(e, ev.ActionRefused):
            self.push("model", step=e.step, text=f"step {e.step}: refused by the policy: {e.reason}")
        elif isinstance(e, ev.ActionExecuted):
            self.push("model", step=e.step, text=f"step {e.step}: ran {e.action.get('action')}")
        elif isinstance(e, ev.StepWritten):
            self.steps += 1
            self.push("step", step=e.step.get("step"), html=step_html(e.step, self.url_id))
        elif isinstance(e, ev.CheckDone):
            self.checks.append({"name": e.name, "ok": e.ok, "detail": e.detail})
        elif isinstance(e, ev.RunEnded):
            self.status, self.reason, self.ended = e.status, e.reason, True
            result = getattr(self.session, "result", None)
            final = files_url(self.url_id, result.final_screenshot) if result and result.final_screenshot else None
            self.push("ended", status=e.status, reason=e.reason, html=checks_html(self.checks), final=final)
            if self.frames is not None:
                self.frames.close()
        elif isinstance(e, getattr(ev, "FlowStepDone", ())):
            r = e.result
            self.push("model", text=f"flow step {r.get('kind')} {r.get('text')}: {r.get('status')}")

    def _proposed(self, p: Proposal) -> None:
        self.push("proposal", **proposal_view(p))

    # ---- the person

    def control_op(self, op: str) -> None:
        self.control.apply(op, "stopped from the console")
        if op == "stop":
            self.lease.give_back()
            pending = self.attendant.pending
            if pending is not None:  # a run waiting for a person stops now, not at its timeout
                self.attendant.answer(Decision("reject", "stop", note="the run was stopped"), pending.step)
        self.push("status", text={"pause": "paused", "resume": "resumed", "step": "one step",
                                  "stop": "stopping"}[op])

    def decide(self, decision: Decision, step: int | None) -> bool:
        ok = self.attendant.answer(decision, step)
        if ok:
            self.push("decided", verdict=decision.verdict, note=decision.note, by=decision.by)
        return ok

    def take_over(self) -> None:
        if self.mode != "loop" or self.remote:  # only the model loop refuses its own input while a person drives
            raise PermissionError(f"a {'run in another process' if self.remote else self.mode + ' run'} cannot be "
                                  "taken over; pause it instead")
        self._was_paused = self.control.paused
        self.lease.take()
        self.control.pause()
        pending = self.attendant.pending
        if pending is not None:  # the proposal was for a screen the person is about to change
            self.attendant.answer(Decision("reject", "lease", note="a person took over the display; "
                                           "look at the screen again"), pending.step)
        self.push("lease", holder="person")

    def hand_back(self) -> None:
        self.lease.give_back()
        if not getattr(self, "_was_paused", False):
            self.control.resume()
        self.push("lease", holder=None)

    def human_input(self, action: dict) -> dict:
        """Run one of the person's actions (the lease held) on the run's desktop, and write it as a
        human step with the screen it was done on."""
        from agent.ui.human import perform

        if not self.lease.held:
            raise PermissionError("take over the display first")
        return perform(self.session, action)

    def close(self) -> None:
        self.sub.close()
        if self.frames is not None:
            self.frames.close()


def asdict_safe(p: Proposal | None) -> dict | None:
    return asdict(p) if p is not None else None
