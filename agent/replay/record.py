"""Record a person's mouse and keyboard on a task's display as a replayable trace.

The trace has the same format as an agent run (agent.trace), with `source="human"`: each step
holds the native action (0..1000 coordinates), the screenshot from just before it, the pixel it
hit and, for pointer actions, the evidence that finds its target again (agent.targets.locate).

Events come from pynput (X RECORD) on the task's display. They are grouped into actions:
press+release in one place is a click (two or three quick ones a double or triple click), a
press moved further is a drag, wheel clicks in one place are one scroll, runs of printable
characters one `type`, and chords or special keys one `key`. Text typed into a password-like
field (its label says password, secret, PIN...) or a field the task marks secret (`secrets:` in
the task, by label) is stored as "{secret:NAME}" and never in clear.
"""
from __future__ import annotations

import collections
import contextlib
import io
import os
import queue
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from actions.coords import to_relative
from agent import secrets
from agent.desktop.mask import mask_frames
from agent.errors import SandboxError
from agent.trace import Result, Step, Trace

FRAME_INTERVAL_S = 0.1  # the screen is grabbed this often, so every event has a frame before it
FRAME_HISTORY = 30  # frames kept (3 s): events wait in a queue while a step's OCR runs
BEFORE_MARGIN_S = 0.03  # a frame this close before an event may already show its effect
DRAG_PX = 5  # a press that moved further before its release is a drag
DOUBLE_CLICK_S = 0.4  # clicks this close in time and place are one double/triple click
SCROLL_GROUP_S = 0.6  # wheel clicks this close in time and place are one scroll
TYPE_IDLE_S = 2.0  # a pause this long ends a run of typed text
TICK_S = 0.05
LATE_EVENTS_S = 1.0  # how long input the app has seen may take to reach the recorder on a busy machine
LISTENER_JOIN_S = 2.0
PIXELS_PER_WHEEL_CLICK = 100  # as agent.desktop.x11: the trace speaks pixels, the wheel clicks
SECRET_LABEL_RE = re.compile(r"(?i)\b(pass(word|code|phrase)?|secret|pin|token|otp)\b")
MODIFIER_NAMES = {"ctrl": "ctrl", "ctrl_l": "ctrl", "ctrl_r": "ctrl", "alt": "alt", "alt_l": "alt",
                  "alt_r": "alt", "alt_gr": "alt", "shift": "shift", "shift_l": "shift", "shift_r": "shift",
                  "cmd": "win", "cmd_l": "win", "cmd_r": "win"}
KEY_NAMES = {"page_up": "pageup", "page_down": "pagedown", "caps_lock": "capslock", "num_lock": "numlock",
             "scroll_lock": "scrolllock", "print_screen": "printscreen", "media_play_pause": "playpause"}
VK_NAMES = {65056: "tab"}  # ISO_Left_Tab: what shift+Tab sends on X
CHORD_ORDER = ("ctrl", "alt", "shift", "win")


# ------------------------------------------------------------------------------ screen frames

class _Frames(threading.Thread):
    """Grabs the screen every FRAME_INTERVAL_S, keeping the last few, so that each event can
    have the frame from just before it (the event itself arrives after the screen reacted).
    With each new frame it lists the windows, and asks for a fresh accessibility tree: what the
    target was is read from the screen before the input landed, not after (a click that opens a
    popup or closes a dialog changes both within ~100 ms)."""

    def __init__(self, display: str):
        super().__init__(daemon=True, name="frames")
        self.display = display
        self.frames: collections.deque = collections.deque(maxlen=FRAME_HISTORY)
        self.windows: collections.deque = collections.deque(maxlen=FRAME_HISTORY)  # (t, [Window])
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.ready = threading.Event()
        self.changed = threading.Event()

    def run(self) -> None:
        import mss

        with mss.MSS(display=self.display) as grabber:
            while not self.stopped.is_set():
                t = time.monotonic()
                try:
                    shot = grabber.grab(grabber.monitors[0])
                except Exception:  # the display went away: the main loop notices and stops
                    self.stopped.set()
                    break
                with self.lock:  # an unchanged screen keeps its older frame: history lasts longer
                    new = not self.frames or bytes(self.frames[-1][1].raw) != bytes(shot.raw)
                    if new:
                        self.frames.append((t, shot))
                if new:
                    self._list_windows(t)
                    self.changed.set()
                self.ready.set()
                self.stopped.wait(FRAME_INTERVAL_S)

    def before(self, t: float):
        """The newest frame grabbed before t (less the margin), as an RGB image."""
        from PIL import Image

        with self.lock:
            frames = list(self.frames)
        older = [f for f in frames if f[0] <= t - BEFORE_MARGIN_S] or frames[:1]
        _, shot = older[-1]
        return Image.frombytes("RGB", shot.size, bytes(shot.bgra), "raw", "BGRX")

    def _list_windows(self, t: float) -> None:
        from sandbox.errors import SandboxError
        from sandbox.windows import list_windows

        try:
            windows = list_windows(self.display)
        except SandboxError:
            return
        with self.lock:
            self.windows.append((t, windows))

    def windows_before(self, t: float) -> list:
        with self.lock:
            older = [w for ts, w in self.windows if ts <= t - BEFORE_MARGIN_S] or [w for _, w in list(self.windows)[:1]]
        return older[-1] if older else []

    def stop(self) -> None:
        self.stopped.set()


