"""Definitions are checked like code: every problem named with file:line and a fix."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dox_tasks.definitions import load_all, validate_path
from dox_tasks.definitions.canvas import build_chain

ROOT = Path(__file__).resolve().parent.parent

GOOD = """\
name: tiny
trigger: {type: api_request, source: test}
steps:
  - name: validate
    task: dox.validate
    on_success: scan
  - name: scan
    action: dox.scan
    on_success: complete
"""


def write(tmp_path: Path, text: str, name: str = "def.yaml") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def problems_for(tmp_path: Path, text: str) -> list[str]:
    _, problems = validate_path(write(tmp_path, text))
    return problems


def test_shipped_definitions_are_valid():
    defs = load_all(ROOT / "workflow_defs")
    d = defs["process_document_upload"]
    assert [s.name for s in d.ordered_steps()] == [
        "validate",
        "scan",
        "store",
        "recognize",
        "publish",
    ]


def test_action_is_an_alias_of_task(tmp_path):
    assert problems_for(tmp_path, GOOD) == []


@pytest.mark.parametrize(
    ("mutation", "line", "words"),
    [
        (("    on_success: scan\n", "    on_success: scan\n    colour: blue\n"), 7, "unknown key"),
        (("task: dox.validate", "task: dox.validat"), 5, "unknown task 'dox.validat'"),
        (("on_success: scan", "on_success: sacn"), 6, "unknown step 'sacn'"),
        (("on_success: complete", "on_success: validate"), 9, "cycle validate → scan → validate"),
        (
            ("type: api_request, source: test", "type: schedule, cron: '61 9 * * *'"),
            2,
            "not a valid cron",
        ),
        (
            ("    on_success: complete\n", "    on_success: complete\n    on_failure: explode\n"),
            10,
            "unknown on_failure target 'explode'",
        ),
        (
            ("    task: dox.validate\n", "    task: dox.validate\n    params: {max_pagez: 3}\n"),
            6,
            "does not understand 'max_pagez'",
        ),
    ],
)
def test_each_problem_names_file_line_and_fix(tmp_path, mutation, line, words):
    old, new = mutation
    assert old in GOOD
    problems = problems_for(tmp_path, GOOD.replace(old, new))
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{tmp_path / 'def.yaml'}:{line}:"), problems[0]
    assert words in problems[0]


def test_unreachable_step_is_reported(tmp_path):
    text = GOOD + "  - name: orphan\n    task: dox.store\n"
    problems = problems_for(tmp_path, text)
    assert len(problems) == 1 and ":10:" in problems[0] and "unreachable" in problems[0]


def test_compiles_to_a_chain_routed_per_queue():
    from dox_tasks.app import app

    d = load_all(ROOT / "workflow_defs")["process_document_upload"]
    canvas = build_chain(app, d, "wf-1", 300)
    assert type(canvas).__name__ == "_chain"
    queues = [s.options["queue"] for s in canvas.tasks]
    assert queues == ["validation", "scan", "storage", "recognition", "events"]
    assert all(s.immutable for s in canvas.tasks)
    assert canvas.tasks[0].args == ("wf-1", "validate", d.digest, 1)  # (workflow, step, hash, run)


def test_a_workflow_starts_with_one_message_without_its_chain():
    """Intake, the reaper and retry send one step's message; each step sends the next itself
    (runner.follow), so the first message carries no chain to encode, publish and drop."""
    from dox_tasks.app import app
    from dox_tasks.definitions.canvas import first_signature

    d = load_all(ROOT / "workflow_defs")["process_document_upload"]
    chained = build_chain(app, d, "wf-1", 300)
    first = first_signature(app, d, "wf-1", 300)
    assert dict(first) == dict(chained.tasks[0]) and not first.options.get("chain")
    resumed = first_signature(app, d, "wf-1", 300, start_at="store", run=2)
    assert resumed.args == ("wf-1", "store", d.digest, 2) and resumed.options["queue"] == "storage"
    with pytest.raises(KeyError, match="no step 'nope'"):
        first_signature(app, d, "wf-1", 300, start_at="nope")


def test_snapshot_hash_changes_with_content(tmp_path):
    a = load_all(write(tmp_path, GOOD))["tiny"]
    b = load_all(write(tmp_path, GOOD.replace("source: test", "source: other")))["tiny"]
    assert a.digest != b.digest


def run_dox(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [sys.executable, "-m", "dox_tasks.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=60,
    )


def test_cli_defs_validate_exit_codes(tmp_path):
    ok = run_dox("defs", "validate", str(ROOT / "workflow_defs"))
    assert ok.returncode == 0, ok.stderr
    assert "process_document_upload" in ok.stdout
    bad = write(tmp_path, GOOD.replace("task: dox.validate", "task: nope"))
    res = run_dox("defs", "validate", str(bad))
    assert res.returncode == 1
    assert f"{bad}:5:" in res.stderr and "Traceback" not in res.stderr


def test_cli_defs_show_prints_the_chain():
    res = run_dox("defs", "show", "process_document_upload")
    assert res.returncode == 0, res.stderr
    assert "dox.validate" in res.stdout and "queue=scan" in res.stdout


def test_worker_refuses_to_start_on_an_invalid_definition(tmp_path):
    bad = tmp_path / "defs"
    bad.mkdir()
    write(bad, GOOD.replace("task: dox.validate", "task: nope"))
    res = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "dox_tasks", "worker", "-P", "solo"],
        capture_output=True,
        text=True,
        timeout=60,
        env={
            **__import__("os").environ,
            "DOX_DEFS_DIR": str(bad),
            "DOX_BROKER_URL": "redis://127.0.0.1:1/0",
        },
    )
    assert res.returncode != 0
    assert "refused to start" in res.stderr and "unknown task 'nope'" in res.stderr


def test_scan_worker_refuses_to_start_without_clamd(tmp_path):
    res = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "dox_tasks", "worker", "-P", "solo", "-Q", "scan"],
        capture_output=True,
        text=True,
        timeout=60,
        env={
            **__import__("os").environ,
            "DOX_BROKER_URL": "redis://127.0.0.1:1/0",
            "DOX_HOME": str(tmp_path),
            "CLAMAV_ENABLED": "true",
        },
    )
    assert res.returncode != 0
    assert "DOX_CLAMD_URL" in res.stderr


def test_a_schedule_must_say_its_catch_up_policy(tmp_path):
    text = GOOD.replace(
        "trigger: {type: api_request, source: test}", 'trigger: {type: schedule, cron: "0 9 * * *"}'
    )
    (problem,) = problems_for(tmp_path, text)
    assert "def.yaml:2: trigger" in problem and "catch_up: once" in problem
    bad_cron = text.replace('cron: "0 9 * * *"}', 'cron: "0 25 * * *", catch_up: once}')
    assert "not a valid cron expression" in problems_for(tmp_path, bad_cron)[0]
    misplaced = GOOD.replace("source: test}", "source: test, catch_up: once}")
    assert "only apply to 'type: schedule'" in problems_for(tmp_path, misplaced)[0]


def test_teams_file_problems_name_the_service(tmp_path):
    from dox_tasks.errors import DefinitionError
    from dox_tasks.jobs.sync.teams import load_teams

    path = write(
        tmp_path,
        """\
        teams: [{name: a}]
        services:
          - {name: s1, health_url: "http://x/health", team: a, depended_on_by: [ghosts]}
          - {name: s2, health_url: "ftp://x/health", team: a}
        """,
        "teams.yaml",
    )
    with pytest.raises(DefinitionError) as err:
        load_teams(path)
    text = "\n".join(err.value.problems)
    assert "health_url" in text and "services.1" in text
    path.write_text(path.read_text().replace("ftp://", "http://"))
    with pytest.raises(DefinitionError, match="service 's1' names unknown team 'ghosts'"):
        load_teams(path)
    # The definitions folder skips teams.yaml; `dox defs validate` checks it separately.
    assert load_all(ROOT / "workflow_defs")["sync_team_coordination"]


def test_worker_refuses_to_start_on_an_older_schema(tmp_path, pg_url):
    """New code on an old schema would fail every delivery (its functions are missing)."""
    from alembic import command

    from dox_tasks.db.engine import alembic_config, make_engine

    engine = make_engine(pg_url)
    cfg = alembic_config(str(engine.url))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0004")
    engine.dispose()
    res = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "dox_tasks", "worker", "-P", "solo", "-Q", "validation"],
        capture_output=True,
        text=True,
        timeout=60,
        env={
            **__import__("os").environ,
            "DOX_BROKER_URL": "redis://127.0.0.1:1/0",
            "DOX_DATABASE_URL": pg_url,
            "DOX_HOME": str(tmp_path),
        },
    )
    assert res.returncode != 0
    assert "refused to start" in res.stderr and "revision 0004" in res.stderr
    assert "dox db upgrade" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.parametrize(
    ("params", "words"),
    [
        ("{max_pages: five}", "params.max_pages: Input should be a valid integer"),
        ("{max_pages: 0}", "greater than 0 (dox.recognize takes max_pages: integer > 0)"),
        ("{max_pages: null}", "params.max_pages: Input should be a valid integer"),
        ("{max_pages: [5]}", "params.max_pages: Input should be a valid integer"),
    ],
)
def test_a_param_of_the_wrong_type_names_its_line_and_type(tmp_path, params, words):
    text = GOOD.replace("    action: dox.scan\n", f"    action: dox.recognize\n    params: {params}\n")
    (problem,) = problems_for(tmp_path, text)
    assert problem.startswith(f"{tmp_path / 'def.yaml'}:9: steps.1.params.max_pages:"), problem
    assert words in problem


def test_params_of_the_right_type_pass_and_unknown_ones_name_what_the_task_takes(tmp_path):
    params = "{rate_limit_per_day: 0, max_file_size: 1024, allowed_types: [pdf]}"
    good = GOOD.replace("    task: dox.validate\n", f"    task: dox.validate\n    params: {params}\n")
    assert problems_for(tmp_path, good) == []
    # A quoted number was always read with int(): still accepted.
    assert problems_for(tmp_path, good.replace("max_file_size: 1024", "max_file_size: '1024'")) == []
    (problem,) = problems_for(tmp_path, good.replace("allowed_types: [pdf]", "allowed_types: pdf"))
    assert ":6: steps.0.params.allowed_types: Input should be a valid list" in problem
    (problem,) = problems_for(tmp_path, good.replace("max_file_size", "max_pages"))
    assert problem.endswith(
        "steps.0.params.max_pages: dox.validate does not understand 'max_pages'"
        " (it takes: allowed_types, max_file_size, rate_limit_per_day)"
    )


def test_the_step_catalog_is_what_the_worker_runs_and_definitions_may_name():
    """One declaration per step: the Celery tasks, their routes and the names a definition
    may use all come from the catalog, and every entry names a function that exists."""
    from dox_tasks.app import app
    from dox_tasks.definitions.catalog import STEPS, resolve
    from dox_tasks.tasks import step_function, step_tasks

    assert set(step_tasks) == set(STEPS)
    for name, kind in STEPS.items():
        assert app.tasks[name].name == step_tasks[name].name == name
        assert app.conf.task_routes[name] == {"queue": kind.queue}
        fn = step_function(kind)
        assert f"{fn.__module__}:{fn.__name__}" == kind.function
        assert all(resolve(alias) is kind for alias in (name, *kind.aliases))
    assert resolve("virus_scan") is STEPS["dox.scan"] and resolve("dox.virus_scan") is None


def test_cli_defs_tasks_lists_aliases_and_typed_params():
    res = run_dox("defs", "tasks")
    assert res.returncode == 0, res.stderr
    assert "also named: recognize, template_recognition" in res.stdout
    assert "params.max_pages: integer > 0" in res.stdout
