"""`dox health`: the morning checklist against the real services, and its exit codes."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pdfs
import pytest
from services import clean_env, dox, free_port, server_env
from sqlalchemy import update

from dox_tasks.db import records
from dox_tasks.db.tables import WS
from dox_tasks.health import gather
from dox_tasks.jobs.launch import start_run
from dox_tasks.jobs.slots import slot_key

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.clamd, pytest.mark.integration]


def test_health_degraded_then_ok_with_yesterdays_totals(stack, harness_factory, tmp_path):
    h = harness_factory(stack)
    h.worker()  # every queue but intake: no broker submissions wait, so that is no problem
    now = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0)
    report = gather(h.rt, h.app, now)
    assert report.exit_code == 1, report.to_dict()
    assert "no database backup recorded" in report.problems
    assert any("team sync" in p and "missing" in p for p in report.problems)
    assert report.checks["clamd"]["ok"] and report.checks["clamd"]["engine"].startswith("ClamAV")
    per_queue = report.checks["workers"]["per_queue"]
    assert per_queue.pop("intake") == [] and all(per_queue.values())
    assert not any("intake" in p for p in report.problems)

    # Yesterday: two documents; a fresh backup; this morning's sync found one service down.
    rows = [h.run(pdfs.unique(800)), h.run(pdfs.unique(801))]
    h.backdate([r["workflow_id"] for r in rows], now - timedelta(days=1), 2)
    records.add_backup(
        h.rt.state, kind="database", path="/x.dump", status="ok", created_at=now - timedelta(hours=3)
    )
    slot = now.replace(hour=9)
    sync = start_run(h.rt, "sync_team_coordination", slot_key(slot))
    with h.rt.state.tx() as conn:
        conn.execute(
            update(WS)
            .where(WS.c.workflow_id == sync.workflow_id)
            .values(
                current_state="success",
                created_at=slot,
                result={"services": {"a": {"status": "down"}, "b": {"status": "up"}}},
            )
        )
    report = gather(h.rt, h.app, now)
    assert report.exit_code == 0, report.to_dict()
    y = report.checks["yesterday"]
    assert (y["total"], y["success"], y["failed"], y["average_duration_s"]) == (2, 2, 0, 2.0)
    assert report.checks["backup"]["age_h"] == 3.0
    assert report.checks["sync"]["services_down"] == ["a"]  # shown, not an exit code

    # A backup older than 26 h degrades.
    late = gather(h.rt, h.app, now + timedelta(hours=24))
    assert late.exit_code == 1 and any("26 h" in p for p in late.problems)

    # The human form keeps DOX's verdict apart from the teams' services the sync found down.
    shown = dox(["health"], server_env(tmp_path, stack, COLUMNS="200"), tmp_path)
    headline = shown.stdout.splitlines()[0]
    assert headline.startswith("DOX ")
    assert headline.endswith("1 team service(s) down at the last sync, not DOX's"), headline


def test_health_cli_json_and_exit_2_when_postgres_is_down(tmp_path, stack, harness_factory):
    h = harness_factory(stack)
    h.worker(queues=["validation", "scan", "storage", "recognition", "events"])
    done = dox(["health", "--json"], server_env(tmp_path, stack), tmp_path)
    report = json.loads(done.stdout)
    assert done.returncode == 1, report
    assert "queue 'operations' has no consumer (0 waiting)" in report["problems"]
    dead = {
        **server_env(tmp_path, stack),
        "DOX_DATABASE_URL": f"postgresql://postgres@127.0.0.1:{free_port()}/dox",
    }
    down = dox(["health", "--json"], dead, tmp_path)
    assert down.returncode == 2, down.stderr
    assert "Traceback" not in down.stderr
    assert any("results database unreachable" in f for f in json.loads(down.stdout)["fatal"])


def test_health_without_a_broker_is_down_with_a_reason(tmp_path):
    done = dox(["health"], clean_env(tmp_path), tmp_path)
    assert done.returncode == 2 and "no Redis configured" in done.stdout and "Traceback" not in done.stderr


def test_health_exit_follows_clamd_and_the_worker(tmp_path, stack, harness_factory):
    """Everything up → 0; clamd stopped → 1 (degraded); the worker stopped → 2 (down)."""
    from urllib.parse import urlparse

    import services

    import beat_schedule

    clamd = urlparse(stack.clamd_url)
    proxy = services.TcpProxy(clamd.port, clamd.hostname).start()
    h = harness_factory(stack)
    h.worker()
    now = datetime.now(UTC)
    records.add_backup(
        h.rt.state, kind="database", path="/x.dump", status="ok", created_at=now - timedelta(hours=1)
    )
    slot = beat_schedule.build(h.rt.definitions.values())["sync_team_coordination"].latest_slot(now)
    sync = start_run(h.rt, "sync_team_coordination", slot_key(slot))
    with h.rt.state.tx() as conn:
        conn.execute(
            update(WS)
            .where(WS.c.workflow_id == sync.workflow_id)
            .values(current_state="success", created_at=slot, result={"services": {}})
        )
    env = server_env(tmp_path, stack.model_copy(update={"clamd_url": f"tcp://127.0.0.1:{proxy.port}"}))

    def health() -> tuple[int, dict]:
        done = dox(["health", "--json"], env, tmp_path)
        assert "Traceback" not in done.stderr
        return done.returncode, json.loads(done.stdout)

    code, report = health()
    assert code == 0, report
    proxy.cut()  # clamd stops answering
    code, report = health()
    assert code == 1, report
    assert report["clamd"]["ok"] is False and any("clamd" in p for p in report["problems"])
    h.stop_workers()  # and now no worker answers either
    code, report = health()
    assert code == 2, report
    assert "no worker answers" in report["fatal"]
    proxy.cut()


def test_intake_without_a_worker_is_a_problem_once_submissions_wait(stack, harness_factory):
    h = harness_factory(stack)
    h.worker()
    now = datetime.now(UTC)
    assert not any("intake" in p for p in gather(h.rt, h.app, now).problems)
    h.app.send_task("dox.submit", args=["a.pdf"], kwargs={"user": "svc"})
    assert "queue 'intake' has no consumer (1 waiting)" in gather(h.rt, h.app, now).problems
