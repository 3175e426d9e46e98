"""Replay on real applications: recorded by real input and produced by agent runs, replayed unchanged
and perturbed, every click checked against the widget it should land on.

    python benchmarks/bench_replay_real.py [--apps galculator,zenity] [--conditions unchanged,moved]
                                           [--kinds human,agent] [--json benchmarks/results/replay_real.json]

Apps: galculator, mousepad, zenity --forms, yad --form (GTK 3, Debian packages), featherpad (Qt 5), Chromium
with a local form page,
and two Tk apps of the project (sandbox/apps/access.py: a sign-in dialog with a menu and a Settings
dialog; sandbox/apps/form.py). Each workflow has 5-9 steps.

Trace kinds: `human`, recorded by `vlagent record` while xdotool drives the mouse and keyboard like a
person (pointer moved onto the target, a pause, then the click: the hover is in the recording), and
`agent`, written by `vlagent run --model script:FILE` replying the same actions.

Conditions: unchanged; nudged (the window 1 px right and down); moved (the window moved with xdotool, or the Tk dialog's widgets shifted
150 px); stretched (moved, then 30% wider and taller); screen (1024x768 instead of 1280x800); dark (GTK_THEME=Adwaita:dark, Chromium
--force-dark-mode, Tk dark palette); font (GDK_DPI_SCALE=1.5, --force-device-scale-factor=1.5,
Tk fonts 1.5x). form.py has no theme or font setting: those cells are "n/a".

Checked per click: GTK and Chromium, the accessibility element under the point replay clicked (its
role and name) against the workflow's; Tk, the app's own click log (--log) against the workflow's.
Outcomes: ok (all steps replayed, every click right), stopped (replay stopped with a reason, no wrong
click before), wrong (a click landed on another widget). Find times from the replayed steps.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PAGE = ROOT / "benchmarks" / "replay_real" / "order.html"
CONDITIONS = ("unchanged", "nudged", "moved", "stretched", "screen", "dark", "font")
KINDS = ("human", "agent")
PACE_S = 0.7  # a person's pause between seeing the target and clicking it
VLAGENT = [sys.executable, "-m", "agent.cli"]  # this checkout's vlagent (the benchmark compares commits)


@dataclass
class App:
    name: str
    toolkit: str
    title: str  # window title regex
    steps: list  # ("click", target) | ("type", text) | ("key", name)
    moved_to: tuple[int, int] | None = (300, 160)  # where "moved" puts the window (None: app option)
    conditions: tuple[str, ...] = CONDITIONS

    def argv(self, cond: str) -> list[str]:
        raise NotImplementedError


class Galculator(App):
    def argv(self, cond):
        return _gtk_env(cond) + ["galculator"]


class Mousepad(App):
    def argv(self, cond):
        return _gtk_env(cond) + ["mousepad"]


class Zenity(App):
    def argv(self, cond):
        return _gtk_env(cond) + ["zenity", "--forms", "--title=Shipping", "--text=Shipping details",
                                 "--add-entry=Name", "--add-entry=City", "--add-combo=Speed",
                                 "--combo-values=low|high"]


class Yad(App):
    def argv(self, cond):
        return _gtk_env(cond) + ["yad", "--form", "--title=Contact", "--text=Contact details", "--field=Name",
                                 "--field=Email", "--field=Subscribe:CHK", "--field=Plan:CB", "", "", "FALSE", "Basic!Pro"]


class FeatherPad(App):
    """A Qt 5 text editor: it publishes its tree with QT_LINUX_ACCESSIBILITY_ALWAYS_ON; dark is its own
    dark colour scheme (the text area), large its QT_SCALE_FACTOR."""

    def argv(self, cond):
        conf = "[text]\\ndarkColorScheme=true\\n" if cond == "dark" else ""
        env = {"font": "QT_SCALE_FACTOR=1.5"}.get(cond, "")
        return ["sh", "-c", "mkdir -p {workdir}/xdg-config/featherpad && "
                f"printf '{conf}' > {{workdir}}/xdg-config/featherpad/fp.conf && "
                f"exec env QT_LINUX_ACCESSIBILITY_ALWAYS_ON=1 XDG_CONFIG_HOME={{workdir}}/xdg-config {env} featherpad"]


class Chromium(App):
    def argv(self, cond):
        flags = {"dark": ["--force-dark-mode", "--enable-features=WebContentsForceDark"],
                 "font": ["--force-device-scale-factor=1.5"]}.get(cond, [])
        return ["chromium", "--no-sandbox", "--user-data-dir={workdir}/chrome", f"--app=file://{PAGE}",
                "--force-renderer-accessibility", "--window-size=760,560", "--window-position=60,40",
                "--no-first-run", "--disable-gpu", "--disable-features=Translate", *flags]


class TkAccess(App):
    def argv(self, cond):
        extra = {"moved": ["--shift", "150"], "dark": ["--dark"], "font": ["--font-scale", "1.5"]}.get(cond, [])
        return ["{python}", "-m", "sandbox.apps.access", "--out", "{workdir}/access.json", "--log",
                "{workdir}/clicks.log", "--layout", "{workdir}/layout.json", *extra]


class TkForm(App):
    def argv(self, cond):
        extra = ["--layout-seed", "3"] if cond == "moved" else []
        return ["{python}", "-m", "sandbox.apps.form", "--out", "{workdir}/form.json", "--dump-layout",
                "{workdir}/layout.json", *extra]


APPS = {a.name: a for a in [
    Galculator("galculator", "GTK", "^galculator$", [
        ("click", ("toggle button", "7")), ("click", ("toggle button", "*")), ("click", ("toggle button", "6")),
        ("click", ("toggle button", "=")), ("click", ("menu", "Edit")), ("click", ("menu item", "Copy Display Value")),
    ]),
    Mousepad("mousepad", "GTK", "Mousepad$", [
        ("click", ("text", "")), ("type", "hello replay"), ("click", ("menu", "Document")),
        ("click", ("menu item", "Word Wrap")), ("click", ("menu", "Help")), ("click", ("menu item", "About")),
        ("click", ("push button", "Close")),
    ], moved_to=(260, 140)),
    Zenity("zenity", "GTK", "^Shipping$", [
        ("click", ("text", "Name")), ("type", "Ada"), ("click", ("text", "City")), ("type", "Paris"),
        ("click", ("combo box", "Speed")), ("click", ("menu item", "high")), ("click", ("push button", "OK")),
    ], moved_to=(120, 90)),
    Yad("yad", "GTK", "^Contact$", [
        ("click", ("text", "Name")), ("type", "Ada"), ("click", ("text", "Email")), ("type", "ada@example.com"),
        ("click", ("check box", "Subscribe")), ("click", ("push button", "OK")),
    ], moved_to=(120, 90)),
    FeatherPad("featherpad", "Qt", "Untitled$", [
        ("type", "hello qt"), ("click", ("menu item", "Options")), ("key", "Escape"),
    ], moved_to=(260, 140)),
    Chromium("chromium", "Chromium", "^Order", [
        ("click", ("entry", "Name")), ("type", "Ada"), ("click", ("radio button", "Express")),
        ("click", ("check box", "Gift wrap")), ("click", ("push button", "Place order")),
    ], moved_to=(400, 200)),
    TkAccess("tk-access", "Tk", "^Access$", [
        ("click", "entry Access code"), ("type", "4711"), ("click", "radio South"), ("click", "check Remember me"),
        ("click", "menu Options"), ("click", "menu Settings..."), ("click", "check Verbose"), ("click", "button OK"),
        ("click", "button Sign in"),
    ], moved_to=None),
    TkForm("tk-form", "Tk", "^Registration$", [
        ("click", "name"), ("type", "Ada Lovelace"), ("click", "email"), ("type", "ada@example.com"),
        ("click", "plan_pro"), ("click", "newsletter"), ("click", "submit"),
    ], moved_to=None, conditions=("unchanged", "nudged", "moved", "stretched", "screen")),
]}


def _gtk_env(cond: str) -> list[str]:
    env = {"dark": ["GTK_THEME=Adwaita:dark"], "font": ["GDK_DPI_SCALE=1.5"]}.get(cond, [])
    # Its own settings and session per run: nothing of an earlier run (mousepad offers to restore a
    # killed session) changes what the app shows.
    home = [f"XDG_{d}_HOME={{workdir}}/xdg-{d.lower()}" for d in ("CONFIG", "DATA", "CACHE", "STATE")]
    return ["env", "NO_AT_BRIDGE=0", *home, *env]


def task_for(app: App, cond: str) -> dict:
    setup = [{"launch": app.argv(cond), "wait_for_window": app.title, "timeout_s": 60}, {"sleep": 1.5}]
    if cond in ("moved", "stretched") and app.moved_to:
        setup.append({"run": ["xdotool", "search", "--onlyvisible", "--name", app.title, "windowmove",
                              str(app.moved_to[0]), str(app.moved_to[1])]})
        setup.append({"sleep": 0.8})
    if cond == "nudged":  # one pixel right and down: what was recorded is a pixel off, not elsewhere
        setup.append({"run": ["sh", "-c", f"w=$(xdotool search --onlyvisible --name '{app.title}' | head -1); "
                              "eval $(xdotool getwindowgeometry --shell $w); xdotool windowmove $w $((X + 1)) $((Y + 1))"]})
        setup.append({"sleep": 0.8})
    if cond == "stretched":  # and 30% larger: widgets spread, text areas grow
        setup.append({"run": ["sh", "-c", f"w=$(xdotool search --onlyvisible --name '{app.title}' | head -1); "
                              "eval $(xdotool getwindowgeometry --shell $w); "
                              "xdotool windowsize $w $((WIDTH * 13 / 10)) $((HEIGHT * 13 / 10))"]})
        setup.append({"sleep": 0.8})
    w, h = (1024, 768) if cond == "screen" else (1280, 800)
    return {"name": f"{app.name}-{cond}", "goal": f"The {app.name} workflow.", "screen": {"width": w, "height": h},
            "setup": setup, "max_steps": 30, "timeout_s": 240,
            "allow": {"actions": ["left_click", "type", "key", "terminate"], "keys": ["enter", "tab", "escape"],
                      "max_text_len": 100}}


# ------------------------------------------------------------------------------ where targets are

def target_point(app: App, target, display: str, workdir: Path) -> tuple[int, int]:
    """Where a person would click the target now: the accessibility tree (GTK, Chromium) or the Tk
    app's own layout file."""
    if isinstance(target, str):  # Tk: the app's layout (a dialog's widgets appear in it once it is drawn)
        key = target
        for _ in range(30):
            layout = json.loads((workdir / "layout.json").read_text())
            if key in layout:
                break
            time.sleep(0.1)
        x, y, w, h = layout[key]
        if key.startswith(("radio", "check")) and app.name == "tk-access":
            return x + 10, y + h // 2  # the indicator, not the label
        return x + w // 2, y + h // 2
    from sandbox.atspi import Tree, _labels, _window_of

    role, name = target
    with Tree(display) as tree:
        for _ in range(20):
            nodes = tree.nodes()
            hits = [n for n in nodes if n.role == role and n.box[2] > 0 and n.box[3] > 0 and n.depth >= 3
                    and (n.name == name or (not n.name and any(l["text"] == name and l["side"] == "left"
                                                            for l in _labels(nodes, n, _window_of(nodes, n)))))]
            if hits:
                x, y, w, h = hits[-1].box
                if role == "text" and not name:  # a document: somewhere in its upper part
                    return x + w // 3, y + min(h // 4, 80)
                return x + w // 2, y + h // 2
            time.sleep(0.3)
    raise RuntimeError(f"{app.name}: {role} {name!r} not in the accessibility tree")


