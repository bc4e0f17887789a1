"""kombu's Redis transport, dropping what is not a message instead of dying on it.

kombu decodes each item it pops from a queue and builds a message from it; an item
that is not JSON, or JSON that is not a message envelope, raises inside the worker's
event loop and ends the worker (``Unrecoverable error``); an envelope whose task name
is not a string makes Celery raise *after* kombu counted the message as unacked, so it
holds one of the worker's prefetch slots for good (and returns at every restart).
Anyone who may push onto a queue — upstream services may push onto ``intake`` — could
stop its workers either way. So this transport checks the envelope before delivering
it, drops what is not a message (it is already off the queue), and rejects — without
requeueing — a message that Celery failed on after all, so no slot stays taken. Each is
logged without its content. DOX's Celery app uses it for ``redis://`` brokers
(``celery_app.celery_config``); with ``rediss://`` kombu's own transport stays, because
naming a transport drops the TLS settings kombu derives from that scheme.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from kombu.transport import redis

from .contract import QUEUES

log = logging.getLogger("dox.queues")
_MAX_NAME = 200


def envelope_problem(raw: Any, task_queue: bool) -> str | None:
    """Why ``raw`` (a decoded queue item) is not a message kombu can take — and, on one of
    DOX's task queues (``task_queue``), not a task message Celery can take. (Remote-control
    and event messages travel on other queues, with no task headers.)"""
    if not isinstance(raw, dict):
        return "not an object"
    props = raw.get("properties")
    if not isinstance(props, dict) or not isinstance(props.get("delivery_info"), dict):
        return "no properties with delivery_info"
    if not isinstance(props.get("delivery_tag"), str) or len(props["delivery_tag"]) > _MAX_NAME:
        return "no delivery tag"
    if not isinstance(raw.get("body"), str):
        return "no body"
    if not task_queue:
        return None
    headers = raw.get("headers")
    if not isinstance(headers, dict):
        return "no headers (DOX takes Celery message protocol 2 only)"
    for key in ("task", "id"):
        value = headers.get(key)
        if not (isinstance(value, str) and 0 < len(value) <= _MAX_NAME):
            return f"header {key!r} is not a short string"
    return None


class Channel(redis.Channel):
    def _brpop_read(self, **options: Any) -> bool:
        try:
            return bool(super()._brpop_read(**options))
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            # Raised while decoding the item, before it became a message: nothing holds it.
            log.error("dropped an item on a queue that is not a task message (%s)", type(exc).__name__)
            return True


class Transport(redis.Transport):
    Channel = Channel

    def _deliver(self, message: Any, queue: str) -> None:
        why = envelope_problem(message, task_queue=queue in QUEUES)
        if why:
            log.error("dropped an item on a queue that is not a task message (%s)", why)
            return
        try:
            super()._deliver(message, queue)
        except Exception as exc:  # noqa: BLE001 - a message Celery could not take must not hold a slot
            tag = message["properties"]["delivery_tag"]
            log.error(
                "rejected task %s (id %s) Celery could not take: %s",
                message["headers"]["task"],
                message["headers"]["id"],
                type(exc).__name__,
            )
            for channel in self.channels:
                if tag in getattr(channel.qos, "_delivered", {}):
                    with contextlib.suppress(Exception):
                        channel.qos.reject(tag, requeue=False)
