"""A small metrics HTTP server behind basic auth (prometheus_client has none of its own).

Credentials come from DOX_METRICS_USER / DOX_METRICS_PASSWORD in the environment;
without them the server refuses to start unless the caller opts out explicitly.
"""

from __future__ import annotations

import base64
import hmac
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import make_wsgi_app
from prometheus_client.registry import CollectorRegistry

from ..settings import basic_auth_from_env

USER_ENV, PASSWORD_ENV = "DOX_METRICS_USER", "DOX_METRICS_PASSWORD"


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
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        return None  # one line per scrape every 15 s is noise


def make_server_for(
    registry: CollectorRegistry, host: str, port: int, auth: tuple[str, str] | None
) -> WSGIServer:
    """Bind ``host:port`` serving ``registry`` (any path) behind ``auth``; not yet serving."""
    return make_server(host, port, guarded(make_wsgi_app(registry), auth), _Server, _QuietHandler)


def serve_in_background(httpd: WSGIServer) -> None:
    threading.Thread(target=httpd.serve_forever, name="dox-metrics", daemon=True).start()
