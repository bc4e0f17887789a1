"""Verified API keys, remembered by one server process so a request costs no database read.

A key verified against PostgreSQL (:func:`dox_tasks.apikeys.verify`) is kept here under the
SHA-256 of the key as presented (never the key), with the key epoch read from Redis on that
request (:func:`dox_tasks.apikeys.epoch_key`). It is used again only while

- the epoch read on the new request is the one it was verified under: every revocation and
  rotation replaces the epoch *after* its commit, so it empties every cache of every
  ``--workers`` process and host at once;
- the key has not expired (its ``expires_at`` is kept with it);
- it was verified less than ``DOX_API_KEY_CACHE_S`` seconds ago: the bound for the one case
  the epoch cannot cover, a revocation made while Redis could not be told (the command says so).

A request that cannot read the epoch (Redis down, no Redis) uses nothing from here and empties
it: the key is verified against PostgreSQL. Refused keys are never kept. At most
:data:`MAX_ENTRIES` keys, the least recently used leaving first.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from typing import Generic, TypeVar

MAX_ENTRIES = 4096

T = TypeVar("T")


@dataclass(frozen=True)
class _Entry(Generic[T]):
    value: T
    epoch: str
    expires_at: datetime | None
    until: float  # monotonic: verified_at + the cache's lifetime


def fingerprint(key: str) -> bytes:
    """What the cache is keyed by: the key's SHA-256, so a heap dump holds no usable key."""
    return hashlib.sha256(key.encode("utf-8", "replace")).digest()


class KeyCache(Generic[T]):
    """An LRU of verified callers, each valid under one epoch, until its expiry and its age."""

    def __init__(self, lifetime_s: float, max_entries: int = MAX_ENTRIES):
        self.lifetime_s, self.max_entries = lifetime_s, max_entries
        self._entries: OrderedDict[bytes, _Entry[T]] = OrderedDict()
        self._lock = threading.Lock()
        #: The epoch of the newest request seen. Another one empties the cache: everything
        #: verified under an epoch once replaced stays unusable, even if Redis brings that
        #: epoch back (a restart from a snapshot taken before a revocation was announced).
        self._epoch: str | None = None

    def _see(self, epoch: str) -> None:
        if epoch != self._epoch:
            self._entries.clear()
            self._epoch = epoch

    def get(self, key: str, epoch: str | None, now: datetime) -> T | None:
        """The caller verified for ``key`` under ``epoch``, if still valid; None to verify."""
        if epoch is None or not self.lifetime_s:
            return None
        fp = fingerprint(key)
        with self._lock:
            self._see(epoch)
            entry = self._entries.get(fp)
            if entry is None:
                return None
            if (
                entry.epoch != epoch
                or time.monotonic() >= entry.until
                or (entry.expires_at is not None and entry.expires_at <= now)
            ):
                del self._entries[fp]
                return None
            self._entries.move_to_end(fp)
            return entry.value

    def peek(self, key: str) -> tuple[T, str] | None:
        """The caller remembered for ``key`` and the epoch it was verified under, unchecked:
        what the Redis round trip may take a request token for (only under that epoch)."""
        if not self.lifetime_s:
            return None
        with self._lock:
            entry = self._entries.get(fingerprint(key))
            if entry is not None and entry.epoch != self._epoch:
                entry = None
        return (entry.value, entry.epoch) if entry is not None else None

    def put(self, key: str, value: T, epoch: str | None, expires_at: datetime | None) -> None:
        """Remember a key verified on a request that read ``epoch`` *before* the database."""
        if epoch is None or not self.lifetime_s:
            return
        fp, entry = fingerprint(key), _Entry(value, epoch, expires_at, time.monotonic() + self.lifetime_s)
        with self._lock:
            if self._epoch is None:
                self._epoch = epoch
            elif epoch != self._epoch:  # another epoch was seen since this request read it
                return
            self._entries[fp] = entry
            self._entries.move_to_end(fp)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
