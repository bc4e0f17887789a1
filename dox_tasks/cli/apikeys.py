"""``dox apikeys create | list | revoke | rotate``: the keys of DOX's HTTP API.

A new key is printed once and never again (only its hash is stored). Creating, revoking
and rotating are operator actions, recorded as events without the key. A refusal (a bad
scope, an unknown prefix) is one sentence and exit code 1.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import click

from .. import apikeys as keys
from ..audit import record_action
from ..errors import ApiKeyError, KeyChangeNotAnnounced
from ..terminal import safe
from ..terminal import table as _table
from .common import actor_option, iso, out, parse_duration, reason_option, runtime

_SHOWN_ONCE = "This is the only time the key is shown: store it now (DOX keeps only its hash)."


@contextmanager
def _refusals() -> Iterator[None]:
    """An API key refusal as click's one-line error (exit 1)."""
    try:
        yield
    except ApiKeyError as exc:
        raise click.ClickException(str(exc)) from exc


def _duration(optional: bool) -> Callable[[click.Context, click.Parameter, str | None], timedelta | None]:
    def convert(ctx: click.Context, param: click.Parameter, value: str | None) -> timedelta | None:
        return None if value is None and optional else parse_duration(value or "")

    return convert


def _shown(r: dict[str, Any]) -> dict[str, Any]:
    """A key's row as listed: never the secret or its hash."""
    return {
        "prefix": r["api_key"],
        "name": r["name"],
        "user": r["user_id"],
        "user_display": r["user_display"],
        "scopes": list(r["scopes"]),
        "created_at": iso(r["created_at"]),
        "expires_at": iso(r["expires_at"]),
        "revoked_at": iso(r["revoked_at"]),
        "last_used": iso(r["last_used"]),
        "usage_count": r["usage_count"],
        "replaced_by": r["replaced_by"],
    }


@click.group()
def apikeys() -> None:
    """Keys for DOX's HTTP API: create, list, revoke, rotate."""


@apikeys.command("create")
@click.argument("name")
@click.option("--user", required=True, help="the user the key acts as (its workflows, quotas, duplicates)")
@click.option("--scope", "scope", required=True, help=f"comma-separated: {', '.join(keys.SCOPES)}")
@click.option("--expires", default=None, callback=_duration(True), help="lifetime, e.g. 90d (default: none)")
@actor_option
@reason_option
def create_cmd(
    name: str, user: str, scope: str, expires: timedelta | None, actor: str | None, reason: str | None
) -> None:
    """Make a key and print it once."""
    rt = runtime()
    with _refusals():
        made = keys.create(rt, name, user, scope, expires)
    r = made.record
    record_action(
        rt,
        "apikey.create",
        actor,
        reason,
        prefix=r["api_key"],
        name=r["name"],
        user=r["user_id"],
        scopes=r["scopes"],
        expires_at=iso(r["expires_at"]),
    )
    click.echo(made.key)
    click.echo(
        f"prefix {r['api_key']}, user {safe(r['user_id'])}, scopes {','.join(r['scopes'])},"
        f" expires {iso(r['expires_at']) or 'never'}",
        err=True,
    )
    click.echo(_SHOWN_ONCE, err=True)


@apikeys.command("list")
@click.option("--json", "as_json", is_flag=True, help="one object per line")
def list_cmd(as_json: bool) -> None:
    """Every key, oldest first (prefixes only: the secrets are not stored)."""
    rows = [_shown(r) for r in keys.list_keys(runtime())]
    if as_json:
        for r in rows:
            click.echo(json.dumps(r, sort_keys=True))
        return
    columns = [
        "prefix",
        "name",
        "user",
        "scopes",
        "created_at",
        "expires_at",
        "revoked_at",
        "last_used",
        "usage_count",
        "replaced_by",
    ]
    cells = [[",".join(r[c]) if c == "scopes" else r[c] for c in columns] for r in rows]
    out.print(_table(columns, cells))


@apikeys.command("revoke")
@click.argument("prefix")
@actor_option
@reason_option
def revoke_cmd(prefix: str, actor: str | None, reason: str | None) -> None:
    """Refuse the key from now on."""
    rt = runtime()
    unheard: KeyChangeNotAnnounced | None = None
    with _refusals():
        try:
            row = keys.revoke(rt, prefix)
        except KeyChangeNotAnnounced as exc:  # revoked all the same: record and say so
            row, unheard = exc.done, exc  # type: ignore[assignment]
    record_action(rt, "apikey.revoke", actor, reason, prefix=row["api_key"], name=row["name"])
    click.echo(f"API key {row['api_key']} ({safe(row['name'])}) revoked at {iso(row['revoked_at'])}")
    if unheard:
        raise click.ClickException(str(unheard))


@apikeys.command("rotate")
@click.argument("prefix")
@click.option(
    "--grace",
    default="24h",
    show_default=True,
    callback=_duration(False),
    help="how long the old key keeps working",
)
@actor_option
@reason_option
def rotate_cmd(prefix: str, grace: timedelta, actor: str | None, reason: str | None) -> None:
    """A new key with the same name, user and scopes; the old one works for the grace period."""
    rt = runtime()
    unheard: KeyChangeNotAnnounced | None = None
    with _refusals():
        try:
            made, old = keys.rotate(rt, prefix, grace)
        except KeyChangeNotAnnounced as exc:  # rotated all the same: the new key must be shown
            (made, old), unheard = exc.done, exc  # type: ignore[misc]
    record_action(
        rt,
        "apikey.rotate",
        actor,
        reason,
        prefix=old["api_key"],
        replaced_by=made.record["api_key"],
        name=old["name"],
        old_expires_at=iso(old["expires_at"]),
    )
    click.echo(made.key)
    click.echo(
        f"new prefix {made.record['api_key']}; the old key works until {iso(old['expires_at'])}", err=True
    )
    click.echo(_SHOWN_ONCE, err=True)
    if unheard:
        raise click.ClickException(str(unheard))
