"""Schemathesis against the served OpenAPI document: every operation, generated requests.

A real `dox api serve` on a database of its own, called with the operator key (given to
Schemathesis through its config file from the environment, never on a command line): no
answer is a 5xx, and every answer matches the media type and schema the document declares
for its status. Examples are bounded (``MAX_EXAMPLES`` per operation) so the run stays
within a minute or two. Left out: pausing the intake (it would turn every later upload into
the 503 it is meant to produce) and the live event stream (it never ends); their own tests
cover both.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from apiserver import OPERATOR_KEY, Server, api_env
from services import dox
from stores import new_workflow

from dox_tasks.db.store import open_store

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

MAX_EXAMPLES = int(os.environ.get("DOX_TEST_SCHEMA_EXAMPLES", "15"))
CHECKS = "not_a_server_error,response_schema_conformance,content_type_conformance"
#: Operations left out, and why (module docstring).
LEFT_OUT = "^/api/v1/(intake/pause|events)$"

#: The workflow id Schemathesis sends is a real one, so the operations on one workflow are
#: tested past their 404 (ids no workflow has are tests/test_api.py's). Uploads' ``?wait``
#: is 1 s: no worker runs here, so a wait of up to 60 s would outlast the request timeout.
CONFIG = """\
[headers]
Authorization = "Bearer ${DOX_SCHEMA_KEY}"

[parameters]
"path.workflow_id" = "${DOX_SCHEMA_WORKFLOW}"
"query.wait" = 1
"""


def test_every_operation_answers_as_documented(tmp_path: Path, pg_url: str, redis_url: str) -> None:
    env = api_env(tmp_path, pg_url, redis_url, DOX_API_RATE_PER_MIN="0")
    assert dox(["db", "upgrade"], env, tmp_path).returncode == 0
    store = open_store(pg_url)
    workflow = new_workflow(store, user="api")  # something to find for the operator key's user
    store.close()
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    server = Server(env, tmp_path, tmp_path / "api.log")
    try:
        run = subprocess.run(
            [
                str(Path(sys.executable).with_name("schemathesis")),
                "--config-file",
                str(config),
                "--no-color",
                "run",
                f"{server.url}/api/v1/openapi.json",
                "--checks",
                CHECKS,
                "--max-examples",
                str(MAX_EXAMPLES),
                "--exclude-path-regex",
                LEFT_OUT,
                "--seed",
                "1",
                "--generation-database",
                "none",
                "--request-timeout",
                "30",
            ],
            capture_output=True,
            text=True,
            env={**env, "DOX_SCHEMA_KEY": OPERATOR_KEY, "DOX_SCHEMA_WORKFLOW": workflow},
            cwd=tmp_path,
            timeout=600,
        )
    finally:
        log = server.stop()
    assert run.returncode == 0, run.stdout[-8000:] + run.stderr[-2000:]
    assert "Unmatched filters" not in run.stdout, run.stdout[-4000:]  # a renamed operation
    assert "Traceback" not in log, log[-4000:]
    assert OPERATOR_KEY not in run.stdout + log
