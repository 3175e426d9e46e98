"""`vlagent suite`: run many task files (with a model) and traces (by replay) unattended, each in its
own child process and its own sandbox display, N at a time; then JUnit XML and an HTML report.

Why a process per item: pyautogui binds one X display per process at import, and a crashed or hung
item must never take the suite down. Each child runs in its own process group and carries a
marker in its environment, so every process it left behind (Xvfb, apps) can be found and killed.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import click
import yaml

from agent.trace import load_result

POLL_S = 0.1  # how often the scheduler looks at its children
KILL_GRACE_S = 5.0  # after SIGTERM, how long a child gets to tear down its sandbox before SIGKILL
TASK_GRACE_S = 60.0  # on top of a task's own timeout_s: interpreter start, sandbox, model load
TRACE_TIMEOUT_S = 300.0  # default bound on one replay
MARKER_ENV = "VLAGENT_SUITE_ITEM"  # inherited by every process a child starts
# The vlagent CLI, run by this interpreter (works without the console script on PATH).
VLAGENT = [sys.executable, "-c", "import sys; sys.argv[0] = 'vlagent'; from agent.cli import main; main()"]


@dataclass(frozen=True)
class Item:
    kind: str  # "task" (run with the model) or "trace" (replayed)
    path: Path  # absolute
    rel: str  # path relative to the suite root, with "/" separators: stable across machines

    @property
    def name(self) -> str:
        return self.rel.removesuffix(".yaml").removesuffix(".yml")

    @property
    def slug(self) -> str:
        return self.name.replace("/", "__") or "item"


@dataclass
class Outcome:
    item: Item
    status: str  # one of agent.trace.STATUSES, or "skipped" when the suite stopped first
    reason: str = ""
    trace: Path | None = None
    log: Path | None = None
    duration_s: float = 0.0
    attempts: int = 0
    steps: int = 0
    swept: list[int] = field(default_factory=list)  # pids the child left behind, killed by the suite

    @property
    def passed(self) -> bool:
        return self.status == "success"


# ---------------------------------------------------------------- discovery and sharding

def _is_task_file(path: Path) -> bool:
    if path.suffix not in (".yaml", ".yml"):
        return False
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return False
    return isinstance(data, dict) and "goal" in data


def _is_trace_dir(path: Path) -> bool:
    return (path / "steps.jsonl").is_file()


def suite_root(paths: list[Path]) -> Path:
    dirs = [p.resolve() if p.is_dir() else p.resolve().parent for p in paths]
    return Path(os.path.commonpath(dirs))


def discover(paths: list[str | Path]) -> tuple[Path, list[Item]]:
    """Task files (YAML with a `goal`) and trace folders (with steps.jsonl) under the paths,
    sorted by path. Files inside a trace folder (its task.yaml) are part of the trace."""
    paths = [Path(p) for p in paths]
    for p in paths:
        if not p.exists():
            raise click.UsageError(f"no such file or folder: {p}")
    root = suite_root(paths)
    found: dict[Path, str] = {}

    def visit(p: Path) -> None:
        if p.is_dir():
            if _is_trace_dir(p):
                found[p] = "trace"
                return
            for child in sorted(p.iterdir()):
                if not child.name.startswith("."):
                    visit(child)
        elif _is_task_file(p):
            found[p] = "task"

    for p in paths:
        visit(p.resolve())
    items = [Item(kind, p, p.relative_to(root).as_posix() or p.name) for p, kind in found.items()]
    return root, sorted(items, key=lambda i: i.rel)


def parse_shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise click.BadParameter(f"{text!r} is not I/N, e.g. 1/3") from None
    if not (n >= 1 and 1 <= i <= n):
        raise click.BadParameter(f"{text!r}: need 1 <= I <= N")
    return i, n


def _stable_hash(rel: str) -> int:
    return int.from_bytes(hashlib.sha256(rel.encode("utf-8")).digest()[:8], "big")


def take_shard(items: list[Item], index: int, total: int) -> list[Item]:
    """Shard `index` of `total` (1-based, as Playwright's --shard=I/N). Items are ordered by a
    stable hash of their suite-relative path and dealt round-robin: every item lands in exactly
    one shard, shard sizes differ by at most one, and every machine computes the same split."""
    ordered = sorted(items, key=lambda i: (_stable_hash(i.rel), i.rel))
    mine = {it.rel for k, it in enumerate(ordered) if k % total == index - 1}
    return [it for it in items if it.rel in mine]


# ---------------------------------------------------------------- one child process

@dataclass
class Options:
    model: str | None = None  # for tasks; {dir} and {name} are the task file's folder and stem
    backend: str | None = None
    base_url: str | None = None
    timeout_s: float | None = None  # per item; None: the task's timeout_s + TASK_GRACE_S
    retries: int = 0
    extra_env: dict[str, str] = field(default_factory=dict)


def model_for(item: Item, model: str) -> str:
    return model.replace("{dir}", str(item.path.parent)).replace("{name}", item.path.stem)


def default_command(item: Item, trace_dir: Path, opts: Options) -> list[str]:
    if item.kind == "trace":
        return [*VLAGENT, "replay", str(item.path), "--trace", str(trace_dir)]
    cmd = [*VLAGENT, "run", str(item.path), "--trace", str(trace_dir)]
    if opts.model:
        cmd += ["--model", model_for(item, opts.model)]
    if opts.backend:
        cmd += ["--backend", opts.backend]
    if opts.base_url:
        cmd += ["--base-url", opts.base_url]
    return cmd


def item_timeout(item: Item, opts: Options) -> float:
    if opts.timeout_s is not None:
        return opts.timeout_s
    if item.kind == "trace":
        return TRACE_TIMEOUT_S
    try:
        data = yaml.safe_load(item.path.read_text(encoding="utf-8"))
        return float(data.get("timeout_s", 300)) + TASK_GRACE_S
    except (OSError, yaml.YAMLError, TypeError, ValueError, AttributeError):
        return 300 + TASK_GRACE_S


def _marked_pids(marker: str) -> list[int]:
    """Live processes whose environment carries `marker` (the child and all it started)."""
    needle = f"{MARKER_ENV}={marker}".encode()
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            env = Path(entry.path, "environ").read_bytes()
        except OSError:  # gone, or not ours
            continue
        if needle in env.split(b"\0"):
            pids.append(int(entry.name))
    return pids


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def sweep(marker: str) -> list[int]:
    """SIGKILL whatever a finished child left behind (e.g. an Xvfb in its own session)."""
    pids = [p for p in _marked_pids(marker) if p != os.getpid()]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    return pids


def _unblock_signals() -> None:
    """In the child, before exec: the signal mask is inherited, and a child that blocks SIGTERM
    could not tear its sandbox down when asked."""
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


class Child:
    """One attempt at one item: a process group with a deadline."""

    def __init__(self, item: Item, attempt: int, out: Path, opts: Options,
                 command: Callable[[Item, Path, Options], list[str]]):
        self.item, self.attempt = item, attempt
        suffix = "" if attempt == 1 else f"~{attempt}"
        self.trace = out / "traces" / f"{item.slug}{suffix}"
        self.log = out / "logs" / f"{item.slug}{suffix}.log"
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.marker = uuid.uuid4().hex
        self.timeout_s = item_timeout(item, opts)
        env = {**os.environ, **opts.extra_env, MARKER_ENV: self.marker}
        self.started = time.monotonic()
        self.killed_for: str | None = None  # "timeout" or "aborted" when the suite ended it
        self.term_at: float | None = None  # when the suite sent SIGTERM
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(command(item, self.trace, opts), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=env, start_new_session=True,
                                         preexec_fn=_unblock_signals)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def steps(self) -> int:
        try:
            with open(self.trace / "steps.jsonl", "rb") as f:
                return sum(1 for line in f if line.strip())
        except OSError:
            return 0

    def poll(self) -> bool:
        """True when finished. Past its deadline a child gets SIGTERM, then SIGKILL after a bound;
        this never blocks, so the other children keep being watched meanwhile."""
        if self.proc.poll() is not None:
            return True
        if self.term_at is None:
            if self.elapsed > self.timeout_s:
                self.terminate("timeout")
        elif time.monotonic() - self.term_at > KILL_GRACE_S:
            _signal_group(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            return True
        return False

    def terminate(self, why: str) -> None:
        """SIGTERM the whole group: the child's handlers tear down its sandbox."""
        if self.term_at is None:
            self.killed_for, self.term_at = why, time.monotonic()
            _signal_group(self.proc.pid, signal.SIGTERM)

    def outcome(self) -> Outcome:
        swept = sweep(self.marker)
        _signal_group(self.proc.pid, signal.SIGKILL)  # the group outlives its leader
        code = self.proc.returncode
        result = None
        try:
            result = load_result(self.trace)
        except (OSError, ValueError):
            pass
        if self.killed_for == "timeout":
            status, reason = "timeout", f"no result after {self.timeout_s:g} s; the suite killed it"
        elif self.killed_for == "aborted":
            status, reason = "aborted", "the suite was interrupted"
        elif result is not None:
            status, reason = result.status, result.reason
        else:
            status, reason = "error", f"exited with code {code} without a result: {self._last_line()}"
        _complete_trace(self.trace, status, reason, result)
        return Outcome(self.item, status, reason, self.trace, self.log, round(self.elapsed, 3),
                       self.attempt, self.steps(), swept)

    def _last_line(self) -> str:
        try:
            lines = [ln.strip() for ln in self.log.read_text(errors="replace").splitlines() if ln.strip()]
        except OSError:
            return "no output"
        return lines[-1][:300] if lines else "no output"


def _complete_trace(trace: Path, status: str, reason: str, result) -> None:
    """Leave a complete trace folder whatever happened: steps.jsonl and a result.json that says
    how it ended (the suite's verdict wins when the suite ended the child)."""
    trace.mkdir(parents=True, exist_ok=True)
    (trace / "steps.jsonl").touch()
    if result is not None and result.status == status and result.reason == reason:
        return
    data = result.model_dump() if result is not None else {}
    data.update(status=status, reason=reason)
    data.setdefault("ended", time.time())
    (trace / "result.json").write_text(json.dumps(data, indent=2), encoding="utf-8")


# ---------------------------------------------------------------- the scheduler

class _Stop(Exception):
    """SIGTERM or SIGINT on the suite: stop every child cleanly."""


def _raise_stop(signum, frame):
    raise _Stop()


def run_suite(items: list[Item], out: Path, opts: Options, workers: int = 1, progress=None,
              command: Callable[[Item, Path, Options], list[str]] = default_command) -> tuple[list[Outcome], bool]:
    """Run the items N at a time. Returns the final outcome per item (in item order) and whether
    the suite was interrupted. Never raises for a failing item."""
    from agent.suite_progress import Progress

    progress = progress or Progress(len(items))
    out = Path(out).resolve()  # children may run elsewhere; their trace paths must not depend on cwd
    pending = list(items)
    attempts = {it: 0 for it in items}
    running: list[Child] = []
    final: dict[Item, Outcome] = {}
    handled = (signal.SIGINT, signal.SIGTERM) if threading.current_thread() is threading.main_thread() else ()
    old = {s: signal.signal(s, _raise_stop) for s in handled}
    interrupted = False
    # Signals are held while the scheduler changes its state (spawning, reaping) and let in only
    # while it sleeps, so Ctrl-C never loses track of a child it had just started or finished.
    signal.pthread_sigmask(signal.SIG_BLOCK, handled)
    try:
        with progress:
            while pending or running:
                while pending and len(running) < workers:
                    it = pending.pop(0)
                    attempts[it] += 1
                    child = Child(it, attempts[it], out, opts, command)
                    running.append(child)
                    progress.started(child)
                for child in list(running):
                    if not child.poll():
                        progress.update(child)
                        continue
                    running.remove(child)
                    outcome = child.outcome()
                    retry = not outcome.passed and attempts[child.item] <= opts.retries
                    progress.finished(child, outcome, retrying=retry)
                    final[child.item] = outcome  # the last attempt's, should the suite stop mid-retry
                    if retry:
                        pending.insert(0, child.item)
                signal.pthread_sigmask(signal.SIG_UNBLOCK, handled)
                time.sleep(POLL_S)
                signal.pthread_sigmask(signal.SIG_BLOCK, handled)
    except (_Stop, KeyboardInterrupt):
        interrupted = True
        signal.pthread_sigmask(signal.SIG_BLOCK, handled)  # a second Ctrl-C must not cut the clean-up short
        for child in running:
            child.terminate("aborted")
        while running:
            for child in [c for c in running if c.poll()]:
                running.remove(child)
                final[child.item] = child.outcome()
                progress.finished(child, final[child.item])
            time.sleep(POLL_S)
    finally:
        for s, h in old.items():
            signal.signal(s, signal.SIG_IGN)  # drop what came in during the clean-up, then restore
        signal.pthread_sigmask(signal.SIG_UNBLOCK, handled)
        for s, h in old.items():
            signal.signal(s, h)
    for it in items:
        final.setdefault(it, Outcome(it, "skipped", "the suite was interrupted before it ran"))
    return [final[it] for it in items], interrupted


def write_summary(outcomes: list[Outcome], root: Path, out: Path) -> Path:
    rows = [{"name": o.item.name, "kind": o.item.kind, "path": o.item.rel, "status": o.status,
             "reason": o.reason, "duration_s": o.duration_s, "attempts": o.attempts, "steps": o.steps,
             "trace": str(o.trace) if o.trace else None} for o in outcomes]
    path = out / "suite.json"
    path.write_text(json.dumps({"root": str(root), "items": rows}, indent=2), encoding="utf-8")
    return path


# ---------------------------------------------------------------- the command

@click.command(help="Run task files (with --model) and traces (by replay) under PATH... in parallel sandboxes.")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--workers", "-j", default=1, show_default=True, type=click.IntRange(1, 64), help="Items run at once.")
@click.option("--model", help="Model for task files; {dir} and {name} stand for the task file's folder and stem, "
              "e.g. 'script:{dir}/{name}.replies.yaml'.")
@click.option("--backend", help="Model backend for task files, e.g. openai.")
@click.option("--base-url", help="Server URL for --backend openai.")
@click.option("--retries", default=0, show_default=True, type=click.IntRange(0, 10), help="Re-runs of a failed item.")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=1), help="Seconds per item "
              f"[default: the task's timeout_s + {TASK_GRACE_S:g}; {TRACE_TIMEOUT_S:g} for a trace].")
