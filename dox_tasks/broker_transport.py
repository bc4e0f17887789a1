"""kombu's Redis transport, dropping what is not a message instead of dying on it.

kombu decodes each item it pops from a queue and builds a message from it; an item
that is not JSON, or JSON that is not a message envelope, raises inside the worker's
event loop and ends the worker (``Unrecoverable error``). Anyone who may push onto
a queue — upstream services may push onto ``intake`` — could stop its workers that
way. This transport drops such an item (it is already off the queue) and logs it
without its content; real messages go on to Celery unchanged. DOX's Celery app uses
it for ``redis://`` brokers (``celery_app.celery_config``); with ``rediss://`` kombu's
own transport stays, because naming a transport drops the TLS settings kombu derives
from that scheme.
"""

from __future__ import annotations

import logging
from typing import Any

from kombu.transport import redis

log = logging.getLogger("dox.queues")


class Channel(redis.Channel):
    def _brpop_read(self, **options: Any) -> bool:
        try:
            return bool(super()._brpop_read(**options))
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            log.error("dropped an item on a queue that is not a task message (%s)", type(exc).__name__)
            return True


class Transport(redis.Transport):
    Channel = Channel
