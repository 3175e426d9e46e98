"""The HTTP routes of `vlagent serve` (Starlette on uvicorn): OpenAI's chat completions API.

    GET  /health               200 while the scheduler runs, 503 with the reason after it failed
    GET  /v1/models            the one served model
    POST /v1/chat/completions  greedy, one choice; `stream: true` answers with server-sent chunks

With an API key (`vlagent serve --api-key`, or VLAGENT_SERVE_API_KEY) every /v1 route needs
`Authorization: Bearer KEY` (401 otherwise); /health stays open for process supervisors.

Bounds, each refused with a clear status before any work: the body (413), images per request and
pixels per image (413, agent/serve/server.py), requests in flight (429 with Retry-After: the
client's retry waits), open connections (uvicorn's 503).

A conversation is `X-Vlagent-Conversation` (a random id the client keeps for one agent's run),
else the connection it comes on (an agent keeps its connection); with a key it is also bound to the
key. Only a conversation's own earlier requests are reused (batch.Batcher's private rule).
"""
from __future__ import annotations

import asyncio
import errno
import hashlib
import hmac
import json
import socket
import threading
import time
import uuid
from dataclasses import dataclass

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from agent.errors import VlagentError
from agent.serve.server import Refused, ServedModel, TextStream, usage  # noqa: F401 (ServedModel: API)

CONVERSATION_HEADER = "x-vlagent-conversation"
MAX_CONVERSATION_ID = 200  # characters
DISCARD_S = 2.0  # how long a refused body is read on, so that its client reads the 413


@dataclass
class Limits:
    body_bytes: int = 256 * 2 ** 20  # a request with a few full-HD PNGs is ~10-30 MB
    in_flight: int | None = None  # chat requests being prepared, queued or decoded (default: 4 x agents)
    connections: int = 1024  # open connections (uvicorn answers 503 past it)
    keep_alive_s: int = 300  # an agent's connection waits this long between its steps
    api_key: str | None = None


def error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    kind = {401: "authentication_error", 429: "rate_limit_error"}.get(
        status, "invalid_request_error" if status < 500 else "server_error")
    return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status, headers=headers)


