"""What every request passes before a route: header size, proxies, CORS, concurrency.

Pure ASGI middleware (no ``BaseHTTPMiddleware``, which would put each request through a
task and a memory stream of its own): a request body is passed through untouched, so an
upload stays a stream. Outermost first:

1. :class:`HeaderLimit` — request headers over :data:`MAX_HEADER_BYTES` in all are 431.
   uvicorn's httptools protocol sets no limit of its own (an 8 MB header was accepted), so
   this is DOX's. It runs once the server has read the headers; what bounds the reading
   itself is :mod:`dox_tasks.api.protocol` (64 KiB) and, in front, nginx's
   ``large_client_header_buffers`` (OPERATIONS §9.3).
2. uvicorn's ``ProxyHeadersMiddleware`` — only when the peer is one of
   ``DOX_TRUSTED_PROXIES`` is ``X-Forwarded-For`` believed: the right-most address that is
   not a trusted proxy becomes the client address the logs and the per-address limit use.
   It is installed here, in the app, rather than through uvicorn's ``proxy_headers`` so the
   one setting decides it however the app is served (and uvicorn's own default, trusting
   127.0.0.1 or ``FORWARDED_ALLOW_IPS``, never applies).
   :class:`ClientAddress` then makes sure that address is an IP address or escaped text
   (a proxy passes on whatever a client wrote to the left of its own entry), so no log —
   uvicorn's access log included — prints a control or invisible character from it.
3. CORS (Starlette's middleware) — only when ``DOX_API_CORS_ORIGINS`` lists origins;
   explicit origins, no credentials (keys travel in headers, never cookies).
4. :class:`ConcurrencyLimit` — at most ``DOX_API_MAX_CONCURRENT`` requests at once in this
   process, 503 with ``Retry-After`` beyond; ``/health`` and ``/ready`` always answer; live
   event streams counted apart (4 × as many).
5. :class:`BodyLimit` — every body but an upload's is small JSON: at most
   :data:`MAX_JSON_BODY` bytes (413) arriving with no pause longer than
   ``DOX_API_BODY_TIMEOUT_S`` (408). FastAPI reads a JSON body whole *before* any dependency,
   the key check included, so without this a client with no key could make the server hold
   any size of body (200 MB grew it by 360 MB) or hold a request slot with one that never
   ends. Uploads bound their own bodies as they stream (:mod:`.upload_body`).
"""

from __future__ import annotations

import ipaddress

import anyio
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from ..settings import Settings
from ..terminal import safe
from .problems import response

#: Request headers in all (each counted as ``name: value\r\n``).
MAX_HEADER_BYTES = 16 * 1024
#: Paths a load balancer probes: answered however busy the process is.
PROBES = frozenset({"/health", "/ready"})
#: Live events (Server-Sent Events): long-lived, counted apart from other requests.
EVENT_STREAM = "/api/v1/events"
#: Event streams a process holds open, per unit of DOX_API_MAX_CONCURRENT.
STREAMS_PER_LIMIT = 4
#: What a browser page may send and read (keys in Authorization or X-API-Key).
CORS_HEADERS = (
    "Authorization",
    "X-API-Key",
    "Idempotency-Key",
    "Last-Event-ID",
    "X-File-Name",
    "Content-Type",
)
CORS_EXPOSED = ("Location", "Retry-After", "ETag", "WWW-Authenticate")
#: Routes that read their own body as it streams, with their own limits (the uploads).
STREAMED_BODIES = frozenset({"/api/v1/documents", "/api/v1/validate/scan"})
#: The most any other request body may hold (JSON: a reason is at most 500 characters).
MAX_JSON_BODY = 64 * 1024
_CLOSE = {"Connection": "close"}


def address_text(host: str) -> str:
    """``host`` if it is an IP address; else ``?`` and the text escaped, as one word of at
    most 64 characters (the log lines say ``client=<address>``)."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return "?" + (safe(host[:64], markup=False).replace(" ", "\\x20") or "-")


class ClientAddress:
    """The client address in ``scope["client"]`` as :func:`address_text` writes it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        client = scope.get("client")
        if scope["type"] == "http" and client:
            text = address_text(client[0])
            if text != client[0]:
                scope["client"] = (text, client[1])
        await self.app(scope, receive, send)


def header_bytes(scope: Scope) -> int:
    return sum(len(name) + len(value) + 4 for name, value in scope["headers"])


