"""`dox run` as a person runs it: a subprocess, no configuration, then against real clamd."""

from __future__ import annotations

import json
from pathlib import Path

import pdfs
import pytest
import services
from services import assert_expected_results, clean_env, dox, server_env

ROOT = Path(__file__).resolve().parent.parent
INBOX = ROOT / "examples" / "inbox"


def test_examples_inbox_gets_every_expected_status(tmp_path):
    res = dox(["run", str(INBOX), "--json"], clean_env(tmp_path), tmp_path)
    assert "Traceback" not in res.stderr, res.stderr
    assert_expected_results(res.stdout, INBOX / "EXPECTED.json")
    assert res.returncode == 0  # success, duplicate and rejected are all answers
    # Every answer that is not a success says why in a sentence, next to its reason code.
    for result in map(json.loads, res.stdout.splitlines()):
        if result["status"] == "success":
            assert result["reason_detail"] is None, result
        else:
            assert len(result["reason_detail"] or "") > 15, result
            assert result["reason"] or result["status"] == "duplicate", result
        assert isinstance(result["missing_fields"], list), result
    # every step row carries a task id and the worker's hostname: the real worker path ran
    import sqlite3

    db = sqlite3.connect(tmp_path / "home" / "dox.db")
    rows = db.execute("select task_id, worker_hostname from workflow_step_results").fetchall()
    assert rows and all(t and h for t, h in rows)


def test_table_output_has_a_summary(tmp_path):
    res = dox(["run", str(INBOX / "invoice-acme.pdf")], clean_env(tmp_path), tmp_path)
    assert res.returncode == 0, res.stderr
    assert "1 documents: 1 success" in res.stdout
    assert "scan: skipped" in res.stdout  # no clamd configured: said plainly


def test_missing_path_is_a_one_line_error(tmp_path):
    res = dox(["run", str(tmp_path / "nope")], clean_env(tmp_path), tmp_path)
    assert res.returncode == 2
    assert "no such file or folder" in res.stderr and "Traceback" not in res.stderr


def test_unknown_workflow_status_is_a_one_line_error(tmp_path):
    res = dox(["status", "does-not-exist"], clean_env(tmp_path), tmp_path)
    assert res.returncode == 2 and res.stderr.strip() == "dox: no workflow with id does-not-exist"


@pytest.mark.integration
def test_dox_run_with_real_clamd_sees_eicar_infected(tmp_path, clamd_url):
    folder = tmp_path / "incoming"
    folder.mkdir()
    (folder / "quarterly.pdf").write_bytes(pdfs.eicar_pdf())
    (folder / "clean.pdf").write_bytes(pdfs.unique(1))
    res = dox(["run", str(folder), "--json"], clean_env(tmp_path, DOX_CLAMD_URL=clamd_url), tmp_path)
    assert res.returncode == 0, res.stderr
    results = {Path(r["file"]).name: r for r in map(json.loads, res.stdout.splitlines())}
    bad = results["quarterly.pdf"]
    assert (bad["status"], bad["reason"], bad["scan"]) == ("rejected", "infected", "infected")
    assert bad["signature"].startswith("Dox.Test.EICAR")
    assert results["clean.pdf"]["scan"] == "clean"


@pytest.mark.integration
def test_dox_run_local_worker_on_redis_postgres_clamd(tmp_path, stack):
    """`dox run --local-worker` with DOX_BROKER_URL, DOX_DATABASE_URL and DOX_CLAMD_URL set."""
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.pdf").write_bytes(pdfs.unique(21))
    (folder / "b.pdf").write_bytes(pdfs.eicar_pdf())
    env = server_env(tmp_path, stack)
    res = dox(["db", "upgrade"], env, tmp_path)
    assert res.returncode == 0, res.stderr
    res = dox(["run", str(folder), "--local-worker", "--json"], env, tmp_path)
    assert res.returncode == 0, res.stderr
    results = {Path(r["file"]).name: r for r in map(json.loads, res.stdout.splitlines())}
    assert results["a.pdf"]["status"] == "success" and results["a.pdf"]["scan"] == "clean"
    assert results["b.pdf"]["reason"] == "infected"
    wid = results["a.pdf"]["workflow_id"]
    status = dox(["status", wid, "--json"], env, tmp_path)
    assert json.loads(status.stdout)["storage_key"] == results["a.pdf"]["storage_key"]


