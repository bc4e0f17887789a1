"""What the broker holds right now: which workflows have a message waiting or reserved.

The reaper must tell "slow" from "lost". With the Redis transport every waiting
message is an entry in the queue's list and every message a worker has taken
but not acknowledged (running, prefetched, or waiting for a retry countdown) is
in kombu's ``unacked`` hash, so a workflow whose id is in neither has no message
anywhere. Messages carry only references, so scanning them is cheap; the scan
is bounded per queue all the same.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass, field
from typing import Any

import redis

UUID = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
#: kombu's Redis transport keeps prioritised messages in sibling lists.
PRIORITY_SEP = "\x06\x16"
SCAN_LIMIT = 50_000


def workflow_ids(raw: bytes | str) -> set[str]:
    """Every workflow id a raw kombu message mentions (arguments and chained steps)."""
    if isinstance(raw, str):
        raw = raw.encode()
    found = set(UUID.findall(raw))
    try:
        data: Any = json.loads(raw)
        if isinstance(data, list):  # unacked entries are [message, exchange, routing_key]
            data = data[0]
        body = data.get("body")
        if isinstance(body, str) and data.get("properties", {}).get("body_encoding") == "base64":
            found |= set(UUID.findall(base64.b64decode(body)))
    except (ValueError, AttributeError, TypeError):
        pass
    return {f.decode() for f in found}


@dataclass
class BrokerView:
    waiting: dict[str, str] = field(default_factory=dict)  # workflow id -> queue
    reserved: set[str] = field(default_factory=set)  # taken by a worker, not acknowledged

    def where(self, workflow_id: str) -> str | None:
        if workflow_id in self.waiting:
            return f"queue:{self.waiting[workflow_id]}"
        if workflow_id in self.reserved:
            return "reserved"
        return None


def read(client: redis.Redis, prefix: str, queues: list[str]) -> BrokerView:
    view = BrokerView()
    for queue in queues:
        keys = [prefix + queue] + [f"{prefix}{queue}{PRIORITY_SEP}{n}" for n in range(1, 10)]
        for key in keys:
            for raw in client.lrange(key, 0, SCAN_LIMIT):
                for wid in workflow_ids(raw):
                    view.waiting.setdefault(wid, queue)
    for raw in client.hvals(prefix + "unacked"):
        view.reserved |= workflow_ids(raw)
    return view


def depths(client: redis.Redis, prefix: str, queues: list[str]) -> dict[str, int]:
    """Messages waiting per queue (Redis list length, priority sub-queues included)."""
    pipe = client.pipeline(transaction=False)
    for queue in queues:
        for key in [prefix + queue] + [f"{prefix}{queue}{PRIORITY_SEP}{n}" for n in range(1, 10)]:
            pipe.llen(key)
    counts = pipe.execute()
    return {q: sum(counts[i * 10 : (i + 1) * 10]) for i, q in enumerate(queues)}