def create_app(served, limits: Limits) -> Starlette:
    limits.in_flight = limits.in_flight or 4 * served.batcher.agents
    state = {"busy": 0}  # chat requests in flight (the event loop's thread alone counts them)
    key = limits.api_key.encode() if limits.api_key else None

    def authorized(request: Request) -> bool:
        if key is None:
            return True
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), key)

    def conversation(request: Request) -> str:
        own = request.headers.get(CONVERSATION_HEADER, "")[:MAX_CONVERSATION_ID]
        peer = request.client
        who = f"id:{own}" if own else f"peer:{peer.host}:{peer.port}" if peer else "peer:?"
        salt = limits.api_key or ""
        return hashlib.sha256(f"{salt}\0{who}".encode()).hexdigest()[:32]

    async def health(request: Request):
        s = served
        if s.scheduler.error:
            return error(503, s.scheduler.error)
        return JSONResponse({"status": "ok", "model": s.name, **s.memory(),
                             "stats": {k: round(v, 1) for k, v in s.scheduler.stats.items()}})

    async def models(request: Request):
        if not authorized(request):
            return unauthorized()
        return JSONResponse({"object": "list", "data": [{"id": served.name, "object": "model", "owned_by": "vlagent"}]})

    async def read_body(request: Request) -> bytes:
        too_big = Refused(413, f"request body over {limits.body_bytes // 2 ** 20} MiB")
        declared = request.headers.get("content-length")
        stream = request.stream()
        if declared is not None and declared.isdigit() and int(declared) > limits.body_bytes:
            await discard(stream, int(declared))
            raise too_big
        chunks, size = [], 0
        async for chunk in stream:
            size += len(chunk)
            if size > limits.body_bytes:
                await discard(stream, size)
                raise too_big
            chunks.append(chunk)
        return b"".join(chunks)

    async def discard(stream, size: int) -> None:
        """Read a refused body on for a moment when it is at most twice the bound, so that a client
        still sending reads the 413 rather than a reset connection; a larger or slower one is cut off."""
        async def drain():
            async for _ in stream:
                pass
        if size <= 2 * limits.body_bytes:
            try:
                await asyncio.wait_for(drain(), DISCARD_S)
            except (asyncio.TimeoutError, ClientDisconnect):
                pass

    async def chat(request: Request):
        if not authorized(request):
            return unauthorized()
        try:
            raw = await read_body(request)
        except Refused as e:  # its body is not read: no next request on this connection
            return error(e.status, e.message, {"Connection": "close"})
        except ClientDisconnect:
            return error(400, "the client went away")
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError) as e:  # (nesting deep enough to exhaust the parser's stack)
            return error(400, f"malformed request: not JSON: {type(e).__name__}: {str(e)[:200]}")
        if not isinstance(body, dict):
            return error(400, "malformed request: the body must be a JSON object")
        if state["busy"] >= limits.in_flight:
            return error(429, f"the server has {limits.in_flight} requests in flight; retry shortly", {"Retry-After": "1"})
        state["busy"] += 1  # given back when the device is done with it, whatever the client does meanwhile
        submitted = False
        try:
            req = await run_in_threadpool(served.prepare, body, conversation(request))
            tokens: asyncio.Queue | None = None
            if body.get("stream"):  # the device thread hands each run of new tokens to this loop
                tokens, loop = asyncio.Queue(), asyncio.get_running_loop()
                req.on_tokens = lambda new: loop.call_soon_threadsafe(tokens.put_nowait, new)
            future = asyncio.wrap_future(served.submit(req))
            submitted = True
            future.add_done_callback(lambda _: state.__setitem__("busy", state["busy"] - 1))  # (on this loop)
            if tokens is not None:
                future.add_done_callback(lambda _: tokens.put_nowait(None))  # after its last tokens (same loop, in order)
                include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
                return StreamingResponse(stream(req, future, tokens, include_usage), media_type="text/event-stream",
                                         headers={"Cache-Control": "no-cache"})
            # shielded: cancelling this wait (a client gone, a shutdown) must not cancel the scheduler's
            # future, whose later set_result would then fail on the device thread
            reply = await asyncio.shield(future)
            return JSONResponse(await run_in_threadpool(served.completion, reply))
        except Refused as e:
            return error(e.status, e.message)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            return error(400, f"malformed request: {type(e).__name__}: {e}")
        except VlagentError as e:  # the device failed (503: the client retries), or the engine refused (400)
            from agent.serve.scheduler import DeviceError
            return error(503 if isinstance(e, DeviceError) else 400, str(e))
        except Exception as e:  # keep serving the others; the client sees the reason
            return error(500, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        finally:
            if not submitted:
                state["busy"] -= 1

    async def stream(req, future, tokens: asyncio.Queue, include_usage: bool):
        """OpenAI's chunks: the role, the content as the device makes it (a chunk per decode pass,
        or per burst when this loop is behind), the finish reason, usage if asked, [DONE]. A client
        that hangs up cancels its request: the scheduler frees its region at its next turn."""
        cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

        def chunk(delta: dict, finish=None, **extra) -> str:
            data = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": served.name,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}
            return f"data: {json.dumps(data)}\n\n"

        text = TextStream(served.text)
        try:
            yield chunk({"role": "assistant", "content": ""})
            ended = False
            while not ended:
                runs = [await tokens.get()]
                while not tokens.empty():
                    runs.append(tokens.get_nowait())
                ended = None in runs
                new = [t for run in runs if run for t in run]
                piece = await run_in_threadpool(text.push, new) if new else ""
                if piece:
                    yield chunk({"content": piece})
            try:
                reply = future.result()
            except Exception as e:  # the stream has begun: the error is an event (as OpenAI sends it)
                yield f"data: {json.dumps({'error': {'message': str(e), 'type': 'server_error', 'code': 503}})}\n\n"
                return
            piece = await run_in_threadpool(text.rest)
            if piece:
                yield chunk({"content": piece})
            yield chunk({}, reply.finish)
            if include_usage:
                data = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": served.name,
                        "choices": [], "usage": usage(reply)}
                yield f"data: {json.dumps(data)}\n\n"
            yield "data: [DONE]\n\n"
        finally:  # (Starlette cancels this generator when the client leaves)
            if not future.done():
                req.cancel()

    def unauthorized():
        return error(401, "missing or wrong API key: send `Authorization: Bearer KEY` (vlagent's client reads "
                          "VLAGENT_API_KEY)", {"WWW-Authenticate": "Bearer"})

    async def not_found(request: Request, exc):
        return error(404, f"no route {request.url.path}")

    async def not_allowed(request: Request, exc):
        return error(405, f"{request.method} is not allowed on {request.url.path}")

    app = Starlette(routes=[Route("/health", health), Route("/v1/models", models),
                            Route("/v1/chat/completions", chat, methods=["POST"])],
                    exception_handlers={404: not_found, 405: not_allowed})
    app.state.limits = limits
    return app

