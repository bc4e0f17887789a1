"""The seed runbooks' own curl | jq | bc commands, run by bash against a real API server.

The commands are the runbooks' text (``../shared/seeds/000_…``: sync completion, failed in
the last hour, the error-rate check, the morning checklist's /health loop), with two
changes only: ``localhost:5000`` becomes the test server's port; the seed's
``date -d '1 hour ago' -I`` (a date without a time: everything of today would match) is
``-Iseconds``; and that command's jq program is on one line (the seed breaks it with a
backslash inside the single quotes, which jq 1.6 refuses as a syntax error whatever the
API answers). They run twice: as the seed types them against a server on loopback with
``REQUIRE_AUTH=false``, and with a key's header added to every curl, as a deployment
with keys needs. README's upstream quick guide (a key from ``dox apikeys create``, an upload
with curl) runs the same way, as written. curl, jq and bc are installed by ``.ci/run``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pdfs
import pytest
import services
import yaml
from apiserver import Server
from services import server_env
from sqlalchemy import update
from stores import new_workflow

from dox_tasks import apikeys
from dox_tasks.contract import Reason, WorkflowState
from dox_tasks.db.store import now
from dox_tasks.db.tables import WS
from dox_tasks.finish import conclude

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.integration]

SYNC_COMPLETION = """\
curl -s "http://localhost:5000/api/v1/workflows?status=success&limit=5" | \\
  jq -r '.workflows[] | select(.rule_name == "sync_team_coordination") | .workflow_id' | \\
  head -1 | xargs -I {} curl -s "http://localhost:5000/api/v1/workflows/{}"
"""

FAILED_LAST_HOUR = """\
curl -s "http://localhost:5000/api/v1/workflows?status=failed&limit=10" | \\
  jq -r '.workflows[] | select(.updated_at > "'"$(date -d '1 hour ago' -Iseconds)"'") | .workflow_id'
"""

ERROR_RATE = """\
error_rate=$(curl -s "http://localhost:5000/api/v1/metrics" | \\
  jq -r '.metrics.error_rate_5m // 0')

if (( $(echo "$error_rate > 0.05" | bc -l) )); then
    echo "High error rate detected: $error_rate"
fi
"""

MORNING_LOOP = """\
services=("workflow-orchestrator:5000")

for service in "${services[@]}"; do
    IFS=':' read -r name port <<< "$service"
    if curl -f --max-time 5 "http://localhost:$port/health" > /dev/null 2>&1; then
        echo "  OK $name (port $port)"
    else
        echo "  FAILED $name (port $port) - CHECK NEEDED"
    fi
done
"""


def _tools() -> None:
    missing = [tool for tool in ("bash", "curl", "jq", "bc") if shutil.which(tool) is None]
    if missing:
        services.unavailable(", ".join(missing), "not installed (apt-get install curl jq bc)")


def run(script: str, port: int, tmp_path: Path, key: str | None = None) -> str:
    """``script`` as bash runs it, pointed at ``port``, with the key's header if given."""
    text = script.replace("localhost:5000", f"localhost:{port}").replace(":5000", f":{port}")
    if key is not None:
        text = text.replace("curl -s ", 'curl -s -H "Authorization: Bearer $DOX_KEY" ')
        text = text.replace("curl -f ", 'curl -f -H "Authorization: Bearer $DOX_KEY" ')
    result = subprocess.run(
        ["bash", "-c", "set -o pipefail\n" + text],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin:/usr/local/bin", "TZ": "UTC", "DOX_KEY": key or ""},
        cwd=tmp_path,
        timeout=60,
    )
    assert result.returncode == 0, (text, result.stdout, result.stderr)
    return result.stdout


def _failed(rt, user: str, ago: timedelta) -> str:  # type: ignore[no-untyped-def]
    """A workflow of ``user`` that failed ``ago`` (created, updated and finished then), ended
    the way the reaper ends one, so its completion event is recorded too."""
    store = rt.state
    wid = new_workflow(store, sha=None, user=user)
    assert conclude(
        rt, wid, WorkflowState.FAILED, reason=Reason.SCANNER_UNAVAILABLE, detail="scan: clamd down"
    )
    when = now() - ago
    with store.tx() as conn:
        conn.execute(
            update(WS)
            .where(WS.c.workflow_id == wid)
            .values(created_at=when, updated_at=when, finished_at=when)
        )
    return wid


