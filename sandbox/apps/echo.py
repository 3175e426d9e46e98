"""Echo: a test target that records every input event it receives as JSON lines.

The window ("Echo") covers the whole screen so that any pixel the executor aims at lands on it. An
Entry at the top holds keyboard focus, so typed text arrives there; the rest is a canvas that takes
clicks, drags and wheel turns. Each event becomes one flushed line in `--out`, e.g.
    {"event": "press", "button": 1, "x": 640, "y": 400}
    {"event": "double", "button": 1, "x": 640, "y": 400}
    {"event": "drag", "button": 1, "from": [100, 200], "to": [500, 600]}
    {"event": "wheel", "direction": "up", "x": 640, "y": 400}
    {"event": "key", "keysym": "a", "char": "a", "ctrl": true, "shift": false, "alt": false}
    {"event": "text", "value": "Zoë"}
Coordinates are root (screen) pixels. The first line is {"event": "ready", "width": W, "height": H}.
Escape empties the Entry, so a test can start typing from a known state.

Run: python -m sandbox.apps.echo --out events.jsonl
"""
from __future__ import annotations

import argparse
import json
import tkinter as tk

TITLE = "Echo"
WHEEL_BUTTONS = {4: "up", 5: "down", 6: "left", 7: "right"}  # X11's wheel buttons
# Tk 8.6 reports X buttons 6/7 (horizontal wheel) as 4/5 with Shift held.
SHIFTED_WHEEL = {4: "left", 5: "right"}
MULTI_CLICK = {"Double": "double", "Triple": "triple"}
# Tk's modifier bits in event.state on X11
SHIFT_MASK, CTRL_MASK, ALT_MASK = 0x1, 0x4, 0x8
ENTRY_FONT = ("DejaVu Sans", 16)


class Echo:
    def __init__(self, root: tk.Tk, out):
        self.root, self.out = root, out
        self.pressed: dict[int, tuple[int, int]] = {}
        self.text = tk.StringVar(root)
        entry = tk.Entry(root, textvariable=self.text, font=ENTRY_FONT)
        entry.pack(fill="x")
        canvas = tk.Canvas(root, background="white", highlightthickness=0)
        canvas.pack(fill="both", expand=True)
        self.text.trace_add("write", lambda *_: self.emit(event="text", value=self.text.get()))
        entry.bind("<Escape>", lambda e: self.text.set(""))
        # Tk runs only the most specific binding per bind tag, so plain presses go on the "all" tag
        # and multi-clicks on the toplevel's tag: a double click then yields both "press" and
        # "double". The Entry's class bindings (editing) run before either.
        root.bind_all("<ButtonPress>", self.on_press)
        root.bind_all("<ButtonRelease>", self.on_release)
        root.bind_all("<KeyPress>", self.on_key)
        for kind in MULTI_CLICK:
            for button in (1, 2, 3):
                root.bind(f"<{kind}-Button-{button}>", lambda e, k=kind: self.on_multi(e, k))
        self.entry = entry

    def emit(self, **fields) -> None:
        self.out.write(json.dumps(fields, ensure_ascii=False) + "\n")
        self.out.flush()

    def on_press(self, e: tk.Event) -> None:
        if e.num in WHEEL_BUTTONS:
            shifted = isinstance(e.state, int) and e.state & SHIFT_MASK
            direction = SHIFTED_WHEEL[e.num] if shifted and e.num in SHIFTED_WHEEL else WHEEL_BUTTONS[e.num]
            self.emit(event="wheel", direction=direction, x=e.x_root, y=e.y_root)
            return
        self.pressed[e.num] = (e.x_root, e.y_root)
        self.emit(event="press", button=e.num, x=e.x_root, y=e.y_root)

    def on_release(self, e: tk.Event) -> None:
        if e.num in WHEEL_BUTTONS:
            return
        self.emit(event="release", button=e.num, x=e.x_root, y=e.y_root)
        start = self.pressed.pop(e.num, None)
        if start is not None and start != (e.x_root, e.y_root):
            self.emit(event="drag", button=e.num, **{"from": list(start), "to": [e.x_root, e.y_root]})

    def on_multi(self, e: tk.Event, kind: str) -> None:
        self.emit(event=MULTI_CLICK[kind], button=e.num, x=e.x_root, y=e.y_root)

    def on_key(self, e: tk.Event) -> None:
        state = int(e.state) if isinstance(e.state, int) else 0
        self.emit(event="key", keysym=e.keysym, char=e.char, ctrl=bool(state & CTRL_MASK),
                  shift=bool(state & SHIFT_MASK), alt=bool(state & ALT_MASK))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="JSON-lines file the events are appended to")
    args = ap.parse_args(argv)
    root = tk.Tk(className=TITLE)
    root.title(TITLE)
    w, h = root.winfo_screenwidth(), root.winfo_screenheight()
    root.geometry(f"{w}x{h}+0+0")
    with open(args.out, "a", encoding="utf-8") as out:
        app = Echo(root, out)
        root.wait_visibility()
        app.entry.focus_force()
        root.update()
        app.emit(event="ready", width=w, height=h)
        root.mainloop()


if __name__ == "__main__":
    main()
