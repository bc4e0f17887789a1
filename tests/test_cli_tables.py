"""What the CLI's tables and messages look like to a person at a terminal and to a script.

Short workflow ids (the shortest unique prefix of at least 8 characters, like git's short
hashes) are never split across lines, at 80 columns or 200, under a real pseudo-terminal;
a prefix names a workflow wherever an id does on the command line; output that is not a
terminal is whole lines; no Python ``None`` reaches a person.
"""

from __future__ import annotations

import csv
import fcntl
import io
import json
import os
import re
import select
import sqlite3
import struct
import subprocess
import sys
import termios
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pdfs
import pytest
from services import clean_env, dox, server_env

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")

#: Ids the test gives its workflows: two share their first 9 characters, so their short
#: forms are 10 long; letters that appear nowhere else in the output.
TWIN_A = "abcdef12-aaaa-4aaa-8aaa-aaaaaaaaaaaa"
TWIN_B = "abcdef12-bbbb-4bbb-8bbb-bbbbbbbbbbbb"
SINGLE = "fedcba98-cccc-4ccc-8ccc-cccccccccccc"
SCHEDULED = "feedbeef-dddd-4ddd-8ddd-dddddddddddd"
SHORT = {TWIN_A: "abcdef12-a", TWIN_B: "abcdef12-b", SINGLE: "fedcba98", SCHEDULED: "feedbeef"}


