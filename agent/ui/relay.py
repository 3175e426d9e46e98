"""Runs in other processes, watched from a console: their events come over a local socket, their
controls go back over it.

A console listens on a Unix socket in a private folder (mode 0700: only this user can connect) and
names it in VLAGENT_CONSOLE for what it starts. A `vlagent run` or `vlagent replay` that finds it
there (agent/ui/watch.py's SessionHook; a suite's items inherit it) relays its session: its events,
redacted with the run's own secrets (screen frames excepted: the console grabs the display itself,
with the display's cookie file), and the display once it exists; it obeys pause, one step and stop
from the console. A suite relays its progress (SuiteRelay). One JSON object a line, each way.

    console side: RelayServer -> a RemoteSession per run (what LiveRun reads of a session),
                  a SuiteView per suite
    run side:     Relay (a bus subscriber), SuiteRelay (around the suite's Progress)
"""
from __future__ import annotations

import json
import logging
import os
import select
import shutil
import socket
import tempfile
import threading
import time
from dataclasses import fields
from pathlib import Path
from types import SimpleNamespace

from agent import secrets
from agent.run import events as ev
from agent.run.control import OPS, RunControl

log = logging.getLogger(__name__)
CONSOLE_ENV = "VLAGENT_CONSOLE"  # the console's relay socket, for the runs and suites it watches
MAX_LINE = 16 * 2 ** 20  # one message (a step with its raw reply is a few KB)
POLL_S = 0.25  # how often a run's relay looks for its display
# The events a page shows (frames excepted: the console grabs the display itself).
EVENTS = {c.__name__: c for c in (ev.RunStarted, ev.ModelAsked, ev.ModelAnswered, ev.ActionChecked,
                                  ev.ActionRefused, ev.ActionExecuted, ev.EffectChecked, ev.StepWritten,
                                  ev.FlowStepDone, ev.CheckDone, ev.RunEnded)}


class Line:
    """A socket carrying one JSON object a line; send() from any thread."""

    def __init__(self, sock: socket.socket):
        self.sock, self._lock, self._buf = sock, threading.Lock(), b""

    def send(self, obj: dict) -> bool:
        data = json.dumps(obj, default=str).encode() + b"\n"
        try:
            with self._lock:
                self.sock.sendall(data)
            return True
        except OSError:  # the other side is gone: the run goes on unwatched
            return False

    @property
    def pending(self) -> bool:
        """A whole message is read already (recv() returns it without waiting)."""
        return b"\n" in self._buf

    def recv(self) -> dict | None:
        """The next object (waiting for it); None at the end or on a broken line."""
        while b"\n" not in self._buf:
            chunk = self.sock.recv(65536)
            if not chunk or len(self._buf) > MAX_LINE:
                return None
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        try:
            obj = json.loads(line)
        except ValueError:
            return None
        return obj if isinstance(obj, dict) else None

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


# ---------------------------------------------------------------- the console's side

class RemoteControl:
    """A run's RunControl as seen from the console: each op goes to the run, the state is mirrored."""

    def __init__(self, line: Line):
        self._line = line
        self.paused = False
        self.stopped: str | None = None

    def pause(self) -> None:
        self.paused = True
        self._line.send({"op": "pause"})

    def resume(self) -> None:
        self.paused = False
        self._line.send({"op": "resume"})

    def step_once(self) -> None:
        self.paused = True
        self._line.send({"op": "step"})

    def stop(self, reason: str = "stopped by a person") -> None:
        self.stopped = reason
        self._line.send({"op": "stop", "reason": reason})

    apply = RunControl.apply  # (by name, as the console's pages send them)


