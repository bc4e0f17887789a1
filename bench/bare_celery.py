"""The baseline: five no-op tasks in a chain, as a Celery user writes it.

Default settings, Redis broker and result backend, prefork with concurrency = cores.
Run as a worker with ``celery -A bare_celery worker``; ``bench/pipeline.py`` does that.
"""

import os

from celery import Celery

url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
app = Celery("bare", broker=url, backend=url)
prefix = os.environ.get("BENCH_PREFIX")
if prefix:  # keep the benchmark's keys apart from anything else on the shared Redis
    app.conf.broker_transport_options = {"global_keyprefix": prefix}
    app.conf.result_backend_transport_options = {"global_keyprefix": prefix}


@app.task
def step(x=None):
    return x