class _Trees(threading.Thread):
    """The accessibility tree, read again after each change of the screen (a walk takes 10-100 ms),
    so each event has the tree from before it."""

    def __init__(self, display: str, frames: _Frames):
        from sandbox.atspi import Tree

        super().__init__(daemon=True, name="a11y")
        self.tree, self.frames = Tree(display), frames
        self.snapshots: collections.deque = collections.deque(maxlen=FRAME_HISTORY)
        self.lock = threading.Lock()

    def run(self) -> None:
        while not self.frames.stopped.is_set():
            # After each change of the screen, and every second: a window's widgets may reach the
            # tree a moment after the window shows.
            self.frames.changed.wait(1.0)
            self.frames.changed.clear()
            t = time.monotonic()
            nodes = self.tree.nodes()
            if self.tree.broken:
                return  # no tree on this display: pixels and text only
            with self.lock:
                self.snapshots.append((t, nodes))

    def before(self, t: float) -> list:
        with self.lock:
            older = [n for ts, n in self.snapshots if ts <= t - BEFORE_MARGIN_S]
        return older[-1] if older else []

    def stop(self) -> None:
        self.join(LISTENER_JOIN_S)
        self.tree.close()


# ------------------------------------------------------------------------------ grouping events

@dataclass
class Pending:
    """An action being grouped: more events may still join it."""

    action: dict
    t: float  # when it started (its frame is the one before this)
    last: float  # when the last event joined
    pixel: tuple[int, int] | None = None
    start_pixel: tuple[int, int] | None = None
    count: int = 1  # clicks so far, for double/triple clicks


