"""Content-addressed storage (pure filesystem, no servers); inbox confinement is in test_inbox.py."""

from __future__ import annotations

import hashlib
import io
import os

import pytest

from dox_tasks.errors import IntegrityFault
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
