"""``dox health``: the runbook's morning checklist, gathered and judged in one place.

:func:`gather` asks each service (every probe is bounded and turns a failure into
a sentence); :func:`judge` turns the findings into an exit code a cron job or a
Kubernetes probe can use: 2 when DOX cannot work (Redis or Postgres unreachable,
no worker answers), 1 when degraded (clamd unreachable, the API at ``DOX_API_URL`` not
ready, a queue nobody consumes, the last database backup older than 26 h, the last team
sync failed or missed), else 0. Other teams' services are reported but never change the code.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from .contract import INTAKE_QUEUE, QUEUES
from .db import queries, records
from .db.store import aware
from .jobs import broker
from .jobs.reaper import inspect_workers
from .jobs.sync import SYNC_JOB
from .report import build
from .runtime import Runtime

log = logging.getLogger("dox.health")

BACKUP_MAX_AGE = timedelta(hours=26)
#: After its slot, the sync has this long before it counts as missed.
SYNC_GRACE = timedelta(hours=1)


@dataclass
class Health:
    checks: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # exit 1
    fatal: list[str] = field(default_factory=list)  # exit 2

    @property
    def exit_code(self) -> int:
        return 2 if self.fatal else 1 if self.problems else 0

    def to_dict(self) -> dict[str, Any]:
        status = {0: "ok", 1: "degraded", 2: "down"}[self.exit_code]
        return {
            "status": status,
            "exit_code": self.exit_code,
            "fatal": self.fatal,
            "problems": self.problems,
            **self.checks,
        }


def _reachable(h: Health, name: str, what: str, probe: Any) -> bool:
    """Run ``probe``; a failure is fatal (DOX cannot work without Redis or Postgres)."""
    try:
        probe()
    except Exception as exc:  # noqa: BLE001 - any failure is the answer
        h.fatal.append(f"{what} unreachable: {exc}")
        h.checks[name] = {"ok": False, "error": str(exc)}
        return False
    h.checks[name] = {"ok": True}
    return True


def _redis(rt: Runtime, h: Health) -> bool:
    client = rt.redis
    if client is None:
        h.fatal.append("no Redis configured (DOX_BROKER_URL)")
        h.checks["redis"] = {"ok": False, "error": "not configured"}
        return False
    return _reachable(h, "redis", "Redis", client.ping)


def _postgres(rt: Runtime, h: Health) -> bool:
    return _reachable(h, "postgres", "results database", lambda: queries.ping(rt.state))


def _clamd(rt: Runtime, h: Health) -> None:
    if not rt.settings.clamav_enabled:
        h.checks["clamd"] = {"ok": True, "note": "scanning disabled (CLAMAV_ENABLED=false)"}
        return
    try:
        version = rt.scanner.version()
    except Exception as exc:  # noqa: BLE001
        h.problems.append(f"clamd unreachable: {exc}")
        h.checks["clamd"] = {"ok": False, "error": str(exc)}
        return
    if version is None:
        h.problems.append("clamd not configured (DOX_CLAMD_URL)")
        h.checks["clamd"] = {"ok": False, "error": "not configured"}
        return
    engine, _, rest = version.partition("/")
    signatures = rest.split("/")[0] if rest else None
    h.checks["clamd"] = {"ok": True, "version": version, "engine": engine, "signatures": signatures}


#: Seconds `dox health` waits for the API's /ready.
API_TIMEOUT_S = 5.0


def _api(rt: Runtime, h: Health) -> None:
    """The API's own readiness (``DOX_API_URL``/ready): not answering, or not ready, degrades.
    Only the status and /ready's own sentence are reported (it names no host or secret)."""
    base = rt.settings.api_url
    if not base:
        return
    url = base.rstrip("/") + "/ready"
    if not url.startswith(("http://", "https://")):
        h.problems.append("DOX_API_URL must start with http:// or https://")
        h.checks["api"] = {"ok": False, "error": "DOX_API_URL is not an http(s) URL"}
        return
    try:
        with urllib.request.urlopen(url, timeout=API_TIMEOUT_S) as answer:  # noqa: S310 - checked above
            status, body = answer.status, answer.read(65536)
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read(65536)
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        h.problems.append(f"the API does not answer: {reason}")
        h.checks["api"] = {"ok": False, "error": str(reason)}
        return
    if status == 200:
        h.checks["api"] = {"ok": True}
        return
    try:
        detail = str(json.loads(body).get("detail") or "")
    except (ValueError, AttributeError):
        detail = ""
    h.problems.append(f"the API is not ready (HTTP {status}){': ' + detail if detail else ''}")
    h.checks["api"] = {"ok": False, "error": detail or f"HTTP {status}"}


