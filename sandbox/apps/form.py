"""The registration form: a Tk window titled "Registration".

    python -m sandbox.apps.form --out FILE [--layout-seed N] [--restyle] [--dump-layout FILE]

Widgets: Name (entry), Email (entry), Plan (radio buttons Basic/Pro/Team, Basic preselected),
"Subscribe to newsletter" (checkbox), Submit (button; Enter anywhere submits too).
Submit with a non-empty name and a valid email writes
    {"name": str, "email": str, "plan": "Basic"|"Pro"|"Team", "newsletter": bool}
to --out (atomically) and shows a large "Saved"; otherwise it shows a red error line and writes
nothing. Without --layout-seed the window and every widget sit at fixed pixels (scripted
solutions click fixed coordinates); with a seed, window position, row order and spacing change
deterministically per seed, always inside the screen. --restyle is "the next version" of the app:
two widgets look and read otherwise (the Team plan reads "Team (new)" in bold orange, Submit is a
white-on-blue "Register" button); they do the same, at the same place. --dump-layout writes each
widget's box in screen pixels as JSON once the window is shown (for tests and for writing scripts).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import tkinter as tk
from dataclasses import dataclass
from pathlib import Path

TITLE = "Registration"
FONT_PX = 20  # Tk's default font is ~9 pt: too small for OCR and for a 2B model
FONT = ("DejaVu Sans", -FONT_PX)  # negative size = pixels, so the layout ignores the DPI
HEADING_FONT = ("DejaVu Sans", -28, "bold")
STATUS_FONT = ("DejaVu Sans", -40, "bold")
PLANS = ("Basic", "Pro", "Team")
ROWS = ("name", "email", "plan", "newsletter")
FOCUS_COLOR = "#4a90d9"  # a black focus ring makes tesseract skip the entry's text; blue does not
EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
STATUS_H = 60  # px below the Submit row reserved for the "Saved" / error line
# The largest a seeded window gets (fits 1024x768): 2*70 margin + 170 label + 3*130 radios wide,
# 120 top + 5*80 rows + STATUS_H high.
MAX_SEED_W, MAX_SEED_H = 700, 600


@dataclass
class Layout:
    x: int  # window position on the screen
    y: int
    margin: int  # left margin inside the window
    top: int  # y of the first row
    spacing: int  # px between rows
    label_w: int  # width of the label column
    entry_w: int
    rows: tuple[str, ...] = ROWS
    radio_gap: int = 110  # px between radio buttons

    @property
    def width(self) -> int:
        return self.margin * 2 + self.label_w + max(self.entry_w, self.radio_gap * len(PLANS))

    @property
    def height(self) -> int:
        return self.top + self.spacing * (len(self.rows) + 1) + STATUS_H


FIXED = Layout(x=100, y=60, margin=40, top=90, spacing=64, label_w=130, entry_w=360)


def seeded_layout(seed: int, screen: tuple[int, int]) -> Layout:
    """A layout that differs per seed, deterministic, fully inside `screen` (w, h)."""
    rng = random.Random(seed)
    rows = list(ROWS)
    rng.shuffle(rows)
    lay = Layout(
        x=0, y=0, margin=rng.randint(20, 70), top=rng.randint(75, 120), spacing=rng.randint(52, 80),
        label_w=rng.randint(110, 170), entry_w=rng.randint(280, 360), rows=tuple(rows),
        radio_gap=rng.randint(100, 130),
    )
    sw, sh = screen
    lay.x = rng.randint(0, max(0, sw - lay.width))
    lay.y = rng.randint(0, max(0, sh - lay.height))
    return lay


class Form:
    def __init__(self, root: tk.Tk, out: Path, layout: Layout, restyle: bool = False):
        self.root, self.out, self.layout, self.restyle = root, out, layout, restyle
        root.title(TITLE)
        root.geometry(f"{layout.width}x{layout.height}+{layout.x}+{layout.y}")
        root.resizable(False, False)
        root.option_add("*Font", FONT)
        self.name = tk.StringVar()
        self.email = tk.StringVar()
        self.plan = tk.StringVar(value=PLANS[0])
        self.newsletter = tk.BooleanVar(value=False)
        self.widgets: dict[str, tk.Widget] = {}
        self._build()
        root.bind("<Return>", lambda _e: self.submit())

    def _build(self) -> None:
        lay, root = self.layout, self.root
        tk.Label(root, text=TITLE, font=HEADING_FONT).place(x=lay.margin, y=20)
        field_x = lay.margin + lay.label_w
        for i, row in enumerate(lay.rows):
            y = lay.top + i * lay.spacing
            if row in ("name", "email"):
                label = tk.Label(root, text=row.capitalize())
                label.place(x=lay.margin, y=y)
                entry = tk.Entry(root, textvariable=getattr(self, row), width=1,
                                 highlightthickness=2, highlightcolor=FOCUS_COLOR)
                entry.place(x=field_x, y=y - 4, width=lay.entry_w, height=FONT_PX + 16)
                self.widgets[f"{row}_label"], self.widgets[row] = label, entry
            elif row == "plan":
                label = tk.Label(root, text="Plan")
                label.place(x=lay.margin, y=y)
                self.widgets["plan_label"] = label
                for j, plan in enumerate(PLANS):
                    radio = tk.Radiobutton(root, text=plan, value=plan, variable=self.plan)
                    if self.restyle and plan == "Team":
                        radio.config(text="Team (new)", fg="#c05000", font=(*FONT, "bold"))
                    radio.place(x=field_x + j * lay.radio_gap, y=y - 4)
                    self.widgets[f"plan_{plan.lower()}"] = radio
            else:
                check = tk.Checkbutton(root, text="Subscribe to newsletter", variable=self.newsletter)
                check.place(x=lay.margin, y=y - 4)
                self.widgets["newsletter"] = check
        y = lay.top + len(lay.rows) * lay.spacing
        button = tk.Button(root, text="Submit", command=self.submit, padx=16)
        if self.restyle:
            button.config(text="Register", bg="#2a62c9", fg="white", activebackground="#1d4a9c",
                          activeforeground="white")
        button.place(x=lay.margin, y=y - 6)
        self.widgets["submit"] = button
        self.status = tk.Label(root, text="", font=STATUS_FONT)
        self.status.place(x=lay.margin, y=y + 44)
        self.widgets["status"] = self.status

    def submit(self) -> None:
        name, email = self.name.get().strip(), self.email.get().strip()
        if not name:
            return self._show("Please enter your name", "red3", error=True)
        if not EMAIL_RE.match(email):
            return self._show("Please enter a valid email", "red3", error=True)
        data = {"name": name, "email": email, "plan": self.plan.get(), "newsletter": self.newsletter.get()}
        tmp = self.out.with_name(self.out.name + ".tmp")
        tmp.write_text(json.dumps(data), encoding="utf-8")
        os.replace(tmp, self.out)  # a check never sees half a file
        self._show("Saved", "green4")

    def _show(self, text: str, color: str, error: bool = False) -> None:
        # Errors are smaller than "Saved" so they fit the window's width.
        self.status.config(text=text, fg=color, font=(FONT if error else STATUS_FONT))

    def boxes(self) -> dict[str, list[int]]:
        """Every widget's [x, y, w, h] in screen pixels (the window included)."""
        def box(w: tk.Misc) -> list[int]:
            return [w.winfo_rootx(), w.winfo_rooty(), w.winfo_width(), w.winfo_height()]
        return {"window": box(self.root), **{k: box(w) for k, w in self.widgets.items()}}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m sandbox.apps.form", description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=Path, help="where Submit writes the JSON")
    ap.add_argument("--layout-seed", type=int, default=None, help="move window and widgets (deterministic)")
    ap.add_argument("--restyle", action="store_true", help="relabel and restyle two widgets (Team, Submit)")
    ap.add_argument("--dump-layout", type=Path, default=None, help="write widget boxes (JSON) once shown")
    args = ap.parse_args(argv)
    root = tk.Tk()
    screen = (root.winfo_screenwidth(), root.winfo_screenheight())
    layout = FIXED if args.layout_seed is None else seeded_layout(args.layout_seed, screen)
    form = Form(root, args.out, layout, args.restyle)
    root.update()
    form.widgets["name"].focus_force()  # no window manager in Xvfb: take the keyboard ourselves
    if args.dump_layout:
        root.update()
        args.dump_layout.write_text(json.dumps(form.boxes()), encoding="utf-8")
    root.mainloop()


if __name__ == "__main__":
    main()
