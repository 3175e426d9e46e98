"""A Tk sign-in dialog (a toolkit without an accessibility tree), whose widgets can move.

    python -m sandbox.apps.access --out FILE [--log FILE] [--layout FILE] [--shift PX] [--dark] [--font-scale F]

Widgets: "Access code" (entry), Region (radio buttons North/South), "Remember me" (checkbox), an
"Options" menu whose "Settings..." opens a "Settings" dialog ("Verbose" checkbox, OK, Cancel), and a
"Sign in" button that writes {"code", "region", "remember", "verbose"} to --out. --log gets one line
per click, naming the widget it landed on (how a benchmark tells a wrong click from a right one);
--layout gets every widget's screen box (JSON), rewritten whenever a window or the menu opens.
--shift moves every widget right by PX; --dark and --font-scale change its look as a user's settings
would.
"""
from __future__ import annotations

import argparse
import json
import os
import tkinter as tk
from pathlib import Path

TITLE = "Access"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--log")
    ap.add_argument("--layout")
    ap.add_argument("--shift", type=int, default=0)
    ap.add_argument("--dark", action="store_true")
    ap.add_argument("--font-scale", type=float, default=1.0)
    args = ap.parse_args()

    root = tk.Tk()
    root.title(TITLE)
    size = round(15 * args.font_scale)
    root.option_add("*Font", ("DejaVu Sans", -size))
    if args.dark:
        for key, value in (("*Background", "#2b2b2b"), ("*Foreground", "#e8e8e8"), ("*selectColor", "#444"),
                           ("*Entry.Background", "#3c3c3c"), ("*insertBackground", "#e8e8e8"),
                           ("*activeBackground", "#505050"), ("*activeForeground", "#ffffff")):
            root.option_add(key, value)
        root.configure(background="#2b2b2b")
    root.geometry(f"+{120}+{100}")
    log = Path(args.log) if args.log else None
    widgets: dict[str, tk.Widget] = {}

    def dump(*_) -> None:
        if not args.layout:
            return
        boxes = {}
        for name, w in widgets.items():
            try:
                if w.winfo_ismapped():
                    boxes[name] = [w.winfo_rootx(), w.winfo_rooty(), w.winfo_width(), w.winfo_height()]
            except tk.TclError:
                continue  # a closed dialog's widget
        # The menu bar sits above the window's client area; its first entry at its left.
        # The menu bar sits above the window's client area, its first entry at its left, and the
        # entry's menu drops right below it (where it shows when posted).
        bar = round(26 * args.font_scale)
        boxes["menu Options"] = [root.winfo_rootx(), root.winfo_rooty() - bar, round(70 * args.font_scale), bar]
        boxes["menu Settings..."] = [root.winfo_rootx(), root.winfo_rooty() + 2, round(100 * args.font_scale), bar - 4]
        tmp = Path(args.layout).with_suffix(".tmp")
        tmp.write_text(json.dumps(boxes))
        os.replace(tmp, args.layout)

    def logged(widget: tk.Widget, name: str) -> tk.Widget:
        widgets[name] = widget
        widget.bind("<Map>", lambda e: root.after(100, dump), add="+")
        if log is not None:
            widget.bind("<Button-1>", lambda e: _append(log, name), add="+")
        return widget

    code, region = tk.StringVar(), tk.StringVar(value="North")
    remember, verbose = tk.BooleanVar(), tk.BooleanVar()
    menubar = tk.Menu(root)
    options = tk.Menu(menubar, tearoff=0)
    menubar.add_cascade(label="Options", menu=options)
    root.config(menu=menubar)

    def settings() -> None:
        _append(log, "menu Settings...") if log else None
        top = tk.Toplevel(root)
        top.title("Settings")
        top.geometry(f"+{300 + args.shift}+{260}")
        frame = tk.Frame(top, padx=20, pady=16)
        frame.pack()
        logged(tk.Checkbutton(frame, text="Verbose", variable=verbose), "check Verbose").grid(row=0, column=0,
                                                                                             columnspan=2, pady=8)
        logged(tk.Button(frame, text="OK", width=8, command=top.destroy), "button OK").grid(row=1, column=0, padx=6)

        def cancel() -> None:
            verbose.set(False)
            top.destroy()

        logged(tk.Button(frame, text="Cancel", width=8, command=cancel), "button Cancel").grid(row=1, column=1, padx=6)

    options.add_command(label="Settings...", command=settings)

    def sign_in() -> None:
        data = {"code": code.get(), "region": region.get(), "remember": remember.get(), "verbose": verbose.get()}
        tmp = Path(args.out).with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, args.out)
        status.config(text="Signed in")

    body = tk.Frame(root, padx=24 + args.shift, pady=20)
    body.pack(anchor="w")
    tk.Label(body, text="Access code").grid(row=0, column=0, sticky="w", pady=8)
    logged(tk.Entry(body, textvariable=code, width=18), "entry Access code").grid(row=0, column=1, sticky="w", padx=10)
    tk.Label(body, text="Region").grid(row=1, column=0, sticky="w", pady=8)
    radios = tk.Frame(body)
    radios.grid(row=1, column=1, sticky="w", padx=6)
    for name in ("North", "South"):
        logged(tk.Radiobutton(radios, text=name, value=name, variable=region), f"radio {name}").pack(side="left", padx=6)
    logged(tk.Checkbutton(body, text="Remember me", variable=remember), "check Remember me").grid(
        row=2, column=1, sticky="w", padx=6, pady=8)
    logged(tk.Button(body, text="Sign in", width=10, command=sign_in), "button Sign in").grid(
        row=3, column=1, sticky="w", padx=10, pady=10)
    status = tk.Label(body, text="")
    status.grid(row=4, column=0, columnspan=2, sticky="w")
    root.update()
    widgets["entry Access code"].focus_force()  # no window manager in Xvfb: take the keyboard ourselves
    root.mainloop()


def _append(log: Path, line: str) -> None:
    with open(log, "a", encoding="utf-8") as f:
        f.write(line + "\n")


if __name__ == "__main__":
    main()
