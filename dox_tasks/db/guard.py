"""SQLAlchemy's errors as DOX's, and the transactions the read model runs in.

The rest of DOX never sees a SQLAlchemy exception: a database that cannot be reached
(or a pool with no free connection) is :class:`~dox_tasks.errors.StateStoreUnavailable`,
which steps wait out; any other refusal is :class:`~dox_tasks.errors.StateStoreError`,
a fault. ``StateStore.tx`` already does the first; :func:`reading` adds the second.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from sqlalchemy import Connection
from sqlalchemy.exc import InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from ..errors import StateStoreError, StateStoreUnavailable

if TYPE_CHECKING:
    from .store import StateStore


@contextmanager
def translated(transient: bool = True) -> Iterator[None]:
    """Raise DOX's exceptions for SQLAlchemy's.

    ``transient=False`` makes an unreachable database a :class:`StateStoreError` too: for
    work on its own connections (backups) where an outage must count as a failed attempt,
    as a failing ``pg_dump`` does, rather than be waited out.
    """
    try:
        yield
    except (OperationalError, InterfaceError) as exc:
        if transient:
            raise StateStoreUnavailable(f"results database unavailable: {exc.orig}") from exc
        raise StateStoreError(f"results database unavailable: {exc.orig}") from exc
    except PoolTimeout as exc:
        raise StateStoreUnavailable(f"no free database connection: {exc}") from exc
    except SQLAlchemyError as exc:
        raise StateStoreError(f"results database error: {exc}") from exc


@contextmanager
def reading(store: StateStore, snapshot: bool = False) -> Iterator[Connection]:
    """One transaction of the store with DOX's exceptions; ``snapshot`` makes it one
    consistent view on PostgreSQL (REPEATABLE READ) for reads that must agree with
    each other. SQLite's transactions are serializable already."""
    with translated():
        if snapshot and store.is_postgres:
            conn = store.engine.connect().execution_options(isolation_level="REPEATABLE READ")
            with conn, conn.begin():
                yield conn
        else:
            with store.tx() as conn:
                yield conn
