"""Who may use the console: a person on this machine who has the token printed at start.

Every request (page, API call, event stream, frame stream) needs the token, as Jupyter does: in the
URL once (`?token=...`, then a cookie scoped to this console's port), or `Authorization: Bearer`.
The Host header must name this console (a DNS-rebinding page that resolves its own name to
127.0.0.1 sends its own name), and a request that changes anything must come from this console's
own pages (its Origin), so another site open in the same browser can neither read nor drive it.
"""
from __future__ import annotations

import hmac
import ipaddress
import secrets
from http.cookies import SimpleCookie
from urllib.parse import parse_qsl, urlencode

SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
# No page of another site may frame the console; no script but the console's own file runs (model
# output is escaped text, and even markup slipping through could not run); nothing leaks by Referer.
SECURITY_HEADERS = [(b"x-frame-options", b"DENY"), (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"no-referrer"),
                    (b"content-security-policy", b"default-src 'self'; img-src 'self' data:; script-src 'self'; "
                                                 b"style-src 'self' 'unsafe-inline'; frame-ancestors 'none'")]
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def new_token() -> str:
    return secrets.token_urlsafe(24)


def cookie_name(port: int) -> str:
    return f"vlagent_ui_{port}"  # cookies are not port-scoped: two consoles must not share one


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Guard:
    """ASGI middleware in front of the whole console (HTTP and the streams)."""

    def __init__(self, app, token: str, host: str, port: int):
        self.app, self.token, self.port = app, token.encode(), port
        names = {host} | (set(LOOPBACK) if is_loopback(host) or host in ("0.0.0.0", "::") else set())
        if host in ("0.0.0.0", "::"):  # every interface: a person reaches it by this machine's name or address
            import socket
            names |= {socket.gethostname(), socket.getfqdn()}
            try:
                names |= {a[4][0] for a in socket.getaddrinfo(socket.gethostname(), None)}
            except OSError:
                pass
        self.hosts = {f"[{n}]:{port}" if ":" in n else f"{n}:{port}" for n in names}
        self.origins = {f"http://{h}" for h in self.hosts}
        self.cookie = cookie_name(port)

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        host = headers.get("host", "")
        if host not in self.hosts:
            return await self._refuse(send, 403, f"this console answers to {sorted(self.hosts)[0]}, not to host {host!r}")
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        cookies = SimpleCookie()
        try:
            cookies.load(headers.get("cookie", ""))
        except Exception:
            pass
        by_cookie = self.cookie in cookies and self._ok(cookies[self.cookie].value)
        bearer = headers.get("authorization", "")
        by_header = bearer[:7].lower() == "bearer " and self._ok(bearer[7:].strip())
        by_query = "token" in query and self._ok(query["token"])
        if not (by_cookie or by_header or by_query):
            return await self._refuse(send, 401, "open the console with the URL `vlagent ui` printed (it holds the token)")
        origin = headers.get("origin")
        if origin is not None and origin not in self.origins:
            return await self._refuse(send, 403, f"requests from {origin} are not accepted")
        if scope["method"] not in SAFE_METHODS and origin is None and not by_header:
            return await self._refuse(send, 403, "a change needs this console's own page (no Origin header)")
        if by_query and scope["method"] == "GET" and not by_cookie:  # a person's first visit: keep it in a cookie
            rest = urlencode([(k, v) for k, v in parse_qsl(scope.get("query_string", b"").decode()) if k != "token"])
            location = scope["path"] + (f"?{rest}" if rest else "")
            value = f"{self.cookie}={self.token.decode()}; Path=/; HttpOnly; SameSite=Strict"
            await send({"type": "http.response.start", "status": 303,
                        "headers": [(b"location", location.encode()), (b"set-cookie", value.encode()),
                                    (b"content-length", b"0")]})
            return await send({"type": "http.response.body", "body": b""})
        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *SECURITY_HEADERS]}
            await send(message)

        return await self.app(scope, receive, send_with_headers)

    def _ok(self, given: str) -> bool:
        return hmac.compare_digest(given.encode(), self.token)

    @staticmethod
    async def _refuse(send, status: int, message: str):
        body = message.encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode()),
                                (b"cache-control", b"no-store")]})
        await send({"type": "http.response.body", "body": body})
