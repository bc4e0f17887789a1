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
from collections.abc import Callable, Collection
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import redis

from .db import records
from .db.store import StateStore
from .errors import TransientError
from .settings import stream_key

log = logging.getLogger(__name__)

STREAM_MAXLEN = 100_000
#: Entries read per XRANGE call while looking for a workflow's entries.
SCAN_BATCH = 1000


class Fanout(Protocol):
    def send(self, event: dict[str, Any], channel_suffix: str) -> None: ...

    def forget(self, workflow_ids: Collection[str]) -> int:
        """Delete the stream entries of these workflows; how many went."""
        ...


class NullFanout:
    """Embedded default: no Redis; the row and the JSONL log are the record."""

    def send(self, event: dict[str, Any], channel_suffix: str) -> None:
        return None

    def forget(self, workflow_ids: Collection[str]) -> int:
        return 0


class RedisFanout:
    def __init__(self, client: redis.Redis, namespace: str = "dox"):
        self.client = client
        self.stream = stream_key(namespace)
        self.channel_prefix = f"{namespace}.workflow."

    def forget(self, workflow_ids: Collection[str]) -> int:
        """XDEL every entry whose event belongs to one of ``workflow_ids``.

        Entries are found by reading the whole stream in batches (it is capped at
        ``STREAM_MAXLEN``); an operator deletion is rare enough for that. Messages
        already delivered over pub/sub, or read by a consumer, cannot be called back.
        """
        wanted = set(workflow_ids)
        gone = 0
        start = "-"
        try:
            while True:
                batch: list[tuple[bytes, dict[bytes, bytes]]] = self.client.xrange(  # type: ignore[assignment]
                    self.stream, start, "+", count=SCAN_BATCH
                )
                if not batch:
                    return gone
                doomed = [entry_id for entry_id, fields in batch if _entry_workflow(fields) in wanted]
                if doomed:
                    gone += int(self.client.xdel(self.stream, *doomed))
                last = batch[-1][0]
                start = f"({last.decode() if isinstance(last, bytes) else last}"
        except redis.RedisError as exc:
            raise TransientError(f"could not delete entries from the stream {self.stream}: {exc}") from exc

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


def _entry_workflow(fields: dict[Any, Any]) -> str | None:
    data = fields.get(b"data", fields.get("data"))
    try:
        wid = json.loads(data).get("workflow_id") if data else None
    except (ValueError, AttributeError):
        return None
    return wid if isinstance(wid, str) else None


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

    def redact(
        self, workflow_ids: Collection[str], redact: Callable[[dict[str, Any]], dict[str, Any] | None]
    ) -> dict[str, int]:
        """Rewrite, in place, the lines of these workflows that ``redact`` changes.

        Each redacted line is written over the original at the same offset, padded
        with spaces to the same length (JSON allows the whitespace): the file is never
        replaced, so a worker appending to it at the same moment loses nothing.
        ``redact`` returns the new payload, or None when the line holds nothing to
        remove. Returns lines rewritten per file name.
        """
        wanted = set(workflow_ids)
        changed: dict[str, int] = {}
        for path in sorted(self.folder.glob(f"{self.BASENAME}.*.jsonl")):
            if path.is_symlink():
                continue
            edits = []
            offset = 0
            with path.open("rb") as fh:
                for raw in fh:
                    line_at, offset = offset, offset + len(raw)
                    new = _redacted_line(raw, wanted, redact)
                    if new is not None:
                        edits.append((line_at, new))
            if not edits:
                continue
            fd = os.open(path, os.O_WRONLY)
            try:
                for at, new in edits:
                    os.pwrite(fd, new, at)
                os.fsync(fd)
            finally:
                os.close(fd)
            changed[path.name] = len(edits)
        return changed


def _redacted_line(
    raw: bytes, wanted: set[str], redact: Callable[[dict[str, Any]], dict[str, Any] | None]
) -> bytes | None:
    """The replacement for one log line (same length, newline kept), or None to keep it."""
    body = raw.rstrip(b"\n")
    try:
        record = json.loads(body)
    except ValueError:
        return None
    if not isinstance(record, dict) or record.get("workflow_id") not in wanted:
        return None
    payload = redact(record.get("payload") or {})
    if payload is None:
        return None
    compact = (",", ":")
    new = json.dumps({**record, "payload": payload}, sort_keys=True, default=str, separators=compact).encode()
    if len(new) > len(body):  # cannot happen for real events (redacting shortens); keep who/when/what
        keep = {k: record.get(k) for k in ("id", "type", "workflow_id", "created_at")}
        new = json.dumps({**keep, "payload": {"redacted": True}}, sort_keys=True, separators=compact).encode()
    if len(new) > len(body):
        return None
    return new.ljust(len(body)) + raw[len(body) :]


class EventBus:
    def __init__(self, state: StateStore, fanout: Fanout, log_folder: Path):
        self.state = state
        self.fanout = fanout
        self.execution_log = ExecutionLog(log_folder)

    def emit(
        self,
        event_id: str,
        workflow_id: str | None,
        type_: str,
        payload: dict[str, Any],
        channel: str = "",
    ) -> bool:
        """Record an event, then fan it out (stream, pub/sub ``<ns>.workflow.<channel or type>``);
        an id already recorded is neither written nor sent again. False when it was a repeat."""
        if not records.record_event(self.state, event_id, workflow_id, type_, payload):
            return False
        self.fan_out(event_id, type_, workflow_id, payload, channel or type_)
        return True

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