@dataclass
class Grouper:
    """Turns raw input events into native actions; `emit(pending)` receives each finished one."""

    emit: object
    held: set = field(default_factory=set)
    click: Pending | None = None
    scroll: Pending | None = None
    text: Pending | None = None
    down: tuple | None = None  # (t, x, y, button) of a pressed mouse button

    def flush(self, *, keep_text: bool = False) -> None:
        for name in ("click", "scroll") + (() if keep_text else ("text",)):
            pending = getattr(self, name)
            if pending is not None:
                setattr(self, name, None)
                self.emit(pending)

    def tick(self, now: float) -> None:
        if self.click and now - self.click.last > DOUBLE_CLICK_S:
            self.emit(self.click)
            self.click = None
        if self.scroll and now - self.scroll.last > SCROLL_GROUP_S:
            self.emit(self.scroll)
            self.scroll = None
        if self.text and now - self.text.last > TYPE_IDLE_S:
            self.emit(self.text)
            self.text = None

    def mouse(self, t: float, x: int, y: int, button: str, pressed: bool) -> None:
        if pressed:
            if self.text:
                self.emit(self.text)
                self.text = None
            self.down = (t, x, y, button)
            return
        if self.down is None:
            return  # a release without its press (recording started mid-click)
        t0, x0, y0, button0 = self.down
        self.down = None
        if max(abs(x - x0), abs(y - y0)) > DRAG_PX and button0 == "left":
            self.flush()
            self.emit(Pending({"action": "left_click_drag"}, t0, t, pixel=(x, y), start_pixel=(x0, y0)))
            return
        c = self.click
        if (c and c.action["button"] == button0 and t0 - c.last <= DOUBLE_CLICK_S and c.count < 3
                and max(abs(x0 - c.pixel[0]), abs(y0 - c.pixel[1])) <= DRAG_PX):
            c.count, c.last = c.count + 1, t
            return
        self.flush()
        self.click = Pending({"button": button0}, t0, t, pixel=(x0, y0))

    def wheel(self, t: float, x: int, y: int, dx: int, dy: int) -> None:
        horizontal = dx != 0 and dy == 0
        amount = (dx if horizontal else dy) * PIXELS_PER_WHEEL_CLICK
        s = self.scroll
        if (s and s.action["action"] == ("hscroll" if horizontal else "scroll") and t - s.last <= SCROLL_GROUP_S
                and max(abs(x - s.pixel[0]), abs(y - s.pixel[1])) <= DRAG_PX):
            s.action["pixels"] += amount
            s.last = t
            return
        self.flush()
        self.scroll = Pending({"action": "hscroll" if horizontal else "scroll", "pixels": amount}, t, t, pixel=(x, y))

    def key(self, t: float, name: str | None, char: str | None, pressed: bool) -> None:
        """name: a special key's name (enter, ctrl, ...); char: a printable character."""
        mod = MODIFIER_NAMES.get(name or "")
        if mod:
            (self.held.add if pressed else self.held.discard)(mod)
            return
        if not pressed:
            return
        chord_mods = [m for m in CHORD_ORDER if m in self.held and m != "shift"]
        if char is not None and not chord_mods:  # shift only changes which character it is
            if self.text is None:
                self.flush()
                self.text = Pending({"action": "type", "text": ""}, t, t)
            self.text.action["text"] += char
            self.text.last = t
            return
        key = name if name is not None else (char or "").lower()
        if not key:
            return
        self.flush()
        mods = [m for m in CHORD_ORDER if m in self.held]
        self.emit(Pending({"action": "key", "keys": [*mods, key]}, t, t))


def _key_fields(key) -> tuple[str | None, str | None]:
    """A pynput key as (special key name, printable character)."""
    char = getattr(key, "char", None)
    if char is not None and len(char) == 1:
        if ord(char) < 32:  # ctrl+letter may arrive as a control character
            return None, chr(ord(char) + 96)
        return None, char
    name = getattr(key, "name", None)
    if name is None:
        vk = getattr(key, "vk", None)
        return VK_NAMES.get(vk), None
    if name == "space":
        return None, " "
    return KEY_NAMES.get(name, name), None


# ------------------------------------------------------------------------------ the recorder

