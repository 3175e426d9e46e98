"""Build vlagent's small grounding set from real apps (`python -m agent.eval.build_set OUT`).

Each app runs alone in a fresh Xvfb with the accessibility bus (sandbox/a11y.py); once its widgets
are in the tree, the screen is captured and every showing, named, interactive element becomes a
sample: the instruction names it ("the 7 button"), the target box is its accessibility box. Names
that occur twice in one screenshot are left out (the instruction would be ambiguous). Apps:
galculator, mousepad, a `zenity --forms` and a `yad --form` dialog (GTK 3), Chromium on the flow
tests' order page and on a settings page (examples/grounding_set/pages). Screenshots are saved as PNG with a reduced palette so the set stays small in the repo.
Each screenshot's whole accessibility tree goes to `trees/<app>.json` (`vlagent eval grounding --marks`
numbers its elements as `vlagent run --marks` would).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:
    from sandbox.atspi import Tree

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "tests" / "scripts" / "flows" / "order.html"
SETTINGS = ROOT / "examples" / "grounding_set" / "pages" / "settings.html"
SCREEN = (1280, 800)
TREE_WAIT_S = 20.0
SETTLE_S = 1.5
PER_APP = 20  # samples kept per screenshot (spread over the roles)
ROLES = {  # accessibility role -> the words an instruction uses
    "push button": "button", "toggle button": "toggle button", "check box": "check box",
    "radio button": "radio button", "text": "text field", "entry": "text field", "password text": "password field",
    "combo box": "drop-down", "menu item": "menu item", "menu": "menu", "link": "link", "page tab": "tab",
    "spin button": "spin box", "list item": "list item",
}
APPS = {
    "galculator": (["galculator"], "desktop"),
    "mousepad": (["mousepad"], "desktop"),
    "zenity": (["zenity", "--forms", "--title=Shipping", "--text=Shipping details", "--add-entry=Name",
                "--add-entry=City", "--add-combo=Speed", "--combo-values=low|high", "--add-password=Code"], "desktop"),
    "chromium": (["chromium", "--no-sandbox", "--user-data-dir={tmp}/chrome", f"--app=file://{PAGE}",
                  "--force-renderer-accessibility", "--window-size=900,640", "--window-position=40,40",
                  "--no-first-run", "--disable-gpu", "--disable-features=Translate"], "web"),
    "chromium-settings": (["chromium", "--no-sandbox", "--user-data-dir={tmp}/chrome", f"--app=file://{SETTINGS}",
                           "--force-renderer-accessibility", "--window-size=1100,700", "--window-position=60,50",
                           "--no-first-run", "--disable-gpu", "--disable-features=Translate"], "web"),
    "yad": (["yad", "--form", "--title=Preferences", "--field=User name", "--field=Port:NUM", "--field=Colour:CLR",
             "--field=Remember me:CHK", "--button=Apply:0", "--button=Quit:1"], "desktop"),
}


def _instruction(name: str, role: str) -> str:
    return f"the {name.strip()} {ROLES[role]}"


@contextlib.contextmanager
def running(app: str) -> Iterator[tuple[str, "Tree"]]:
    """The app alone in a fresh Xvfb with the accessibility bus, once its widgets are in the tree:
    (display, tree). Everything is gone afterwards."""
    import tempfile

    from sandbox.atspi import Tree
    from sandbox.a11y import A11yBus
    from sandbox.display import Xvfb
    from sandbox.procs import kill_group, spawn

    with Xvfb(SCREEN) as server, tempfile.TemporaryDirectory() as tmp:
        bus = A11yBus(server.display)
        # A fresh profile: an app killed in an earlier build must not greet us with a restore dialog.
        env = {**os.environ, "DISPLAY": server.display, **bus.start(),
               **{f"XDG_{d}_HOME": f"{tmp}/{d.lower()}" for d in ("CONFIG", "DATA", "CACHE", "STATE")}}
        proc = spawn([a.replace("{tmp}", tmp) for a in APPS[app][0]], env=env, stdout=open(os.devnull, "wb"),
                     stderr=open(os.devnull, "wb"))
        tree = Tree(server.display)
        try:
            deadline = time.monotonic() + TREE_WAIT_S
            while time.monotonic() < deadline and len(_named(tree.nodes())) < 3:
                time.sleep(0.5)
            time.sleep(SETTLE_S)
            yield server.display, tree
        finally:
            tree.close()
            kill_group(proc)
            bus.stop()


def _named(nodes: list) -> list:
    return [n for n in nodes if n.role in ROLES and n.name.strip() and n.box[2] > 2 and n.box[3] > 2]


def shoot(app: str, out: Path) -> list[dict]:
    from agent.desktop.x11 import X11Desktop

    platform = APPS[app][1]
    with running(app) as (display, tree):
        every = tree.nodes()
        nodes = _named(every)
        image = X11Desktop(display).capture()
    w, h = image.size
    seen: dict[str, int] = {}
    for n in nodes:
        seen[_instruction(n.name, n.role)] = seen.get(_instruction(n.name, n.role), 0) + 1
    picked, by_role = [], {}
    for n in nodes:
        x, y, bw, bh = n.box
        inst = _instruction(n.name, n.role)
        if seen[inst] > 1 or x < 0 or y < 0 or x + bw > w or y + bh > h or len(n.name) > 40:
            continue
        by_role.setdefault(n.role, []).append({"img_filename": f"{app}.png", "instruction": inst,
                                               "bbox": [x, y, x + bw, y + bh], "bbox_format": "xyxy",
                                               "platform": platform, "ui_type": ROLES[n.role], "application": app})
    while len(picked) < PER_APP and any(by_role.values()):  # round-robin over roles
        for role in list(by_role):
            if by_role[role] and len(picked) < PER_APP:
                picked.append(by_role[role].pop(0))
    (out / "images").mkdir(parents=True, exist_ok=True)
    image.quantize(colors=128).save(out / "images" / f"{app}.png", optimize=True)
    (out / "trees").mkdir(exist_ok=True)
    (out / "trees" / f"{app}.json").write_text(json.dumps([asdict(n) for n in every], separators=(",", ":")) + "\n",
                                                encoding="utf-8")
    if app.startswith("chromium"):  # its "--no-sandbox" warning bar is not part of any app
        picked = [p for p in picked if p["instruction"] != "the Close button"]
    return picked


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--apps", default=",".join(APPS))
    args = ap.parse_args()
    samples = []
    for app in args.apps.split(","):
        got = shoot(app, args.out)
        print(f"{app}: {len(got)} samples")
        samples += got
    (args.out / "samples.json").write_text(json.dumps(samples, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"{len(samples)} samples in {args.out / 'samples.json'}")


if __name__ == "__main__":
    main()
