"""Exporter scrape cost: `python bench/metrics.py [ROWS...]` (PostgreSQL on 127.0.0.1).

Fills a scratch database with finished document workflows (each with its five step
rows and its terminal event, 10 % failed, 5 % rejected) and times what one scrape of
`dox metrics serve` costs in Postgres: the full counter tally over every terminal event
and scan attempt (what a cold exporter does once, and again after each retention run),
and a warm scrape (the exporter's cache: settled rows counted once, only the last
minutes' rows read). Baseline in the same run, same rows: the cheapest query that still
reads them all (`SELECT count(*)` over the events). Prints `name: value` lines.
"""

from __future__ import annotations

import statistics
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests")]

from services import create_database, drop_database  # noqa: E402

REPEATS = 5
STEPS = ("validate", "scan", "store", "recognize", "publish")


def fill(state, n: int) -> None:
    from sqlalchemy import insert

    from dox_tasks.db.tables import EV, SR, WD, WS

    now = datetime.now(UTC)
    with state.tx() as conn:
        conn.execute(
            insert(WD).values(
                definition_hash="b" * 64, name="process_document_upload", version="1", body={}, created_at=now
            )
        )
        for start in range(0, n, 2000):
            ws, sr, ev = [], [], []
            for i in range(start, min(n, start + 2000)):
                wid = str(uuid.uuid4())
                state_ = "failed" if i % 10 == 0 else "rejected" if i % 20 == 1 else "success"
                created = now - timedelta(seconds=i)
                ws.append(
                    dict(
                        workflow_id=wid,
                        rule_name="process_document_upload",
                        definition_hash="b" * 64,
                        definition_version="1",
                        current_state=state_,
                        user_id=f"u{i % 50}",
                        created_at=created,
                        updated_at=created,
                        finished_at=created,
                        run=1,
                    )
                )
                for step in STEPS:
                    sr.append(
                        dict(
                            workflow_id=wid,
                            step=step,
                            attempt=1,
                            run=1,
                            state="success",
                            started_at=created,
                            output={"scan": "clean"} if step == "scan" else {},
                        )
                    )
                ev.append(
                    dict(
                        id=f"{wid}:workflow.{state_}",
                        workflow_id=wid,
                        type=f"workflow.{state_}",
                        payload={
                            "reason": "scanner_unavailable" if state_ == "failed" else None,
                            "duration_ms": 800 + i % 5000,
                        },
                        created_at=created,
                    )
                )
            conn.execute(insert(WS), ws)
            conn.execute(insert(SR), sr)
            conn.execute(insert(EV), ev)
    with state.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        from sqlalchemy import text

        conn.execute(text("VACUUM ANALYZE"))


def timed(fn) -> float:
    runs = []
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t0)
    return statistics.median(runs)


def main() -> None:
    from sqlalchemy import func, select

    from dox_tasks.db.store import StateStore, open_store
    from dox_tasks.db.tables import EV
    from dox_tasks.db.tally import Cache, tally

    sizes = [int(a) for a in sys.argv[1:]] or [10_000, 100_000]
    for n in sizes:
        url = create_database()
        try:
            state = open_store(url)
            state.migrate()
            fill(state, n)

            def baseline(state: StateStore = state) -> None:
                with state.tx() as conn:
                    conn.execute(select(func.count()).select_from(EV)).scalar()

            def scrape(state: StateStore = state) -> None:
                with state.tx() as conn:
                    tally(conn)

            cache = Cache(settle_s=360)  # WORKFLOW_TIMEOUT 300 + 60, as the exporter sets it

            def warm(state: StateStore = state, cache: Cache = cache) -> None:
                with state.tx() as conn:
                    cache.read(conn, datetime.now(UTC))

            warm()  # the cold read fills the cache
            base, cost, steady = timed(baseline), timed(scrape), timed(warm)
            print(f"rows_{n}_baseline_count_ms: {base * 1000:.1f}")
            print(f"rows_{n}_tally_full_ms: {cost * 1000:.1f}")
            print(f"rows_{n}_scrape_warm_ms: {steady * 1000:.1f}")
            print(f"rows_{n}_tally_full_vs_baseline: {cost / base:.1f}")
            print(f"rows_{n}_scrape_warm_vs_baseline: {steady / base:.1f}")
            state.dispose()
        finally:
            drop_database(url)


if __name__ == "__main__":
    main()
