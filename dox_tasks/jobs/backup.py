"""Backups: the database (``pg_dump``), the configuration, the stored documents.

``backup_database`` opens a REPEATABLE READ transaction, exports its snapshot,
counts the DOX tables inside it and runs ``pg_dump --snapshot`` on the same
snapshot, so the recorded counts are exactly what the archive holds (the SQL side
is :mod:`dox_tasks.db.backup_sql`; this module runs the tools and keeps the files). The archive
(custom format, compressed) gets a ``.sha256`` file and a ``.json`` manifest with
the counts, and a row in ``backups``. Verification reads the archive back
(checksum + ``pg_restore --list``); a full restore into a scratch database whose
counts must equal the recorded ones runs once a week. Restoring for real is
``dox backup restore`` only — never a task a message could trigger.

Credentials go to the tools through the environment (PGPASSWORD), never argv or logs.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tarfile
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from ..db import backup_sql
from ..db.backup_sql import Target
from ..errors import DoxError
from ..storage import ContentStore, document_copy, make_dirs

TOOL_TIMEOUT_S = 3600


class BackupError(DoxError):
    """A backup could not be made, verified or restored (the message says which and why)."""


@dataclass(frozen=True)
class Archive:
    kind: str
    path: Path
    sha256: str
    size: int
    row_counts: dict[str, int] | None = None
    detail: str | None = None


def stamp(ts: datetime) -> str:
    return ts.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_checksum(path: Path) -> str:
    digest = sha256_file(path)
    Path(f"{path}.sha256").write_text(f"{digest}  {path.name}\n")
    return digest


def pg_env(url: Target, database: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(
        PGHOST=url.host or "localhost",
        PGPORT=str(url.port or 5432),
        PGUSER=url.username or "postgres",
        PGDATABASE=database or url.database or "",
    )
    if url.password:
        env["PGPASSWORD"] = url.password
    return env


def _run(cmd: list[str], env: dict[str, str], what: str) -> str:
    try:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=TOOL_TIMEOUT_S)
    except FileNotFoundError as exc:
        raise BackupError(f"{what}: {cmd[0]} is not installed (Debian: postgresql-client)") from exc
    except subprocess.TimeoutExpired as exc:
        raise BackupError(f"{what}: {cmd[0]} did not finish within {TOOL_TIMEOUT_S}s") from exc
    if done.returncode != 0:
        raise BackupError(f"{what}: {cmd[0]} exited {done.returncode}: {done.stderr.strip()[-500:]}")
    return done.stdout


def dump_database(db_url: str, folder: Path, now: datetime) -> Archive:
    url = backup_sql.target(db_url)
    if url.backend != "postgresql":
        raise BackupError(f"backup_database needs PostgreSQL; DOX_DATABASE_URL is {url.backend}")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"dox_{url.database}_{stamp(now)}.dump"
    tmp = folder / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with backup_sql.exported_snapshot(url) as (snapshot, counts):
            # pg_dump joins this very snapshot while the transaction stays open.
            _run(
                [
                    "pg_dump",
                    "--format=custom",
                    "--compress=6",
                    f"--snapshot={snapshot}",
                    "--file",
                    str(tmp),
                ],
                pg_env(url),
                "backup_database",
            )
    except BackupError:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    digest = _write_checksum(path)
    manifest = {
        "kind": "database",
        "database": url.database,
        "created_at": now.isoformat(),
        "row_counts": counts,
    }
    Path(f"{path}.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return Archive("database", path, digest, path.stat().st_size, counts)


def verify_checksum(path: Path) -> None:
    sidecar = Path(f"{path}.sha256")
    if not path.is_file():
        raise BackupError(f"{path}: no such backup file")
    if not sidecar.is_file():
        raise BackupError(f"{path}: its checksum file {sidecar.name} is missing")
    expected = sidecar.read_text().split()[0]
    actual = sha256_file(path)
    if actual != expected:
        raise BackupError(f"{path}: checksum mismatch (file {actual[:12]}…, recorded {expected[:12]}…)")


def verify_readback(path: Path, db_url: str) -> None:
    """The archive's checksum holds and pg_restore can read its table of contents."""
    verify_checksum(path)
    if path.name.endswith(".dump"):
        _run(
            ["pg_restore", "--list", str(path)],
            pg_env(backup_sql.target(db_url)),
            f"verify {path.name}",
        )
    elif path.name.endswith(".tar.gz"):
        try:
            with tarfile.open(path, "r:gz") as tar:
                for member in tar:
                    if member.isfile():
                        extracted = tar.extractfile(member)
                        if extracted is not None:
                            while extracted.read(1 << 20):
                                pass
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise BackupError(f"{path}: the archive does not read back: {exc}") from exc