def _workers(app: Any, rt: Runtime, h: Health) -> None:
    workers = inspect_workers(app, None, set())
    if not workers.alive:  # a broadcast reply can miss a 1 s window: ask once more before "down"
        workers = inspect_workers(app, None, set(), timeout=2.0)
    consumers = {q: sorted(host for host, qs in workers.queues.items() if q in qs) for q in QUEUES}
    prefix = rt.settings.broker_key_prefix or ""
    depths: dict[str, int | None] = dict.fromkeys(QUEUES)
    try:
        if rt.redis is not None:
            depths.update(broker.depths(rt.redis, prefix, list(QUEUES)))
    except Exception as exc:  # noqa: BLE001 - Redis itself is checked (and reported) apart
        log.debug("queue depths unavailable: %s", exc)
    h.checks["workers"] = {"alive": sorted(workers.alive), "per_queue": consumers}
    h.checks["queues"] = depths
    if not workers.alive:
        h.fatal.append("no worker answers")
        return
    for q, hosts in consumers.items():
        # Broker submissions are optional: intake without a worker matters once work waits there.
        if not hosts and (q != INTAKE_QUEUE or depths.get(q) != 0):
            h.problems.append(f"queue {q!r} has no consumer ({depths.get(q)} waiting)")


def _yesterday(rt: Runtime, h: Health, now: datetime) -> None:
    r = build(rt, "daily", now)
    h.checks["yesterday"] = {
        "date": r["from"][:10],
        **{k: r[k] for k in ("total", "success", "failed", "rejected", "duplicate", "average_duration_s")},
    }


def _backup(rt: Runtime, h: Health, now: datetime) -> None:
    ok = [b for b in records.backups(rt.state, "database", limit=50) if b["status"] == "ok"]
    if not ok:
        h.problems.append("no database backup recorded")
        h.checks["backup"] = {"last_ok": None, "age_h": None}
        return
    last = aware(ok[0]["created_at"])
    age = now - last
    h.checks["backup"] = {
        "last_ok": last.isoformat(),
        "age_h": round(age.total_seconds() / 3600, 1),
        "path": ok[0]["path"],
    }
    if age > BACKUP_MAX_AGE:
        h.problems.append(f"last database backup is {age.total_seconds() / 3600:.0f} h old (limit 26 h)")


def _sync(rt: Runtime, h: Health, now: datetime) -> None:
    import beat_schedule

    runs = rt.state.last_runs([SYNC_JOB])
    run = runs.get(SYNC_JOB)
    info: dict[str, Any] = {"last_run": None}
    if run is not None:
        result = run.get("result") or {}
        services = result.get("services") or {}
        info = {
            "last_run": aware(run["created_at"]).isoformat(),
            "slot": run["schedule_slot"],
            "status": run["current_state"],
            "services_down": sorted(n for n, s in services.items() if s.get("status") == "down"),
            "services_degraded": sorted(n for n, s in services.items() if s.get("status") == "degraded"),
        }
        if run["current_state"] == "failed":
            h.problems.append(f"the last team sync failed: {run.get('detail')}")
    job = beat_schedule.build(rt.definitions.values()).get(SYNC_JOB)
    if job is not None:
        slot = job.latest_slot(now)
        ran_since = run is not None and aware(run["created_at"]) >= slot
        if now - slot > SYNC_GRACE and not ran_since:
            h.problems.append(f"the team sync of {slot.isoformat()} is missing")
        info["expected_slot"] = slot.isoformat()
    h.checks["sync"] = info


def gather(rt: Runtime, app: Any, now: datetime | None = None) -> Health:
    now = now or datetime.now(UTC)
    h = Health()
    redis_ok = _redis(rt, h)
    pg_ok = _postgres(rt, h)
    _clamd(rt, h)
    _api(rt, h)
    if redis_ok:
        _workers(app, rt, h)
    if pg_ok:
        _yesterday(rt, h, now)
        _backup(rt, h, now)
        _sync(rt, h, now)
    return h
