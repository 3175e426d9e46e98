"""The desktop the agent sees and drives: mss capture and pyautogui input behind the Desktop
interface (agent.desktop.base). Nothing else in vlagent touches pyautogui; the only other reader
of the screen through mss is the recorder's frame grabber (agent.replay.record).

Coordinates here are screen pixels; agent.run.executor maps the model's 0..1000 space onto the
captured frame before calling in.

X11Desktop types printable ASCII with pyautogui and every other character by binding it to a
spare keycode and pressing that through XTest (pyautogui drops non-ASCII text on Linux, and
`xdotool type` loses characters when the app is busy; see agent/desktop/keysym_typing.py).
"""
from __future__ import annotations

import importlib
import io
import os
import sys
import time
from contextlib import contextmanager, redirect_stdout
from pathlib import Path

from PIL import Image

from agent.errors import Aborted, VlagentError
from agent.desktop.base import Button, Desktop  # noqa: F401 (Desktop: the interface it implements)
from agent.desktop.keysym_typing import KeysymTyper

INPUT_PAUSE_S = 0.02  # pyautogui's pause after each call (its 0.1 s default makes steps slow)
# Buttons and keys are held this long, as a person's are: an instant press and release races GTK's
# combo boxes (the popup opens on press and closes on a release that comes before it has mapped).
HOLD_S = 0.06
MULTI_CLICK_GAP_S = 0.05  # between the clicks of a double or triple click (well inside GTK's 400 ms)
DRAG_S = 0.3  # a drag glides for this long so apps see intermediate motion events
PIXELS_PER_WHEEL_CLICK = 100  # scroll convention: 100 px = 1 wheel click; positive = up / right
SETTLE_POLL_S = 0.05  # wait_stable compares screen grabs this far apart
SETTLE_MAX_S = 2.0
SETTLED_REUSE_S = 0.1  # a stable frame this fresh is the next observation (no second grab)
ABORT_MESSAGE = "mouse moved to a screen corner: run aborted by the user"


def _image(raw: bytes, size) -> Image.Image:
    """A raw BGRA grab as an image (for the change detector)."""
    return Image.frombytes("RGB", tuple(size), raw, "raw", "BGRX")


def wheel_clicks(pixels: int) -> int:
    """Scroll pixels -> wheel clicks, sign kept; any nonzero amount is at least one click."""
    if pixels == 0:
        return 0
    clicks = max(1, round(abs(pixels) / PIXELS_PER_WHEEL_CLICK))
    return clicks if pixels > 0 else -clicks


def _runs(text: str, typable: frozenset[str]) -> list[tuple[bool, str]]:
    """Split text into (typable, chunk) runs: "Zoë!" -> [(True, "Zo"), (False, "ë"), (True, "!")]."""
    runs: list[tuple[bool, str]] = []
    for ch in text:
        kind = ch in typable
        if runs and runs[-1][0] == kind:
            runs[-1] = (kind, runs[-1][1] + ch)
        else:
            runs.append((kind, ch))
    return runs