def listen(host: str, port: int) -> socket.socket:
    """A listening socket, made before the model loads: an address in use fails in a second."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, _, _, _, addr = infos[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(addr)
            sock.listen(2048)
        except OSError:
            sock.close()
            raise
    except OSError as e:
        raise VlagentError(_listen_error(host, port, e)) from None
    sock.set_inheritable(True)
    return sock


def check_listen(host: str, port: int) -> None:
    """Fail in a second, not after loading the model, when the address cannot be listened on."""
    listen(host, port).close()


def _listen_error(host: str, port: int, e: OSError) -> str:
    why = "in use (another server? pick another --port)" if e.errno == errno.EADDRINUSE else (e.strerror or str(e))
    return f"cannot listen on {host}:{port}: {why}"


class Server:
    """A ServedModel behind the Starlette app on uvicorn: `start()` on a thread (tests, benchmarks),
    `serve()` in the foreground until Ctrl-C (`vlagent serve`)."""

    def __init__(self, served: ServedModel, host: str = "127.0.0.1", port: int = 8000, *, sock=None,
                 limits=None, log_level: str = "warning"):
        import uvicorn

        self.served = served
        self.sock = sock or listen(host, port)
        self.app = create_app(served, limits or Limits())
        lim = self.app.state.limits
        # h11: the pure-Python HTTP/1.1 parser (no optional C parser to differ between machines);
        # connections past the bound get a 503 from uvicorn before any work.
        self.config = uvicorn.Config(self.app, http="h11", ws="none", lifespan="off", log_level=log_level,
                                     limit_concurrency=lim.connections, timeout_keep_alive=lim.keep_alive_s,
                                     timeout_graceful_shutdown=5, access_log=False)
        self.uvicorn = uvicorn.Server(self.config)
        bound = self.sock.getsockname()
        self.base_url = f"http://{_url_host(bound[0])}:{bound[1]}/v1"
        self._thread: threading.Thread | None = None

    def serve(self):
        """In the foreground; uvicorn turns Ctrl-C and SIGTERM into a graceful stop."""
        try:
            self.uvicorn.run(sockets=[self.sock])
        finally:
            self.sock.close()
            self.served.close()

    def start(self) -> "Server":
        self._thread = threading.Thread(target=self.uvicorn.run, kwargs={"sockets": [self.sock]},
                                        name="vlagent-serve-http", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self.uvicorn.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise VlagentError("the HTTP server did not start")
            time.sleep(0.01)
        return self

    def stop(self):
        self.uvicorn.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.sock.close()
        self.served.close()

    def __enter__(self) -> "Server":
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