def in_terminal(
    args: list[str], env: dict[str, str], cwd: Path, columns: int, answer: str | None = None
) -> tuple[int, str]:
    """Run ``dox args`` on a pseudo-terminal ``columns`` wide; its exit code and what the
    terminal showed (colours removed, line ends as ``\\n``)."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    proc = subprocess.Popen(
        [sys.executable, "-m", "dox_tasks.cli", *args],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env={**env, "COLUMNS": str(columns), "TERM": "xterm-256color"},
        cwd=cwd,
        close_fds=True,
    )
    os.close(slave)
    if answer is not None:
        os.write(master, answer.encode())
    chunks: list[bytes] = []
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        code = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    shown = b"".join(chunks).decode("utf-8", "replace").replace("\r\n", "\n").replace("\r", "")
    return code, ANSI.sub("", shown)


def assert_ids_whole(text: str, ids: dict[str, str]) -> None:
    """Each id's short form is on the screen, and wherever an id begins the rest of its short
    form follows on the same line (a split id would continue on the next)."""
    for full, short in ids.items():
        assert short in text, (short, text)
        for found in re.finditer(re.escape(full[:4]), text):
            here = text[found.start() :]
            assert any(here.startswith(s) for f, s in ids.items() if f[:4] == full[:4]), (short, text)


def dox_side_by_side(
    commands: dict[str, list[str]], env: dict[str, str], cwd: Path
) -> dict[str, subprocess.CompletedProcess[str]]:
    """Run read-only ``dox`` commands at once: each spends seconds importing, not waiting."""
    with ThreadPoolExecutor(len(commands)) as pool:
        futures = {name: pool.submit(dox, args, env, cwd) for name, args in commands.items()}
        return {name: f.result() for name, f in futures.items()}


def _rename(h: Any, old: str, new: str) -> None:
    from sqlalchemy import update

    from dox_tasks.db.tables import EV, WS

    with h.rt.state.tx() as conn:
        conn.execute(update(WS).where(WS.c.workflow_id == old).values(workflow_id=new))
        conn.execute(update(EV).where(EV.c.workflow_id == old).values(workflow_id=new))


@pytest.fixture
def named(tmp_path, stack, harness_factory):
    """Three queued documents and a scheduled run, with the ids above (no worker runs, so
    they stay where the test puts them)."""
    from dox_tasks.jobs.launch import start_run

    h = harness_factory(stack)
    for new, name, seed in ((TWIN_A, "a.pdf", 1301), (TWIN_B, "b.pdf", 1302), (SINGLE, "c.pdf", 1303)):
        _rename(h, h.submit(pdfs.unique(seed), file_name=name), new)
    _rename(h, start_run(h.rt, "backup_database", "2026-11-22T02:00:00Z").workflow_id, SCHEDULED)
    return h, server_env(tmp_path, stack)


# -- pure parts ---------------------------------------------------------------------------
def test_shortest_prefixes_are_unique_and_at_least_eight():
    from dox_tasks.cli.common import shortest_prefixes

    among = [TWIN_A, TWIN_B, SINGLE, "fedcba98-cccc-4ccc-8ccc-cccccccccccd"]
    got = shortest_prefixes([TWIN_A, TWIN_B, "fedcba98-cccc-4ccc-8ccc-cccccccccccd", SCHEDULED], among)
    assert got == {
        TWIN_A: "abcdef12-a",
        TWIN_B: "abcdef12-b",
        "fedcba98-cccc-4ccc-8ccc-cccccccccccd": "fedcba98-cccc-4ccc-8ccc-cccccccccccd",
        SCHEDULED: "feedbeef",  # not among the recorded ids: still its 8 characters
    }


def test_tables_show_a_dash_for_no_value_and_today_is_a_time():
    from rich.console import Console

    from dox_tasks.terminal import DASH, shown, table
    from dox_tasks.timespec import parse_since

    console = Console(width=200, record=True)
    console.print(table(("a", "b"), [[None, "x"]]))
    assert DASH in console.export_text() and "None" not in console.export_text()
    assert shown(None) == DASH and shown("[x]") == "\\[x]" and shown(0) == "0"
    now = datetime(2026, 12, 8, 0, 30, tzinfo=UTC)
    assert parse_since("today", now) == datetime(2026, 12, 8, tzinfo=UTC)
    assert parse_since(" Today ", now) == parse_since("today", now)
    with pytest.raises(ValueError, match="30m, 24h, 7d"):
        parse_since("yesterday", now)


# -- a real terminal ----------------------------------------------------------------------
@pytest.mark.redis
@pytest.mark.postgres
@pytest.mark.clamd
@pytest.mark.integration
def test_ids_are_never_split_at_80_or_200_columns(tmp_path, named):
    h, env = named
    cancelled = dox(["workflows", "cancel", "abcdef12-a", "--reason", "test"], env, tmp_path)
    assert cancelled.returncode == 0 and f"{TWIN_A} cancelled at step validate" in cancelled.stdout
    retry_preview = ["workflows", "retry", "--status", "cancelled", "--since", "1h"]
    runs = {  # each at both widths, side by side (each command spends seconds importing)
        (name, columns): (args, answer)
        for name, args, answer in (
            ("list", ["workflows", "list"], None),
            ("preview", retry_preview, "n\n"),
            ("schedule", ["schedule"], None),
        )
        for columns in (80, 200)
    }
    runs["status", 80] = (["status", "abcdef12-b"], None)
    with ThreadPoolExecutor(len(runs)) as pool:
        futures = {k: pool.submit(in_terminal, a, env, tmp_path, k[1], ans) for k, (a, ans) in runs.items()}
        seen = {k: f.result() for k, f in futures.items()}
    assert all(code == 0 for code, _ in seen.values()), seen
    for columns in (80, 200):
        listed = seen["list", columns][1]
        assert_ids_whole(listed, {k: SHORT[k] for k in (TWIN_A, TWIN_B, SINGLE, SCHEDULED)})
        assert all(len(line) <= columns for line in listed.splitlines()), listed
        preview = seen["preview", columns][1]
        assert "nothing retried" in preview, preview
        assert_ids_whole(preview, {TWIN_A: SHORT[TWIN_A]})
        schedule = seen["schedule", columns][1]
        assert_ids_whole(schedule, {SCHEDULED: SHORT[SCHEDULED]})
        assert "None" not in schedule and "never" in schedule  # jobs that never ran
    one = seen["status", 80][1]
    assert_ids_whole(one, {TWIN_B: TWIN_B})  # the one workflow's own id, in full
    assert "None" not in one and "–" in one, one  # e.g. its template: none yet


def test_the_run_table_keeps_ids_whole_in_a_narrow_terminal(tmp_path):
    """`dox run`'s table names each document's workflow by its short id, never split."""
    inbox = tmp_path / "in"
    inbox.mkdir()
    for n in range(3):
        (inbox / f"a-rather-long-document-name-{n}.pdf").write_bytes(pdfs.unique(1310 + n))
    env = clean_env(tmp_path)
    code, shown = in_terminal(["run", str(inbox)], env, tmp_path, 80)
    assert code == 0, shown
    ids = [
        r[0]
        for r in sqlite3.connect(tmp_path / "home" / "dox.db").execute(
            "select workflow_id from workflow_states"
        )
    ]
    assert len(ids) == 3
    for wid in ids:
        assert_ids_whole(shown, {wid: wid[:8]})
    assert "None" not in shown and "3 documents: 3 success" in shown


# -- prefixes on the command line ----------------------------------------------------------
@pytest.mark.redis
@pytest.mark.postgres
@pytest.mark.clamd
@pytest.mark.integration
def test_a_prefix_names_a_workflow_and_an_ambiguous_one_lists_the_matches(tmp_path, named):
    h, env = named
    seen = dox_side_by_side(
        {
            "status": ["status", "abcdef12"],
            "cancel": ["workflows", "cancel", "abcdef12"],
            "short": ["status", "abcdef1"],
            "none": ["workflows", "show", "99999999"],
            "single": ["status", "fedcba98", "--json"],
            "twin": ["workflows", "show", "abcdef12-b", "--json"],
        },
        env,
        tmp_path,
    )
    for ambiguous in (seen["status"], seen["cancel"]):
        assert ambiguous.returncode == 2, (ambiguous.stdout, ambiguous.stderr)
        assert TWIN_A in ambiguous.stderr and TWIN_B in ambiguous.stderr
        assert "Give more characters" in ambiguous.stderr and "Traceback" not in ambiguous.stderr
    assert h.rt.state.get_workflow(TWIN_A)["current_state"] == "queued"  # nothing was cancelled
    assert seen["short"].returncode == 2 and "at least 8 characters" in seen["short"].stderr
    none = seen["none"]
    assert none.returncode == 2 and none.stderr.strip() == "dox: no workflow with id 99999999"

    status = json.loads(seen["single"].stdout)
    assert status["workflow_id"] == SINGLE and status["file"] == "c.pdf"
    assert json.loads(seen["twin"].stdout)["workflow_id"] == TWIN_B
    cancelled = dox(["workflows", "cancel", "abcdef12-a", "--json"], env, tmp_path)
    assert json.loads(cancelled.stdout)["workflow_id"] == TWIN_A
    retried = dox(["workflows", "retry", "abcdef12-a", "--json"], env, tmp_path)
    assert retried.returncode == 0, retried.stderr
    assert json.loads(retried.stdout)["workflow_id"] == TWIN_A
    assert h.rt.state.get_workflow(TWIN_A)["current_state"] == "queued"


# -- not a terminal: whole lines -------------------------------------------------------------
@pytest.mark.redis
@pytest.mark.postgres
@pytest.mark.clamd
@pytest.mark.integration
def test_piped_tables_are_whole_lines_and_the_report_names_its_window(tmp_path, named):
    h, env = named
    env.pop("COLUMNS", None)
    now = datetime.now(UTC)
    seen = dox_side_by_side(
        {
            "list": ["workflows", "list"],
            "wide": ["workflows", "list", "--wide"],
            "json": ["report", "--since", "24h", "--format", "json"],
            "today": ["report", "--since", "today"],
            "csv": ["report", "daily", "--format", "csv"],
            "both": ["report", "daily", "--since", "24h"],
        },
        env,
        tmp_path,
    )
    listed = seen["list"]
    assert listed.returncode == 0 and "\x1b" not in listed.stdout
    for wid, name in ((TWIN_A, "a.pdf"), (TWIN_B, "b.pdf"), (SINGLE, "c.pdf")):
        (line,) = [x for x in listed.stdout.splitlines() if SHORT[wid] in x]
        # one line per row, longer than 80 columns: the rule, the file and the full time
        assert "process_document_upload" in line and name in line and re.search(r"T\d\d:\d\d:\d\dZ", line)
    assert max(len(x) for x in listed.stdout.splitlines()) > 80
    wide = seen["wide"].stdout
    assert all(f"│ {wid} │" in wide for wid in (TWIN_A, TWIN_B, SINGLE, SCHEDULED)), wide

    # `dox report --since 24h`: what a new install just did, and the window in every form
    report = json.loads(seen["json"].stdout)
    assert (report["report"], report["total"], report["in_flight"]) == ("since", 3, 3)
    start, end = datetime.fromisoformat(report["from"]), datetime.fromisoformat(report["to"])
    assert abs(start - (now - timedelta(hours=24))) < timedelta(minutes=1)
    assert report["window"] == f"from {start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M} UTC"
    table = seen["today"]
    assert table.returncode == 0, table.stderr
    assert f"from {now:%Y-%m-%d} 00:00 to {now:%Y-%m-%d} " in table.stdout and " UTC" in table.stdout
    assert "3 documents" in table.stdout and "3 in flight" in table.stdout
    assert "None" not in table.stdout and "p50 – s, p95 – s" in table.stdout  # nothing finished yet
    assert "top failures: none" in table.stdout
    rows = dict(csv.reader(io.StringIO(seen["csv"].stdout)))
    yesterday = (now - timedelta(days=1)).date()
    assert rows["window"] == f"from {yesterday} 00:00 to {now.date()} 00:00 UTC"
    assert rows["report"] == "daily" and rows["total"] == "0"
    both = seen["both"]
    assert both.returncode == 2 and "not both" in both.stderr
