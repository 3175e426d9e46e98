"""The Console: the console's state (the runs folder, the live runs, the playground's backends, the
token) and its server; its routes (agent/ui/routes.py):

    GET  /                    runs: live and past, and a form to start one
    GET  /run?id=ID           a run: live view (display, controls, proposals) and its step timeline
    GET  /playground          one screenshot + an instruction -> the proposed action drawn
    GET  /files?id=ID&f=PATH  a file of a run's trace folder (screenshots)
    GET  /api/runs            runs as JSON;  POST /api/runs  start one {task, model, backend, ...}
    GET  /api/suites          the suites that report here, as JSON
    GET  /api/events?id=ID&after=N   the run's page updates (server-sent events)
    GET  /api/frames?id=ID    the live display (multipart JPEG frames, for an <img>)
    POST /api/control?id=ID   {op: pause | resume | step | stop}
    POST /api/decide?id=ID    {step, verdict: approve | correct | reject, note, action}
    POST /api/lease?id=ID     {take: true | false}
    POST /api/input?id=ID     {action}: the person's own action while they hold the display
    POST /api/playground      {instruction, display | image (data URL), model, backend, base_url}

Every route is behind agent.ui.auth.Guard (token, Host, Origin).
"""
from __future__ import annotations

import threading
import time
from pathlib import Path

from agent.errors import VlagentError
from agent.ui.attend import Attendant, Lease, rules_of
from agent.ui.auth import Guard, new_token
from agent.ui.playground import Playground
from agent.ui.routes import build_routes
from agent.ui.runs import Registry, TraceIndex


class Console:
    def __init__(self, runs_dir: Path, *, host: str = "127.0.0.1", port: int = 8080, token: str | None = None,
                 model: str = "", backend: str = "auto", base_url: str | None = None):
        from agent.backends import DEFAULT_MODEL

        self.runs_dir = Path(runs_dir)
        self.host, self.port = host, port
        self.token = token or new_token()
        self.index = TraceIndex(self.runs_dir)
        self.runs = Registry(self.index)
        self.relay = None  # agent.ui.relay.RelayServer, from bind(): runs and suites of other processes attach there
        self.defaults = {"model": model or DEFAULT_MODEL, "backend": backend, "base_url": base_url, "task": ""}
        self.playground = Playground(self.defaults["model"], backend, base_url)
        self.launcher = None  # agent.ui.start.Launcher, made on the first start from the page
        self.app = Guard(build_routes(self), self.token, host, port)

    def url(self, path: str = "/") -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}{path}{'&' if '?' in path else '?'}token={self.token}"

    # ---- live runs

    def attach(self, session, *, attended: bool = False, terminal=None, element=None):
        """Watch a RunSession (before it is entered, so that its first event is seen): its events,
        its display, its control, and an Attendant as `session.attendant` (the loop's hook)."""
        from agent.ui.live import LiveRun

        rules = rules_of(session.task.allow)
        attendant = Attendant(rules, every=attended, lease=Lease())
        attendant.terminal, attendant.element = terminal, element
        url_id = self.index.id_of(session.folder) or f"live/{session.id}"
        live = LiveRun(session.id, session, url_id=url_id, attendant=attendant, mode=session.mode)
        session.attendant = attendant
        self.runs.add(live)
        return live

    @property
    def live(self) -> dict:
        return self.runs.live

    def find_live(self, run_id: str):
        return self.runs.get(run_id)

    def live_run(self):
        running = self.runs.running()
        return running[0] if running else None

    def summaries(self) -> list[dict]:
        return self.runs.summaries()

    # ---- serving (uvicorn on a socket bound before anything loads)

    def bind(self):
        import socket

        from agent.ui.auth import is_loopback

        try:
            family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
            sock.listen(128)
        except OSError as e:
            raise VlagentError(f"cannot listen on {self.host}:{self.port}: {e.strerror or e}") from None
        if self.port == 0:
            self.port = sock.getsockname()[1]
            self.app = Guard(self.app.app, self.token, self.host, self.port)
        self._sock, self.loopback = sock, is_loopback(self.host)
        from agent.ui.relay import RelayServer

        self.relay = RelayServer(on_run=self.attach, on_suite=self.runs.add_suite)
        return self

    def _server(self):
        import uvicorn

        config = uvicorn.Config(self.app, http="h11", ws="none", lifespan="off", log_level="warning",
                                access_log=False, timeout_graceful_shutdown=2, limit_concurrency=256)
        self._uvicorn = uvicorn.Server(config)
        return self._uvicorn

    def serve(self):
        """In the foreground until Ctrl-C or SIGTERM."""
        try:
            self._server().run(sockets=[self._sock])
        finally:
            self.close()

    def start(self) -> "Console":
        """On a thread (`vlagent run --watch`, tests)."""
        server = self._server()
        self._thread = threading.Thread(target=server.run, kwargs={"sockets": [self._sock]}, daemon=True,
                                        name="vlagent-ui")
        self._thread.start()
        deadline = time.monotonic() + 30
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise VlagentError("the console did not start")
            time.sleep(0.01)
        return self

    def stop(self):
        if getattr(self, "_uvicorn", None) is not None:
            self._uvicorn.should_exit = True
            self._thread.join(timeout=10)
        self.close()

    def close(self, grace_s: float = 30.0):
        """Stop the runs this console started (each ends `aborted` with its trace complete), then
        let go of every live run."""
        started = self.launcher.threads if self.launcher is not None else []
        children = self.launcher.children if self.launcher is not None else {}
        for r in self.runs.running():
            if (not r.remote and any(t.is_alive() for t in started)) or r.folder.resolve() in children:
                r.control_op("stop")
        deadline = time.monotonic() + grace_s
        for t in started:
            t.join(timeout=max(0.0, deadline - time.monotonic()))
        if self.launcher is not None:
            self.launcher.reap(max(0.0, deadline - time.monotonic()))
        for r in list(self.live.values()):
            r.close()
        if self.relay is not None:
            self.relay.close()
        sock = getattr(self, "_sock", None)
        if sock is not None:
            sock.close()
