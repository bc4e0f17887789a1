"""Memory banks: the team and service status files people read (docs/MEMORY_BANKS.md).

``$DOX_STATE_DIR/memory-banks/`` holds ``TEAM_<name>.json`` per team,
``SERVICE_<name>.json`` per service and ``SUPERVISOR.json``. Every write takes the
file's lock (``filelock``, so a person's editor or a second sync cannot interleave)
and replaces the file atomically (temp file, fsync, rename): a reader sees the old
or the new file, never half of one. A file that does not parse or has the wrong
schema is moved aside as ``<name>.corrupt-<time>`` and rebuilt — never a crash.
"""

from __future__ import annotations

import json
import logging
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from filelock import FileLock

log = logging.getLogger("dox.sync")

LOCK_TIMEOUT_S = 30


class MemoryBanks:
    def __init__(self, folder: Path):
        self.folder = folder

    def path(self, name: str) -> Path:
        return self.folder / f"{name}.json"

    def read(self, name: str, schema: str) -> dict[str, Any] | None:
        """The bank's content, or None if absent; a corrupt bank is moved aside (and None)."""
        path = self.path(name)
        if not path.exists():
            return None
        with FileLock(f"{path}.lock", timeout=LOCK_TIMEOUT_S):
            return self._read_locked(path, schema)

    def _read_locked(self, path: Path, schema: str) -> dict[str, Any] | None:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, dict) or data.get("schema") != schema:
                raise ValueError(f"expected schema {schema!r}")
            return data
        except FileNotFoundError:
            return None
        except (ValueError, UnicodeDecodeError) as exc:
            aside = path.with_name(f"{path.name}.corrupt-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S%fZ')}")
            os.replace(path, aside)
            log.warning("memory bank %s was corrupt (%s); kept as %s and rebuilt", path.name, exc, aside.name)
            return None

    def write(self, name: str, data: dict[str, Any]) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.path(name)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        payload = json.dumps(data, indent=2, sort_keys=True, default=str).encode()
        with FileLock(f"{path}.lock", timeout=LOCK_TIMEOUT_S):
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.write(fd, payload)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        return path