@pytest.mark.integration
def test_dox_submit_wait_against_a_running_worker(tmp_path, stack, harness_factory):
    """`dox submit --wait` hands files to workers started elsewhere (here: the test's)."""
    harness = harness_factory(stack)
    harness.worker()
    s = harness.settings
    (tmp_path / "c.pdf").write_bytes(pdfs.unique(22))
    env = server_env(tmp_path, s, DOX_STORAGE_ROOT=str(s.storage))
    res = dox(["submit", str(tmp_path / "c.pdf"), "--user", "zoe", "--wait", "--json"], env, tmp_path)
    assert res.returncode == 0, res.stderr
    result = json.loads(res.stdout)
    assert result["status"] == "success" and result["file"].endswith("c.pdf")
    assert harness.rt.state.get_workflow(result["workflow_id"])["file_name"].endswith("c.pdf")
    # The table names each document's workflow too (its help promises the ids): the short id.
    (tmp_path / "d.pdf").write_bytes(pdfs.unique(23))
    table = dox(["submit", str(tmp_path / "d.pdf"), "--wait"], env, tmp_path)
    assert table.returncode == 0, table.stderr
    (row,) = [line for line in table.stdout.splitlines() if "d.pdf" in line]
    from dox_tasks.db.queries import list_workflows

    newest = list_workflows(harness.rt.state, limit=1)[0]
    assert newest["file_name"].endswith("d.pdf")
    assert f" {newest['workflow_id'][:8]} " in row and newest["workflow_id"] not in row, table.stdout


def test_embedded_worker_survives_loops_and_bombs(tmp_path):
    """The solo in-process worker has no Celery time limits: the sandbox must hold."""
    folder = tmp_path / "hostile"
    folder.mkdir()
    (folder / "loop.pdf").write_bytes(pdfs.looping_page_tree())
    (folder / "bomb.pdf").write_bytes(pdfs.compression_bomb())
    (folder / "fine.pdf").write_bytes(pdfs.unique(30))
    res = dox(["run", str(folder), "--json"], clean_env(tmp_path), tmp_path)
    assert res.returncode == 0, res.stderr
    results = {Path(r["file"]).name: r for r in map(json.loads, res.stdout.splitlines())}
    assert results["loop.pdf"]["reason"] == "too_complex"
    assert results["bomb.pdf"]["reason"] == "too_complex"
    assert results["fine.pdf"]["status"] == "success"  # processed after the hostile ones


def test_the_embedded_daily_limit_counts_across_runs_and_says_how_to_lift_it(tmp_path):
    """README: per user, per UTC day — also for `dox run` twice in one day without servers."""
    env = clean_env(tmp_path, RATE_LIMIT_PER_USER_PER_DAY="2")
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    for n in range(2):
        (first / f"a{n}.pdf").write_bytes(pdfs.unique(7100 + n))
    (second / "b.pdf").write_bytes(pdfs.unique(7200))
    res = dox(["run", str(first), "--json"], env, tmp_path)
    assert [json.loads(line)["status"] for line in res.stdout.splitlines()] == ["success", "success"]
    res = dox(["run", str(second)], env, tmp_path)  # a new process, the same UTC day
    assert "rate_limited" in res.stdout, res.stdout
    assert "RATE_LIMIT_PER_USER_PER_DAY" in res.stdout and "set it to 0" in res.stdout, res.stdout


