"""Fake health endpoints on loopback: ok, slow, 500, hung, not JSON, reports degraded.

``/ok?ms=200`` answers ``{"status": "ok"}`` after 200 ms; ``/slow?ms=1500`` the same,
later; ``/error`` is a 500; ``/hang`` never answers (until the server stops);
``/text`` is 200 with an HTML body; ``/degraded`` says so in its JSON. A refused
connection is a URL on a port nobody listens on (:func:`refused_url`).
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

from services import free_port


class _Handler(BaseHTTPRequestHandler):
    server: FakeHealth

    def log_message(self, *args: object) -> None:
        return None

    def _send(self, code: int, body: bytes, ctype: str = "application/json") -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        url = urlparse(self.path)
        ms = int(parse_qs(url.query).get("ms", ["0"])[0])
        if url.path == "/hang":
            self.server.stopping.wait()
            return
        time.sleep(ms / 1000)
        if url.path in ("/ok", "/slow"):
            self._send(200, json.dumps({"status": "ok"}).encode())
        elif url.path == "/degraded":
            self._send(200, json.dumps({"status": "degraded"}).encode())
        elif url.path == "/error":
            self._send(500, b'{"error": "boom"}')
        elif url.path == "/text":
            self._send(200, b"<html>it works</html>", "text/html")
        else:
            self._send(404, b"{}")


class FakeHealth(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        self.stopping = threading.Event()
        super().__init__(("127.0.0.1", 0), _Handler)
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)

    def start(self) -> FakeHealth:
        self.thread.start()
        return self

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"

    def stop(self) -> None:
        self.stopping.set()
        self.shutdown()
        self.server_close()


def refused_url() -> str:
    return f"http://127.0.0.1:{free_port()}/health"
