"""The PostgreSQL functions' current bodies are readable in one place: migration 0008.

0008 redefines every DOX function exactly as the earlier migrations left it. These
tests hold that true: 0008 changes no function, and a database at head runs exactly
the functions 0008 defines — so a later migration that changes one (or adds one)
fails here until it, too, redefines them all and this test names it.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator

import psycopg2
import pytest
import services
from alembic import command

from dox_tasks.db.engine import alembic_config, make_engine

#: The newest migration that defines every DOX function.
ALL_FUNCTIONS = importlib.import_module("dox_tasks.migrations.versions.0008_pg_functions_in_one_place")

# Every function in the schema but those an extension owns: a DOX function need not be
# named dox_* to be caught.
_FUNCTIONS = """
SELECT p.oid::regprocedure::text, pg_get_functiondef(p.oid)
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
 WHERE n.nspname = current_schema()
   AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = p.oid AND d.deptype = 'e')
"""


@pytest.fixture
def url() -> Iterator[str]:
    url = services.create_database()
    yield url
    services.drop_database(url)


def _upgrade(url: str, revision: str, down: bool = False) -> None:
    engine = make_engine(url)
    cfg = alembic_config(url)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        (command.downgrade if down else command.upgrade)(cfg, revision)
    engine.dispose()


def _functions(url: str) -> dict[str, str]:
    """Each function's signature and definition, as the database prints it."""
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute(_FUNCTIONS)
            return dict(cur.fetchall())
    finally:
        conn.close()


def _execute(url: str, statements: list[str]) -> None:
    conn = psycopg2.connect(url)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            for sql in statements:
                cur.execute(sql)
    finally:
        conn.close()


def test_0008_redefines_every_function_without_changing_one(url):
    _upgrade(url, "0007")
    before = _functions(url)
    assert {sig.split("(")[0] for sig in before} == set(ALL_FUNCTIONS.FUNCTIONS)
    _upgrade(url, "0008")
    assert _functions(url) == before
    _upgrade(url, "0007", down=True)  # its downgrade leaves them as 0007 had them
    assert _functions(url) == before


def test_the_database_at_head_runs_exactly_the_functions_0008_defines(url):
    _upgrade(url, "head")
    at_head = _functions(url)
    assert at_head, "no DOX function at head?"
    # Rebuild them from 0008's text alone: the same set, byte for byte the same definitions.
    _execute(url, [f"DROP FUNCTION {sig}" for sig in at_head])
    _execute(url, list(ALL_FUNCTIONS.FUNCTIONS.values()))
    assert _functions(url) == at_head, (
        "a migration after 0008 changed or added a function: redefine every function in it"
        " (like 0008) and point ALL_FUNCTIONS at it"
    )
