"""scan — ClamAV over INSTREAM, streamed from the staged copy (never the whole file in memory).

Infected → the document goes to quarantine and the workflow is ``rejected``
(``infected``, signature recorded). Too big for clamd's limits → ``too_large``,
never "clean". Unreachable clamd → :class:`ScannerUnavailable` (retried, then
``failed``/``scanner_unavailable``).
"""

from __future__ import annotations

from ..contract import Reason
from .base import Outcome, StepContext, ok, reject


def scan(ctx: StepContext) -> Outcome:
    storage = ctx.rt.storage
    staged = storage.staged_path(ctx.sha256)
    if not staged.exists() and storage.quarantine_path(ctx.sha256).exists():
        # Another workflow with the same bytes was already found infected.
        signature = ctx.rt.state.known_infected(ctx.sha256) or "quarantined earlier"
        return reject(Reason.INFECTED, signature, scan="infected", signature=signature)
    with staged.open("rb") as fh:
        verdict = ctx.rt.scanner.scan(fh)
    if verdict.limits_exceeded:
        return reject(
            Reason.TOO_LARGE,
            f"too large for the virus scanner's limits ({verdict.signature}); not stored",
            scan="skipped",
            signature=verdict.signature,
            engine=verdict.engine,
        )
    if verdict.result == "infected":
        # quarantine=True: the terminal path moves the bytes once it owns the workflow.
        return reject(
            Reason.INFECTED,
            str(verdict.signature),
            quarantine=True,
            scan="infected",
            signature=verdict.signature,
            engine=verdict.engine,
        )
    return ok(scan=verdict.result, engine=verdict.engine)
