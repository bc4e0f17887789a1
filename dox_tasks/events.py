"""Events: first a row in ``workflow_events`` (the record), then the live fan-out.

Order matters: the row is written before the Redis stream entry and the pub/sub
message, so a consumer that was down can always rebuild from Postgres. Each event
has a deterministic id (``<workflow_id>:<type>``) so a step that runs twice
emits the same id twice and consumers drop the duplicate.

* Redis stream ``<ns>:events`` — consumers resume from their last id after a disconnect.
* Pub/sub channel ``<ns>.workflow.<status>`` — live listeners (the seed's names).
* ``WORKFLOW_EXECUTION_LOG.jsonl`` in the memory banks — the seed's audit trail,
  one file per UTC day (``WORKFLOW_EXECUTION_LOG.<date>.jsonl``) so no growing file
  is ever rewritten; ``WORKFLOW_EXECUTION_LOG.jsonl`` is a symlink to today's.
"""

from __future__ import annotations

import json
import logging
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import redis

from .db.store import StateStore
from .errors import TransientError

log = logging.getLogger(__name__)

STREAM_MAXLEN = 100_000


class Fanout(Protocol):
    def send(self, event: dict[str, Any], channel_suffix: str) -> None: ...


class NullFanout:
    """Embedded default: no Redis; the row and the JSONL log are the record."""

    def send(self, event: dict[str, Any], channel_suffix: str) -> None:
        return None


class RedisFanout:
    def __init__(self, client: redis.Redis, namespace: str = "dox"):
        self.client = client
        self.stream = f"{namespace}:events"
        self.channel_prefix = f"{namespace}.workflow."

    def send(self, event: dict[str, Any], channel_suffix: str) -> None:
        data = json.dumps(event, sort_keys=True, default=str)
        try:
            pipe = self.client.pipeline(transaction=False)
            pipe.xadd(
                self.stream,
                {"id": event["id"], "type": event["type"], "data": data},
                maxlen=STREAM_MAXLEN,
                approximate=True,
            )
            pipe.publish(self.channel_prefix + channel_suffix, data)
            pipe.execute()
        except redis.RedisError as exc:
            raise TransientError(f"event fan-out to Redis failed: {exc}") from exc


class ExecutionLog:
    """Append-only JSON Lines audit trail, one file per UTC day."""

    BASENAME = "WORKFLOW_EXECUTION_LOG"

    def __init__(self, folder: Path):
        self.folder = folder

    def append(self, record: dict[str, Any]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        day = datetime.now(UTC).strftime("%Y-%m-%d")
        path = self.folder / f"{self.BASENAME}.{day}.jsonl"
        line = (json.dumps(record, sort_keys=True, default=str) + "\n").encode()
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            os.write(fd, line)  # one write per line with O_APPEND: lines never interleave
        finally:
            os.close(fd)
        current = self.folder / f"{self.BASENAME}.jsonl"
        if not current.is_symlink() or os.readlink(current) != path.name:
            tmp = self.folder / f".{self.BASENAME}.{os.getpid()}.link"
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(path.name)
            os.replace(tmp, current)


class EventBus:
    def __init__(self, state: StateStore, fanout: Fanout, log_folder: Path):
        self.state = state
        self.fanout = fanout
        self.execution_log = ExecutionLog(log_folder)

    def fan_out(
        self, event_id: str, type_: str, workflow_id: str | None, payload: dict[str, Any], channel_suffix: str
    ) -> None:
        """Send an already-recorded event to the live listeners and the audit log.

        A fan-out failure (Redis down) is logged, not raised: the row is the
        record, and losing a live notification is tolerable where losing the
        workflow's terminal state is not.
        """
        event = {
            "id": event_id,
            "type": type_,
            "workflow_id": workflow_id,
            "created_at": datetime.now(UTC).isoformat(),
            "payload": payload,
        }
        try:
            self.fanout.send(event, channel_suffix)
        except TransientError as exc:
            log.warning("event %s recorded but not fanned out: %s", event_id, exc)
        try:
            self.execution_log.append(event)
        except OSError as exc:  # the audit file is a convenience; the row is the record
            log.warning("could not append to the execution log: %s", exc)
