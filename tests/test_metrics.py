"""Prometheus metrics: the exporter's counts come from Postgres, the workers' step timings
are summed over a prefork pool (multi-process mode); both endpoints are behind basic auth."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import pdfs
import pytest
from prometheus_client.parser import text_string_to_metric_families
from services import free_port, http_get, kill_group, server_env, spawn_dox

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.clamd, pytest.mark.integration]

AUTH = ("prom", "scrape-secret")
STEPS = ("validate", "scan", "store", "recognize", "publish")
DOC = "process_document_upload"


def fetch(url: str, auth: tuple[str, str] | None = AUTH) -> tuple[int, str]:
    status, body = http_get(url, auth)
    return status, body.decode()


def samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    return [
        (s.name, dict(s.labels), s.value) for fam in text_string_to_metric_families(text) for s in fam.samples
    ]


def value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    return sum(v for n, lab, v in samples(text) if n == name and labels.items() <= lab.items())


def wait_for_http(url: str, log, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            fetch(url)
            return
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"{url} never answered:\n{log.read_text()[-3000:]}")


def test_prefork_worker_and_exporter_count_every_workflow(tmp_path, stack, harness_factory):
    h = harness_factory(stack)  # the tables; this test's worker is a separate prefork process
    worker_port, exporter_port = free_port(), free_port()
    env = server_env(
        tmp_path,
        stack,
        DOX_METRICS_USER=AUTH[0],
        DOX_METRICS_PASSWORD=AUTH[1],
        DOX_METRICS_PORT=str(worker_port),
        DOX_METRICS_HOST="127.0.0.1",
    )
    worker_log, exporter_log = tmp_path / "worker.log", tmp_path / "exporter.log"
    queues = "validation,scan,storage,recognition,events"
    worker = spawn_dox(["worker", "-Q", queues, "-c", "2", "-P", "prefork", "-n", "m@test"], env, worker_log)
    exporter = spawn_dox(
        ["metrics", "serve", "--port", str(exporter_port), "--address", "127.0.0.1"], env, exporter_log
    )
    worker_url = f"http://127.0.0.1:{worker_port}/metrics"
    exporter_url = f"http://127.0.0.1:{exporter_port}/metrics"
    try:
        wait_for_http(worker_url, worker_log, 60)
        wait_for_http(exporter_url, exporter_log)
        ids = [h.submit(pdfs.unique(1000 + n)) for n in range(8)] + [h.submit(pdfs.truncated())]
        rows = h.wait(ids, 120)
        states = sorted(r["current_state"] for r in rows.values())
        assert states == ["rejected"] + ["success"] * 8

        assert fetch(exporter_url, None)[0] == 401
        assert fetch(exporter_url, (AUTH[0], "wrong"))[0] == 401
        assert fetch(worker_url, None)[0] == 401
        status, text = fetch(exporter_url)
        assert status == 200
        doc = {"rule_name": "process_document_upload", "kind": "document"}
        assert value(text, "workflow_completed_total", status="success", **doc) == 8
        assert value(text, "workflow_completed_total", status="rejected", **doc) == 1
        assert value(text, "workflow_failed_total", **doc) == 0
        assert value(text, "workflow_duration_seconds_count", **doc) == 9
        assert value(text, "workflow_duration_seconds_bucket", le="+Inf", **doc) == 9
        assert value(text, "validation_scan_total", result="clean") == 8
        assert value(text, "dox_workflows_active") == 0
        assert value(text, "dox_database_up") == 1 and value(text, "dox_broker_up") == 1
        assert value(text, "dox_workers_up") == 1
        assert value(text, "dox_queue_workers", queue="scan") == 1
        assert value(text, "dox_queue_workers", queue="operations") == 0
        assert value(text, "dox_rate_limit_max_usage_ratio") == pytest.approx(9 / 100)

        # The worker's pool processes each wrote their own timings; the endpoint sums them.
        _, wtext = fetch(worker_url)
        counts = {s: value(wtext, "dox_step_duration_seconds_count", step=s) for s in STEPS}
        assert counts == {"validate": 9, "scan": 8, "store": 8, "recognize": 8, "publish": 8}, wtext
        assert value(wtext, "dox_step_duration_seconds_count", step="validate", outcome="rejected") == 1
        assert value(wtext, "dox_step_duration_seconds_count", step="scan", queue="scan") == 8
    finally:
        kill_group(worker)
        kill_group(exporter)
    assert AUTH[1] not in worker_log.read_text() + exporter_log.read_text()

    # Logs are JSON lines (the worker's stderr is a file); each line a step writes
    # carries workflow_id, step and task_id.
    wid = ids[0]
    mine = [line for line in worker_log.read_text().splitlines() if wid in line]
    records = [json.loads(line) for line in mine]  # every line about it is JSON
    tagged = [r for r in records if r.get("workflow_id") == wid]
    assert {r["step"] for r in tagged} == set(STEPS), records
    assert all(r["task_id"] and r["level"] and r["time"] for r in tagged)


def test_counters_survive_retention_and_report_what_is_down(tmp_path, stack, harness_factory):
    from sqlalchemy import update

    from dox_tasks.db.tables import WS
    from dox_tasks.db.tally import Cache, archived, combine, tally
    from dox_tasks.jobs.maintenance import expire_workflows
    from dox_tasks.metrics.exporter import DoxCollector

    h = harness_factory(stack)
    h.worker()
    ids = [h.run(pdfs.unique(1100 + n))["workflow_id"] for n in range(3)] + [
        h.run(pdfs.truncated())["workflow_id"]
    ]
    cache = Cache(settle_s=0, step_s=0)  # everything settled at once: the cache path is taken

    def cached() -> dict:
        with h.rt.state.tx() as conn:
            return dict(cache.read(conn, datetime.now(UTC)))

    with h.rt.state.tx() as conn:
        before = dict(combine(archived(conn), tally(conn)))
    assert cached() == pytest.approx(before)
    ids.append(h.run(pdfs.unique(1110))["workflow_id"])  # read incrementally on top of the cache
    with h.rt.state.tx() as conn:
        before = dict(combine(archived(conn), tally(conn)))
    assert cached() == pytest.approx(before)
    with h.rt.state.tx() as conn:
        old = datetime.now(UTC) - timedelta(days=stack.retention_days + 1)
        conn.execute(update(WS).where(WS.c.workflow_id.in_(ids[:2])).values(finished_at=old))
    assert expire_workflows(h.rt, datetime.now(UTC))["workflows_deleted"] == 2
    with h.rt.state.tx() as conn:
        live = tally(conn)
        after = dict(combine(archived(conn), tally(conn)))
    success = ("workflow_completed_total", (("kind", "document"), ("rule_name", DOC), ("status", "success")))
    assert (before[success], live[success]) == (4, 2)  # two of the rows are gone …
    assert after == pytest.approx(before)  # … and no counter went down
    assert cached() == pytest.approx(before)  # the archive changed: the cache was rebuilt

    # A database that cannot be read: dox_database_up 0 and no made-up zeros.
    from prometheus_client import CollectorRegistry, generate_latest

    from dox_tasks.db.store import open_store

    broken = h.rt.state
    h.rt.state = open_store("postgresql://nobody@127.0.0.1:1/none")
    try:
        registry = CollectorRegistry()
        registry.register(DoxCollector(h.rt, h.app))
        text = generate_latest(registry).decode()
    finally:
        h.rt.state = broken
    assert value(text, "dox_database_up") == 0
    assert "dox_last_backup_success_timestamp_seconds" not in text
    assert "workflow_completed_total" not in text
    assert value(text, "dox_broker_up") == 1
