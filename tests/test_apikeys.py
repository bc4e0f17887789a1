"""API keys: made, checked, revoked and rotated on both backends; the `dox apikeys` CLI."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
import services
from services import clean_env, dox
from sqlalchemy import select

from dox_tasks import apikeys
from dox_tasks.apikeys import KeyIdentity, KeyRefusal
from dox_tasks.db import apikeys as table
from dox_tasks.db.store import aware, now, open_store
from dox_tasks.db.tables import AK, EV
from dox_tasks.errors import ApiKeyError


def _secret(key: str) -> str:
    return key.split("_", 2)[2]


def _refused(result: object, reason: str) -> None:
    assert isinstance(result, KeyRefusal), result
    assert result.reason == reason and result.message


def test_create_then_verify(store):
    made = apikeys.create(store, "ci uploader", " Billing ", "read,submit", timedelta(days=90))
    assert made.key.startswith(f"dox_{made.record['api_key']}_") and len(made.record["api_key"]) == 12
    who = apikeys.verify(store, made.key)
    assert who == KeyIdentity(
        made.record["api_key"],
        "ci uploader",
        "billing",
        " Billing ",
        ("submit", "read"),
        aware(made.record["expires_at"]),  # kept with a cached identity (api/keycache.py)
    )
    assert who.allows("submit") and not who.allows("operate")


def test_secret_is_never_stored_nor_listed(store):
    made = apikeys.create(store, "k", "u", ["operate"])
    secret = _secret(made.key)
    with store.tx() as conn:
        row = dict(conn.execute(select(AK)).mappings().one())
    assert secret not in json.dumps(row, default=str) and made.key not in json.dumps(row, default=str)
    assert len(row["secret_hash"]) == 64 and row["usage_count"] == 0
    listed = apikeys.list_keys(store)
    assert "secret_hash" not in listed[0] and secret not in json.dumps(listed, default=str)


def test_refusals(store):
    made = apikeys.create(store, "k", "u", "read")
    prefix, secret = made.record["api_key"], _secret(made.key)
    _refused(apikeys.verify(store, f"dox_{'0' * 12}_{secret}"), "unknown")
    wrong = secret[:-1] + ("A" if secret[-1] != "A" else "B")
    _refused(apikeys.verify(store, f"dox_{prefix}_{wrong}"), "wrong_secret")
    for bad in [
        "",
        "dox_",
        made.key[:-1],
        made.key + "x",
        "dx_" + made.key[3:],
        made.key.upper(),
        f"dox_{prefix}-{secret}",
        made.key[:-1] + "é",
        "dox_" + "a" * 300,
        None,
        b"dox_",
    ]:
        _refused(apikeys.verify(store, bad), "malformed")


def test_malformed_is_refused_before_any_read(store, monkeypatch):
    monkeypatch.setattr(table, "get_key", lambda *a: pytest.fail("read the database"))
    _refused(apikeys.verify(store, "dox_abc"), "malformed")


def test_revoked_and_expired(store):
    t0 = now()
    made = apikeys.create(store, "k", "u", "read", timedelta(hours=1), now=t0)
    assert isinstance(apikeys.verify(store, made.key, t0 + timedelta(minutes=59)), KeyIdentity)
    _refused(apikeys.verify(store, made.key, t0 + timedelta(hours=1)), "expired")
    other = apikeys.create(store, "k2", "u", "read")
    row = apikeys.revoke(store, other.record["api_key"])
    assert row["revoked_at"] is not None and "secret_hash" not in row
    _refused(apikeys.verify(store, other.key), "revoked")
    with pytest.raises(ApiKeyError, match="no API key with prefix"):
        apikeys.revoke(store, "0" * 12)
    with pytest.raises(ApiKeyError, match="not a key prefix"):
        apikeys.revoke(store, "nope")


def test_rotation_grace(store):
    t0 = now()
    old = apikeys.create(store, "deploy", "ops", "submit,operate", now=t0)
    new, old_row = apikeys.rotate(
        store, old.record["api_key"], timedelta(hours=24), now=t0 + timedelta(hours=1)
    )
    assert old_row["replaced_by"] == new.record["api_key"]
    assert (new.record["name"], new.record["user_id"], new.record["scopes"]) == (
        "deploy",
        "ops",
        ["submit", "operate"],
    )
    at = t0 + timedelta(hours=1, minutes=1)
    assert isinstance(apikeys.verify(store, new.key, at), KeyIdentity)
    assert isinstance(apikeys.verify(store, old.key, t0 + timedelta(hours=24, minutes=59)), KeyIdentity)
    _refused(apikeys.verify(store, old.key, t0 + timedelta(hours=25)), "expired")
    assert isinstance(apikeys.verify(store, new.key, t0 + timedelta(days=30)), KeyIdentity)
    with pytest.raises(ApiKeyError, match="already rotated"):
        apikeys.rotate(store, old.record["api_key"], now=at)


def test_rotation_keeps_an_earlier_expiry(store):
    t0 = now()
    old = apikeys.create(store, "k", "u", "read", timedelta(hours=2), now=t0)
    new, old_row = apikeys.rotate(store, old.record["api_key"], timedelta(hours=24), now=t0)
    _refused(apikeys.verify(store, old.key, t0 + timedelta(hours=2)), "expired")
    assert isinstance(apikeys.verify(store, new.key, t0 + timedelta(hours=1)), KeyIdentity)
    _refused(apikeys.verify(store, new.key, t0 + timedelta(hours=2)), "expired")  # same lifetime


def test_bad_names_users_and_scopes(store):
    with pytest.raises(ApiKeyError, match="the scopes are submit, read, read_all, operate"):
        apikeys.create(store, "k", "u", "read,admin")
    with pytest.raises(ApiKeyError, match="at least one scope"):
        apikeys.create(store, "k", "u", " , ")
    for name in ["", "   ", "x" * 101, "a\u200bb", "a\nb"]:
        with pytest.raises(ApiKeyError):
            apikeys.create(store, name, "u", "read")
    with pytest.raises(ApiKeyError, match="user"):
        apikeys.create(store, "k", "a\u202eb", "read")
    assert apikeys.list_keys(store) == []


def test_usage_recording_adds_up(store):
    a = apikeys.create(store, "a", "u", "read").record["api_key"]
    b = apikeys.create(store, "b", "u", "read").record["api_key"]
    t0 = now()
    table.record_use(store, {a: (3, t0), b: (1, t0)})
    table.record_use(store, {a: (2, t0 + timedelta(seconds=5))})
    table.record_use(store, {a: (1, t0 - timedelta(seconds=5))})  # a late batch does not move it back
    table.record_use(store, {})
    rows = {r["api_key"]: r for r in apikeys.list_keys(store)}
    assert rows[a]["usage_count"] == 6 and rows[b]["usage_count"] == 1
    assert abs((aware(rows[a]["last_used"]) - (t0 + timedelta(seconds=5))).total_seconds()) < 0.001


# -- the CLI, as the real console script ---------------------------------------------------


def _events(url: str) -> list[dict]:
    s = open_store(url)
    try:
        with s.tx() as conn:
            return [dict(r) for r in conn.execute(select(EV).order_by(EV.c.created_at)).mappings()]
    finally:
        s.close()


def test_cli_create_list_rotate_revoke(tmp_path):
    db_url = f"sqlite:///{tmp_path / 'keys.db'}"
    env = clean_env(tmp_path, DOX_DATABASE_URL=db_url)
    made = dox(["apikeys", "create", "ci", "--user", "Billing", "--scope", "submit,read", "--expires", "90d",
                "--actor", "ops-anna"], env, tmp_path)  # fmt: skip
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    assert key.startswith("dox_") and len(made.stdout.splitlines()) == 1
    assert "only time the key is shown" in made.stderr
    prefix = key.split("_")[1]

    listed = dox(["apikeys", "list", "--json"], env, tmp_path)
    (row,) = [json.loads(line) for line in listed.stdout.splitlines()]
    assert (row["prefix"], row["user"], row["scopes"], row["usage_count"]) == (
        prefix,
        "billing",
        ["submit", "read"],
        0,
    )
    assert row["expires_at"] and row["revoked_at"] is None and _secret(key) not in listed.stdout
    table_out = dox(["apikeys", "list"], {**env, "COLUMNS": "250"}, tmp_path)
    assert table_out.returncode == 0 and prefix in table_out.stdout and _secret(key) not in table_out.stdout

    rotated = dox(["apikeys", "rotate", prefix, "--grace", "1h"], env, tmp_path)
    assert rotated.returncode == 0, rotated.stderr
    new_key = rotated.stdout.strip()
    assert new_key.startswith("dox_") and new_key != key and "the old key works until" in rotated.stderr

    revoked = dox(["apikeys", "revoke", new_key.split("_")[1], "--reason", "leaked"], env, tmp_path)
    assert revoked.returncode == 0 and "revoked at" in revoked.stdout

    events = [e for e in _events(db_url) if e["type"].startswith("apikey.")]
    assert [e["type"] for e in events] == ["apikey.create", "apikey.rotate", "apikey.revoke"]
    assert events[0]["payload"]["actor"] == "ops-anna" and events[2]["payload"]["reason"] == "leaked"
    for secret in (_secret(key), _secret(new_key)):
        assert secret not in json.dumps([e["payload"] for e in events])


@pytest.mark.parametrize(
    "args, says",
    [
        (
            ["create", "k", "--user", "u", "--scope", "read,admin"],
            "the scopes are submit, read, read_all, operate",
        ),
        (["revoke", "0123456789ab"], "no API key with prefix 0123456789ab"),
        (["rotate", "0123456789ab"], "no API key with prefix 0123456789ab"),
        (["revoke", "not-a-prefix"], "not a key prefix"),
    ],
)
def test_cli_refusals_are_one_sentence(tmp_path, args, says):
    env = clean_env(tmp_path, DOX_DATABASE_URL=f"sqlite:///{tmp_path / 'keys.db'}")
    res = dox(["apikeys", *args], env, tmp_path)
    assert res.returncode == 1, (res.stdout, res.stderr)
    assert says in res.stderr and "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_cli_against_postgres(tmp_path):
    url = services.create_database()
    try:
        env = clean_env(tmp_path, DOX_DATABASE_URL=url)
        assert dox(["db", "upgrade"], env, tmp_path).returncode == 0
        made = dox(["apikeys", "create", "pg", "--user", "u", "--scope", "read_all"], env, tmp_path)
        assert made.returncode == 0, made.stderr
        listed = dox(["apikeys", "list", "--json"], env, tmp_path)
        assert json.loads(listed.stdout)["scopes"] == ["read_all"]
    finally:
        services.drop_database(url)
