"""An app that hangs, for fault tests: its window stays on screen but stops answering.

    python -m sandbox.apps.hang [--after S | --on-click] [--title T] [--ignore-term]

Shows a window titled --title ("Hang") with a big "Freeze" button. --after S freezes S seconds
after start; --on-click freezes when the button is clicked (default). Frozen means the Tk main
loop is blocked in a sleep: no repaint, no input handled, the process alive, exactly what a hung
real app looks like to an agent. --ignore-term also ignores SIGTERM, so that only SIGKILL ends it
(tests that teardown escalates).
"""
from __future__ import annotations

import argparse
import signal
import sys
import time

TITLE = "Hang"
FONT = ("DejaVu Sans", -32)
FROZEN_S = 3600.0  # "forever" as far as any test is concerned


def freeze() -> None:
    print("hang: frozen", file=sys.stderr, flush=True)
    time.sleep(FROZEN_S)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m sandbox.apps.hang", description=__doc__.splitlines()[0])
    when = ap.add_mutually_exclusive_group()
    when.add_argument("--after", type=float, default=None, help="freeze S seconds after start")
    when.add_argument("--on-click", action="store_true", help="freeze when the button is clicked (default)")
    ap.add_argument("--title", default=TITLE, help="window title")
    ap.add_argument("--ignore-term", action="store_true", help="ignore SIGTERM (only SIGKILL ends it)")
    args = ap.parse_args(argv)
    if args.ignore_term:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)

    import tkinter as tk
    root = tk.Tk()
    root.title(args.title)
    root.geometry("420x220+100+100")
    tk.Label(root, text=args.title, font=FONT).pack(pady=20)
    tk.Button(root, text="Freeze", font=FONT, command=freeze).pack()
    if args.after is not None:
        root.after(int(args.after * 1000), freeze)
    root.mainloop()


if __name__ == "__main__":
    main()
