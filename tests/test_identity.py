"""User names in one normal form; idempotency keys per user (issue 10, section 4)."""

from __future__ import annotations

import logging
import unicodedata

import pdfs
import pytest
import services

from dox_tasks.errors import SubmissionError
from dox_tasks.identity import normalise_user
from dox_tasks.ratelimit import day_key

COMPOSED = unicodedata.normalize("NFC", "bïlling")
DECOMPOSED = unicodedata.normalize("NFD", "bïlling")


@pytest.mark.parametrize(
    "spelling", ["billing", "Billing", "billing ", " BILLING", "ｂilling", "ＢＩＬＬＩＮＧ"]
)
def test_spellings_of_one_name_are_one_user(spelling):
    assert normalise_user(spelling) == "billing"


def test_composed_and_decomposed_accents_are_one_user_and_accents_are_kept():
    assert COMPOSED != DECOMPOSED
    assert normalise_user(COMPOSED) == normalise_user(DECOMPOSED) == COMPOSED
    assert normalise_user("josé") != normalise_user("jose")


@pytest.mark.parametrize(
    ("name", "what"),
    [
        ("billing\u200b", "invisible formatting"),  # zero-width space
        ("bil\u200dling", "invisible formatting"),  # zero-width joiner
        ("\u202ebilling", "invisible formatting"),  # right-to-left override
        ("billing\x00", "control"),
        ("bill\ning", "control"),
        ("bill\x1b[31ming", "control"),
        ("billing\u2028", "line separator"),
    ],
)
def test_names_with_invisible_or_control_characters_are_refused(name, what):
    with pytest.raises(SubmissionError, match=what):
        normalise_user(name)


@pytest.mark.parametrize("name", ["", "   ", "x" * 201])
def test_empty_and_overlong_names_are_refused(name):
    with pytest.raises(SubmissionError):
        normalise_user(name)


@pytest.mark.integration
def test_respelling_a_name_does_not_reset_the_quota(stack, harness_factory):
    """After the limit as `billing`, every other spelling of it is over the limit too."""
    h = harness_factory(stack.model_copy(update={"rate_limit_per_user_per_day": 3}))
    first = [h.submit(pdfs.unique(900 + n), user="billing") for n in range(3)]
    spellings = ["Billing", "billing ", "ｂilling", COMPOSED.replace("ï", "i").upper()]
    again = [h.submit(pdfs.unique(910 + n), user=s) for n, s in enumerate(spellings)]
    h.worker()
    rows = h.wait(first + again, timeout=120)
    assert [rows[w]["current_state"] for w in first] == ["success"] * 3
    assert [(rows[w]["current_state"], rows[w]["reason"]) for w in again] == [
        ("rejected", "rate_limited")
    ] * 4
    assert {rows[w]["user_id"] for w in first + again} == {"billing"}
    assert [rows[w]["user_display"] for w in again] == spellings
    assert h.rt.limiter.count("billing", day_key()) == 7
    result = rows[again[2]]["result"]
    assert (result["user"], result["user_display"]) == ("billing", "ｂilling")
    with pytest.raises(SubmissionError, match="invisible"):
        h.submit(pdfs.unique(920), user="billing\u200b")


@pytest.mark.integration
def test_idempotency_keys_are_per_user(dox):
    """Two users with one key are two workflows, both processed; the same user (any
    spelling) with the key gets its first workflow back."""
    a = dox.submit(pdfs.unique(930), user="alice", idempotency_key="upload-1")
    b = dox.submit(pdfs.unique(931), user="bob", idempotency_key="upload-1")
    again = dox.submit(pdfs.unique(932), user="Alice ", idempotency_key="upload-1")
    assert a != b and again == a
    rows = dox.wait([a, b])
    assert rows[a]["current_state"] == rows[b]["current_state"] == "success"
    assert rows[a]["sha256"] != rows[b]["sha256"]


@pytest.mark.integration
def test_a_broker_submission_with_an_invisible_name_is_logged_and_dropped(
    stack, harness_factory, tmp_path, caplog
):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "a.pdf").write_bytes(pdfs.unique(940))
    h = harness_factory(stack.model_copy(update={"inbox_root": inbox}))
    caplog.set_level(logging.ERROR, logger="dox_tasks.tasks")
    h.worker(queues=["intake"])
    h.app.send_task("dox.submit", args=["a.pdf"], kwargs={"user": "svc\u200b"})
    h.app.send_task("dox.submit", args=[123], kwargs={"user": "svc"})  # JSON can carry anything
    h.app.send_task("dox.submit", args=["a.pdf"], kwargs={"user": "svc"})
    h.wait_until(lambda: _users(h) == ["svc"], what="the valid submission")
    messages = [r.getMessage() for r in caplog.records]
    assert any("invisible formatting" in m for m in messages)
    assert any("path must be a string, not int" in m for m in messages)


def _users(h) -> list[str]:  # type: ignore[no-untyped-def]
    from sqlalchemy import text

    with h.rt.state.engine.connect() as c:
        return [r[0] for r in c.execute(text("select user_id from workflow_states"))]


@pytest.mark.postgres
def test_upgrading_normalises_existing_users_and_scopes_their_keys(tmp_path):
    """Rows written before 0007 keep their spelling as user_display and get the normal form."""
    from alembic import command
    from sqlalchemy import text

    from dox_tasks.db.engine import alembic_config, make_engine

    url = services.create_database()
    try:
        engine = make_engine(url)
        cfg = alembic_config(str(engine.url))
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "0006")
        with engine.begin() as c:
            c.execute(
                text(
                    "insert into workflow_definitions (definition_hash, name, version, body, created_at)"
                    " values (:h, 'wf', '1', '{}', now())"
                ),
                {"h": "d" * 64},
            )
            for n, user in enumerate(["Billing", "billing", "ｂilling"]):
                c.execute(
                    text(
                        "insert into workflow_states (workflow_id, rule_name, definition_hash,"
                        " definition_version, current_state, user_id, idempotency_key, created_at,"
                        " updated_at)"
                        " values (:w, 'wf', :h, '1', 'success', :u, :k, now(), now())"
                    ),
                    {"w": f"w{n}", "h": "d" * 64, "u": user, "k": f"k{n}"},
                )
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
        with engine.connect() as c:
            rows = c.execute(
                text("select user_id, user_display from workflow_states order by workflow_id")
            ).all()
        assert rows == [("billing", "Billing"), ("billing", "billing"), ("billing", "ｂilling")]
        engine.dispose()
    finally:
        services.drop_database(url)
