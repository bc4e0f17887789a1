"""CPU time by component during a benchmark run (Linux /proc accounting).

Throughput on a 2-core machine is bounded by the CPU every part of the system spends
per workflow: the workers, PostgreSQL, Redis and the submitting process all share the
same cores. Measuring each part's share over the same timed run says where a workflow's
cost goes, and makes two runs comparable even when the machine's speed drifts.
"""

from __future__ import annotations

import os
import time
from collections import Counter

HZ = os.sysconf("SC_CLK_TCK")


def snapshot(worker_groups: set[int]) -> Counter[str]:
    """CPU seconds so far of: the worker process groups, PostgreSQL, Redis, this process.

    Processes that exited since the previous snapshot are missed; the benchmark takes
    both snapshots while its workers run.
    """
    out: Counter[str] = Counter()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                cmd = fh.read(200)
        except OSError:
            continue
        seconds = (int(fields[11]) + int(fields[12])) / HZ  # utime + stime
        if int(fields[2]) in worker_groups:
            out["workers"] += seconds
        elif cmd.startswith(b"postgres") or b"/postgres" in cmd.split(b"\0", 1)[0]:
            out["postgres"] += seconds
        elif cmd.startswith(b"redis-server") or b"/redis-server" in cmd.split(b"\0", 1)[0]:
            out["redis"] += seconds
    t = os.times()
    out["client"] = t.user + t.system
    return out


def per_workflow_ms(before: Counter[str], after: Counter[str], n: int) -> dict[str, float]:
    parts = {k: (after[k] - before[k]) * 1000 / n for k in ("workers", "postgres", "redis", "client")}
    parts["total"] = sum(parts.values())
    return parts


def calibration_ms(iterations: int = 2_000_000) -> float:
    """CPU ms of a fixed pure-Python loop: how fast this machine is *right now*.

    On a shared VM the same work can take twice as long from one minute to the next;
    printing this next to each round shows which figures were taken in a slow phase.
    """
    started = time.process_time()
    total = 0
    for i in range(iterations):
        total += i
    return (time.process_time() - started) * 1000