@click.option("--shard", help="Run shard I of N (1-based), e.g. 2/4.")
@click.option("--out", type=click.Path(path_type=Path), help="Folder for traces and logs [default: runs/suite-<time>].")
@click.option("--junit", type=click.Path(path_type=Path), help="Write JUnit XML here.")
@click.option("--report", "report_dir", type=click.Path(path_type=Path), help="Write the HTML report to this folder.")
def suite(paths, workers, model, backend, base_url, retries, timeout_s, shard, out, junit, report_dir):
    root, items = discover(list(paths))
    if shard:
        items = take_shard(items, *parse_shard(shard))
    if not items and not shard:
        raise click.UsageError(f"no task files (YAML with a goal) or traces (folders with steps.jsonl) under {', '.join(map(str, paths))}")
    out = (out or Path("runs") / time.strftime("suite-%Y%m%d-%H%M%S")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    opts = Options(model=model, backend=backend, base_url=base_url, timeout_s=timeout_s, retries=retries)
    outcomes, interrupted = run_suite(items, out, opts, workers=workers)
    write_summary(outcomes, root, out)
    if junit:
        from agent.junit import write_junit

        write_junit(outcomes, junit, name=f"vlagent suite{f' shard {shard}' if shard else ''}")
    if report_dir:
        from agent.report import build_report

        build_report([o.trace for o in outcomes if o.trace], report_dir,
                     names={o.trace: o.item.name for o in outcomes if o.trace}, title="vlagent suite",
                     logs={o.trace: o.log for o in outcomes if o.trace})
    passed = sum(o.passed for o in outcomes)
    click.echo(("interrupted: " if interrupted else "") + f"{passed}/{len(outcomes)} passed; traces in {out}"
               + (f"; report {report_dir}/index.html" if report_dir else ""))
    if interrupted:
        sys.exit(130)
    sys.exit(0 if passed == len(outcomes) else 1)

