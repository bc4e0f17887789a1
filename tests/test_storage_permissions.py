"""Stored documents are private to the DOX user: 0400 files in 0700 folders, whatever the
umask; ``DOX_STORAGE_GROUP_ACCESS=true`` opens them to the group (0440/0750). Staging,
objects, quarantine and the documents backup alike (issue 10, section 6)."""

from __future__ import annotations

import io
import os
import stat
import subprocess
import sys
from pathlib import Path

import pdfs
import pytest
from services import clean_env

from dox_tasks.jobs.backup import copy_new_documents
from dox_tasks.storage import ContentStore


def modes(root: Path) -> tuple[set[int], set[int]]:
    """(file modes, folder modes) of everything under ``root``, the root included —
    but the staging locks, empty files that must be writable to be locked."""
    files, folders = set(), {stat.S_IMODE(root.stat().st_mode)}
    for path in root.rglob("*"):
        if path.parent.name == "locks" and path.suffix == ".lock":
            assert stat.S_IMODE(path.stat().st_mode) & 0o077 in (0, 0o040) and path.stat().st_size == 0
            continue
        (folders if path.is_dir() else files).add(stat.S_IMODE(path.stat().st_mode))
    return files, folders


@pytest.fixture(params=[0o000, 0o022, 0o077])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


@pytest.mark.parametrize(("group", "file_mode", "folder_mode"), [(False, 0o400, 0o700), (True, 0o440, 0o750)])
def test_every_file_and_folder_gets_the_store_modes(tmp_path, umask, group, file_mode, folder_mode):
    store = ContentStore(tmp_path / "store", group_access=group)
    a = store.stage(io.BytesIO(pdfs.unique(970)), 10**6).sha256
    b = store.stage(io.BytesIO(pdfs.unique(971)), 10**6).sha256
    c = store.stage(io.BytesIO(pdfs.unique(972)), 10**6).sha256
    assert a and b and c
    store.promote(a)
    store.quarantine(b)
    store.promote(c)
    store.quarantine_stored(c)
    assert (
        store.staged_path(a).exists() and store.object_path(a).exists() and store.quarantine_path(b).exists()
    )
    assert modes(store.root) == ({file_mode}, {folder_mode})
    backup = tmp_path / "backups" / "documents"
    store.promote(store.stage(io.BytesIO(pdfs.unique(973)), 10**6).sha256 or "")
    assert copy_new_documents(store, backup)["copied"] == 2
    assert modes(backup) == ({file_mode}, {folder_mode})


def test_folders_of_an_older_store_are_closed_when_written_into(tmp_path):
    root = tmp_path / "store"
    old = root / "objects" / "sha256" / "ab"
    old.mkdir(parents=True)
    for folder in (root, root / "objects", root / "objects" / "sha256", old):
        folder.chmod(0o755)
    store = ContentStore(root)
    assert stat.S_IMODE(store.objects.stat().st_mode) == 0o700
    sha = store.stage(io.BytesIO(pdfs.unique(974)), 10**6).sha256 or ""
    store.promote(sha)
    assert stat.S_IMODE(store.object_path(sha).parent.parent.stat().st_mode) == 0o700


@pytest.mark.parametrize(
    ("value", "file_mode", "folder_mode"), [(None, 0o400, 0o700), ("true", 0o440, 0o750)]
)
def test_dox_run_stores_private_files_even_with_umask_0(tmp_path, value, file_mode, folder_mode):
    inbox = tmp_path / "in"
    inbox.mkdir()
    (inbox / "a.pdf").write_bytes(pdfs.unique(975))
    env = clean_env(tmp_path, **({"DOX_STORAGE_GROUP_ACCESS": value} if value else {}))
    done = subprocess.run(
        [sys.executable, "-m", "dox_tasks.cli", "run", str(inbox)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        umask=0,
    )
    assert done.returncode == 0, done.stderr
    files, folders = modes(tmp_path / "home" / "store")
    assert (files, folders) == ({file_mode}, {folder_mode})