def test_dox_run_names_files_relative_to_the_folder_given_and_follows_the_operators_links(tmp_path):
    """Two invoice.pdf in two subfolders stay apart; without DOX_INBOX_ROOT a link on the
    command line is the operator's own file: followed, and named as it was given."""
    folder = tmp_path / "batch"
    for n, sub in enumerate(("north", "south")):
        (folder / sub).mkdir(parents=True)
        (folder / sub / "invoice.pdf").write_bytes(pdfs.unique(7300 + n))
    (tmp_path / "real.pdf").write_bytes(pdfs.unique(7310))
    (tmp_path / "link.pdf").symlink_to(tmp_path / "real.pdf")
    env = clean_env(tmp_path, COLUMNS="200")
    res = dox(["run", "batch", "link.pdf", "--json"], env, tmp_path)
    results = [json.loads(line) for line in res.stdout.splitlines()]
    assert [(r["file"], r["status"]) for r in results] == [
        ("north/invoice.pdf", "success"),
        ("south/invoice.pdf", "success"),
        ("link.pdf", "success"),
    ], res.stdout + res.stderr
    table = dox(["run", "batch"], clean_env(tmp_path / "again", COLUMNS="200"), tmp_path)
    assert "north/invoice.pdf" in table.stdout and "south/invoice.pdf" in table.stdout, table.stdout
    # With an inbox configured, paths are confined and a link is refused, as for services.
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "link.pdf").symlink_to(tmp_path / "real.pdf")
    confined = dox(
        ["run", "inbox/link.pdf", "--json"], clean_env(tmp_path / "c", DOX_INBOX_ROOT=str(inbox)), tmp_path
    )
    assert confined.returncode != 0 and "symlink" in (confined.stdout + confined.stderr), confined


def test_a_message_the_broker_refused_is_said_once_and_dox_status_explains_the_queued_row(tmp_path, pg_url):
    """Redis down at submission: the row is queued, the CLI says so once, and `dox status`
    says the message was not sent, when, and how soon the reaper sends it."""
    import re

    dead_broker = f"redis://127.0.0.1:{services.free_port()}/0"
    env = clean_env(tmp_path, DOX_BROKER_URL=dead_broker, DOX_DATABASE_URL=pg_url)
    assert dox(["db", "upgrade"], env, tmp_path).returncode == 0
    (tmp_path / "a.pdf").write_bytes(pdfs.unique(7400))
    refused = dox(["submit", "a.pdf"], env, tmp_path)
    assert refused.returncode != 0
    said = refused.stdout + refused.stderr
    assert said.count("broker refused its message") == 1 and "Traceback" not in said, said
    workflow_id = re.search(r"workflow ([0-9a-f-]{36}) is recorded", said).group(1)
    shown = dox(["status", workflow_id], {**env, "COLUMNS": "200"}, tmp_path)
    assert "queued" in shown.stdout and "the broker refused its message at" in shown.stdout, shown.stdout
    assert re.search(r"the reaper re-sends it within \d+ minutes", shown.stdout), shown.stdout
    as_json = json.loads(dox(["status", workflow_id, "--json"], env, tmp_path).stdout)
    assert as_json["status"] == "queued" and as_json["not_sent"]["resent_within_min"] == 15


def test_the_run_table_says_recognition_the_total_and_why_each_document_was_refused(tmp_path):
    res = dox(["run", str(INBOX)], clean_env(tmp_path, COLUMNS="250"), tmp_path)
    acme = next(line for line in res.stdout.splitlines() if "invoice-acme.pdf" in line)
    assert "matched" in acme and "total=300.00 EUR" in acme, acme
    assert "unrecognized" in next(line for line in res.stdout.splitlines() if "memo-mentions" in line)
    why = [line.strip() for line in res.stdout.splitlines() if line.startswith("  ") and ": " in line]
    photo = next(line for line in why if line.startswith("photo-renamed.pdf: "))
    assert "PNG" in photo or "png" in photo, why  # the sentence, not only the code
    assert any(line.startswith("invoice-copy-of-acme.pdf: same bytes as workflow") for line in why), why


def test_recognition_cell_says_why_unreadable_and_what_is_missing():
    from dox_tasks.cli.run import _recognition

    assert _recognition({"recognition": "unreadable", "unreadable_reason": "no_text_layer"}) == (
        "unreadable: no text layer"
    )
    assert (
        _recognition({"recognition": "unreadable", "unreadable_reason": "cpu_budget"})
        == "unreadable: cpu budget"
    )
    assert (
        _recognition({"recognition": "matched", "missing_fields": ["due_date"]})
        == "matched, missing due_date"
    )
    assert _recognition({"recognition": None}) is None