class HeaderLimit:
    """431 for requests whose headers exceed ``max_bytes`` in all."""

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_HEADER_BYTES) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and header_bytes(scope) > self.max_bytes:
            detail = f"the request headers exceed {self.max_bytes // 1024} KiB in all"
            await response(431, detail, "headers-too-large", {"Connection": "close"})(scope, receive, send)
            return
        await self.app(scope, receive, send)


class ConcurrencyLimit:
    """At most ``limit`` requests in flight in this process (a request counts until its
    response is sent, so a slow upload counts while it streams). Live event streams stay
    open for hours: they are counted apart, up to :data:`STREAMS_PER_LIMIT` × ``limit``, so
    listeners never crowd out uploads. One event loop per process: plain counters, no lock."""

    def __init__(self, app: ASGIApp, limit: int, retry_after_s: int = 1) -> None:
        self.app, self.limit, self.retry_after = app, limit, str(retry_after_s)
        self.active = {False: 0, True: 0}  # by "is an event stream"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in PROBES:
            await self.app(scope, receive, send)
            return
        stream = scope["path"] == EVENT_STREAM
        limit = self.limit * STREAMS_PER_LIMIT if stream else self.limit
        if self.active[stream] >= limit:
            what = "event streams" if stream else "requests"
            busy = response(
                503,
                f"the server is handling {limit} {what} at once; try again shortly",
                "busy",
                {"Retry-After": self.retry_after},
            )
            await busy(scope, receive, send)
            return
        self.active[stream] += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.active[stream] -= 1


class BodyLimit:
    """Bodies other than uploads: 413 past ``max_bytes`` (at once when ``Content-Length``
    says so), 408 when the next piece takes longer than ``timeout_s``. Raised from ``receive``
    as an ``HTTPException``, which FastAPI's body reading passes on to the problem handler."""

    def __init__(self, app: ASGIApp, timeout_s: float, max_bytes: int = MAX_JSON_BODY) -> None:
        self.app, self.timeout_s, self.max_bytes = app, timeout_s, max_bytes

    def _too_large(self) -> str:
        return f"the request body is larger than {self.max_bytes // 1024} KiB"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in STREAMED_BODIES:
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await response(413, self._too_large(), "too-large", _CLOSE)(scope, receive, send)
            return
        received, ended = 0, False

        async def bounded() -> Message:
            nonlocal received, ended
            if ended:  # the body is in: later calls wait for a disconnect, as long as they like
                return await receive()
            try:
                with anyio.fail_after(self.timeout_s):
                    message = await receive()
            except TimeoutError:
                detail = f"the request body stopped arriving (nothing for {self.timeout_s:g} s)"
                raise HTTPException(408, detail, {"Retry-After": "1", **_CLOSE}) from None
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise HTTPException(413, self._too_large(), _CLOSE)
            ended = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        await self.app(scope, bounded, send)


class Cors(CORSMiddleware):
    """Starlette's CORS, with a refused preflight as a problem document (not plain text)."""

    def preflight_response(self, request_headers: Headers) -> Response:
        answer = super().preflight_response(request_headers)
        if answer.status_code != 400:
            return answer
        refused = bytes(answer.body).decode().removeprefix("Disallowed CORS ")
        kept = ("access-control", "vary")
        headers = {k: v for k, v in answer.headers.items() if k.lower().startswith(kept)}
        detail = f"cross-origin request refused: its {refused} is not allowed"
        return response(400, detail, "cors-refused", headers)


class Edge:
    """The layers above around ``app``, from the settings: one ``add_middleware`` line."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        app = BodyLimit(app, settings.api_body_timeout_s)
        if settings.api_max_concurrent:
            app = ConcurrencyLimit(app, settings.api_max_concurrent)
        if settings.api_cors_origins:
            app = Cors(
                app,
                allow_origins=settings.api_cors_origins,
                allow_methods=("GET", "POST"),
                allow_headers=CORS_HEADERS,
                expose_headers=CORS_EXPOSED,
                allow_credentials=False,
                max_age=600,
            )
        app = ClientAddress(app)
        if settings.trusted_proxies:
            app = ProxyHeadersMiddleware(app, trusted_hosts=settings.trusted_proxies)  # type: ignore[arg-type,assignment]
        self.app = HeaderLimit(app)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)
