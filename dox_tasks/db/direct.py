"""One autocommit connection for the step transitions on PostgreSQL.

Every step delivery makes two or three calls to the results database (count the
attempt, record the outcome, end the workflow). Each is one PL/pgSQL function
(:mod:`dox_tasks.db.postgres` lists them), so each can run as a single statement in autocommit
mode: one round trip instead of BEGIN, statement, COMMIT. Going through SQLAlchemy's
Connection and pool for these cost about 0.3 ms of client CPU per call, more than
the database work itself (``bench/pipeline.py``, docs/PERFORMANCE.md), so this
class keeps one connection checked out of the engine's pool and calls the driver
directly.

The connection counts against ``DOX_DB_POOL_SIZE`` (it is taken from the pool), so
the connection budget does not change. Calls are serialised by a lock (a threads
pool shares it). A connection error closes it and raises
:class:`StateStoreUnavailable`; the next call opens a new one. Any other error the
database reports becomes :class:`StateStoreError`: no driver exception leaves this
module. Because it never goes back to the pool, it does here what the pool would: it
is replaced after ``RECYCLE_S`` and pinged first when it sat idle longer than
``PING_AFTER_IDLE_S``.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import psycopg2
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from ..errors import StateStoreError, StateStoreUnavailable

#: Connections inherited through fork(). Closing one in the child would end the
#: parent's session, so they are kept referenced and never touched again.
_inherited: list[Any] = []
#: Replaced after this long, like the pool's ``pool_recycle`` (which never sees it).
RECYCLE_S = 1800.0
#: Idle longer than this, it is pinged before use (a server or proxy may have closed it).
PING_AFTER_IDLE_S = 60.0


class DirectConnection:
    def __init__(self, engine: Engine):
        self.engine = engine
        self._lock = threading.Lock()
        self._conn: Any = None  # SQLAlchemy's pooled-connection proxy, checked out for good
        self._pid = os.getpid()
        self._opened = self._used = 0.0

    def call(self, sql: str, params: tuple[Any, ...] | dict[str, Any]) -> tuple[Any, ...] | None:
        """Run one statement (one transaction) and return its first row."""
        if self._pid != os.getpid():
            self.forget()  # before taking the lock: a parent thread may have held it at fork time
        with self._lock:
            conn = self._checkout()
            try:
                with conn.cursor() as cur:
                    cur.execute(sql, params)
                    row = cur.fetchone()
                self._used = time.monotonic()
                return row
            except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
                self._drop()
                raise StateStoreUnavailable(f"results database unavailable: {exc}".strip()) from exc
            except psycopg2.Error as exc:
                if conn.closed:  # the statement failed because the connection went away
                    self._drop()
                    raise StateStoreUnavailable(f"results database unavailable: {exc}".strip()) from exc
                raise StateStoreError(f"results database refused the statement: {exc}".strip()) from exc

    def forget(self) -> None:
        """After a fork: leave the parent's connection alone, open a new one when needed."""
        if self._conn is not None:
            _inherited.append(self._conn)
        self._conn = None
        self._pid = os.getpid()
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._drop()

    def _checkout(self) -> Any:
        now = time.monotonic()
        if self._conn is not None and (
            now - self._opened > RECYCLE_S or (now - self._used > PING_AFTER_IDLE_S and not self._alive())
        ):
            self._drop()
        if self._conn is None:
            try:
                fairy = self.engine.raw_connection()
            except DBAPIError as exc:
                raise StateStoreUnavailable(f"results database unavailable: {exc.orig}") from exc
            except PoolTimeout as exc:
                raise StateStoreUnavailable(f"no free database connection: {exc}") from exc
            driver = fairy.driver_connection
            assert driver is not None
            driver.autocommit = True
            self._conn = fairy
            self._opened = self._used = now
        return self._conn.driver_connection

    def _alive(self) -> bool:
        try:
            with self._conn.driver_connection.cursor() as cur:
                cur.execute("SELECT 1")
            return True
        except psycopg2.Error:
            return False

    def _drop(self) -> None:
        fairy, self._conn = self._conn, None
        if fairy is not None:
            fairy.invalidate()  # closes the driver connection; the pool opens a fresh one later