class RemoteSession:
    """What the console's LiveRun reads of a RunSession, for a run in another process."""
    remote = True

    def __init__(self, hello: dict, line: Line):
        if hello.get("mode") not in ("loop", "flow", "replay", "record"):
            raise ValueError(f"unknown run mode {hello.get('mode')!r}")
        self.id, self.mode, self.folder = str(hello["id"]), hello["mode"], Path(str(hello["folder"]))
        self.task = SimpleNamespace(name=str(hello.get("task") or self.folder.name), goal=str(hello.get("goal") or ""),
                                    allow=None)  # (a person approves in the run's own process, not here)
        self.pid = hello.get("pid")
        self.bus, self.control = ev.EventBus(), RemoteControl(line)
        self.result = None  # read from the trace when the run ends
        self.display: str | None = None
        self.xauthority: str | None = None  # the display's cookie file, for the console's frame grabber
        self.masked = False  # the task masks secrets on screen: this console cannot, so it shows no frames
        self.ended = False

    def receive(self, msg: dict) -> None:
        if "display" in msg:
            self.display, self.xauthority = str(msg["display"]), msg.get("xauthority") or None
            self.masked = bool(msg.get("masked"))
        cls = EVENTS.get(msg.get("event"))
        if cls is None:
            return
        names = {f.name for f in fields(cls)} - {"run_id", "t"}
        event = cls(self.id, t=float(msg.get("t") or time.time()),
                    **{k: v for k, v in (msg.get("fields") or {}).items() if k in names})
        if isinstance(event, ev.RunEnded):
            self._read_result()
            self.ended = True
        self.bus.publish(event)

    def gone(self) -> None:
        """The run's process closed its end: a run that did not say how it ended ends here."""
        if not self.ended:
            self._read_result()
            status = self.result.status if self.result is not None else "error"
            reason = self.result.reason if self.result is not None else "the run's process ended without a result"
            self.ended = True
            self.bus.publish(ev.RunEnded(self.id, status=status, reason=reason or ""))

    def _read_result(self) -> None:
        from agent.trace import load_result

        try:
            self.result = load_result(self.folder)
        except (OSError, ValueError):
            self.result = None


class SuiteView:
    """A suite's progress as a console shows it: items done, passed, failed, the ones running."""

    def __init__(self, hello: dict):
        self.id = f"suite-{hello.get('pid')}-{int(time.time() * 1000)}"
        self.name, self.out = str(hello.get("name") or "suite"), str(hello.get("out") or "")
        self.total, self.done, self.passed = int(hello.get("total") or 0), 0, 0
        self.running: list[dict] = []  # {name, trace}
        self.status, self.started = "running", time.time()

    def receive(self, msg: dict) -> None:
        p = msg.get("progress")
        if isinstance(p, dict):
            self.done, self.passed = int(p.get("done", self.done)), int(p.get("passed", self.passed))
            self.running = [r for r in p.get("running", []) if isinstance(r, dict)]
            self.status = str(p.get("status") or self.status)

    def gone(self) -> None:
        if self.status == "running":
            self.status = "ended"
        self.running = []

    def summary(self, live_id) -> dict:
        """`live_id(trace folder) -> the live run's id or None`: the running items link to their runs."""
        return {"id": self.id, "name": self.name, "status": self.status, "total": self.total, "done": self.done,
                "passed": self.passed, "failed": self.done - self.passed, "started": self.started,
                "running": [{"name": r.get("name", ""), "id": live_id(str(r.get("trace", "")))} for r in self.running]}


