"""Content-addressed storage: immutable staging, the object store and quarantine.

Layout under the storage root (shared by every worker)::

    staging/sha256/ab/cd/<hex>     bytes as submitted, read-only, keyed by their hash
    objects/sha256/ab/cd/<hex>     stored documents; storage_key = "sha256/ab/cd/<hex>"
    quarantine/sha256/<hex>        infected or quarantined documents
    tmp/                           partial writes (same filesystem, so rename is atomic)
    locks/<ab>.lock                staging locks, one per first byte of the hash

Content addressing makes every write idempotent (the same bytes land at the same
key) and dedupes for free. Every write is temp file → fsync → rename.

Staged bytes are shared by every workflow of the same document, so removing them when
one workflow ends must not race a new submission of the same bytes: placing a staged
file together with its caller's ``queued`` row (:meth:`ContentStore.staging`), and
checking that no workflow needs the file and removing it
(:meth:`ContentStore.discard_staged`), each happen under one file lock for that hash.

Permissions: documents are private to the DOX user — files ``0400``, folders
``0700`` — or, with ``DOX_STORAGE_GROUP_ACCESS=true`` (a storage shared with a
group, e.g. an NFS export read by a reviewers' group), ``0440`` and ``0750``.
Modes are set with chmod after creating, so the process umask changes nothing;
folders made by an older DOX get their mode fixed when DOX next writes into them.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from filelock import FileLock

from .errors import IntegrityFault

CHUNK = 1024 * 1024
_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True)
class Modes:
    """File and folder modes of everything under the storage root."""

    file: int
    folder: int

    @classmethod
    def for_access(cls, group: bool) -> Modes:
        return cls(0o440, 0o750) if group else cls(0o400, 0o700)


def make_dirs(path: Path, base: Path, mode: int) -> None:
    """Create ``path`` (``base`` and every folder between them) with exactly ``mode``.

    ``mkdir``'s mode is filtered by the umask; an explicit chmod is not. Folders that
    already exist are set to ``mode`` too.
    """
    base.mkdir(parents=True, exist_ok=True)
    folders = [base]
    for part in path.relative_to(base).parts:
        folders.append(folders[-1] / part)
    for folder in folders:
        folder.mkdir(exist_ok=True)
        if (folder.stat().st_mode & 0o7777) != mode:
            folder.chmod(mode)


def storage_key(sha256: str) -> str:
    """Relative key of a document: ``sha256/ab/cd/<hex>``."""
    _check_hex(sha256)
    return f"sha256/{sha256[:2]}/{sha256[2:4]}/{sha256}"


def document_copy(folder: Path, sha256: str) -> Path:
    """Where the documents backup in ``folder`` keeps a document: the store's own layout."""
    return folder / storage_key(sha256)


def _check_hex(sha256: str) -> None:
    # A key is joined onto a path: accept only a real SHA-256 so nothing escapes the root.
    if len(sha256) != 64 or not set(sha256) <= _HEX:
        raise ValueError(f"not a SHA-256 hex digest: {sha256!r}")


@dataclass(frozen=True)
class Staged:
    """Result of staging: the content address, and whether the input was over the limit."""

    sha256: str | None
    size: int
    over_limit: bool = False


