"""validate — the seed's five checks, cheapest first.

1. per-user daily rate limit (atomic in Redis; idempotent per workflow)
2. size: ``empty``, ``too_large``
3. type by magic bytes: ``type_not_allowed``, ``type_mismatch``
4. PDF structure in a sandboxed child: ``truncated``, ``malformed``, ``encrypted``,
   ``javascript`` (the policy table in steps/pdf_policy.py), ``too_complex``, and
   ``embedded_files`` with DOX_REJECT_EMBEDDED_FILES; accepted PDFs carry ``flags``
   (``owner_password``, ``embedded_files``), which reach the result (finish.build_result)
5. SHA-256 lookups: bytes known infected → ``infected``; same bytes already
   submitted by the same user (or anyone, with DOX_DUPLICATE_SCOPE=global) → ``duplicate``;
   only among workflows that keep their document (``Definition.keeps_documents``)
"""

from __future__ import annotations

from ..contract import Reason
from ..ratelimit import day_key
from ..sandbox import LimitExceeded, Limits, run_limited
from .base import Outcome, StepContext, duplicate, ok, reject
from .filetype import claimed_type, sniff
from .pdf import inspect_pdf


def validate(ctx: StepContext) -> Outcome:
    wf, s = ctx.workflow, ctx.rt.settings
    limit = int(ctx.params.get("rate_limit_per_day", s.rate_limit_per_user_per_day))
    if limit > 0:
        position = ctx.rt.limiter.admit(wf["user_id"], ctx.workflow_id, day_key(wf["created_at"]))
        if position > limit:
            return reject(
                Reason.RATE_LIMITED,
                f"user {wf['user_id']!r} is over the daily limit of {limit} documents"
                f" (this is number {position} today, UTC)",
            )
    size = int(wf["size"] or 0)
    max_size = int(ctx.params.get("max_file_size", s.max_file_size))
    if (wf.get("metadata") or {}).get("over_limit") or size > max_size:
        return reject(
            Reason.TOO_LARGE,
            f"the document is larger than the {max_size / 1048576:g} MiB limit"
            f" ({size / 1048576:.1f} MiB or more)",
        )
    if size == 0:
        return reject(Reason.EMPTY, "the document is empty (0 bytes)")

    path = ctx.rt.storage.staged_path(ctx.sha256)
    if not path.exists() and ctx.rt.storage.quarantine_path(ctx.sha256).exists():
        # Another workflow with the same bytes was found infected meanwhile.
        signature = ctx.rt.state.known_infected(ctx.sha256) or "quarantined earlier"
        return reject(Reason.INFECTED, signature, signature=signature)
    with path.open("rb") as fh:
        head = fh.read(1024)
    actual = sniff(head)
    claimed = claimed_type(wf.get("file_name"))
    allowed = [t.lower() for t in ctx.params.get("allowed_types", s.allowed_types)]
    if claimed and claimed != actual and claimed in allowed:
        return reject(
            Reason.TYPE_MISMATCH,
            f"the name says {claimed.upper()} but the content is {actual.upper()}",
            detected_type=actual,
        )
    if actual not in allowed:
        return reject(
            Reason.TYPE_NOT_ALLOWED,
            f"{actual.upper()} documents are not accepted (allowed: {', '.join(allowed)})",
            detected_type=actual,
        )

    facts: dict[str, object] = {"detected_type": actual}
    if actual == "pdf":
        limits = Limits(
            cpu_s=s.parser_cpu_s,
            memory_mib=s.parser_memory_mib,
            wall_s=max(5.0, s.parser_cpu_s * 2.0),
        )
        try:
            report = run_limited(inspect_pdf, str(path), s.reject_embedded_files, limits=limits)
        except LimitExceeded as exc:
            return reject(Reason.TOO_COMPLEX, f"parsing stopped at the {exc.what}")
        if report.get("reason"):
            pages = {"pages": report["pages"]} if report.get("pages") is not None else {}
            return reject(Reason(report["reason"]), str(report["detail"]), **pages)
        facts.update(pages=report["pages"], flags=report.get("flags", []))

    infected = ctx.rt.state.known_infected(ctx.sha256)
    if infected:
        return reject(Reason.INFECTED, infected, quarantine=True, signature=infected)
    keeping = {name for name, d in ctx.rt.definitions.items() if d.keeps_documents}
    if wf["rule_name"] in keeping:  # a check that keeps nothing is never a duplicate, nor an original
        scope_user = None if s.duplicate_scope == "global" else wf["user_id"]
        original = ctx.rt.state.find_duplicate(
            ctx.sha256, scope_user, ctx.workflow_id, before=wf["created_at"], rules=keeping
        )
        if original:
            return duplicate(original, sha256=ctx.sha256, **facts)
    return ok(sha256=ctx.sha256, size=size, **facts)