def recorded_counts(path: Path) -> dict[str, int]:
    manifest = Path(f"{path}.json")
    if not manifest.is_file():
        raise BackupError(f"{path}: its manifest {manifest.name} (recorded row counts) is missing")
    return {k: int(v) for k, v in json.loads(manifest.read_text())["row_counts"].items()}


def restore(path: Path, db_url: str, into: str) -> dict[str, int]:
    """Restore an archive into a *new* database ``into``; returns its row counts.

    Refuses to touch an existing database (the live one included): a restore
    creates, it never overwrites.
    """
    verify_checksum(path)
    url = backup_sql.target(db_url)
    if not into.replace("_", "").isalnum() or len(into) > 63:
        raise BackupError(f"database name {into!r}: use letters, digits and '_' (at most 63)")
    if not backup_sql.create_database(url, into):
        raise BackupError(f"database {into!r} already exists: restore only into a new database")
    _run(
        ["pg_restore", "--no-owner", "--exit-on-error", "--dbname", into, str(path)],
        pg_env(url, into),
        f"restore {path.name}",
    )
    return backup_sql.counts_in(url, into)


def drop_database(db_url: str, name: str) -> None:
    backup_sql.drop_database(backup_sql.target(db_url), name)


def verify_by_restore(path: Path, db_url: str) -> dict[str, int]:
    """Restore into a scratch database, compare its counts with the recorded ones, drop it."""
    expected = recorded_counts(path)
    scratch = f"dox_verify_{uuid.uuid4().hex[:12]}"
    try:
        got = restore(path, db_url, scratch)
    finally:
        drop_database(db_url, scratch)
    if got != expected:
        diff = {
            t: (expected.get(t), got.get(t))
            for t in set(expected) | set(got)
            if expected.get(t) != got.get(t)
        }
        raise BackupError(f"{path.name}: restored row counts differ from the recorded ones: {diff}")
    return got


def archive_config(definitions: Path, memory_banks: Path, folder: Path, now: datetime) -> Archive:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"dox-config_{stamp(now)}.tar.gz"
    tmp = folder / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
    with tarfile.open(tmp, "w:gz") as tar:
        tar.add(definitions, arcname="workflow_defs")
        if memory_banks.is_dir():
            tar.add(memory_banks, arcname="memory-banks")
    os.replace(tmp, path)
    digest = _write_checksum(path)
    return Archive("config", path, digest, path.stat().st_size)


def copy_new_documents(store: ContentStore, folder: Path) -> dict[str, int]:
    """Copy stored objects the backup does not have yet (content addressing: a set difference).

    Each copy is checked against its name (the SHA-256) before it counts. Copies get
    the store's modes: a backup must not be easier to read than the original.
    """
    have = 0
    copied = 0
    copied_bytes = 0
    for sha in store.iter_objects():
        source = store.object_path(sha)
        target = document_copy(folder, sha)
        if target.exists():
            have += 1
            continue
        make_dirs(target.parent, folder, store.modes.folder)
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.unlink(missing_ok=True)  # a read-only leftover of an interrupted run
        shutil.copyfile(source, tmp)  # private until chmod: its folder is already closed
        tmp.chmod(store.modes.file)
        if sha256_file(tmp) != sha:
            tmp.unlink()
            raise BackupError(f"document {sha[:12]}… does not match its hash: the stored copy is damaged")
        os.replace(tmp, target)
        copied += 1
        copied_bytes += target.stat().st_size
    return {"copied": copied, "copied_bytes": copied_bytes, "already_backed_up": have}


def expire(folder: Path, days: int, now: datetime) -> list[Path]:
    """Delete archives (and their sidecars) older than ``days``; returns what went."""
    cutoff = (now - timedelta(days=days)).timestamp()
    gone: list[Path] = []
    if not folder.is_dir():
        return gone
    for path in folder.iterdir():
        if path.suffix in (".dump", ".gz") and path.stat().st_mtime < cutoff:
            for extra in (path, Path(f"{path}.sha256"), Path(f"{path}.json")):
                extra.unlink(missing_ok=True)
            gone.append(path)
    return gone
