"""The parser sandbox: limits become verdicts, outside faults do not, nothing is left behind."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from dox_tasks.sandbox import LimitExceeded, Limits, run_limited


def spin(_: int) -> dict:
    while True:
        pass


def sleep_for(seconds: float) -> dict:
    time.sleep(seconds)
    return {"slept": seconds}


def hog(_: int) -> dict:
    blocks = []
    while True:
        blocks.append(bytearray(64 * 1024 * 1024))


def kill_myself(_: int) -> dict:
    os.kill(os.getpid(), signal.SIGKILL)
    return {}


def test_answers_come_back():
    assert run_limited(sleep_for, 0, limits=Limits()) == {"slept": 0}


def test_cpu_limit_is_a_limit():
    with pytest.raises(LimitExceeded, match="CPU limit"):
        run_limited(spin, 0, limits=Limits(cpu_s=1, wall_s=10))


def test_memory_limit_is_a_limit():
    with pytest.raises(LimitExceeded, match="memory limit"):
        run_limited(hog, 0, limits=Limits(memory_mib=128, wall_s=20))


def test_wall_limit_is_a_limit():
    start = time.monotonic()
    with pytest.raises(LimitExceeded, match="wall-clock"):
        run_limited(sleep_for, 10, limits=Limits(wall_s=0.5))
    assert time.monotonic() - start < 3


def test_a_kill_from_outside_is_a_fault_not_a_verdict():
    with pytest.raises(RuntimeError, match="signal 9"):
        run_limited(kill_myself, 0, limits=Limits())


def test_threads_do_not_hold_each_others_pipes():
    """A fast parse must not wait for a slow neighbour's child (inherited pipe ends)."""
    slow = threading.Thread(target=run_limited, args=(sleep_for, 3), kwargs={"limits": Limits()})
    slow.start()
    time.sleep(0.2)
    start = time.monotonic()
    run_limited(sleep_for, 0, limits=Limits())
    assert time.monotonic() - start < 1.5
    slow.join()


def children() -> set[str]:
    found: set[str] = set()
    for tid in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{tid}/children") as fh:
            found.update(fh.read().split())
    return found


def test_no_children_are_left_behind():
    before = children()
    for _ in range(5):
        with pytest.raises(LimitExceeded):
            run_limited(sleep_for, 10, limits=Limits(wall_s=0.2))
    assert children() == before  # killed and reaped: no zombies
