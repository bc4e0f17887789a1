"""`dox workflows retry`: a new run of a failed or cancelled workflow, from its stored
definition and staged input, recorded as an operator action."""

from __future__ import annotations

import json
from urllib.parse import urlparse

import pdfs
import pytest
import services
from services import dox, server_env

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.clamd, pytest.mark.integration]


def _steps(h, wid: str) -> list[tuple[int, str, str]]:
    return [(r["run"], r["step"], r["state"]) for r in h.rt.state.step_rows(wid)]


def test_retry_from_failed_finishes_a_scan_outage_without_revalidating(tmp_path, stack, harness_factory):
    h, proxy = _behind_cut_proxy(stack, harness_factory)
    failed = h.run(pdfs.unique(960), timeout=60)
    wid = failed["workflow_id"]
    assert (failed["current_state"], failed["reason"]) == ("failed", "scanner_unavailable")

    proxy.start()  # clamd is back
    env = server_env(tmp_path, stack)
    done = dox(
        [
            "workflows",
            "retry",
            wid,
            "--from-failed",
            "--actor",
            "ops-cleo",
            "--reason",
            "clamd back",
            "--json",
        ],
        env,
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"workflow_id": wid, "status": "queued", "from_step": "scan", "run": 2}
    row = h.wait([wid], 60)[wid]
    assert row["current_state"] == "success", row
    assert row["result"]["scan"] == "clean" and row["result"]["storage_key"]

    steps = _steps(h, wid)
    assert [s for s in steps if s[1] == "validate"] == [(1, "validate", "success")]  # not re-run
    assert [s for s in steps if s[0] == 1 and s[1] == "scan"] == [(1, "scan", "retry")] * 3 + [
        (1, "scan", "failed")
    ]
    assert [(s[1], s[2]) for s in steps if s[0] == 2] == [
        ("scan", "success"),
        ("store", "success"),
        ("recognize", "success"),
        ("publish", "success"),
    ]
    events = h.rt.state.events(wid)
    assert [e["type"] for e in events] == [
        "workflow.escalated",
        "workflow.failed",
        "workflow.retry",
        "workflow.success",
    ]
    retry_event = events[2]["payload"]
    assert retry_event["actor"] == "ops-cleo" and retry_event["reason"] == "clamd back"
    assert retry_event["from_step"] == "scan" and retry_event["run"] == 2

    shown = json.loads(dox(["workflows", "show", wid, "--json"], env, tmp_path).stdout)
    assert shown["run"] == 2 and shown["status"] == "success"
    # Attempts are numbered within each run: run 2's scan is its attempt 1, whatever run 1 did.
    scans = [(st["run"], st["attempt"]) for st in shown["steps"] if st["step"] == "scan"]
    assert (2, 1) in scans and max(a for r, a in scans if r == 1) >= 1, scans
    assert [a for r, a in scans if r == 1] == list(range(1, 1 + sum(r == 1 for r, _ in scans))), scans
    # Run 2's duration is its own, not counted from the first submission.
    assert row["result"]["duration_ms"] < (row["finished_at"] - row["created_at"]).total_seconds() * 1000

    from dox_tasks.db.tally import tally

    with h.rt.state.tx() as conn:  # both runs count: one failure, one success
        counts = tally(conn, [wid])
    doc = {"kind": "document", "rule_name": "process_document_upload"}

    def series(name: str, **labels: str) -> float:
        return counts[(name, tuple(sorted(labels.items())))]

    assert series("workflow_failed_total", reason="scanner_unavailable", **doc) == 1
    assert series("workflow_completed_total", status="success", **doc) == 1
    assert series("validation_scan_total", result="error") == 4
    assert series("validation_scan_total", result="clean") == 1
    proxy.cut()

    again = dox(["workflows", "retry", wid], env, tmp_path)
    assert again.returncode == 2 and "already succeeded" in again.stderr and "Traceback" not in again.stderr


def _behind_cut_proxy(stack, harness_factory):
    """A harness whose clamd sits behind a proxy that starts cut (clamd "down")."""
    clamd = urlparse(stack.clamd_url)
    proxy = services.TcpProxy(clamd.port, clamd.hostname).start()
    proxy.cut()
    h = harness_factory(
        stack.model_copy(update={"clamd_url": f"tcp://127.0.0.1:{proxy.port}", "clamd_timeout_s": 1.0})
    )
    h.worker()
    return h, proxy


def test_bulk_retry_asks_first_and_retries_from_the_start(tmp_path, stack, harness_factory):
    h, proxy = _behind_cut_proxy(stack, harness_factory)
    ids = [h.submit(pdfs.unique(970 + n)) for n in range(2)]
    rows = h.wait(ids, 90)
    assert {r["current_state"] for r in rows.values()} == {"failed"}
    env = server_env(tmp_path, stack)

    declined = dox(["workflows", "retry", "--status", "failed", "--since", "1h"], env, tmp_path, input="n\n")
    assert declined.returncode == 0 and "retry these 2 workflow(s)?" in declined.stderr
    assert declined.stdout.strip().endswith("nothing retried"), declined.stdout
    # the preview names each workflow by its short id, one row per line (piped: never wrapped)
    assert all(
        any(i[:8] in line and "process_document_upload" in line for line in declined.stdout.splitlines())
        for i in ids
    )
    assert not any(i in declined.stdout for i in ids), declined.stdout
    assert {r["current_state"] for r in h.rt.state.get_workflows(ids).values()} == {"failed"}

    proxy.start()  # clamd is back
    done = dox(
        ["workflows", "retry", "--status", "failed", "--since", "1h", "--yes", "--json"], env, tmp_path
    )
    assert done.returncode == 0, done.stderr
    answers = [json.loads(line) for line in done.stdout.splitlines()]
    assert sorted(a["workflow_id"] for a in answers) == sorted(ids)
    assert {(a["from_step"], a["run"]) for a in answers} == {("validate", 2)}
    finished = h.wait(ids, 60)
    assert {r["current_state"] for r in finished.values()} == {"success"}
    for wid in ids:  # from the start: validate ran in both runs
        assert [s[0] for s in _steps(h, wid) if s[1] == "validate"] == [1, 2]
    proxy.cut()


def test_retry_refuses_what_it_cannot_retry(tmp_path, stack, harness_factory):
    h = harness_factory(stack)
    h.worker()
    rejected = h.run(pdfs.truncated())
    env = server_env(tmp_path, stack)
    for args, expected in [
        (["no-such-id"], "no workflow with id"),
        ([rejected["workflow_id"]], "answer about the document"),
        (["--status", "failed", "--since", "soon"], "30m, 24h, 7d"),
        ([], "give a workflow id"),
    ]:
        done = dox(["workflows", "retry", *args], env, tmp_path)
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        assert expected in done.stderr and "Traceback" not in done.stderr
    nothing = dox(["workflows", "retry", "--status", "failed", "--since", "1h", "--yes"], env, tmp_path)
    assert nothing.returncode == 0 and "nothing to retry" in nothing.stdout

    # A scheduled run is not reopened: a new run of the job is the way.
    from sqlalchemy import update

    from dox_tasks.db.tables import WS
    from dox_tasks.jobs.launch import start_run

    job = start_run(h.rt, "backup_config", "manual:test")
    with h.rt.state.tx() as conn:
        conn.execute(update(WS).where(WS.c.workflow_id == job.workflow_id).values(current_state="failed"))
    refused = dox(["workflows", "retry", job.workflow_id], env, tmp_path)
    assert refused.returncode == 2 and "dox jobs run backup_config" in refused.stderr
