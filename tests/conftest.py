"""Fixtures: real PostgreSQL, Redis and clamd; a real Celery worker in the test process."""

from __future__ import annotations

import gc
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import services  # noqa: E402
import stores  # noqa: E402

from dox_tasks import runtime  # noqa: E402
from dox_tasks.db.store import StateStore  # noqa: E402
from dox_tasks.settings import Settings  # noqa: E402


@pytest.fixture(scope="session")
def clamd_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A clamd with the test signature DB: the one .ci/run started, or our own."""
    import os

    given = os.environ.get("DOX_TEST_CLAMD_URL")
    if given:
        yield given
        return
    daemon = services.Clamd(tmp_path_factory.mktemp("clamd"))
    daemon.start()
    yield daemon.url
    daemon.stop()


@pytest.fixture
def pg_url() -> Iterator[str]:
    url = services.create_database()
    yield url
    runtime.configure(Settings())  # release pooled connections before dropping
    services.drop_database(url)


@pytest.fixture
def redis_url() -> str:
    problem = services.redis_ok()
    if problem:
        services.unavailable("Redis", problem)
    return services.REDIS_URL


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    """Settings for one test: its own home, storage, namespace; fast retries."""
    ns = f"t{uuid.uuid4().hex[:10]}"
    base = Settings()
    values: dict[str, Any] = dict(
        home=tmp_path / "home",
        namespace=ns,
        broker_key_prefix=f"{ns}-broker:",
        workflow_retry_delay=0.05,
        workflow_retry_backoff=1.5,
        clamav_enabled=True,
    )
    values.update(overrides)
    return base.model_copy(update=values)


@pytest.fixture
def settings_factory(tmp_path: Path):  # type: ignore[no-untyped-def]
    def factory(**overrides: Any) -> Settings:
        return make_settings(tmp_path, **overrides)

    return factory


@pytest.fixture
def stack(tmp_path: Path, pg_url: str, redis_url: str, clamd_url: str) -> Settings:
    """Settings for the full production stack: Redis broker, Postgres, clamd."""
    s = make_settings(tmp_path, broker_url=redis_url, database_url=pg_url, clamd_url=clamd_url)
    return s


class Harness:
    """One configured DOX: runtime + app + (optionally) an in-process worker."""

    def __init__(self, settings: Settings):
        from dox_tasks.app import app
        from dox_tasks.celery_app import reconfigure

        self.settings = settings
        self.app = app
        reconfigure(app, settings)
        self.rt = runtime.get()
        self.rt.state.migrate()
        self._workers: list[Any] = []

    def worker(self, queues: list[str] | None = None) -> Any:
        from celery.contrib.testing.worker import start_worker

        from dox_tasks.contract import INTAKE_QUEUE, QUEUES

        # Always name the queues: a worker's -Q selection is stored on the app and
        # would otherwise carry over to the next worker started in this process.
        # Every queue but intake by default: intake needs a worker of its own.
        kwargs: dict[str, Any] = {"queues": list(queues or [q for q in QUEUES if q != INTAKE_QUEUE])}
        import os
        import socket

        # Each in-process worker its own node name: two with one name answer inspect as one.
        kwargs.setdefault("hostname", f"test{len(self._workers)}-{os.getpid()}@{socket.gethostname()}")
        cm = start_worker(
            self.app,
            pool="solo",
            perform_ping_check=False,
            loglevel="WARNING",
            shutdown_timeout=30,
            **kwargs,
        )
        cm.__enter__()
        self._workers.append(cm)
        return cm

    def stop_workers(self) -> None:
        while self._workers:
            self._workers.pop().__exit__(None, None, None)

    def submit(self, data: bytes | Path | str, **kw: Any) -> str:
        from dox_tasks import submit

        kw.setdefault("user", "alice")
        if isinstance(data, bytes):
            kw.setdefault("file_name", "doc.pdf")
        return submit(data, **kw)

    def wait(self, ids: list[str], timeout: float = 60) -> dict[str, dict[str, Any]]:
        from dox_tasks.embedded import wait_for

        rows = wait_for(self.rt.state, ids, timeout)
        live = [i for i, r in rows.items() if r["current_state"] in ("queued", "running")]
        assert not live, f"workflows still live after {timeout}s: {live}"
        return rows

    def run(self, data: bytes, timeout: float = 60, **kw: Any) -> dict[str, Any]:
        wid = self.submit(data, **kw)
        return self.wait([wid], timeout)[wid]

    def backdate(self, ids: list[str], created: Any, took_s: float) -> None:
        """Move finished workflows into the past (reports and health look at yesterday)."""
        from datetime import timedelta

        from sqlalchemy import update

        from dox_tasks.db.tables import WS

        with self.rt.state.tx() as conn:
            conn.execute(
                update(WS)
                .where(WS.c.workflow_id.in_(ids))
                .values(created_at=created, finished_at=created + timedelta(seconds=took_s))
            )

    def objects(self) -> list[str]:
        return sorted(self.rt.storage.iter_objects())

    def wait_until(self, predicate: Any, timeout: float = 30, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def harness_factory() -> Iterator[Any]:
    made: list[Harness] = []

    def factory(settings: Settings) -> Harness:
        h = Harness(settings)
        made.append(h)
        return h

    yield factory
    for h in made:
        h.stop_workers()
    # Collect the test's garbage while its services still run: a Celery AsyncResult left
    # over unsubscribes in __del__, and against a stopped private Redis that retries for
    # ~20 s in whatever the next test is doing (long enough for its TcpProxy to drop an
    # idle PostgreSQL connection mid-transaction).
    gc.collect()


@pytest.fixture
def dox(stack: Settings, harness_factory: Any) -> Harness:
    """Full stack with a running worker consuming every queue."""
    h = harness_factory(stack)
    h.worker()
    return h


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: Any, tmp_path: Any) -> Iterator[StateStore]:
    """The same test on SQLite (embedded) and PostgreSQL (production)."""
    if request.param == "sqlite":
        s = stores.open_store(f"sqlite:///{tmp_path / 'dox.db'}")
        s.migrate()
        yield s
        s.close()
        return
    yield from stores.fresh_pg_store()
