"""A second baseline: DOX's Celery layout with nothing of DOX inside.

The same settings the contract requires of DOX's workers (JSON only, ``acks_late`` with
``reject_on_worker_lost``, prefetch 1, time limits, ``worker_max_memory_per_child``,
results ignored), the same five queues and the compose file's two workers
(``-c 10`` on four queues, ``-c 4`` on ``scan``), and five no-op tasks: what Celery
itself costs per workflow in that layout, before DOX records anything. The last task
counts finished chains in Redis (there is no result backend to wait on).
"""

import os

import redis
from celery import Celery
from kombu import Queue

url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
prefix = os.environ.get("BENCH_PREFIX", "bench-layout:")
QUEUES = ["validation", "scan", "storage", "recognition", "events"]

app = Celery("layout", broker=url)
app.conf.update(
    broker_transport_options={"global_keyprefix": prefix, "visibility_timeout": 3600},
    task_serializer="json",
    accept_content=["json"],
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    task_ignore_result=True,
    worker_prefetch_multiplier=1,
    worker_max_memory_per_child=512 * 1024,
    task_time_limit=300,
    task_soft_time_limit=290,
    task_queues=[Queue(q, routing_key=q) for q in QUEUES],
    task_default_queue="validation",
    worker_send_task_events=False,
    worker_hijack_root_logger=False,
)
counter = redis.Redis.from_url(url)
DONE = prefix + "done"


@app.task(name="layout.step")
def step(i: int) -> None:
    return None


@app.task(name="layout.last")
def last(i: int) -> None:
    counter.incr(DONE)
