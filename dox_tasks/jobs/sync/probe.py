"""One health check: an HTTP GET that always ends in a status, never an exception.

``up``: a 2xx JSON answer within ``slow_ms`` (a JSON ``status`` of ``degraded``
or ``down`` is believed). ``degraded``: slow, or a 2xx answer that is not JSON.
``down``: refused, unreachable, timed out, or any non-2xx status. The cause is
a sentence for the memory bank and the operator.
"""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from typing import Any

MAX_BODY = 64 * 1024


@dataclass(frozen=True)
class Health:
    service: str
    status: str  # up | degraded | down
    latency_ms: int | None
    cause: str | None = None
    http_status: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check(service: str, url: str, timeout_s: float, slow_ms: int, deadline: float | None = None) -> Health:
    """Check one service; ``deadline`` (epoch seconds) caps the timeout: the sync ends then."""
    start = time.monotonic()
    why_timeout = f"no answer within {timeout_s:g}s"
    if deadline is not None:
        left = deadline - time.time()
        if left <= 0:
            return Health(service, "down", None, "not checked: the sync deadline had passed")
        if left < timeout_s:
            timeout_s = left
            why_timeout = f"no answer before the sync deadline ({left:.1f}s)"

    def elapsed() -> int:
        return int((time.monotonic() - start) * 1000)

    if not url.startswith(("http://", "https://")):
        return Health(service, "down", 0, f"not an http(s) URL: {url[:100]!r}")
    headers = {"Accept": "application/json", "User-Agent": "dox-sync"}
    request = urllib.request.Request(url, headers=headers)  # noqa: S310 - http(s) checked above
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310
            body = response.read(MAX_BODY)
            code = response.status
    except urllib.error.HTTPError as exc:
        return Health(service, "down", elapsed(), f"HTTP {exc.code} {exc.reason}", exc.code)
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, TimeoutError | socket.timeout):
            return Health(service, "down", elapsed(), why_timeout)
        if isinstance(reason, ConnectionRefusedError):
            return Health(service, "down", elapsed(), "connection refused")
        return Health(service, "down", elapsed(), f"unreachable: {reason}")
    except TimeoutError:
        return Health(service, "down", elapsed(), why_timeout)
    except (OSError, ValueError) as exc:  # reset connections, bad URLs, broken HTTP
        return Health(service, "down", elapsed(), f"check failed: {type(exc).__name__}: {exc}")
    latency = elapsed()
    try:
        data = json.loads(body)
    except ValueError:
        return Health(service, "degraded", latency, "answer is not JSON", code)
    reported = str(data.get("status", "")).lower() if isinstance(data, dict) else ""
    if reported in ("down", "error", "fail", "failing"):
        return Health(service, "down", latency, f"service reports status {reported!r}", code)
    if reported == "degraded":
        return Health(service, "degraded", latency, "service reports status 'degraded'", code)
    if latency > slow_ms:
        return Health(service, "degraded", latency, f"slow: {latency} ms (> {slow_ms} ms)", code)
    return Health(service, "up", latency, None, code)
