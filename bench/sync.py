"""Team sync benchmark: `python bench/sync.py` (Redis and PostgreSQL on 127.0.0.1).

20 fake services on loopback answer in 200 ms, 3 of them hang past the check
timeout (3 s). DOX runs as shipped: `dox worker -Q coordination -P threads -c 21`
and `dox worker -Q operations` (subprocesses), the sync started like `dox sync run`.
Baseline, same run, same endpoints: the runbook's way — one check after another.
Prints `name: value` lines; the target is sync_wall_s ≤ check timeout + 1 s.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests")]

import yaml  # noqa: E402
from fakehealth import FakeHealth  # noqa: E402
from services import (  # noqa: E402
    REDIS_URL,
    clean_env,
    create_database,
    drop_database,
    kill_group,
    spawn_dox,
)

TIMEOUT_S = 3
RUNS = 3


def main() -> None:
    from dox_tasks import runtime
    from dox_tasks.embedded import wait_for
    from dox_tasks.jobs.launch import run_now
    from dox_tasks.jobs.sync.probe import check
    from dox_tasks.settings import Settings

    fake = FakeHealth().start()
    work = Path(tempfile.mkdtemp(prefix="dox-bench-sync-"))
    urls = [fake.url("/hang") if n < 3 else fake.url("/ok?ms=200") for n in range(20)]
    teams = {
        "check_timeout_s": TIMEOUT_S,
        "sync_deadline_s": 30,
        "teams": [{"name": f"t{n}"} for n in range(7)],
        "services": [
            {
                "name": f"svc{n:02d}",
                "health_url": u,
                "team": f"t{n % 7}",
                "depended_on_by": [f"t{(n + 1) % 7}"],
            }
            for n, u in enumerate(urls)
        ],
    }
    teams_file = work / "teams.yaml"
    teams_file.write_text(yaml.safe_dump(teams))
    db = create_database(prefix="dox_bench")
    ns = f"bsync{int(time.time())}"
    env = clean_env(
        work,
        DOX_BROKER_URL=REDIS_URL,
        DOX_DATABASE_URL=db,
        DOX_NAMESPACE=ns,
        DOX_BROKER_KEY_PREFIX=f"{ns}-broker:",
        DOX_TEAMS_FILE=str(teams_file),
        CLAMAV_ENABLED="false",
    )
    settings = Settings().model_copy(
        update={
            "broker_url": REDIS_URL,
            "database_url": db,
            "namespace": ns,
            "broker_key_prefix": f"{ns}-broker:",
            "teams_file": teams_file,
            "home": work / "home",
        }
    )
    from dox_tasks.app import app
    from dox_tasks.celery_app import reconfigure

    reconfigure(app, settings)
    rt = runtime.get()
    rt.state.migrate()
    procs = [
        spawn_dox(
            ["worker", "-Q", "coordination", "-P", "threads", "-c", "21", "-n", f"c-{ns}@%h"],
            env,
            work / "c.log",
        ),
        spawn_dox(["worker", "-Q", "operations", "-c", "1", "-n", f"o-{ns}@%h"], env, work / "o.log"),
    ]
    try:
        deadline = time.monotonic() + 60
        while len(app.control.inspect(timeout=0.5).ping() or {}) < 2 and time.monotonic() < deadline:
            pass
        walls = []
        for _ in range(RUNS):
            wid = run_now(rt, "sync_team_coordination", actor="bench").workflow_id
            row = wait_for(rt.state, [wid], 120)[wid]
            assert row["current_state"] == "success", row["detail"]
            result = row["result"]
            downs = sum(s["status"] == "down" for s in result["services"].values())
            assert downs == 3, result["services"]
            walls.append(result["duration_s"])
        start = time.monotonic()
        for n, u in enumerate(urls):
            check(f"svc{n:02d}", u, TIMEOUT_S, 1000)
        sequential = time.monotonic() - start
    finally:
        for p in procs:
            kill_group(p)
        fake.stop()
        runtime.configure(Settings())
        drop_database(db)
    wall = statistics.median(walls)
    print(f"services: 20 (3 hung past a {TIMEOUT_S} s check timeout, 17 answering in 200 ms)")
    print(f"sync_wall_s: {wall:.2f}")
    print(f"sync_wall_s_runs: {', '.join(f'{w:.2f}' for w in walls)}")
    print(f"target_s: {TIMEOUT_S + 1}")
    print(f"baseline_sequential_checks_s: {sequential:.2f}")
    print(f"speedup_vs_sequential: {sequential / wall:.1f}")


if __name__ == "__main__":
    main()