@pytest.mark.parametrize("with_key", [False, True], ids=["as-the-seed-types-them", "with-a-key"])
def test_the_runbooks_commands_work_as_written(with_key, stack, harness_factory, tmp_path):
    _tools()
    teams = tmp_path / "teams.yaml"
    h = harness_factory(stack.model_copy(update={"teams_file": teams}))
    extra = {"DOX_TEAMS_FILE": str(teams), "DOX_API_RATE_PER_MIN": "0"}
    env = server_env(tmp_path, h.settings, **({} if with_key else {"REQUIRE_AUTH": "false"}), **extra)
    server = Server(env, tmp_path, tmp_path / "api.log")
    # The sync probes this very API as the seed's orchestrator, and one service that is down.
    gone = f"http://127.0.0.1:{services.free_port()}/health"
    listed = [
        {"name": "dox-workflow-orchestrator", "health_url": f"{server.url}/health", "team": "platform"},
        {"name": "dox-gone", "health_url": gone, "team": "documents"},
    ]
    teams.write_text(
        yaml.safe_dump(
            {
                "check_timeout_s": 2,
                "sync_deadline_s": 20,
                "teams": [{"name": "platform"}, {"name": "documents"}],
                "services": listed,
            }
        )
    )
    h.worker()
    key = apikeys.create(h.rt.state, "runbook", "ops", "read,read_all,operate").key if with_key else None
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        # The sync, started as the runbook does (POST …/coordination/sync), then its check.
        code, _, started = server.post("/api/v1/coordination/sync", b"", headers)
        assert code == 202, started
        h.wait([started["workflow_id"]], timeout=60)
        shown = json.loads(run(SYNC_COMPLETION, server.port, tmp_path, key))
        assert shown["workflow_id"] == started["workflow_id"] and shown["status"] == "success", shown

        # Failed workflows of the last hour: a recent one is listed, one of two hours ago is not.
        recent = _failed(h.rt, "ops", timedelta(0))
        _failed(h.rt, "ops", timedelta(hours=2))
        assert run(FAILED_LAST_HOUR, server.port, tmp_path, key).split() == [recent]

        # The error-rate check: one failure among the last 5 minutes' finished workflows.
        rate = server.get("/api/v1/metrics", headers)[2]["metrics"]["error_rate_5m"]
        assert rate > 0.05
        said = run(ERROR_RATE, server.port, tmp_path, key).strip()
        assert said == f"High error rate detected: {rate:g}", said  # jq prints 1.0 as 1

        # The morning checklist's loop: the orchestrator's entry is DOX's API.
        assert "OK workflow-orchestrator" in run(MORNING_LOOP, server.port, tmp_path, key)
    finally:
        log = server.stop()
    assert "Traceback" not in log


def _readme_block(heading: str) -> str:
    """The first ``sh`` block after ``heading`` in README.md, as written."""
    text = (services.ROOT / "README.md").read_text()
    after = text[text.index(heading) :]
    return after[after.index("```sh\n") + 6 : after.index("\n```", after.index("```sh\n"))]


def test_the_readme_upstream_guide_uploads_with_a_key_from_dox_apikeys(stack, harness_factory, tmp_path):
    """README's two lines as bash runs them: `dox apikeys create` prints a key, curl uploads
    invoice.pdf with it to a real server, and waits for the result a real worker produces."""
    _tools()
    h = harness_factory(stack)
    h.worker()
    env = server_env(tmp_path, h.settings, DOX_API_RATE_PER_MIN="0")
    server = Server(env, tmp_path, tmp_path / "api.log")
    (tmp_path / "invoice.pdf").write_bytes(pdfs.unique(4242))
    guide = _readme_block("### Over HTTP, from any language")
    assert "dox apikeys create" in guide and "curl" in guide
    script = guide.replace("localhost:5000", f"localhost:{server.port}")
    venv_bin = str(Path(sys.executable).parent)
    try:
        result = subprocess.run(
            ["bash", "-c", "set -euo pipefail\n" + script],
            capture_output=True,
            text=True,
            env={**env, "PATH": f"{venv_bin}:/usr/bin:/bin"},
            cwd=tmp_path,
            timeout=120,
        )
    finally:
        log = server.stop()
    assert result.returncode == 0, (result.stdout, result.stderr)
    body = json.loads(result.stdout)
    assert body["status"] == "success" and body["file"] == "invoice.pdf", body
    assert body["user"] == "billing" and body["storage_key"], body
    assert "Traceback" not in log
