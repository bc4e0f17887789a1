"""``dox_tasks.db`` is the only code that names a table.

Outside ``db/`` (and ``migrations/``, which keep their frozen SQL) no module of
``dox_tasks`` imports SQLAlchemy, psycopg2, ``dox_tasks.db.models`` or
``dox_tasks.db.tables``, nor holds SQL naming a DOX table in a string. Imports under
``TYPE_CHECKING`` and inside functions count too. ``bench/`` and ``tests/`` are exempt.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from sqlalchemy import Table

from dox_tasks.db import models, tables
from dox_tasks.db.models import Base

PACKAGE = Path(__file__).resolve().parent.parent / "dox_tasks"
#: Where naming a table is the job.
ALLOWED = ("dox_tasks.db", "dox_tasks.migrations")
FORBIDDEN_MODULES = ("sqlalchemy", "psycopg2", "psycopg", "dox_tasks.db.models", "dox_tasks.db.tables")
TABLES = tuple(Base.metadata.tables)
#: The names the table objects and models go by, whichever db module re-exports them
#: (``from ..db.store import WS`` is the same leak as ``from ..db.tables import WS``).
TABLE_OBJECTS = frozenset(
    [n for n, v in vars(tables).items() if isinstance(v, Table)]
    + [n for n, v in vars(models).items() if isinstance(v, type) and issubclass(v, Base)]
)
#: A DOX table where SQL puts one: after FROM, INTO, JOIN, UPDATE, TRUNCATE, TABLE …
_NAME = "|".join(map(re.escape, TABLES))
_TABLE_IN_SQL = re.compile(
    rf"\b(FROM|INTO|JOIN|UPDATE|TRUNCATE|TABLE|VACUUM|ANALYZE)\s+(ONLY\s+)?[\"`]?(public\.)?[\"`]?({_NAME})\b",
    re.IGNORECASE,
)
_STATEMENT = re.compile(
    r"\b(SELECT|INSERT|UPDATE|DELETE|TRUNCATE|VACUUM|ANALYZE|ALTER|DROP|CREATE|COPY|LOCK)\b", re.IGNORECASE
)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_sql(text: str) -> bool:
    """A statement keyword, and a DOX table where a statement names its table."""
    return bool(_STATEMENT.search(text) and _TABLE_IN_SQL.search(text))


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the docstring nodes (the first statement of a module, class or function)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                found.add(id(body[0].value))
    return found


def _imported(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> list[str]:
    """The absolute names an import statement brings in (``from x import y`` gives x and x.y)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        package = module.split(".") if is_package else module.split(".")[:-1]
        anchor = package[: len(package) - (node.level - 1)]
        base = ".".join([*anchor, base] if base else anchor)
    return [base, *(f"{base}.{alias.name}" for alias in node.names)]


def _table_objects(node: ast.Import | ast.ImportFrom, names: list[str]) -> list[str]:
    """Table objects or models imported by name from any module of ``dox_tasks.db``."""
    if not isinstance(node, ast.ImportFrom) or not names[0].startswith("dox_tasks.db"):
        return []
    return [alias.name for alias in node.names if alias.name in TABLE_OBJECTS]


def _sql(node: ast.AST, docstrings: set[int]) -> bool:
    text = node.value if isinstance(node, ast.Constant) else None
    return isinstance(text, str) and id(node) not in docstrings and is_sql(text)


def violations(source: str, module: str, is_package: bool = False) -> list[str]:
    """What in ``source`` (the text of module ``module``) names the results layer's tables."""
    tree = ast.parse(source)
    docstrings = _docstrings(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = _imported(node, module, is_package)
            modules = [n for n in names if any(n == f or n.startswith(f + ".") for f in FORBIDDEN_MODULES)]
            objects = _table_objects(node, names)
            found.extend(f"line {node.lineno}: imports {n}" for n in [*modules[:1], *objects])
        elif _sql(node, docstrings):
            assert isinstance(node, ast.Constant)
            found.append(f"line {node.lineno}: SQL naming a DOX table: {str(node.value)[:80]!r}")
    return found


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if not module_name(p).startswith(ALLOWED))


def test_only_db_names_a_table() -> None:
    problems = []
    for path in _modules():
        for v in violations(path.read_text(), module_name(path), path.name == "__init__.py"):
            problems.append(f"{path.relative_to(PACKAGE.parent)}: {v}")
    assert not problems, "\n".join(problems)


def test_the_tables_are_the_models() -> None:
    assert "workflow_states" in TABLES and "workflow_events" in TABLES and "metric_totals" in TABLES
    assert {"WS", "SR", "EV", "BK", "MT", "BackupRow", "MetricTotal"} <= TABLE_OBJECTS
    assert len(_modules()) > 40  # the walk found the package


# -- the test of the test -----------------------------------------------------------
@pytest.mark.parametrize(
    "source",
    [
        "import sqlalchemy\n",
        "import sqlalchemy.exc as e\n",
        "from sqlalchemy import select\n",
        "import psycopg2\n",
        "from dox_tasks.db.tables import WS\n",
        "from dox_tasks.db import tables\n",
        "from ..db.models import BackupRow\n",
        "from ..db.store import EV, SR, WS, aware\n",
        "from dox_tasks.db.store import WS\n",
        "from ..db import models\n",
        "def f():\n    from sqlalchemy.exc import OperationalError\n",
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from sqlalchemy import Connection\n",
        'Q = "SELECT * FROM workflow_states"\n',
        'def f(conn):\n    conn.execute("delete from workflow_events where id = 1")\n',
        "Q = 'INSERT INTO \"backups\" (kind) VALUES (1)'\n",
        'Q = f"UPDATE workflow_step_results SET state = {x!r}"\n',
        'Q = "TRUNCATE metric_totals"\n',
        'Q = "SELECT count(*) FROM public.workflow_definitions"\n',
    ],
)
def test_the_checker_catches(source: str) -> None:
    assert violations(source, "dox_tasks.jobs.example"), source


@pytest.mark.parametrize(
    "source",
    [
        '"""Events: first a row in ``workflow_events`` (the record). SELECT FROM workflow_events."""\n',
        'def f():\n    """Reads FROM workflow_states; SELECT nothing."""\n',
        'MSG = "{n} event payload(s) in workflow_events"\n',
        'MSG = "no row in workflow_states for this id"\n',
        "from dox_tasks.db import queries, records\n",
        "from ..db.store import aware\n",
        "from .records import backups\n",
        'Q = "SELECT 1"\n',
    ],
)
def test_the_checker_lets_pass(source: str) -> None:
    assert not violations(source, "dox_tasks.jobs.example"), source


def test_relative_imports_resolve_from_the_module() -> None:
    assert violations("from .tables import WS\n", "dox_tasks.db.example")
    assert not violations("from .tables import WS\n", "dox_tasks.jobs.example")  # dox_tasks.jobs.tables
    assert violations("from .db import tables\n", "dox_tasks", is_package=True)
