"""Content-addressed storage and intake path confinement (pure filesystem, no servers)."""

from __future__ import annotations

import hashlib
import io
import os

import pytest

from dox_tasks.errors import IntegrityFault, SubmissionError
from dox_tasks.intake import confine
from dox_tasks.storage import ContentStore, storage_key


def test_stage_and_promote_are_content_addressed_and_idempotent(tmp_path):
    store = ContentStore(tmp_path)
    data = b"%PDF-1.4 hello"
    sha = hashlib.sha256(data).hexdigest()
    staged = store.stage(io.BytesIO(data), max_bytes=1000)
    assert (staged.sha256, staged.size, staged.over_limit) == (sha, len(data), False)
    assert store.stage(io.BytesIO(data), max_bytes=1000) == staged
    assert not os.access(store.staged_path(sha), os.W_OK) or os.geteuid() == 0
    key = store.promote(sha)
    assert key == storage_key(sha) == f"sha256/{sha[:2]}/{sha[2:4]}/{sha}"
    assert store.promote(sha) == key
    assert list(store.iter_objects()) == [sha]
    assert list(store.tmp.iterdir()) == []


def test_over_limit_input_is_not_staged(tmp_path):
    store = ContentStore(tmp_path)
    staged = store.stage(io.BytesIO(b"x" * 5000), max_bytes=1000)
    assert staged.over_limit and staged.sha256 is None
    assert list(store.staging.rglob("*.*")) == [] and list(store.tmp.iterdir()) == []


def test_promote_refuses_bytes_that_changed(tmp_path):
    store = ContentStore(tmp_path)
    staged = store.stage(io.BytesIO(b"original"), max_bytes=100)
    path = store.staged_path(staged.sha256)
    path.chmod(0o644)
    path.write_bytes(b"tampered")
    with pytest.raises(IntegrityFault, match="changed on disk"):
        store.promote(staged.sha256)
    assert list(store.iter_objects()) == []


def test_quarantine_moves_the_document_out(tmp_path):
    store = ContentStore(tmp_path)
    staged = store.stage(io.BytesIO(b"evil"), max_bytes=100)
    target = store.quarantine(staged.sha256)
    assert target.read_bytes() == b"evil"
    assert not store.staged_path(staged.sha256).exists()
    assert store.quarantine(staged.sha256) == target  # idempotent


def test_keys_only_accept_real_digests(tmp_path):
    with pytest.raises(ValueError):
        ContentStore(tmp_path).staged_path("../../etc/passwd")


@pytest.fixture
def inbox(tmp_path):
    root = tmp_path / "inbox"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "ok.pdf").write_bytes(b"%PDF")
    (tmp_path / "secret.txt").write_text("no")
    (root / "link-out.pdf").symlink_to(tmp_path / "secret.txt")
    (root / "link-in.pdf").symlink_to(root / "sub" / "ok.pdf")
    return root


def test_paths_inside_the_inbox_are_accepted(inbox):
    assert confine("sub/ok.pdf", inbox, required=True) == (inbox / "sub" / "ok.pdf").resolve()
    assert confine(inbox / "link-in.pdf", inbox, required=True).name == "ok.pdf"


@pytest.mark.parametrize(
    ("path", "words"),
    [
        ("../secret.txt", "'..' is not allowed"),
        ("sub/../../secret.txt", "'..' is not allowed"),
        ("link-out.pdf", "symlink that leads outside the inbox"),
        ("/etc/hostname", "lies outside the inbox"),
        ("missing.pdf", "no such file"),
    ],
)
def test_paths_outside_the_inbox_are_refused_clearly(inbox, path, words):
    with pytest.raises(SubmissionError, match=words):
        confine(path, inbox, required=True)


def test_service_paths_need_an_inbox():
    with pytest.raises(SubmissionError, match="DOX_INBOX_ROOT"):
        confine("/etc/hostname", None, required=True)


def test_submit_from_a_service_refuses_paths_outside_the_inbox(tmp_path, inbox):
    """Through the public entry point: a clear refusal, and no workflow is created."""
    from dox_tasks import runtime, submit
    from dox_tasks.settings import Settings

    rt = runtime.configure(Settings().model_copy(update={"home": tmp_path / "home", "inbox_root": inbox}))
    for path in ("../secret.txt", "link-out.pdf", str(tmp_path / "secret.txt")):
        with pytest.raises(SubmissionError, match="outside the inbox|'..' is not allowed"):
            submit(path, user="svc", from_service=True)
    from sqlalchemy import text

    with rt.state.engine.connect() as c:
        assert c.execute(text("select count(*) from workflow_states")).scalar() == 0
    runtime.configure(Settings())


def test_quarantine_is_safe_when_workers_race(tmp_path):
    """Two workers quarantining the same infected bytes at once both succeed; no temp files."""
    from concurrent.futures import ThreadPoolExecutor

    store = ContentStore(tmp_path)
    for round_ in range(30):
        staged = store.stage(io.BytesIO(b"evil %d" % round_), max_bytes=100)
        with ThreadPoolExecutor(4) as pool:
            targets = list(pool.map(lambda _: store.quarantine(staged.sha256), range(4)))
        assert len(set(targets)) == 1 and targets[0].exists()
    assert list(store.tmp.iterdir()) == []
