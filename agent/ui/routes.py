"""The console's routes (Starlette): pages, the run API, the event and frame streams, the playground.
The table of routes is in agent/ui/app.py's docstring; agent.ui.auth.Guard stands in front of all."""
from __future__ import annotations

import asyncio
import json

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from agent.errors import VlagentError
from agent.ui import views
from agent.ui.attend import decision_from
from agent.ui.frames import mjpeg_part
from agent.ui.playground import from_data_url, grab, to_data_url
from agent.ui.runs import run_page_data, trace_file

MAX_JSON_BYTES = 48 * 2 ** 20  # an uploaded screenshot as a data URL
SSE_PING_S = 15.0


def build_routes(console) -> Starlette:
    def need_live(request: Request):
        run = console.find_live(request.query_params.get("id", ""))
        if run is None or run.ended:
            raise LookupError("no live run with that id")
        return run

    async def body(request: Request) -> dict:
        raw = b""
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > MAX_JSON_BYTES:
                raise VlagentError("request too large")
        data = json.loads(raw or b"{}")
        if not isinstance(data, dict):
            raise VlagentError("a JSON object is expected")
        return data

    def fail(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status)

    def api(handler):
        async def wrapped(request: Request):
            try:
                return await handler(request)
            except LookupError as e:
                return fail(404, str(e))
            except PermissionError as e:
                return fail(409, str(e))
            except (VlagentError, ValueError, TypeError) as e:
                return fail(400, str(e).splitlines()[0] if str(e) else type(e).__name__)
        return wrapped

    async def runs_page(request: Request):
        runs, suites = console.summaries(), console.runs.suite_summaries()
        return HTMLResponse(views.render("runs.html.j2", title="runs", page="runs", runs=runs, suites=suites,
                                         root=str(console.runs_dir), defaults=console.defaults,
                                         live=any(r["live"] for r in runs) or any(s["status"] == "running" for s in suites)))

    async def run_page(request: Request):
        run_id = request.query_params.get("id", "")
        live = console.find_live(run_id)
        if live is not None and not live.ended:
            seq = len(live.log)  # before the steps are read: a step written meanwhile comes again, not never
            cards = await run_in_threadpool(_live_cards, live)
            pending = live.attendant.pending
            data = {"id": run_id, "live": True, "seq": seq, "lease": live.lease.held,
                    "pending": views.proposal_view(pending) if pending else None}
            html = views.render("run.html.j2", title=live.task, page="run", task=live.task, goal=live.goal,
                                status=live.state(), reason=live.reason, live=True, state=live.state(),
                                model_state=live.model_state, last_raw="", cards_html=cards, id=run_id,
                                takeover=live.mode == "loop" and not live.remote,
                                checks_html="", data_json=views.dumps(data), final=None, answer=None, trace="")
            return HTMLResponse(html)
        folder = console.index.get(run_id)
        if folder is None:
            return HTMLResponse("no such run", 404)
        d = await run_in_threadpool(run_page_data, folder, run_id)
        cards = [views.render("step.html.j2", c=c) for c in d["cards"]]
        html = views.render("run.html.j2", title=d["task"], page="run", task=d["task"], goal="", status=d["status"],
                            reason=d["reason"], live=False, state=d["status"], model_state="", last_raw="", takeover=False,
                            cards_html=cards, id=run_id, checks_html=views.checks_html(d["checks"]),
                            data_json=views.dumps({"id": run_id, "live": False}), final=d["final"],
                            answer=d["answer"], trace=d["trace"])
        return HTMLResponse(html)

    async def files(request: Request):
        run_id, rel = request.query_params.get("id", ""), request.query_params.get("f", "")
        live = console.find_live(run_id)
        folder = live.folder if live is not None else console.index.get(run_id)
        path = trace_file(folder, rel) if folder is not None and rel else None
        if path is None:
            return Response("not found", 404)
        return FileResponse(path, headers={"Cache-Control": "private, max-age=3600"})

    async def api_runs(request: Request):
        if request.method == "GET":
            return JSONResponse(console.summaries())
        data = await body(request)
        from agent.ui.start import launcher_of

        live = await run_in_threadpool(launcher_of(console).start, data)
        return JSONResponse({"id": live.url_id})

    async def api_suites(request: Request):
        if request.method == "GET":
            return JSONResponse(console.runs.suite_summaries())
        from agent.ui.start import launcher_of

        out = await run_in_threadpool(launcher_of(console).start_suite, await body(request))
        return JSONResponse({"out": str(out)})

    async def events(request: Request):
        run_id = request.query_params.get("id", "")
        live = console.find_live(run_id)
        if live is None:
            return fail(404, "no live run with that id")
        try:
            seq = max(int(request.query_params.get("after", "0")), 0)
        except ValueError:
            seq = 0

        async def stream():
            nonlocal seq
            wake = _waker()
            live.listeners.append(wake.notify)
            live.viewers += 1
            try:  # (a client that leaves cancels this generator: Starlette listens for the disconnect)
                while True:
                    for item in live.since(seq):
                        seq = item["seq"]
                        yield f"id: {seq}\ndata: {json.dumps(item)}\n\n"
                    if live.ended and not live.since(seq):
                        yield "event: end\ndata: {}\n\n"
                        return
                    if not await wake.wait(SSE_PING_S):
                        yield ": ping\n\n"
            finally:
                live.viewers -= 1
                live.listeners.remove(wake.notify)

        return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})

    async def frames(request: Request):
        live = console.find_live(request.query_params.get("id", ""))
        if live is None or live.ended:
            return Response("no live display", 404)

        async def stream():
            source = live.frame_source()
            while source is None:  # the run is still starting its display
                if live.ended or await request.is_disconnected():
                    return
                await asyncio.sleep(0.1)
                source = live.frame_source()
            source.watch()
            wake = _waker()
            source.listeners.append(wake.notify)
            seq = 0
            try:
                while not live.ended and not source.error:
                    frame = source.latest
                    if frame is not None and frame.seq > seq:
                        seq = frame.seq
                        yield mjpeg_part(frame)
                    await wake.wait(1.0)
            finally:
                source.listeners.remove(wake.notify)
                source.leave()

        return StreamingResponse(stream(), media_type="multipart/x-mixed-replace; boundary=frame",
                                 headers={"Cache-Control": "no-store"})

    async def control(request: Request):
        live = need_live(request)
        live.control_op(str((await body(request)).get("op")))
        return JSONResponse({"state": live.state()})

    async def decide(request: Request):
        live = need_live(request)
        data = await body(request)
        step = data.get("step")
        if not live.decide(decision_from(data, "page"), int(step) if step is not None else None):
            raise LookupError("no proposal of that step waits for a decision")
        return JSONResponse({"ok": True})

    async def lease(request: Request):
        live = need_live(request)
        if (await body(request)).get("take"):
            live.take_over()
        else:
            live.hand_back()
        return JSONResponse({"state": live.state()})

    async def human(request: Request):
        live = need_live(request)
        action = (await body(request)).get("action")
        if not isinstance(action, dict):
            raise VlagentError("an action is expected")
        return JSONResponse(await run_in_threadpool(live.human_input, action))

    async def playground_page(request: Request):
        live = console.live_run()
        return HTMLResponse(views.render("playground.html.j2", title="playground", page="playground",
                                         display=live.display if live else "", defaults=console.defaults))

    async def playground_api(request: Request):
        data = await body(request)
        if data.get("image"):
            image = await run_in_threadpool(from_data_url, str(data["image"]))
        elif data.get("display"):
            image = await run_in_threadpool(grab, str(data["display"]))
        else:
            raise VlagentError("give a display (like :99) or a screenshot")
        chosen = (data.get("model") or None, data.get("backend") or None, data.get("base_url") or None)
        schema = data.get("schema")
        if isinstance(schema, str) and schema.strip():
            try:
                schema = json.loads(schema)
            except ValueError as e:
                raise VlagentError(f"schema: not JSON: {e}") from None
        if isinstance(schema, dict):
            out = await run_in_threadpool(console.playground.query, image, str(data.get("instruction") or ""), schema,
                                          *chosen)
        else:
            out = await run_in_threadpool(console.playground.ask, image, str(data.get("instruction") or ""), *chosen)
        out["image"] = await run_in_threadpool(to_data_url, image)
        return JSONResponse(out)

    routes = [
        Route("/", runs_page), Route("/run", run_page), Route("/playground", playground_page), Route("/files", files),
        Route("/api/runs", api(api_runs), methods=["GET", "POST"]), Route("/api/events", events),
        Route("/api/suites", api(api_suites), methods=["GET", "POST"]),
        Route("/api/frames", frames), Route("/api/control", api(control), methods=["POST"]),
        Route("/api/decide", api(decide), methods=["POST"]), Route("/api/lease", api(lease), methods=["POST"]),
        Route("/api/input", api(human), methods=["POST"]), Route("/api/playground", api(playground_api), methods=["POST"]),
        Mount("/static", StaticFiles(directory=views.STATIC)), Mount("/assets", StaticFiles(directory=views.REPORT_ASSETS)),
    ]
    return Starlette(routes=routes)


class _waker:
    """Wakes a coroutine from another thread (the run's event subscriber, the frame reader)."""

    def __init__(self):
        self.loop, self.event = asyncio.get_running_loop(), asyncio.Event()

    def notify(self) -> None:
        try:
            self.loop.call_soon_threadsafe(self.event.set)
        except RuntimeError:  # the console's loop is closed: nobody waits any more
            pass

    async def wait(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self.event.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False
        finally:
            self.event.clear()


def _live_cards(live) -> list[str]:
    """The steps a live run has written so far (a page opened mid-run)."""
    from agent.trace import load_steps

    steps = load_steps(live.folder, lenient=True) if (live.folder / "steps.jsonl").exists() else []
    return [views.step_html(s.model_dump(mode="json"), live.url_id) for s in steps]
