"""The services one DOX process uses, built once from the settings.

Tasks look their collaborators up here instead of importing globals, so a test
can point a whole worker at its own database, Redis prefix and storage root with
:func:`configure`. Connections are created lazily and dropped after a fork, so
each prefork child opens its own.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import redis

from .db.store import StateStore, open_store
from .definitions import Definition, load_all
from .events import EventBus, Fanout, NullFanout, RedisFanout
from .ratelimit import FileRateLimiter, RateLimiter, RedisRateLimiter
from .scanner import Scanner, make_scanner
from .settings import Settings, load
from .storage import ContentStore
from .templates import Template, load_templates


@dataclass
class Runtime:
    settings: Settings
    _snapshots: dict[str, Definition] = field(default_factory=dict)

    @cached_property
    def state(self) -> StateStore:
        store = open_store(self.settings.db_url, pool_size=self.settings.db_pool_size)
        if self.settings.embedded:
            store.migrate()  # embedded: no separate migrate step; idempotent
        return store

    @cached_property
    def storage(self) -> ContentStore:
        return ContentStore(self.settings.storage, group_access=self.settings.storage_group_access)

    @cached_property
    def redis(self) -> redis.Redis | None:
        url = self.settings.redis
        if not url:
            return None
        return redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5)

    @cached_property
    def limiter(self) -> RateLimiter:
        client = self.redis
        if client is None:  # embedded: counted in the state folder, so across runs too
            return FileRateLimiter(self.settings.state / "ratelimit")
        return RedisRateLimiter(client, self.settings.namespace)

    @cached_property
    def fanout(self) -> Fanout:
        client = self.redis
        if client is None:
            return NullFanout()
        return RedisFanout(client, self.settings.namespace)

    @cached_property
    def events(self) -> EventBus:
        return EventBus(self.state, self.fanout, self.settings.memory_banks)

    @cached_property
    def scanner(self) -> Scanner:
        return make_scanner(self.settings)

    @cached_property
    def definitions(self) -> dict[str, Definition]:
        return load_all(self.settings.definitions)

    @cached_property
    def templates(self) -> list[Template]:
        return load_templates(self.settings.definitions / "templates")

    def snapshot(self, digest: str) -> Definition:
        """The exact definition a workflow was started with (cached per process)."""
        if digest not in self._snapshots:
            for d in self.definitions.values():
                if d.digest == digest:
                    self._snapshots[digest] = d
                    break
            else:
                body = self.state.load_definition(digest)
                if body is None:
                    raise KeyError(f"no stored definition with hash {digest}")
                self._snapshots[digest] = Definition.from_snapshot(body, f"stored definition {digest[:12]}")
        return self._snapshots[digest]

    def after_fork(self) -> None:
        """Forget connections inherited from the parent process."""
        if "state" in self.__dict__:
            self.state.dispose()
        if "redis" in self.__dict__ and self.redis is not None:
            self.redis.connection_pool.reset()

    def close(self) -> None:
        if "state" in self.__dict__:
            self.state.close()
        if "redis" in self.__dict__ and self.redis is not None:
            self.redis.close()


_lock = threading.Lock()
_current: Runtime | None = None


def get() -> Runtime:
    global _current
    with _lock:
        if _current is None:
            _current = Runtime(load())
        return _current


def configure(settings: Settings | None = None, **overrides: Any) -> Runtime:
    """Replace the process's runtime (tests, `dox run`); returns the new one."""
    global _current
    with _lock:
        if _current is not None:
            _current.close()
        base = settings or load()
        _current = Runtime(base.model_copy(update=overrides) if overrides else base)
        return _current