class RelayServer:
    """The console's socket: each connection is a run (attached to the console) or a suite."""

    def __init__(self, on_run, on_suite):
        """on_run(RemoteSession) attaches a run; on_suite(SuiteView) lists a suite."""
        self.on_run, self.on_suite = on_run, on_suite
        self.folder = tempfile.mkdtemp(prefix="vlagent-console-")  # mode 0700
        self.path = os.path.join(self.folder, "relay.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.path)
        self.sock.listen(64)
        self._lines: list[Line] = []
        self._closed = False
        threading.Thread(target=self._accept, name="console-relay", daemon=True).start()

    def env(self) -> dict[str, str]:
        """What a process needs in its environment to be watched by this console."""
        return {CONSOLE_ENV: self.path}

    def _accept(self) -> None:
        while not self._closed:
            try:
                sock, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(sock,), name="console-relay-conn", daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        line = Line(sock)
        self._lines.append(line)
        peer = None
        try:
            hello = (line.recv() or {}).get("hello")
            if not isinstance(hello, dict):
                return
            if hello.get("kind") == "suite":
                peer = SuiteView(hello)
                self.on_suite(peer)
            else:
                peer = RemoteSession(hello, line)
                self.on_run(peer)
            while (msg := line.recv()) is not None:
                try:
                    peer.receive(msg)
                except (TypeError, ValueError, KeyError) as e:  # a message this console cannot read: skipped
                    log.warning("console relay: skipped a message: %s", e)
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning("console relay: %s", e)
        finally:
            if peer is not None:
                peer.gone()
            line.close()
            self._lines.remove(line)

    def close(self) -> None:
        self._closed = True
        self.sock.close()
        for line in list(self._lines):
            line.close()
        shutil.rmtree(self.folder, ignore_errors=True)


# ---------------------------------------------------------------- the run's and the suite's side

def connect(address: str) -> Line | None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(address)
    except OSError as e:
        sock.close()
        log.warning("cannot reach the console at %s: %s (not watched)", address, e)
        return None
    return Line(sock)


class Relay:
    """In a run's process: its session relayed to the console at `address`, the console's controls obeyed."""

    def __init__(self, session, address: str):
        self.session = session
        self.line = connect(address)
        self._shown: str | None = None
        if self.line is None:
            return
        self.line.send({"hello": {"kind": "run", "id": session.id, "task": session.task.name,
                                  "goal": secrets.redact(str(getattr(session.task, "goal", "") or "")),
                                  "mode": session.mode, "folder": str(Path(session.folder).resolve()),
                                  "pid": os.getpid()}})
        self.sub = session.bus.subscribe(self._on_event)
        self._reader = threading.Thread(target=self._read, name="console-relay", daemon=True)
        self._reader.start()

    def _on_event(self, e: ev.Event) -> None:
        if type(e).__name__ not in EVENTS:
            return
        self._display()
        data = {f.name: getattr(e, f.name) for f in fields(e) if f.name not in ("run_id", "t")}
        self.line.send({"event": type(e).__name__, "t": e.t, "fields": secrets.redact_data(data)})

    def _display(self) -> None:
        result = self.session.result
        display = (result.display if result is not None else None) or self.session.display
        if display and display != self._shown:
            self._shown = display
            self.line.send({"display": display, "xauthority": os.environ.get("XAUTHORITY"),
                            "masked": secrets.mask_screens or getattr(self.session, "masks", False)})

    def _read(self) -> None:
        c = self.session.control
        while True:
            try:
                if not self.line.pending and not select.select([self.line.sock], [], [], POLL_S)[0]:
                    self._display()  # (the display appears after the first events: the sandbox starts later)
                    continue
                msg = self.line.recv()
            except (OSError, ValueError):  # closed
                return
            if msg is None:
                return
            op = msg.get("op")
            if op in OPS:
                c.apply(op, str(msg.get("reason") or "stopped from the console"))

    def close(self) -> None:
        if self.line is not None:
            self.sub.close()
            self.line.close()


class SuiteRelay:
    """A suite's Progress (agent.suite.progress) that also tells a console how far the suite is."""

    def __init__(self, progress, address: str, name: str, out: Path):
        self.progress, self.running = progress, {}
        self.line = connect(address)
        if self.line is not None:
            self.line.send({"hello": {"kind": "suite", "name": name, "total": progress.total, "out": str(out),
                                      "pid": os.getpid()}})

    def _send(self, status: str = "running") -> None:
        if self.line is not None:
            p = self.progress
            self.line.send({"progress": {"done": p.done, "passed": p.passed, "status": status,
                                         "running": [{"name": n, "trace": t} for t, n in self.running.items()]}})

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        self.progress.__exit__(*exc)
        self.running.clear()
        self._send("interrupted" if self.progress.done < self.progress.total else "done")
        if self.line is not None:
            self.line.close()

    def started(self, child) -> None:
        self.progress.started(child)
        self.running[str(Path(child.trace).resolve())] = child.item.name
        self._send()

    def update(self, child) -> None:
        self.progress.update(child)

    def finished(self, child, outcome, retrying: bool = False) -> None:
        self.progress.finished(child, outcome, retrying)
        self.running.pop(str(Path(child.trace).resolve()), None)
        self._send()
