"""A small metrics HTTP server behind basic auth (prometheus_client has none of its own).

Credentials come from DOX_METRICS_USER / DOX_METRICS_PASSWORD in the environment;
without them the server refuses to start unless the caller opts out explicitly.

A thread per connection is fine for a scrape every 15 s, but not unbounded: 300
half-sent requests once held 301 threads. So each connection gets
``request_timeout`` seconds to send its request (a watchdog closes it after that,
however slowly it trickles bytes) and as long again per socket read or write
while answering; and at most ``max_connections`` are open at once. A connection
beyond the cap closes the oldest one still sending its request (so a real scrape
gets through a flood of idle connections), or, if every open one is being
answered, gets ``503`` and is closed.
"""

from __future__ import annotations

import base64
import contextlib
import hmac
import socket
import threading
import time
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any, cast
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import make_wsgi_app
from prometheus_client.registry import CollectorRegistry

from ..settings import basic_auth_from_env

USER_ENV, PASSWORD_ENV = "DOX_METRICS_USER", "DOX_METRICS_PASSWORD"
REQUEST_TIMEOUT_S = 10.0
MAX_CONNECTIONS = 32
_BUSY = (
    b"HTTP/1.0 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
)


def credentials(unsafe_no_auth: bool) -> tuple[str, str] | None:
    return basic_auth_from_env(USER_ENV, PASSWORD_ENV, "metrics are served behind basic auth", unsafe_no_auth)


def _authorized(header: str | None, expected: tuple[str, str]) -> bool:
    if not header or not header.startswith("Basic "):
        return False
    try:
        user, _, password = base64.b64decode(header[6:], validate=True).decode().partition(":")
    except ValueError:  # bad base64, non-ASCII input, bad UTF-8: all ValueErrors
        return False
    ok_user = hmac.compare_digest(user.encode(), expected[0].encode())
    ok_password = hmac.compare_digest(password.encode(), expected[1].encode())
    return ok_user and ok_password


def guarded(app: Callable[..., Iterable[bytes]], auth: tuple[str, str] | None) -> Callable[..., Any]:
    def wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if auth is not None and not _authorized(environ.get("HTTP_AUTHORIZATION"), auth):
            start_response(
                "401 Unauthorized",
                [("WWW-Authenticate", 'Basic realm="dox metrics"'), ("Content-Type", "text/plain")],
            )
            return [b"401 Unauthorized\n"]
        return app(environ, start_response)

    return wsgi


class _Server(ThreadingMixIn, WSGIServer):
    """Thread per connection, bounded in number and in time (see the module docstring)."""

    daemon_threads = True
    request_timeout = REQUEST_TIMEOUT_S
    max_connections = MAX_CONNECTIONS

    def server_activate(self) -> None:
        super().server_activate()
        self._lock = threading.Lock()
        self._open = 0
        self._sending: dict[socket.socket, float] = {}  # connection -> when it was accepted
        self._closed = threading.Event()
        threading.Thread(target=self._watch, name="dox-metrics-watchdog", daemon=True).start()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._lock:
            admit = self._open < self.max_connections
            if not admit and self._sending:
                self._drop(min(self._sending, key=self._sending.__getitem__))
                admit = True
            if admit:
                self._open += 1
                self._sending[request] = time.monotonic()
        if not admit:
            self._refuse(request)
            return
        try:
            super().process_request(request, client_address)
        except Exception:
            self._forget(request)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._forget(request)

    def request_received(self, request: socket.socket) -> None:
        """The handler has read the whole request: the watchdog no longer times it."""
        with self._lock:
            self._sending.pop(request, None)

    def handle_error(self, request: Any, client_address: Any) -> None:
        return None  # a client that went away or timed out is not the server's error

    def server_close(self) -> None:
        self._closed.set()
        super().server_close()

    def _forget(self, request: socket.socket) -> None:
        with self._lock:
            self._open -= 1
            self._sending.pop(request, None)

    def _drop(self, request: socket.socket) -> None:
        """Cut a connection still sending its request (caller holds the lock); its thread ends."""
        self._sending.pop(request, None)
        with contextlib.suppress(OSError):
            request.shutdown(socket.SHUT_RDWR)

    def _refuse(self, request: socket.socket) -> None:
        with contextlib.suppress(OSError):
            request.settimeout(1)
            request.sendall(_BUSY)
        self.shutdown_request(request)

    def _watch(self) -> None:
        while not self._closed.wait(max(0.05, min(1.0, self.request_timeout / 4))):
            cutoff = time.monotonic() - self.request_timeout
            with self._lock:
                for request in [r for r, t in self._sending.items() if t < cutoff]:
                    self._drop(request)


class _QuietHandler(WSGIRequestHandler):
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.server.request_timeout)  # each read and write of the socket

    def parse_request(self) -> bool:
        done = super().parse_request()
        self.server.request_received(self.connection)
        return done

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        return None  # one line per scrape every 15 s is noise


def make_server_for(
    registry: CollectorRegistry,
    host: str,
    port: int,
    auth: tuple[str, str] | None,
    request_timeout: float = REQUEST_TIMEOUT_S,
    max_connections: int = MAX_CONNECTIONS,
) -> WSGIServer:
    """Bind ``host:port`` serving ``registry`` (any path) behind ``auth``; not yet serving."""
    httpd = cast(
        _Server, make_server(host, port, guarded(make_wsgi_app(registry), auth), _Server, _QuietHandler)
    )
    httpd.request_timeout, httpd.max_connections = request_timeout, max_connections
    return httpd


def serve_in_background(httpd: WSGIServer) -> None:
    threading.Thread(target=httpd.serve_forever, name="dox-metrics", daemon=True).start()
