"""`dox run` as a person runs it: a subprocess, no configuration, then against real clamd."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pdfs
import pytest

ROOT = Path(__file__).resolve().parent.parent
INBOX = ROOT / "examples" / "inbox"


def clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DOX_", "CLAMAV_", "MAX_FILE", "WORKFLOW_", "RATE_LIMIT"))
    }
    env["DOX_HOME"] = str(tmp_path / "home")
    env.update(extra)
    return env


def dox(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dox_tasks.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=300,
    )


def test_examples_inbox_gets_every_expected_status(tmp_path):
    expected = json.loads((INBOX / "EXPECTED.json").read_text())
    res = dox(["run", str(INBOX), "--json"], clean_env(tmp_path), tmp_path)
    assert "Traceback" not in res.stderr, res.stderr
    results = {Path(r["file"]).name: r for r in map(json.loads, res.stdout.splitlines())}
    assert set(results) == set(expected)
    for name, want in expected.items():
        got = results[name]
        assert got["status"] == want["status"], (name, got)
        if "reason" in want:
            assert got["reason"] == want["reason"], (name, got)
        if "template" in want:
            assert got["template"] == want["template"], (name, got)
        if "duplicate_of" in want:
            assert got["duplicate_of"] == results[want["duplicate_of"]]["workflow_id"]
    assert res.returncode == 0  # success, duplicate and rejected are all answers
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