def _open_display(display: str):
    """An Xlib connection to `display`, or a one-line VlagentError."""
    from Xlib import display as xdisplay, error as xerror

    try:
        with redirect_stdout(io.StringIO()):  # Xlib prints an xauth warning to stdout on Xvfb
            return xdisplay.Display(display)
    except (xerror.DisplayError, xerror.XauthError, xerror.ConnectionClosedError, OSError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise VlagentError(f"cannot open display {display}: {reason}") from None


def _pyautogui_for(display: str):
    """pyautogui and its X11 backend module, with the backend bound to `display`.

    pyautogui connects to $DISPLAY once, at import (module global `_display`, plus a keycode table
    built from it). To drive several displays from one process (one after another, not at once),
    the backend module is reloaded with DISPLAY pointing at the new display; each X11Desktop keeps
    the connection and keycode table it got and puts them back before every input call
    (X11Desktop._on_display). This hack lives here and nowhere else."""
    xauthority = Path(os.environ.get("XAUTHORITY", Path.home() / ".Xauthority"))
    if not xauthority.exists():  # pyautogui's import fails without one, even on Xvfb
        xauthority.touch()
    # A clear error instead of an Xlib traceback at import. The probe stays open until pyautogui
    # has connected: when the last client leaves, Xvfb resets and refuses connections meanwhile.
    probe = _open_display(display)
    saved = os.environ.get("DISPLAY")
    os.environ["DISPLAY"] = display
    try:
        with redirect_stdout(io.StringIO()):  # Xlib's xauth warning, as above
            if "pyautogui._pyautogui_x11" in sys.modules:
                x11 = importlib.reload(sys.modules["pyautogui._pyautogui_x11"])
            else:
                import pyautogui._pyautogui_x11 as x11
    except Exception as e:  # the display died between the probe and the import
        raise VlagentError(f"cannot open display {display}: {e}") from None
    finally:
        probe.close()
        if saved is None:
            os.environ.pop("DISPLAY", None)
        else:
            os.environ["DISPLAY"] = saved
    import pyautogui

    return pyautogui, x11


def _pyautogui_typable(pag, x, keymap: dict) -> frozenset[str]:
    """The printable ASCII characters pyautogui types correctly on this display's keymap.

    pyautogui presses the first keycode bound to a character's keysym and adds Shift by a US-layout
    guess; on Xvfb's default map '<' then comes out as '>'. Keep only the characters whose
    (keycode, shift) really produce them; ASCII keysyms equal their code points."""
    good = set()
    for ch in map(chr, range(0x20, 0x7F)):
        code = keymap.get(ch)
        if code and x.keycode_to_keysym(code, 1 if pag.isShiftCharacter(ch) else 0) == ord(ch):
            good.add(ch)
    return frozenset(good)


class X11Desktop:
    """An X display (Xvfb or a real one): mss capture, pyautogui input, XTest on spare keycodes
    for the characters pyautogui cannot type.

    On X11 the captured frame and the input space are both root-window pixels, so size() and the
    capture agree; the executor still scales between them for backends where they differ."""

    def __init__(self, display: str):
        import mss
        from Xlib import error as xerror

        self.display = display
        self._pag, self._x11 = _pyautogui_for(display)
        self._x = self._x11._display  # this desktop's own connection and keycode table
        self._keymap = self._x11.keyboardMapping
        w, h = self.size()
        self._corners = [(0, 0), (w - 1, 0), (0, h - 1), (w - 1, h - 1)]
        self._gone = (xerror.ConnectionClosedError, xerror.XError, OSError, mss.ScreenShotError)
        self._watchers: list = []  # called at every abort check: a dead app is noticed at the next step
        self._settled = None  # (grab, time) of the frame wait_stable found stable
        self._tree = None  # the accessibility tree reader, started on first use
        self.masker = None  # paints over what frames must not show (agent.desktop.mask.mask_frames sets it)
        # The windows the gate's probe judged, by point or "focus" (their ids, top-level first): the
        # input checks them again right before it goes, so the verdict is a millisecond old, not the
        # time between the check and the input (a person reviewing it, evidence being read).
        self._judged: dict = {}
        with self._on_display(query=True):
            self._typable = _pyautogui_typable(self._pag, self._x, self._keymap)
            self._typer = KeysymTyper(self._x, display)
        try:
            self._mss = mss.MSS(display=display)
        except mss.ScreenShotError as e:
            raise VlagentError(f"cannot open display {display}: {e}") from None

    def close(self) -> None:
        tree = self._tree  # the accessibility reader tree() started
        for close in (self._typer.close, self._mss.close, self._x.close, *([tree.close] if tree else [])):
            try:
                close()
            except Exception:  # the display may be gone already; there is nothing left to free
                pass

    def __enter__(self) -> "X11Desktop":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextmanager
    def _on_display(self, query: bool = False):
        """Point pyautogui at this display, and turn its and Xlib's failures into ours. query=True:
        only reading (the pointer, the windows), which leaves the last stable frame current."""
        pag = self._pag
        if not query:
            self._settled = None  # input may change the screen: the last stable frame is stale
        self._x11._display, self._x11.keyboardMapping = self._x, self._keymap
        pag.FAILSAFE_POINTS = self._corners
        pag.FAILSAFE = True  # a person pushing the mouse into a corner must always stop the run
        pag.PAUSE = INPUT_PAUSE_S
        try:
            yield pag
        except pag.FailSafeException:
            raise Aborted(ABORT_MESSAGE) from None
        except self._gone as e:
            raise VlagentError(f"display {self.display} stopped answering: {type(e).__name__}: {e}") from None

    # --- what the model sees ---
    def _grab(self):
        try:
            return self._mss.grab(self._mss.monitors[0])
        except Exception as e:  # mss's XCB backend just asserts on a dead connection
            detail = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            with self._on_display(query=True):  # a dead display raises its own clear error here
                self._x.sync()
            raise VlagentError(f"cannot capture display {self.display}: {detail}") from None

    def capture(self) -> Image.Image:
        settled, self._settled = self._settled, None
        fresh = settled is not None and time.monotonic() - settled[1] <= SETTLED_REUSE_S
        shot = settled[0] if fresh else self._grab()
        frame = Image.frombytes("RGB", shot.size, bytes(shot.bgra), "raw", "BGRX")
        return frame if self.masker is None else self.masker(frame)  # boxes from the tree as it is now

    def size(self) -> tuple[int, int]:
        screen = self._x.screen()
        return screen.width_in_pixels, screen.height_in_pixels

    def position(self) -> tuple[int, int]:
        with self._on_display(query=True):
            p = self._x.screen().root.query_pointer()
        return p.root_x, p.root_y

    def wait_stable(self, max_s: float = SETTLE_MAX_S, seen=None) -> float:
        from agent.desktop.change import differs

        if self.masker is not None:  # what seen() would get is not what the model will see
            seen = None
        start = time.monotonic()
        shot = self._grab()
        previous = bytes(shot.raw)  # comparing raw grabs is a memcmp: cheaper than hashing
        if seen is not None:
            seen(_image(previous, shot.size))  # the bytes capture() converts the same way
        while time.monotonic() - start < max_s:
            time.sleep(SETTLE_POLL_S)
            shot = self._grab()
            frame = bytes(shot.raw)
            # still: the same bytes, or nothing the change detector counts (a blinking caret)
            if frame == previous or not differs(_image(previous, shot.size), _image(frame, shot.size)):
                self._settled = (shot, time.monotonic())  # the next capture() is this frame
                if seen is not None and frame != previous:  # (what seen() was shown last is a caret off)
                    seen(_image(frame, shot.size))
                break
            previous = frame
            if seen is not None:
                seen(_image(frame, shot.size))
        return time.monotonic() - start

    def check_abort(self) -> None:
        if self.position() in self._corners:
            raise Aborted(ABORT_MESSAGE)
        for watcher in self._watchers:
            watcher()

    def watch(self, check) -> None:
        """Call `check` (it raises when something died, e.g. Sandbox.check_apps) at every abort check."""
        self._watchers.append(check)

    # --- the gate's probe (actions.gate.Probe): which window will receive input ---
    def window_at(self, x: int, y: int):
        """The window a pointer event at (x, y) reaches (actions.Focus), judged over every window
        from the top-level one down to the deepest (an embedded terminal counts); Focus(nowhere=True)
        over the bare desktop; None when it cannot be told."""
        from Xlib.error import XError

        with self._on_display(query=True):
            root = self._x.screen().root
            try:
                path = _path_at(root, root, x, y)
                return self._remember((x, y), path, self._judge(path) if path else _nowhere())
            except XError:  # a window went away while we looked
                return None

    def focused_window(self):
        """The window that would receive keys now (actions.Focus): the input focus (with the
        window under the pointer inside it, which X gives the keys to), or the window under the
        pointer when the focus follows it (no window manager); Focus(nowhere=True) when that is the
        bare desktop; None when it cannot be told."""
        from Xlib.error import XError

        with self._on_display(query=True):
            try:
                path = self._focus_path()
                return self._remember("focus", path, self._judge(path) if path else _nowhere())
            except XError:
                return None

    def _focus_path(self) -> list:
        """The windows that keys go to now, top-level first ([]: the bare desktop)."""
        from Xlib import X

        root = self._x.screen().root
        win = self._x.get_input_focus().focus
        p = root.query_pointer()
        under = _path_at(root, root, p.root_x, p.root_y)
        if isinstance(win, int) or win.id in (X.NONE, X.PointerRoot) or win == root:
            return under
        path = _ancestors(win, root)
        ids = [w.id for w in under]
        if win.id in ids:  # keys go to the focus window's descendant under the pointer
            path += under[ids.index(win.id) + 1:]
        return path

    def _remember(self, key, path: list, verdict):
        """What the probe judged for `key` (a point, or "focus"), for _unchanged; returns the verdict."""
        if verdict is not None:
            self._judged[key] = (_ids(path), verdict)
        return verdict

    def _unchanged(self, key, what: str) -> None:
        """Right before an input, the gate's question asked again of the windows it reaches now (when
        the gate asked it: a test's direct call did not). The same windows: it goes. Others (an app's
        new child window; a terminal raised over the place): judged again, and ReceiverChanged when the
        new receiver cannot be told, is a terminal where the judged one was not, or is nothing where
        keys had a window."""
        from Xlib.error import XError

        judged = self._judged.pop(key, None)
        if judged is None:
            return
        ids, before = judged
        root = self._x.screen().root
        try:
            path = self._focus_path() if key == "focus" else _path_at(root, root, *key)
            if _ids(path) == ids:
                return
            now = self._judge(path) if path else _nowhere()
        except XError:  # a window went away while we looked
            now = None
        why = ("it cannot be told now" if now is None else
               f"it is now {now.describe()[:40]!r} ({now.why_terminal()})" if now.is_terminal() and not before.is_terminal()
               else "no window has the keys now" if now.nowhere and not before.nowhere and key == "focus" else "")
        if why:
            raise ReceiverChanged(f"the window that would receive the {what} changed after the gate checked it: {why}; "
                                  "not sent")

    focus = focused_window  # the name the loop used before the gate

    def tree(self):
        """This display's accessibility tree reader (sandbox.atspi.Tree), started on first use."""
        from sandbox.atspi import Tree

        if self._tree is None:
            self._tree = Tree(self.display)
        return self._tree

    def focused_field(self) -> dict | None:
        """The focused element of the accessibility tree ({"role", "name", "label"}), or None."""
        nodes = self.tree().nodes()
        hit = next((n for n in nodes if "focused" in n.states and n.role not in ("frame", "window", "dialog")), None)
        if hit is None:
            return None
        labels = [n.name for n in nodes if n.role == "label" and n.name and abs(n.box[1] - hit.box[1]) < max(hit.box[3], 20)
                  and n.box[0] < hit.box[0]]
        return {"role": hit.role, "name": hit.name, "label": labels[-1] if labels else ""}

    def _judge(self, path: list):
        """actions.Focus for the windows on a path: WM_CLASS and title of the client windows, the
        owners' process trees. None when an owner cannot be known or read."""
        from Xlib import X

        from actions.policy import Focus
        from agent.desktop.probe import Unreadable, inspect

        classes, title, pids = [], "", []
        for w in path:
            cls = w.get_wm_class()
            if cls:
                classes.extend(cls)
                if not title:
                    name = w.get_wm_name()
                    title = name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name or "")
            pid = self._owner_pid(w)
            if pid is None and cls:
                prop = w.get_full_property(self._x.intern_atom("_NET_WM_PID"), X.AnyPropertyType)
                pid = int(prop.value[0]) if prop is not None and len(prop.value) else None
            if pid is not None and pid not in pids:
                pids.append(pid)
        if not pids:
            return None  # nobody we can name owns these windows: cannot tell
        names, pty, repl = [], False, ""
        for pid in pids:
            try:
                seen = inspect(pid)
            except Unreadable:
                return None
            names.extend(seen["processes"])
            pty = pty or seen["pty"]
            repl = repl or seen["repl"]
        return Focus(wm_class=tuple(classes), processes=tuple(names), title=title, pty=pty, repl=repl)

    def _owner_pid(self, win) -> int | None:
        """The process id of the X client that created `win`, as the X server knows it (X-Resource)."""
        if getattr(self, "_res", None) is False:
            return None
        try:
            from Xlib.ext import res

            if not self._x.has_extension(res.extname):
                self._res = False
                return None
            reply = self._x.res_query_client_ids([{"client": win.id, "mask": res.LocalClientPIDMask}])
        except Exception:  # an old python-xlib or server: fall back to _NET_WM_PID
            self._res = False
            return None
        for value in reply.ids:
            if value.spec.mask & res.LocalClientPIDMask and value.value:
                return int(value.value[0])
        return None

    # --- input ---
    def move(self, x: int, y: int) -> None:
        with self._on_display() as pag:
            pag.moveTo(x, y)

    def click(self, x: int | None, y: int | None, button: Button = "left", clicks: int = 1) -> None:
        """Press and release like a person: each press held HOLD_S (see there)."""
        with self._on_display() as pag:
            self._unchanged((x, y) if x is not None and y is not None else self.position(), "click")
            if x is not None and y is not None:
                pag.moveTo(x, y)
            for n in range(clicks):
                if n:
                    time.sleep(MULTI_CLICK_GAP_S)
                self._button(button, True)
                try:
                    time.sleep(HOLD_S)
                finally:  # never leave the button held
                    self._button(button, False)

    def _button(self, button: Button, down: bool) -> None:
        """Press or release where the pointer is. pyautogui's mouseDown/Up send a motion event first,
        and a motion over a just-opened GTK combo box popup selects the item under it and closes it."""
        from Xlib import X
        from Xlib.ext.xtest import fake_input

        fake_input(self._x, X.ButtonPress if down else X.ButtonRelease, {"left": 1, "middle": 2, "right": 3}[button])
        self._x.sync()

    def drag(self, x0: int, y0: int, x1: int, y1: int) -> None:
        with self._on_display() as pag:
            self._unchanged((x0, y0), "drag's start")
            self._unchanged((x1, y1), "drag's end")
            pag.moveTo(x0, y0)
            pag.mouseDown(button="left")
            try:
                pag.moveTo(x1, y1, duration=DRAG_S)
            finally:  # never leave the button held, even when a person aborts mid-drag
                self._x11._mouseUp(*self.position(), "left")

    def scroll(self, pixels: int, x: int | None = None, y: int | None = None, horizontal: bool = False) -> None:
        clicks = wheel_clicks(pixels)
        with self._on_display() as pag:
            self._unchanged((x, y) if x is not None and y is not None else self.position(), "scroll")
            if x is not None and y is not None:
                pag.moveTo(x, y)
            if clicks:
                (pag.hscroll if horizontal else pag.scroll)(clicks)

    def key(self, keys: list[str]) -> None:
        names = [k if len(k) == 1 else k.lower() for k in keys]
        for name in names:  # pyautogui silently skips names it cannot press
            if self._keymap.get(name) is None:
                raise VlagentError(f"key {name!r} cannot be pressed on display {self.display}")
        with self._on_display() as pag:
            self._unchanged("focus", "key press")
            pressed = []
            try:
                for name in names:
                    pag.keyDown(name, _pause=False)
                    pressed.append(name)
                time.sleep(HOLD_S)  # held like a person's chord
            finally:  # released in reverse, even when something failed half way
                for name in reversed(pressed):
                    pag.keyUp(name, _pause=False)

    def type(self, text: str) -> None:
        """Printable ASCII through pyautogui; anything else (non-ASCII, and the few ASCII characters
        pyautogui mistypes on this keymap) through spare keycodes (agent.desktop.keysym_typing)."""
        runs = _runs(text, self._typable)
        with self._on_display():
            self._unchanged("focus", "typing")
            self._typer.prepare("".join(chunk for by_pyautogui, chunk in runs if not by_pyautogui))
        for by_pyautogui, chunk in runs:
            with self._on_display() as pag:
                if by_pyautogui:
                    pag.write(chunk)
                else:
                    pag.failSafeCheck()
                    self._typer.type(chunk)


class ReceiverChanged(VlagentError):
    """Another window took the place of the one the gate approved, between its check and the input."""


def _ids(path: list) -> tuple[int, ...]:
    return tuple(w.id for w in path)


def _nowhere():
    from actions.policy import Focus

    return Focus(nowhere=True)


def _path_at(top, root, x: int, y: int, depth: int = 32) -> list:
    """The windows containing root point (x, y), from `top`'s child down to the deepest one."""
    path, w = [], top
    for _ in range(depth):
        child = w.translate_coords(root, x, y).child
        if not child or isinstance(child, int) or child.id == 0:
            break
        path.append(child)
        w = child
    return path


def _ancestors(win, root, depth: int = 32) -> list:
    """`win` and its ancestors below the root, top-level first."""
    chain, w = [], win
    for _ in range(depth):
        if w == root or isinstance(w, int):
            break
        chain.append(w)
        parent = w.query_tree().parent
        if not parent or isinstance(parent, int):
            break
        w = parent
    return chain[::-1]
