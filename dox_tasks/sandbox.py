"""Run untrusted parsing in a forked child with CPU, memory and wall-clock limits.

Celery's time limits exist only in the prefork pool; the solo pool and DOX's
embedded worker have none, and a PDF whose page tree loops or whose streams
inflate to gigabytes would hang or kill the worker. A forked child is cheap (the
parser is already imported), gets ``RLIMIT_CPU`` and ``RLIMIT_AS``, and answers
through a pipe. Whatever it does, the worker survives. ``os.fork`` is used
directly because Celery's prefork children are daemonic and may not start
``multiprocessing`` children.
"""

from __future__ import annotations

import json
import os
import resource
import select
import signal
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Limits:
    cpu_s: int = 10
    memory_mib: int = 768
    wall_s: float = 30.0


class LimitExceeded(Exception):
    """The child ran out of CPU, memory or wall time (or died)."""

    def __init__(self, what: str):
        self.what = what
        super().__init__(what)


def _address_space() -> int:
    """Virtual memory this process already maps, in bytes (Linux /proc)."""
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[0])
    return pages * resource.getpagesize()


def run_limited(fn: Callable[..., dict[str, Any]], *args: Any, limits: Limits) -> dict[str, Any]:
    """Call ``fn(*args)`` in a child process; return its JSON-able dict result.

    Raises :class:`LimitExceeded` when a limit is hit, and ``RuntimeError`` with the
    child's traceback if ``fn`` raised.
    """
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        code = 0
        try:
            os.close(read_fd)
            resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_s, limits.cpu_s + 1))
            # The child inherits the worker's address space: allow that plus the budget.
            mem = _address_space() + limits.memory_mib * 1024 * 1024
            resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
            try:
                payload: dict[str, Any] = {"ok": fn(*args)}
            except MemoryError:
                payload = {"limit": "memory"}
            except RecursionError:
                payload = {"limit": "recursion"}
            except BaseException:  # noqa: BLE001 - report anything to the parent
                payload = {"error": traceback.format_exc(limit=8)}
            data = json.dumps(payload).encode()
            view = memoryview(data)
            while view:
                n = os.write(write_fd, view)
                view = view[n:]
        except BaseException:  # noqa: BLE001
            code = 70
        finally:
            os._exit(code)
    os.close(write_fd)
    chunks: list[bytes] = []
    deadline = time.monotonic() + limits.wall_s
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                os.kill(pid, signal.SIGKILL)
                raise LimitExceeded(f"wall-clock limit of {limits.wall_s:.0f}s")
            ready, _, _ = select.select([read_fd], [], [], remaining)
            if not ready:
                continue
            chunk = os.read(read_fd, 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(read_fd)
        _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig in (signal.SIGXCPU, signal.SIGKILL):
            raise LimitExceeded(f"CPU limit of {limits.cpu_s}s")
        raise LimitExceeded(f"parser died with signal {sig}")
    if not chunks:
        raise LimitExceeded("parser exited without an answer (memory limit?)")
    payload = json.loads(b"".join(chunks))
    if "limit" in payload:
        raise LimitExceeded(
            f"{payload['limit']} limit of {limits.memory_mib} MiB"
            if payload["limit"] == "memory"
            else "recursion limit"
        )
    if "error" in payload:
        raise RuntimeError(payload["error"])
    return dict(payload["ok"])
