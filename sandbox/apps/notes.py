"""A small notes app, a second QA target beside the registration form: a Tk window titled "Notes".

    python -m sandbox.apps.notes --out FILE

A one-line "Title" entry, a multi-line "Body" text box, a "Pinned" checkbox and a Save button
(Ctrl+S saves too). Save with a non-empty title writes
    {"title": str, "body": str, "pinned": bool}
to --out (atomically) and shows a large "Saved"; an empty title shows "Title required" instead.
Widgets sit at fixed pixels (scripted solutions click fixed coordinates on a 1024x768 screen).
"""
from __future__ import annotations

import argparse
import json
import os
import tkinter as tk
from pathlib import Path

TITLE = "Notes"
FONT_PX = 20  # large enough for OCR and for a small model
FONT = ("DejaVu Sans", -FONT_PX)
HEADING_FONT = ("DejaVu Sans", -28, "bold")
STATUS_FONT = ("DejaVu Sans", -40, "bold")
FOCUS_COLOR = "#4a90d9"  # tesseract skips text inside a black focus ring
WINDOW = "600x520+80+60"  # fixed geometry: WxH+X+Y in screen pixels


class Notes:
    def __init__(self, root: tk.Tk, out: Path):
        self.root, self.out = root, out
        root.title(TITLE)
        root.geometry(WINDOW)
        root.resizable(False, False)
        root.option_add("*Font", FONT)
        self.title = tk.StringVar()
        self.pinned = tk.BooleanVar(value=False)
        tk.Label(root, text=TITLE, font=HEADING_FONT).place(x=30, y=20)
        tk.Label(root, text="Title").place(x=30, y=90)
        tk.Entry(root, textvariable=self.title, highlightthickness=2,
                 highlightcolor=FOCUS_COLOR).place(x=120, y=86, width=440, height=36)
        tk.Label(root, text="Body").place(x=30, y=150)
        self.body = tk.Text(root, highlightthickness=2, highlightcolor=FOCUS_COLOR, wrap="word")
        self.body.place(x=120, y=146, width=440, height=160)
        tk.Checkbutton(root, text="Pinned", variable=self.pinned).place(x=116, y=322)
        tk.Button(root, text="Save", command=self.save, padx=16).place(x=120, y=372)
        self.status = tk.Label(root, text="", font=STATUS_FONT)
        self.status.place(x=120, y=430)
        root.bind("<Control-s>", lambda _e: self.save())

    def save(self) -> None:
        title = self.title.get().strip()
        if not title:
            self.status.configure(text="Title required", fg="#c0392b")
            return
        data = {"title": title, "body": self.body.get("1.0", "end-1c"), "pinned": bool(self.pinned.get())}
        tmp = self.out.with_suffix(self.out.suffix + ".tmp")
        tmp.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
        os.replace(tmp, self.out)  # atomic: a check never reads half a file
        self.status.configure(text="Saved", fg="#1e8449")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m sandbox.apps.notes", description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=Path, help="where Save writes the note as JSON")
    args = ap.parse_args(argv)
    root = tk.Tk()
    Notes(root, args.out)
    root.mainloop()


if __name__ == "__main__":
    main()
