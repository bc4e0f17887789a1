"""``dox quarantine list | release | purge`` and ``dox documents delete``: the stored bytes."""

from __future__ import annotations

import json
import sys

import click

from ..documents import delete, purge, quarantined, release
from ..terminal import safe
from ..terminal import table as _table
from .common import actor_option, out, parse_duration, reason_option, runtime, short_ids, wide_option


@click.group()
def quarantine() -> None:
    """Quarantined documents: list, release a false positive, purge old ones."""


@quarantine.command("list")
@wide_option
@click.option("--json", "as_json", is_flag=True)
def quarantine_list(wide: bool, as_json: bool) -> None:
    """Every quarantined document: hash, size, since, reason, signature and its workflow."""
    items = quarantined(runtime())
    if as_json:
        for item in items:
            click.echo(json.dumps(item, sort_keys=True))
        return
    short = short_ids((i["workflow_id"] for i in items), wide)
    keys = ("sha256", "size", "quarantined_at", "reason", "signature")
    rows = [[*(i[k] for k in keys), short.get(i["workflow_id"] or "")] for i in items]
    columns = ("sha256", "size", "since", "reason", "signature", "workflow")
    out.print(_table(columns, rows, unbroken=("workflow",)))


@quarantine.command("release")
@click.argument("sha256")
@actor_option
@reason_option
def quarantine_release(sha256: str, actor: str | None, reason: str | None) -> None:
    """Move a quarantined document into the store (its workflow's record is unchanged)."""

    click.echo(f"released to {release(runtime(), sha256, actor, reason)}")


@quarantine.command("purge")
@click.option("--older-than", "older_than", default="30d", show_default=True, help="e.g. 30d, 12h")
@actor_option
@reason_option
def quarantine_purge(older_than: str, actor: str | None, reason: str | None) -> None:
    gone = purge(runtime(), parse_duration(older_than), actor, reason)
    click.echo(f"purged {len(gone)} quarantined document(s) older than {older_than}")


@click.group()
def documents() -> None:
    """Stored documents."""


@documents.command("delete")
@click.argument("sha256")
@actor_option
@reason_option
@click.option("--json", "as_json", is_flag=True)
def documents_delete(sha256: str, actor: str | None, reason: str | None, as_json: bool) -> None:
    """Delete a document's bytes and redact its extracted fields; workflow records stay.

    Says what went where: files removed, rows, event payloads, execution-log lines and
    stream entries redacted or deleted, and the copies DOX cannot edit. Exit 1 when a
    part failed (Redis down, say): running it again finishes the job.
    """

    r = delete(runtime(), sha256, actor, reason)
    if as_json:
        click.echo(json.dumps(r, sort_keys=True))
    else:
        log_lines = r["execution_log_lines_redacted"]
        lines = [
            f"deleted {len(r['removed'])} file(s): {', '.join(r['removed']) or 'none left'}",
            f"redacted {len(r['workflows_redacted'])} workflow row(s), {r['step_outputs_redacted']}"
            f" step output(s), {len(r['events_redacted'])} event payload(s) in workflow_events",
            f"redacted {sum(log_lines.values())} line(s) of the execution log"
            + (f" ({', '.join(sorted(log_lines))})" if log_lines else ""),
            f"deleted {r['stream_entries_deleted']} entr(y/ies) from the Redis event stream",
            f"not redacted: {r['not_redacted']}",
        ]
        for line in lines:
            click.echo(safe(line, markup=False))
        for problem in r["errors"]:
            click.echo(safe(f"NOT DONE: {problem} (run the command again)", markup=False), err=True)
    if r["errors"]:
        sys.exit(1)
