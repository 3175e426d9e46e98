"""The loop prepares the next step while the desktop acts (agent/run/lookahead.py): the history as
soon as the action is chosen, then each frame the settle loop grabs. What it prepares is exactly
the next prompt, and preparing changes no reply: on the real engine (tiny checkpoint, CPU) the
replies are the same with it and without, and the next step finds its screenshot encoded."""
from __future__ import annotations

import shutil
import threading
import time

import pytest

from actions import Policy
from actions.policy import Allow
from agent.run.loop import LoopConfig, run_loop
from agent.trace import Trace
from fakes import QueueModel, RecordingDesktop, reply

pytestmark = pytest.mark.timeout(120)


class PreparingModel(QueueModel):
    """A queue model with the optional prepare() of agent.backends.base.BackendBase, recorded."""

    def __init__(self, *replies):
        super().__init__(*replies)
        self.prepared: list[tuple[list, bool]] = []
        self.done = threading.Event()

    def prepare(self, messages, constraint=None, image=True):
        self.prepared.append((messages, image))
        self.done.set()


def _flat(messages):
    """Messages as comparable values: text as is, images by size and pixels."""
    return [(m["role"], [(p["type"], p["text"]) if p["type"] == "text" else ("image", p["image"].size, p["image"].tobytes())
                         for p in m["content"]]) for m in messages]


def test_what_is_prepared_is_the_next_prompt(tmp_path):
    model = PreparingModel(reply(action="left_click", coordinate=[100, 100]),
                           reply(action="left_click", coordinate=[300, 200]),
                           reply(action="terminate", status="success"))
    end = run_loop("Do the thing.", model, RecordingDesktop(), Policy(), Trace(tmp_path / "t"), LoopConfig(timeout_s=30))
    assert end.kind == "finished"
    later = [_flat(m) for m in model.seen[1:]]  # the prompts of steps 2 and 3
    with_frame = [_flat(m) for m, image in model.prepared if image]
    history_only = [_flat(m) for m, image in model.prepared if not image]
    # The frame grabbed while settling is the one the next step captures: the whole prompt matches.
    # (A newer job replaces one not yet started, so not every job runs.)
    assert with_frame and all(m in later for m in with_frame)
    # Before any frame, everything but the last screenshot matches.
    assert all(m[:-1] in [p[:-1] for p in later] for m in history_only)
    assert len(model.prepared) <= 4  # nothing after terminate


def test_a_prompt_that_cannot_be_built_ahead_leaves_the_step_alone(tmp_path):
    """A history that no longer fits is the next step's error to report: this step's action still runs."""
    from agent.errors import BackendError

    class Shrinking(PreparingModel):
        def fits(self, messages, constraint=None):
            return len(self.seen) < 1  # the first prompt fits, nothing after it does

    model = Shrinking(reply(action="left_click", coordinate=[100, 100]), reply(action="terminate", status="success"))
    desktop = RecordingDesktop()
    with pytest.raises(BackendError):
        run_loop("Do the thing.", model, desktop, Policy(), Trace(tmp_path / "t"), LoopConfig(timeout_s=30))
    assert desktop.named("click") and model.prepared == []


def test_a_backend_with_nothing_to_prepare_gets_no_thread(tmp_path):
    from agent.backends.base import BackendBase
    from agent.run.lookahead import Lookahead

    class Remote(BackendBase):  # e.g. a model behind an OpenAI-compatible server
        def generate(self, messages, constraint=None):
            return reply(action="terminate", status="success")

    ahead = Lookahead(Remote())
    built = []
    ahead.begin(lambda shot: built.append(shot) or [], RecordingDesktop().capture())
    assert built == [] and ahead._thread is None
    ahead.close()


def test_off_prepares_nothing(tmp_path):
    model = PreparingModel(reply(action="left_click", coordinate=[100, 100]), reply(action="terminate", status="success"))
    run_loop("Do the thing.", model, RecordingDesktop(), Policy(), Trace(tmp_path / "t"),
             LoopConfig(timeout_s=30, lookahead=False))
    assert model.prepared == []


