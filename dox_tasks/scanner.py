"""Virus scanning over the clamd protocol (INSTREAM), behind a small interface.

The client is ``clamav-client``, the maintained fork of ``clamd``: clamd 1.0.2
writes INSTREAM chunks with ``socket.send``, which may send only part of a chunk
once a socket timeout is set, corrupting the stream; the fork uses ``sendall``.

Fail closed: a scanner that cannot be reached raises :class:`ScannerUnavailable`
(the step retries, then the workflow fails ``scanner_unavailable``); it never
reports "clean". A file too large for clamd's limits comes back as a
``Heuristics.Limits.Exceeded`` finding because DOX's clamd.conf sets
``AlertExceedsMax yes``; DOX refuses it as ``too_large`` instead of storing it unscanned.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import BinaryIO, Protocol, cast

from clamav_client import clamd

from .errors import ScannerUnavailable
from .settings import DEBIAN_CLAMD_SOCKET, Settings, parse_clamd_url

CHUNK = 64 * 1024


@dataclass(frozen=True)
class Verdict:
    result: str  # clean | infected | skipped
    signature: str | None = None
    engine: str | None = None  # what clamd reports: "ClamAV 1.0.9/27000/…"
    limits_exceeded: bool = False


class Scanner(Protocol):
    name: str

    def scan(self, stream: BinaryIO) -> Verdict: ...

    def version(self) -> str | None: ...


class SkippedScanner:
    """No scanning: only with CLAMAV_ENABLED=false or embedded without a clamd."""

    def __init__(self, why: str):
        self.name = "skipped"
        self.why = why

    def scan(self, stream: BinaryIO) -> Verdict:
        return Verdict("skipped", engine=self.why)

    def version(self) -> str | None:
        return None


class MissingScanner:
    """Scanning is required but no clamd is configured: fail closed on every scan."""

    name = "missing"

    def scan(self, stream: BinaryIO) -> Verdict:
        raise ScannerUnavailable("CLAMAV_ENABLED=true but DOX_CLAMD_URL is not set")

    def version(self) -> str | None:
        return None


class _ChunkedReader:
    """Feed clamd's INSTREAM in 64 KiB chunks instead of the library's 1 KiB."""

    def __init__(self, stream: BinaryIO):
        self.stream = stream

    def read(self, _n: int) -> bytes:
        return self.stream.read(CHUNK)


class ClamdScanner:
    def __init__(self, url: str, timeout: float):
        kind, where = parse_clamd_url(url)
        self.name = url
        if kind == "tcp":
            host, port = str(where).rsplit(":", 1)
            self._client: clamd.ClamdNetworkSocket = clamd.ClamdNetworkSocket(
                host, int(port), timeout=timeout
            )
        else:
            self._client = clamd.ClamdUnixSocket(str(where), timeout=math.ceil(timeout))

    def version(self) -> str | None:
        try:
            return str(self._client.version()).strip()
        except (clamd.ClamdError, OSError) as exc:
            raise ScannerUnavailable(f"clamd at {self.name} did not answer VERSION: {exc}") from exc

    def ping(self) -> bool:
        try:
            return bool(self._client.ping() == "PONG")
        except (clamd.ClamdError, OSError):
            return False

    def scan(self, stream: BinaryIO) -> Verdict:
        engine = self.version()
        try:
            answer = self._client.instream(cast(BinaryIO, _ChunkedReader(stream)))
        except clamd.BufferTooLongError:
            return Verdict("infected", "Heuristics.Limits.Exceeded.StreamMaxLength", engine, True)
        except (TimeoutError, clamd.ClamdError, OSError) as exc:
            raise ScannerUnavailable(f"clamd at {self.name} failed during INSTREAM: {exc}") from exc
        status, signature = answer.get("stream", ("ERROR", "no answer"))
        if status == "OK":
            return Verdict("clean", engine=engine)
        if status == "FOUND":
            exceeded = str(signature).startswith("Heuristics.Limits.Exceeded")
            return Verdict("infected", str(signature), engine, exceeded)
        if "size limit" in str(signature).lower():
            return Verdict("infected", "Heuristics.Limits.Exceeded.StreamMaxLength", engine, True)
        raise ScannerUnavailable(f"clamd at {self.name} answered {status}: {signature}")


def make_scanner(settings: Settings) -> Scanner:
    """Pick the scanner the settings ask for (see docs for the embedded rules)."""
    if not settings.clamav_enabled:
        return SkippedScanner("CLAMAV_ENABLED=false")
    if settings.clamd_url:
        return ClamdScanner(settings.clamd_url, settings.clamd_timeout_s)
    if settings.embedded:
        if os.path.exists(DEBIAN_CLAMD_SOCKET):
            local = ClamdScanner(f"unix://{DEBIAN_CLAMD_SOCKET}", settings.clamd_timeout_s)
            if local.ping():
                return local
        return SkippedScanner("embedded default: no clamd configured or listening")
    return MissingScanner()
