"""Weekly maintenance and daily retention, as plain functions that report what they did.

Every function returns counts (they become the run's result) and never deletes a
stored document on its own account: only a re-scan that finds one infected moves
it, to quarantine, with an event. Limits come from the settings:
``DOX_RETENTION_DAYS`` (finished workflow rows), ``DOX_QUARANTINE_RETENTION_DAYS``,
``DOX_RESCAN_LIMIT`` (documents re-scanned per run), ``DOX_DISK_MIN_FREE_PCT``.
"""

from __future__ import annotations

import functools
import logging
import shutil
import subprocess
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from ..contract import NEEDS_STAGED_INPUT
from ..db import housekeeping, records
from ..errors import ScannerUnavailable
from ..runtime import Runtime

log = logging.getLogger("dox.maintenance")

#: Staged or temp files younger than this are never cleaned (a submission may be writing them).
MIN_AGE_S = 86400
#: Workflows that may still need their staged input (live ones, and retryable ones).
NEEDS_STAGING = [s.value for s in NEEDS_STAGED_INPUT]


def vacuum_analyze(rt: Runtime) -> dict[str, Any]:
    return {"vacuumed": housekeeping.vacuum(rt.state)}


def expire_workflows(rt: Runtime, now: datetime) -> dict[str, int]:
    """Delete finished workflows older than the retention (their steps cascade, events follow);
    their counts move to ``metric_totals`` in the same transaction."""
    expired = housekeeping.expire_finished(rt.state, now - timedelta(days=rt.settings.retention_days))
    return {
        "workflows_deleted": expired.workflows,
        "events_deleted": expired.events,
        "retention_days": rt.settings.retention_days,
    }


def purge_quarantine(rt: Runtime, now: datetime) -> dict[str, int]:
    cutoff = (now - timedelta(days=rt.settings.quarantine_retention_days)).timestamp()
    purged = rt.storage.purge_quarantine(cutoff)
    if purged:
        records.record_event(
            rt.state,
            f"maintenance:quarantine_purged:{now.isoformat()}",
            None,
            "maintenance.quarantine_purged",
            {"sha256": purged[:1000], "count": len(purged)},
        )
    return {"quarantine_purged": len(purged)}


def clean_staging(rt: Runtime) -> dict[str, int]:
    """Remove staged copies and temp files nobody needs; never a stored document."""
    needed = housekeeping.staged_inputs_needed(rt.state, NEEDS_STAGING)
    cutoff = time.time() - MIN_AGE_S
    staged = tmp = 0
    for path in rt.storage.staging.glob("sha256/*/*/*"):
        if path.name in needed or path.stat().st_mtime >= cutoff:
            continue
        # Asked again under the hash's lock: a submission of these bytes since the query
        # above has its row (kept) or places the file again after this removal.
        if rt.storage.discard_staged(path.name, functools.partial(_needed, rt, path.name)):
            staged += 1
    for path in rt.storage.tmp.iterdir():
        if path.is_file() and path.stat().st_mtime < cutoff:
            path.unlink(missing_ok=True)
            tmp += 1
    return {"staging_removed": staged, "tmp_removed": tmp}


def _needed(rt: Runtime, sha256: str) -> bool:
    try:
        return rt.state.needs_staged_input(sha256, exclude="")
    except ValueError:
        return True  # not a hash DOX wrote: leave it for an operator


def freshclam(timeout_s: float) -> dict[str, Any]:
    """Update signatures; offline (as here) it fails, and that is reported, not raised."""
    exe = shutil.which("freshclam")
    if exe is None:
        return {"freshclam": "skipped: freshclam is not installed"}
    try:
        done = subprocess.run([exe, "--quiet", "--stdout"], capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"freshclam": f"failed: no answer within {timeout_s:g}s (offline?)"}
    if done.returncode == 0:
        return {"freshclam": "ok"}
    lines = (done.stdout + done.stderr).strip().splitlines()
    return {"freshclam": f"failed (exit {done.returncode}): {lines[-1] if lines else 'no output'}"}


def rescan(rt: Runtime, previous_version: str | None) -> dict[str, Any]:
    """When clamd's signatures changed since the last run, re-scan stored documents
    (newest first, ``DOX_RESCAN_LIMIT`` per run) and quarantine what is now infected."""
    scanner = rt.scanner
    try:
        version = scanner.version()
    except ScannerUnavailable as exc:
        return {"signature_version": previous_version, "rescan": f"skipped: {exc}"}
    if version is None:
        return {"signature_version": None, "rescan": "skipped: scanning is disabled"}
    if version == previous_version:
        return {"signature_version": version, "rescan": "skipped: signatures unchanged"}
    objects = sorted(
        (rt.storage.object_path(sha) for sha in rt.storage.iter_objects()),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )[: rt.settings.rescan_limit]
    infected = []
    for path in objects:
        with path.open("rb") as fh:
            verdict = scanner.scan(fh)
        if verdict.result == "infected":
            rt.storage.quarantine_stored(path.name)
            infected.append({"sha256": path.name, "signature": verdict.signature})
            payload = {"sha256": path.name, "signature": verdict.signature, "signatures": version}
            rt.events.emit(f"maintenance:quarantined:{path.name}", None, "document.quarantined", payload)
    return {"signature_version": version, "rescanned": len(objects), "now_infected": infected}


def disk_check(rt: Runtime, now: datetime) -> dict[str, Any]:
    usage = shutil.disk_usage(rt.storage.root)
    free_pct = round(usage.free * 100 / usage.total, 1)
    low = free_pct < rt.settings.disk_min_free_pct
    if low:
        payload = {
            "path": str(rt.storage.root),
            "free_pct": free_pct,
            "min_free_pct": rt.settings.disk_min_free_pct,
        }
        rt.events.emit(
            f"maintenance:disk_low:{now.date().isoformat()}", None, "maintenance.disk_low", payload
        )
    return {"disk_free_pct": free_pct, "disk_low": low}


def prune_execution_logs(folder: Path, days: int, now: datetime) -> int:
    cutoff = (now - timedelta(days=days)).strftime("%Y-%m-%d")
    gone = 0
    for path in folder.glob("WORKFLOW_EXECUTION_LOG.*.jsonl"):
        day = path.name.split(".")[1]
        if len(day) == 10 and day < cutoff:
            path.unlink()
            gone += 1
    return gone
