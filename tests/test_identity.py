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
        ("billing\u3164", "shows as nothing"),  # HANGUL FILLER (a letter, Lo)
        ("billing\u115f", "shows as nothing"),
        ("billing\uffa0", "shows as nothing"),
        ("billing\u2800", "shows as nothing"),  # BRAILLE PATTERN BLANK (So)
        ("billing\u034f", "shows as nothing"),  # COMBINING GRAPHEME JOINER (Mn)
        ("billing\ufe0f", "shows as nothing"),  # VARIATION SELECTOR-16
        ("billing\U000e0100", "shows as nothing"),
        ("billing\u180b", "shows as nothing"),
        ("billing\u17b4", "shows as nothing"),
        ("billing\u00ad", "invisible formatting"),  # SOFT HYPHEN (Cf)
    ],
)
def test_names_with_invisible_or_control_characters_are_refused(name, what):
    with pytest.raises(SubmissionError, match=what):
        normalise_user(name)


@pytest.mark.parametrize("name", ["", "   ", "x" * 201, "\ufdfa" * 12])  # U+FDFA: 18 characters in NFKC
def test_empty_and_overlong_names_are_refused(name):
    with pytest.raises(SubmissionError):
        normalise_user(name)


def test_white_space_inside_a_name_is_one_space():
    assert normalise_user("bill  ing") == normalise_user("bill\u00a0ing") == normalise_user("bill\u3000ing")
    assert normalise_user("bill ing") == "bill ing" != normalise_user("billing")


@pytest.mark.integration
def test_an_empty_idempotency_key_is_refused(dox):
    with pytest.raises(SubmissionError, match="idempotency_key is empty"):
        dox.submit(pdfs.unique(933), idempotency_key="")


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


# -- staged bytes of ended workflows (issue 10, section 4) ---------------------------


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["type", "rate_limited", "javascript", "success"])
def test_staged_bytes_are_removed_when_the_workflow_ends_for_good(stack, harness_factory, kind):
    h = harness_factory(stack.model_copy(update={"rate_limit_per_user_per_day": 1}))
    if kind == "rate_limited":
        h.submit(pdfs.unique(960), user="dora")
    data = {"type": pdfs.png(), "javascript": pdfs.javascript_plain()}.get(kind, pdfs.unique(961))
    wid = h.submit(data, user="dora" if kind == "rate_limited" else "erin")
    sha = h.rt.state.get_workflow(wid)["sha256"]
    assert h.rt.storage.staged_path(sha).exists()
    h.worker()
    row = h.wait([wid])[wid]
    expected = {"type": "type_mismatch", "rate_limited": "rate_limited", "javascript": "javascript"}
    if kind == "success":
        assert row["current_state"] == "success" and h.objects() == [sha]
    else:
        assert (row["current_state"], row["reason"]) == ("rejected", expected[kind])
    # Removed right after the terminal commit, which the wait may see first.
    h.wait_until(
        lambda: not h.rt.storage.staged_path(sha).exists(), timeout=5, what="the staged copy removed"
    )


@pytest.mark.integration
def test_staged_bytes_another_workflow_needs_are_kept(stack, harness_factory):
    """Two submissions of one PDF: the first is rejected (rate limit) while the second
    waits; its bytes stay until the second has ended too."""
    h = harness_factory(stack.model_copy(update={"rate_limit_per_user_per_day": 1}))
    doc = pdfs.javascript_plain()
    h.submit(pdfs.unique(962), user="fay")
    limited = h.submit(doc, user="fay")  # over the limit: rejected at validate
    h.worker(queues=["validation"])
    h.wait([limited])
    sha = h.rt.state.get_workflow(limited)["sha256"]
    h.stop_workers()
    other = h.submit(doc, user="gus")  # same bytes, another user: queued
    assert h.rt.storage.staged_path(sha).exists()
    from dox_tasks.finish import _discard_staged

    _discard_staged(h.rt, limited, sha)  # as if the first ended only now: gus still needs them
    assert h.rt.storage.staged_path(sha).exists()
    h.worker()
    assert h.wait([other])[other]["reason"] == "javascript"
    h.wait_until(
        lambda: not h.rt.storage.staged_path(sha).exists(), timeout=5, what="the staged copy removed"
    )


@pytest.mark.integration
def test_staged_bytes_of_a_failed_workflow_are_kept_for_a_retry(stack, harness_factory):
    dead = f"tcp://127.0.0.1:{services.free_port()}"
    h = harness_factory(
        stack.model_copy(update={"clamd_url": dead, "clamd_timeout_s": 0.5, "workflow_retry_attempts": 0})
    )
    h.worker()
    row = h.run(pdfs.unique(963))
    assert (row["current_state"], row["reason"]) == ("failed", "scanner_unavailable")
    assert h.rt.storage.staged_path(row["sha256"]).exists()


def test_a_discard_waits_for_a_submission_of_the_same_bytes_holding_them(tmp_path):
    """The race the lock closes: a submission has placed the staged file but not yet
    written its row when another workflow of those bytes ends. The discard waits for
    the submission's block and then sees its row."""
    import io
    import threading

    from dox_tasks.storage import ContentStore

    store = ContentStore(tmp_path / "store")
    data = pdfs.unique(964)
    row_written = threading.Event()
    inside = threading.Event()
    release = threading.Event()

    def submission() -> None:
        with store.staging_held(io.BytesIO(data), 10**6):
            inside.set()
            release.wait(5)
            row_written.set()  # the queued row, written while the lock is held

    t = threading.Thread(target=submission)
    t.start()
    assert inside.wait(5)
    sha = __import__("hashlib").sha256(data).hexdigest()
    result: list[bool] = []
    d = threading.Thread(target=lambda: result.append(store.discard_staged(sha, row_written.is_set)))
    d.start()
    d.join(0.3)
    assert d.is_alive()  # waiting for the submission's lock
    release.set()
    t.join(5)
    d.join(5)
    assert result == [False] and store.staged_path(sha).exists()
    assert store.discard_staged(sha, lambda: False) and not store.staged_path(sha).exists()


@pytest.mark.integration
def test_resubmitting_old_staged_bytes_makes_them_new_for_the_weekly_cleanup(stack, harness_factory):
    """The cleanup spares files younger than a day; bytes staged long ago and submitted
    again must count as new (their file is reused, not rewritten)."""
    import os

    from dox_tasks.jobs.maintenance import clean_staging

    h = harness_factory(stack)
    data = pdfs.unique(965)
    sha = h.rt.storage.stage(__import__("io").BytesIO(data), 10**6).sha256
    assert sha
    path = h.rt.storage.staged_path(sha)
    old = path.stat().st_mtime - 3 * 86400
    os.utime(path, (old, old))
    wid = h.submit(data)  # queued, not yet run: the cleanup must keep its bytes
    assert path.stat().st_mtime > old + 86400
    assert clean_staging(h.rt)["staging_removed"] == 0 and path.exists()
    h.worker()
    h.wait([wid])