class ContentStore:
    """Filesystem store shared by every worker through the storage root."""

    def __init__(self, root: Path, group_access: bool = False):
        self.root = root
        self.modes = Modes.for_access(group_access)
        self.staging = root / "staging"
        self.objects = root / "objects"
        self.quarantine_dir = root / "quarantine"
        self.tmp = root / "tmp"
        self.locks = root / "locks"
        for d in (self.staging, self.objects, self.quarantine_dir, self.tmp, self.locks):
            self.make_dirs(d)

    def make_dirs(self, path: Path) -> None:
        """A folder under the root with the store's folder mode (see the module docstring)."""
        make_dirs(path, self.root, self.modes.folder)

    # -- paths ----------------------------------------------------------------------
    def staged_path(self, sha256: str) -> Path:
        return self.staging / storage_key(sha256)

    def object_path(self, sha256: str) -> Path:
        return self.objects / storage_key(sha256)

    def quarantine_path(self, sha256: str) -> Path:
        _check_hex(sha256)
        return self.quarantine_dir / "sha256" / sha256

    # -- staging --------------------------------------------------------------------
    def stage(self, stream: BinaryIO, max_bytes: int) -> Staged:
        """Copy a stream into staging while hashing it; never holds the whole file in memory.

        Input longer than ``max_bytes`` is not staged (nothing to keep of a file
        validate will refuse); the returned size is then a lower bound.
        """
        with self.staging_held(stream, max_bytes) as staged:
            return staged

    @contextlib.contextmanager
    def staging_held(self, stream: BinaryIO, max_bytes: int) -> Iterator[Staged]:
        """:meth:`stage`, holding the hash's lock until the block ends.

        Write the ``queued`` row inside the block: a workflow of the same bytes that
        ends meanwhile then sees the row (and keeps the file) or has removed the file
        before this block placed it again — never the file gone under a new row.
        """
        digest = hashlib.sha256()
        size = 0
        fd, tmp_name = tempfile.mkstemp(dir=self.tmp, prefix="stage-")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in iter(lambda: stream.read(CHUNK), b""):
                    size += len(chunk)
                    if size > max_bytes:
                        yield Staged(sha256=None, size=size, over_limit=True)
                        return
                    digest.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            sha = digest.hexdigest()
            with self._lock(sha):
                self._place(tmp, self.staged_path(sha), read_only=True)
                yield Staged(sha256=sha, size=size)
        finally:
            tmp.unlink(missing_ok=True)

    def discard_staged(self, sha256: str, still_needed: Callable[[], bool]) -> bool:
        """Remove the staged copy unless ``still_needed()`` (asked under the hash's lock)."""
        with self._lock(sha256):
            if still_needed():
                return False
            self.staged_path(sha256).unlink(missing_ok=True)
            return True

    def _lock(self, sha256: str) -> FileLock:
        _check_hex(sha256)
        # 256 lock files, not one per document: a few holders of unrelated hashes share one.
        return FileLock(self.locks / f"{sha256[:2]}.lock", mode=self.modes.file | 0o200)

    # -- promotion ------------------------------------------------------------------
    def promote(self, sha256: str) -> str:
        """Copy a staged document into the object store after re-checking its hash.

        Idempotent: an object already present is verified, not rewritten.
        Raises :class:`IntegrityFault` if the staged bytes no longer match.
        """
        target = self.object_path(sha256)
        if target.exists():
            return storage_key(sha256)
        source = self.staged_path(sha256)
        digest = hashlib.sha256()
        fd, tmp_name = tempfile.mkstemp(dir=self.tmp, prefix="promote-")
        tmp = Path(tmp_name)
        try:
            with source.open("rb") as src, os.fdopen(fd, "wb") as out:
                for chunk in iter(lambda: src.read(CHUNK), b""):
                    digest.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            if digest.hexdigest() != sha256:
                raise IntegrityFault(
                    f"staged object {sha256[:12]}… changed on disk (now {digest.hexdigest()[:12]}…);"
                    " refusing to store it"
                )
            self._place(tmp, target, read_only=True)
        finally:
            tmp.unlink(missing_ok=True)
        return storage_key(sha256)

    def quarantine(self, sha256: str) -> Path:
        """Move a document out of staging into quarantine; idempotent and safe to race.

        A hard link makes the quarantine copy in one atomic step (two workers
        quarantining the same bytes both succeed). A copy already in the object store
        is left alone: earlier workflows point at it, and deciding about stored
        documents (re-scans) is maintenance's job.
        """
        target = self.quarantine_path(sha256)
        self.make_dirs(target.parent)
        source = self.staged_path(sha256)
        try:
            os.link(source, target)
        except FileExistsError:
            pass
        except FileNotFoundError:
            if not target.exists():
                raise
        source.unlink(missing_ok=True)
        return target

    def quarantine_stored(self, sha256: str) -> Path:
        """Move a *stored* document into quarantine (a re-scan found it infected)."""
        target = self.quarantine_path(sha256)
        self.make_dirs(target.parent)
        with contextlib.suppress(FileExistsError):
            os.link(self.object_path(sha256), target)
        self.object_path(sha256).unlink(missing_ok=True)
        return target

    def purge_quarantine(self, before: float) -> list[str]:
        """Delete quarantined documents last changed before ``before`` (epoch); their hashes."""
        gone = []
        for path in self.quarantine_dir.glob("sha256/*"):
            if path.is_file() and path.stat().st_mtime < before:
                path.unlink()
                gone.append(path.name)
        return gone

    def iter_objects(self) -> Iterator[str]:
        for path in self.objects.glob("sha256/*/*/*"):
            yield path.name

    # -- internals ------------------------------------------------------------------
    def _place(self, tmp: Path, target: Path, read_only: bool) -> None:
        """Atomically move a finished temp file to its content address."""
        self.make_dirs(target.parent)
        if read_only:
            tmp.chmod(self.modes.file)
        if target.exists():
            # Same address, same bytes: nothing to write. Touch it, so cleanups that spare
            # recent files (maintenance.clean_staging) see it as new again.
            try:
                os.utime(target)
                return
            except FileNotFoundError:
                pass  # removed just now: place ours
            except OSError:
                return  # not ours to touch; the bytes are there
        os.replace(tmp, target)
        dir_fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
