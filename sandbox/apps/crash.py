"""An app that crashes, for fault tests.

    python -m sandbox.apps.crash [--code N] [--after S | --on-click] [--title T]

Default: prints "crash: simulated crash at start" to stderr and exits with --code (3) before
showing anything. --after S shows a window titled --title ("Crash") and crashes S seconds later;
--on-click shows the window with a big "Crash" button and crashes when it is clicked.
"""
from __future__ import annotations

import argparse
import os
import sys

DEFAULT_CODE = 3


def _crash(code: int, when: str) -> None:
    print(f"crash: simulated crash {when}", file=sys.stderr, flush=True)
    # os._exit, not sys.exit: a crash skips Tk's clean shutdown, as a real one would.
    os._exit(code)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m sandbox.apps.crash", description=__doc__.splitlines()[0])
    ap.add_argument("--code", type=int, default=DEFAULT_CODE, help="exit code (default 3)")
    when = ap.add_mutually_exclusive_group()
    when.add_argument("--after", type=float, default=None, help="show a window, crash after S seconds")
    when.add_argument("--on-click", action="store_true", help="show a window, crash when its button is clicked")
    ap.add_argument("--title", default="Crash", help="window title")
    args = ap.parse_args(argv)
    if args.after is None and not args.on_click:
        _crash(args.code, "at start")

    import tkinter as tk
    root = tk.Tk()
    root.title(args.title)
    root.geometry("400x200+100+100")
    if args.on_click:
        tk.Button(root, text="Crash", font=("DejaVu Sans", -32),
                  command=lambda: _crash(args.code, "on click")).pack(expand=True, fill="both")
    else:
        tk.Label(root, text=f"Crashing in {args.after:g} s", font=("DejaVu Sans", -24)).pack(expand=True)
        root.after(int(args.after * 1000), lambda: _crash(args.code, f"after {args.after:g} s"))
    root.mainloop()


if __name__ == "__main__":
    main()
