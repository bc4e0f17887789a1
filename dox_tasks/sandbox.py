"""Run untrusted parsing in a forked child with CPU, memory and wall-clock limits.

Celery's time limits exist only in the prefork pool; the solo pool and DOX's
embedded worker have none, and a PDF whose page tree loops or whose streams
inflate to gigabytes would hang or kill the worker. A forked child is cheap (the
parser is already imported), gets ``RLIMIT_CPU`` and ``RLIMIT_AS``, and answers
through a pipe. Whatever it does, the worker survives. ``os.fork`` is used
directly because Celery's prefork children are daemonic and may not start
``multiprocessing`` children.

Only a limit DOX set is reported as :class:`LimitExceeded` (a verdict about the
document); a child killed from outside (OOM killer, an operator) is a fault
(``RuntimeError``), so the step is retried rather than the document refused.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import selectors
import signal
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

#: pipe() + fork() + close() must not interleave between threads, or one thread's
#: child inherits another's pipe and keeps it open.
_FORK_LOCK = threading.Lock()


@dataclass(frozen=True)
class Limits:
    cpu_s: int = 10
    memory_mib: int = 768
    wall_s: float = 30.0


class LimitExceeded(Exception):
    """The child ran out of CPU, memory or wall time."""

    def __init__(self, what: str):
        self.what = what
        super().__init__(what)


def _address_space() -> int:
    """Virtual memory this process already maps, in bytes (Linux /proc)."""
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[0])
    return pages * resource.getpagesize()


def _child(fn: Callable[..., dict[str, Any]], args: tuple[Any, ...], write_fd: int, limits: Limits) -> None:
    code = 0
    try:
        os.closerange(3, write_fd)  # nothing inherited but our own pipe end
        os.closerange(write_fd + 1, 65536)
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
        view = memoryview(json.dumps(payload).encode())
        while view:
            view = view[os.write(write_fd, view) :]
    except BaseException:  # noqa: BLE001
        code = 70
    finally:
        os._exit(code)


def run_limited(fn: Callable[..., dict[str, Any]], *args: Any, limits: Limits) -> dict[str, Any]:
    """Call ``fn(*args)`` in a child process; return its JSON-able dict result.

    Raises :class:`LimitExceeded` when one of *our* limits is hit, and ``RuntimeError``
    if ``fn`` raised or the child died of something else.
    """
    with _FORK_LOCK:
        read_fd, write_fd = os.pipe()
        try:
            pid = os.fork()
        except OSError:
            os.close(read_fd)
            os.close(write_fd)
            raise
        if pid == 0:
            os.close(read_fd)
            _child(fn, args, write_fd, limits)
        os.close(write_fd)
    chunks: list[bytes] = []
    finished = False
    wall_hit = False
    try:
        with selectors.DefaultSelector() as sel:
            sel.register(read_fd, selectors.EVENT_READ)
            deadline = time.monotonic() + limits.wall_s
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    wall_hit = True
                    break
                if not sel.select(remaining):
                    continue
                chunk = os.read(read_fd, 1 << 16)
                if not chunk:
                    finished = True
                    break
                chunks.append(chunk)
    finally:
        os.close(read_fd)
        if not finished:  # wall limit, or the parent is being interrupted: never wait on a child
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _, status, usage = os.wait4(pid, 0)
    if wall_hit:
        raise LimitExceeded(f"wall-clock limit of {limits.wall_s:.0f}s")
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        cpu_used = usage.ru_utime + usage.ru_stime
        if sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu_used >= limits.cpu_s):
            raise LimitExceeded(f"CPU limit of {limits.cpu_s}s")
        raise RuntimeError(f"parser child killed by signal {sig} after {cpu_used:.1f}s CPU")
    payload = json.loads(b"".join(chunks)) if chunks else {}
    if "limit" in payload:
        raise LimitExceeded(
            f"memory limit of {limits.memory_mib} MiB" if payload["limit"] == "memory" else "recursion limit"
        )
    if "error" in payload:
        raise RuntimeError(payload["error"])
    if "ok" not in payload:
        raise RuntimeError(f"parser child exited with status {os.WEXITSTATUS(status)} and no answer")
    return dict(payload["ok"])