# ------------------------------------------------------------------------------ making traces

def record_human(app: App, out: Path, taskfile: Path) -> Path:
    trace = out / f"{app.name}-human"
    proc = subprocess.Popen([*VLAGENT, "record", str(trace), "--task", str(taskfile), "--max-seconds", "150",
                             "--keep-going"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT, preexec_fn=_ctrl_c_default)
    display = None
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        m = re.search(r"recording on display (:\d+)", line or "")
        if m:
            display = m.group(1)
            os.environ["XAUTHORITY"] = re.search(r"XAUTHORITY=(\S*?)\)", line).group(1)  # the sandbox's cookie
            break
        if not line:
            break
    if display is None:
        proc.kill()
        raise RuntimeError(f"{app.name}: vlagent record did not start: {proc.communicate()}")
    workdir = trace / "workdir"
    # The recording's Xvfb takes clients with its cookie only: the recorder's own XAUTHORITY, for the
    # "person" (xdotool) and the tree reader that finds where the person clicks.
    auth, saved_auth = _server_auth(proc.pid), os.environ.get("XAUTHORITY")
    if auth:
        os.environ["XAUTHORITY"] = auth
    env = {**os.environ, "DISPLAY": display}
    time.sleep(1.0)
    for kind, what in app.steps:
        if kind == "click":
            x, y = target_point(app, what, display, workdir)
            subprocess.run(["xdotool", "mousemove", str(x), str(y)], env=env, check=True)
            time.sleep(PACE_S)  # the hover shows, the recorder sees the screen and the tree
            subprocess.run(["xdotool", "mousedown", "1"], env=env, check=True)
            time.sleep(0.08)  # a person's click is held a little (a GTK combo box needs it)
            subprocess.run(["xdotool", "mouseup", "1"], env=env, check=True)
        elif kind == "type":
            subprocess.run(["xdotool", "type", "--delay", "40", what], env=env, check=True)
        else:
            subprocess.run(["xdotool", "key", what], env=env, check=True)
        time.sleep(PACE_S + 0.5)
    # Stop as a person would: once the recorder printed the last step (it may lag behind the input
    # while it reads targets on a busy machine), then Ctrl-C.
    steps = trace / "steps.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if steps.is_file() and len(steps.read_text().splitlines()) >= len(app.steps):
            break
        time.sleep(0.5)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    if auth:  # (the cookie went with the recording's display)
        os.environ.pop("XAUTHORITY", None)
        if saved_auth:
            os.environ["XAUTHORITY"] = saved_auth
    return trace


def _ctrl_c_default() -> None:
    """The recorder stops on Ctrl-C: started from a background job, it would inherit SIGINT ignored."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _server_auth(pid: int) -> str | None:
    """The cookie file the Xvfb that process `pid` started was given (-auth): its one entry admits
    any client of that display."""
    children: dict[int, list[int]] = {}
    argv: dict[int, list[str]] = {}
    for d in Path("/proc").glob("[0-9]*"):
        try:
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            argv[int(d.name)] = (d / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(d.name))
    todo = [pid]
    while todo:
        p = todo.pop()
        args = argv.get(p, [])
        if args and args[0].endswith("Xvfb") and "-auth" in args:
            return args[args.index("-auth") + 1]
        todo += children.get(p, [])
    return None


def agent_trace(app: App, human: Path, out: Path, taskfile: Path) -> Path:
    """The same actions as the human recording, replied by a script to `vlagent run`."""
    from actions.schema import to_json
    from agent.trace import load_steps

    replies = []
    for s in load_steps(human):
        if s.action is not None:
            args = to_json(s.action)
            replies.append('<tool_call>{"name": "computer_use", "arguments": %s}</tool_call>' % json.dumps(args))
    replies.append('<tool_call>{"name": "computer_use", "arguments": {"action": "terminate", "status": "success"}}</tool_call>')
    script = out / f"{app.name}-agent.yaml"
    script.write_text(yaml.safe_dump(replies, allow_unicode=True))
    trace = out / f"{app.name}-agent"
    subprocess.run([*VLAGENT, "run", str(taskfile), "--model", f"script:{script}", "--trace", str(trace)],
                   capture_output=True, text=True, cwd=ROOT, timeout=300)
    return trace


# ------------------------------------------------------------------------------ replaying and checking

@dataclass
class Case:
    app: str
    condition: str
    kind: str
    outcome: str = ""
    reason: str = ""
    find_ms: list = field(default_factory=list)
    methods: list = field(default_factory=list)


def replay_case(app: App, trace: Path, cond: str, kind: str, out: Path) -> Case:
    from agent.replay.player import replay
    from agent.task import Task
    from agent.trace import load_steps

    case = Case(app.name, cond, kind)
    taskfile = out / f"{app.name}-{cond}.yaml"
    taskfile.write_text(yaml.safe_dump(task_for(app, cond)))
    from agent.task import load_task

    task = load_task(taskfile)
    run = out / f"replay-{app.name}-{cond}-{kind}"
    result = replay(trace, task=task, trace_out=run)
    steps = load_steps(run)
    expected = [what for k, what in app.steps if k == "click"]
    clicks = [s for s in steps if s.kind == "left_click"]
    wrong = None
    for i, s in enumerate(clicks):
        found = ((s.target or {}).get("found") or {}).get("coordinate") or {}
        if "find_ms" in s.timings:
            case.find_ms.append(s.timings["find_ms"])
        if found.get("method"):
            case.methods.append(found["method"])
        if s.pixel is None or i >= len(expected):
            continue
        if app.toolkit in ("GTK", "Chromium", "Qt"):
            role, name = expected[i]
            element = (found.get("detail") or {}).get("element", "")
            # "combo box 'Speed'" is right as "combo box 'Speed'" or, unnamed, "combo box '' by 'Speed'".
            # An unnamed field is described by its nearest label, which may be another one (yad's Name
            # field "by 'Contact details'", the heading above it): right when it is the recorded element's
            # description and the recorded element has the expected label on its left.
            rec = (s.target or {}).get("a11y") or {}
            labels = rec.get("labels") or []
            as_recorded = bool(labels) and rec.get("role") == role and element == f"{role} '' by {labels[0]['text']!r}" \
                and any(l["text"] == name and l.get("side") == "left" for l in labels)
            if not (element.startswith(f"{role} {name!r}") or element == f"{role} ''" and not name
                    or element.startswith(f"{role} '' by {name!r}") or as_recorded):
                wrong = wrong or f"click {i + 1} landed on {element or 'no element'}, not {role} {name!r}"
    if app.name == "tk-access":
        log = run / "workdir" / "clicks.log"
        got = log.read_text().split("\n")[:-1] if log.is_file() else []
        want = [w for w in expected if w != "menu Options"][:len(got)]
        if got != want:
            wrong = f"clicks logged {got}, expected {want}"
    if app.name == "tk-form":
        layout = json.loads((run / "workdir" / "layout.json").read_text()) if (run / "workdir" / "layout.json").is_file() else {}
        for i, s in enumerate(clicks):
            if s.pixel is None or i >= len(expected) or expected[i] not in layout:
                continue
            x, y, w, h = layout[expected[i]]
            if not (x - 2 <= s.pixel[0] <= x + w + 2 and y - 2 <= s.pixel[1] <= y + h + 2):
                wrong = wrong or f"click {i + 1} at {s.pixel} is outside {expected[i]} {layout[expected[i]]}"
    failed_step = next((s for s in steps if s.error and not s.error.startswith("warning")), None)
    if wrong:
        case.outcome, case.reason = "wrong", wrong
    elif failed_step is not None or len(clicks) < len(expected):
        case.outcome, case.reason = "stopped", (failed_step.error if failed_step else result.reason)
    else:
        case.outcome = "ok"
    return case


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--apps", default=",".join(APPS))
    ap.add_argument("--conditions", default=",".join(CONDITIONS))
    ap.add_argument("--kinds", default=",".join(KINDS))
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "replay_real.json"))
    ap.add_argument("--keep", default=None, help="folder for the traces (default: a temporary one)")
    ap.add_argument("--merge", action="store_true", help="keep the other apps' cases already in --json")
    args = ap.parse_args()
    out = Path(args.keep or tempfile.mkdtemp(prefix="bench-replay-real-")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    cases: list[Case] = []
    for name in args.apps.split(","):
        app = APPS[name]
        taskfile = out / f"{app.name}-unchanged.yaml"
        taskfile.write_text(yaml.safe_dump(task_for(app, "unchanged")))
        try:
            traces = {"human": record_human(app, out, taskfile)}
            if "agent" in args.kinds:
                traces["agent"] = agent_trace(app, traces["human"], out, taskfile)
        except Exception as e:  # the app could not be driven: its cases say why
            print(f"{app.name}: recording failed: {e}", flush=True)
            cases += [Case(app.name, c, k, "stopped", f"recording failed: {e}")
                      for c in args.conditions.split(",") for k in args.kinds.split(",")]
            continue
        for cond in args.conditions.split(","):
            for kind in args.kinds.split(","):
                if cond not in app.conditions:
                    cases.append(Case(app.name, cond, kind, "n/a"))
                    continue
                try:
                    case = replay_case(app, traces[kind], cond, kind, out)
                except Exception as e:  # a broken case is a result, not the end of the benchmark
                    case = Case(app.name, cond, kind, "stopped", f"{type(e).__name__}: {e}")
                cases.append(case)
                print(f"{case.app:11} {case.condition:9} {case.kind:5} {case.outcome:7} "
                      f"{statistics.median(case.find_ms) if case.find_ms else 0:6.0f} ms  {case.reason[:150]}",
                      flush=True)
    if args.merge and Path(args.json).is_file():  # a rerun of some apps replaces only their cases
        ran = {(c.app, c.condition, c.kind) for c in cases}
        kept = [Case(**c) for c in json.loads(Path(args.json).read_text())["cases"]
                if (c["app"], c["condition"], c["kind"]) not in ran]
        cases = kept + cases
    report(cases, Path(args.json), out)


def report(cases: list[Case], path: Path, out: Path) -> None:
    real = [c for c in cases if c.outcome != "n/a"]
    finds = sorted(t for c in real for t in c.find_ms)
    unchanged = [c for c in real if c.condition == "unchanged"]
    summary = {
        "cases": len(real), "ok": sum(c.outcome == "ok" for c in real),
        "stopped": sum(c.outcome == "stopped" for c in real), "wrong": sum(c.outcome == "wrong" for c in real),
        "unchanged_ok": f"{sum(c.outcome == 'ok' for c in unchanged)}/{len(unchanged)}",
        "find_ms_median": round(statistics.median(finds), 1) if finds else None,
        "find_ms_p95": round(finds[min(len(finds) - 1, int(0.95 * len(finds)))], 1) if finds else None,
        "machine": f"{os.cpu_count()} CPU cores", "traces": str(out),
    }
    apps = list(dict.fromkeys(c.app for c in cases))
    conds = list(dict.fromkeys(c.condition for c in cases))
    print("\napp          kind   " + " ".join(f"{c:>9}" for c in conds))
    for a in apps:
        for k in KINDS:
            row = [next((c.outcome for c in cases if c.app == a and c.condition == cond and c.kind == k), "")
                   for cond in conds]
            if any(row):
                print(f"{a:12} {k:6} " + " ".join(f"{r:>9}" for r in row))
    print(json.dumps(summary, indent=1))
    for c in real:
        if c.outcome != "ok":
            print(f"  {c.app} {c.condition} {c.kind}: {c.outcome}: {c.reason}")
    path.write_text(json.dumps({"summary": summary, "cases": [c.__dict__ for c in cases]}, indent=1))


if __name__ == "__main__":
    main()