def test_a_failing_prepare_costs_nothing_else(tmp_path, caplog):
    class Broken(PreparingModel):
        def prepare(self, messages, constraint=None, image=True):
            raise RuntimeError("CUDA out of memory")

    model = Broken(reply(action="left_click", coordinate=[100, 100]), reply(action="terminate", status="success"))
    end = run_loop("Do the thing.", model, RecordingDesktop(), Policy(), Trace(tmp_path / "t"), LoopConfig(timeout_s=30))
    assert end.kind == "finished" and len(model.seen) == 2
    assert "lookahead: RuntimeError: CUDA out of memory" in caplog.text


class SettlingDesktop(RecordingDesktop):
    """Settling takes time, as on a real display: at least one poll after the last new frame."""

    def wait_stable(self, max_s=2.0, seen=None):
        super().wait_stable(max_s, seen)
        time.sleep(0.5)
        return 0.5


@pytest.mark.slow
def test_the_engine_gives_the_same_replies_and_finds_the_frame_encoded(tmp_path):
    from agent.backends.tiny import tiny_checkpoint
    from agent.backends.transformers import TransformersBackend

    class Timed(TransformersBackend):  # the real backend; each call's engine figures kept
        def generate(self, messages, constraint=None):
            out = super().generate(messages, constraint)
            self.calls.append(self.engine.last_timings)
            return out

    policy = Policy(Allow(actions=["left_click", "type", "key"], keys=["enter"], max_text_len=12))
    raws = {}
    for on in (True, False):
        backend = Timed(tiny_checkpoint(), engine=True)
        backend.calls = []
        trace = Trace(tmp_path / f"t{on}")
        run_loop("Fill the form.", backend, SettlingDesktop(frame=(320, 200)), policy, trace,
                 LoopConfig(timeout_s=100, max_steps=4, lookahead=on))
        raws[on] = [s.raw for s in trace.steps]
        if on:
            assert len(backend.calls) == 4
            assert [t.images_encoded for t in backend.calls] == [1, 0, 0, 0]  # encoded while the screen settled
            assert all(t.reused_tokens > 0 for t in backend.calls[1:])
        else:
            assert [t.images_encoded for t in backend.calls] == [1, 1, 1, 1]
    assert raws[True] == raws[False]


@pytest.mark.slow
@pytest.mark.skipif(not shutil.which("galculator"), reason="galculator not installed (.ci/install)")
def test_on_a_real_app_the_settled_screenshot_was_encoded_while_it_settled(tmp_path):
    """galculator (GTK 3) on a real display, the real X11 desktop and the tiny checkpoint's engine: every
    screenshot after the first is one the settle loop showed the lookahead, and the steps find it
    encoded (clicks only, wherever the random model puts them)."""
    from agent.backends.tiny import tiny_checkpoint
    from agent.backends.transformers import TransformersBackend
    from agent.desktop.x11 import X11Desktop
    from sandbox.session import Sandbox

    class Timed(TransformersBackend):  # the real backend; each call's engine figures kept
        def generate(self, messages, constraint=None):
            out = super().generate(messages, constraint)
            self.calls.append(self.engine.last_timings)
            return out

    class Watched(X11Desktop):  # the real desktop; what settling showed and what was captured kept
        def wait_stable(self, max_s=2.0, seen=None):
            shown = []
            waited = super().wait_stable(max_s, (lambda im: (shown.append(im.tobytes()), seen(im))) if seen else None)
            self.shown.append(shown)
            return waited

        def capture(self):
            frame = super().capture()
            self.captured.append(frame.tobytes())
            return frame

    with Sandbox(workdir=tmp_path / "work") as sb:
        sb.launch(["env", "NO_AT_BRIDGE=0", f"XDG_CONFIG_HOME={sb.workdir}/cfg", "galculator"])
        sb.wait_for_window("^galculator$", 60)
        time.sleep(1.5)
        backend = Timed(tiny_checkpoint(), engine=True)
        backend.calls = []
        with Watched(sb.display) as desktop:
            desktop.shown, desktop.captured = [], []
            policy = Policy(Allow(actions=["left_click"]))
            run_loop("Press some keys.", backend, desktop, policy, Trace(tmp_path / "t"),
                     LoopConfig(timeout_s=200, max_steps=4))
    assert len(backend.calls) == 4 and len(desktop.shown) >= 3
    for shown, captured in zip(desktop.shown, desktop.captured[1:]):
        assert shown and captured == shown[-1]  # the settled frame is the last one shown
    assert sum(t.images_encoded == 0 for t in backend.calls[1:]) >= 2  # found encoded (timing on a loaded CPU aside)