class Recorder:
    """Listens on a display and writes each grouped action as a Step of `trace`."""

    def __init__(self, task, env, trace: Trace, on_step=None):
        self.task, self.env, self.trace, self.on_step = task, env, trace, on_step
        self.display = env.sandbox.display
        self.events: queue.Queue = queue.Queue()
        self.frames = _Frames(self.display)
        self.trees = _Trees(self.display, self.frames)
        self.focus: dict | None = None  # evidence of the last clicked target: the focused field
        self.masker = None  # the task's `mask:` boxes on the frames kept (agent.desktop.mask), set by start()
        self.listeners = []
        self.interrupted = threading.Event()  # Ctrl-C, taken at the next event boundary

    def start(self) -> None:
        if self.task.mask:  # a display without an accessibility bus stops here, before anything is kept
            from agent.desktop.mask import masker_for

            self.masker = masker_for(self.display, self.trees.tree, self.task.mask, "the recording keeps", listed=True)
        # pynput's X backend reads DISPLAY at import and start; Xlib prints an xauth warning to
        # stdout on Xvfb, which must not mix with our output (a test reads the display from it).
        saved = os.environ.get("DISPLAY")
        os.environ["DISPLAY"] = self.display
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                self._start()  # returns once the listeners hold their connections
        finally:
            if saved is None:
                os.environ.pop("DISPLAY", None)
            else:
                os.environ["DISPLAY"] = saved

    def _start(self) -> None:
        from pynput import keyboard, mouse

        put = self.events.put

        def on_click(x, y, button, pressed, *_):
            put(("mouse", time.monotonic(), int(x), int(y), button.name, pressed))

        def on_scroll(x, y, dx, dy, *_):
            put(("wheel", time.monotonic(), int(x), int(y), int(dx), int(dy)))

        def on_press(key, *_):
            put(("key", time.monotonic(), *_key_fields(key), True))

        def on_release(key, *_):
            put(("key", time.monotonic(), *_key_fields(key), False))

        self.frames.start()
        self.trees.start()
        self.frames.ready.wait(5.0)
        self.listeners = [mouse.Listener(on_click=on_click, on_scroll=on_scroll),
                          keyboard.Listener(on_press=on_press, on_release=on_release)]
        for listener in self.listeners:
            listener.start()
        for listener in self.listeners:
            listener.wait()

    def stop(self) -> None:
        """Stop and join the listeners while the display still exists."""
        for listener in self.listeners:
            listener.stop()
            _unblock(listener)
        for listener in self.listeners:
            listener.join(LISTENER_JOIN_S)
        self.listeners = []
        self.frames.stop()
        if self.frames.is_alive():
            self.frames.join(LISTENER_JOIN_S)
        if self.trees.is_alive() or self.trees.tree.proc is not None:
            self.trees.stop()

    def run(self, deadline: float | None, stop_when_done: bool = True) -> str:
        """Record until Ctrl-C, the deadline, or the task's checks pass. Returns why it stopped."""
        wrote = [False]

        def write(pending: Pending) -> None:
            self._write(pending)
            wrote[0] = True

        grouper = Grouper(emit=write)
        with self._ctrl_c_between_events():
            try:
                return self._loop(grouper, wrote, deadline, stop_when_done)
            except KeyboardInterrupt:
                # Ctrl-C: what the person did before it counts; record the events queued, and those
                # still on their way (a busy machine delivers them late).
                time.sleep(LATE_EVENTS_S)
                while not self.events.empty():
                    kind, t, *args = self.events.get_nowait()
                    getattr(grouper, kind)(t, *args)
                grouper.flush()
                raise

    @contextlib.contextmanager
    def _ctrl_c_between_events(self):
        """Ctrl-C ends the recording between two events, never in the middle of taking one in or
        writing a step (a KeyboardInterrupt there lost the action); a third Ctrl-C quits at once."""
        import signal

        if threading.current_thread() is not threading.main_thread():
            yield
            return
        presses = []

        def on_sigint(signum, frame):
            presses.append(time.monotonic())
            self.interrupted.set()
            if len(presses) >= 3:
                raise KeyboardInterrupt
        old = signal.signal(signal.SIGINT, on_sigint)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, old)

    def _loop(self, grouper: Grouper, wrote: list, deadline: float | None, stop_when_done: bool) -> str:
        while True:
            if self.interrupted.is_set():
                raise KeyboardInterrupt
            try:
                event = self.events.get(timeout=TICK_S)
            except queue.Empty:
                event = None
            if event is not None:
                kind, t, *args = event
                getattr(grouper, kind)(t, *args)
            if self.frames.stopped.is_set():
                raise SandboxError(f"display {self.display} stopped answering")
            if not self.events.empty():
                continue  # the app has seen these events already: record them all first
            # Only then does the clock end a group: a backlog (the writer was busy reading a
            # target) must not split a word typed in one go into one step per letter.
            grouper.tick(time.monotonic())
            if stop_when_done and wrote[0]:
                wrote[0] = False
                if self._checks_pass():
                    # The app sees input before we do: events still on their way are recorded first.
                    time.sleep(LATE_EVENTS_S)
                    if not self.events.empty():
                        wrote[0] = True
                        continue
                    grouper.flush()
                    return "the task's success checks pass"
            if deadline is not None and time.monotonic() >= deadline:
                grouper.flush()
                return "--max-seconds reached"

    def _write(self, pending: Pending) -> None:
        """One finished action -> one Step with its frame, pixel and target evidence."""
        from agent.targets.evidence import describe

        t0 = time.perf_counter()
        frame = self.frames.before(pending.t)
        if self.masker is not None:  # boxes from the tree as it was before the input (else as it is now)
            frame = self.masker(frame, self.trees.before(pending.t) or None)
        n = len(self.trace.steps) + 1
        action = dict(pending.action)
        if "button" in action:  # a click: which kind by button and count
            button = action.pop("button")
            kind = {1: "left_click", 2: "double_click", 3: "triple_click"}[pending.count] if button == "left" \
                else {"right": "right_click", "middle": "middle_click"}.get(button, "left_click")
            action["action"] = kind
        if pending.pixel is not None:
            action["coordinate"] = list(to_relative(pending.pixel, frame.size))
        if pending.start_pixel is not None:
            action["start_coordinate"] = list(to_relative(pending.start_pixel, frame.size))
        target = None
        if pending.pixel is not None:
            # The windows and the tree as they were before the press, like the frame.
            windows, nodes = self.frames.windows_before(pending.t), self.trees.before(pending.t)
            later = self.trees.tree.nodes if self.trees.is_alive() else None  # the tree may fill in late
            keep = self.task.allow.store_field_text  # editable fields' text as evidence, where the task allows it
            target = describe(frame, pending.pixel, windows, nodes, later=later, field_text=keep)
            if pending.start_pixel is not None:
                target["start"] = describe(frame, pending.start_pixel, windows, nodes, later=later, field_text=keep)
            if action["action"] in ("left_click", "double_click", "triple_click"):
                self.focus = target
        if action["action"] == "key" and action["keys"][-1] == "tab":
            self.focus = None  # focus moved to a field we did not see clicked
        if action["action"] == "type":
            action["text"] = self._redacted(action["text"])
        step = Step(step=n, action=action, screenshot=self.trace.save_screen(frame, f"{n:04d}"),
                    frame=frame.size, pixel=pending.pixel, start_pixel=pending.start_pixel, target=target,
                    source="human", timings={"describe_ms": (time.perf_counter() - t0) * 1e3})
        self.trace.add(step)
        if self.on_step:
            self.on_step(step)

    def _redacted(self, text: str) -> str:
        """Text for a password-like or task-marked field becomes a "{secret:NAME}" placeholder."""
        name = secret_name(self.focus, self.task) or secrets.focused_secret(self.trees.before(time.monotonic()), self.task.secrets)
        return text if name is None else f"{{secret:{name}}}"

    def _checks_pass(self) -> bool:
        """Cheap checks first (files, commands); OCR of the screen only when those pass."""
        from agent.run.environment import evaluate

        if not self.task.success:
            return False
        cheap = [c for c in self.task.success if c.kind != "screen_text"]
        if cheap and not all(r.passed for r in evaluate(self.task.model_copy(update={"success": cheap}), self.env)):
            return False
        return all(r.passed for r in evaluate(self.task, self.env))


