"""store — promote the staged bytes into the content-addressed store.

The SHA-256 is checked again while copying: if the staged file changed since it
was validated and scanned, nothing is stored and the workflow fails
(:class:`~dox_tasks.errors.IntegrityFault`, never retried).
"""

from __future__ import annotations

from .base import Outcome, StepContext, ok


def store(ctx: StepContext) -> Outcome:
    key = ctx.rt.storage.promote(ctx.sha256)
    return ok(storage_key=key, sha256=ctx.sha256)