def _unblock(listener) -> None:
    """pynput's X listener asks its own blocked connection to stop, so it only stops at the next
    input event; disabling the RECORD context through its other connection stops it now."""
    try:
        listener._display_stop.record_disable_context(listener._context)
        listener._display_stop.flush()
    except Exception:  # already stopped, or the display is gone: nothing left to unblock
        pass


def secret_name(focus: dict | None, task) -> str | None:
    """The secret a field holds, judged by the words next to it: a name from the task's
    `secrets:` that its label names, or the label itself when it says password, PIN, ..."""
    if not focus:
        return None
    words = [a.get("text", "") for a in focus.get("anchors", [])] + [(focus.get("text") or {}).get("at", "")]
    label = " ".join(w for w in words if w)
    return secrets.label_secret(label, task.secrets)  # labels in common languages (agent.secrets)


def record_trace(trace_dir, task, display: str | None = None, max_seconds: float | None = None,
                 stop_when_done: bool = True, on_ready=None, on_step=None, bus=None) -> Result:
    """Set up `task` (a sandbox unless `display`), record until Ctrl-C, `max_seconds` or the
    task's checks pass, and write the trace to `trace_dir`. `on_ready(display)` is called once
    the listeners run (a person or a test may start then)."""
    from agent.run.session import RunSession
    from agent.run.status import End
    from agent.task import Task, load_task

    task = task if isinstance(task, Task) else load_task(task)
    # Ctrl-C while recording stops it; before, it aborts
    with RunSession(task, mode="record", model="human", trace_dir=Path(trace_dir), display=display,
                    bus=bus) as run:
        env = run.start()
        mask_frames(env.desktop, task, None)  # the task's `mask:` on what the desktop captures (the final screen)
        recorder = Recorder(task, env, run.trace, on_step)
        try:
            recorder.start()
            if on_ready:
                on_ready(env.sandbox.display)
            deadline = None if max_seconds is None else time.monotonic() + max_seconds
            try:
                why = recorder.run(deadline, stop_when_done)
            except KeyboardInterrupt:  # the normal way to stop recording
                why = "stopped by Ctrl-C"
        finally:
            recorder.stop()  # while the display still exists
        run.finish(End("finished", f"recorded {len(run.trace.steps)} steps; {why}", "success"))
    return run.result
