"""The package's shape: every module in one layer, imports only sideways or down, no circles.

The layers are docs/ARCHITECTURE.md §5.1's picture, declared once here and checked against
the import graph of ``dox_tasks``. Imports inside functions count (a lazy import is still a
dependency: it only hides a circle until the function runs); imports under
``if TYPE_CHECKING:`` do not (they never run). The checks are functions of a source tree,
so the tests at the bottom plant violations in a throwaway package and watch them fail.
"""

from __future__ import annotations

import ast
import re
import textwrap
from collections.abc import Iterable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "dox_tasks"

#: Bottom to top. A module belongs to the first layer with a matching entry: an entry is a
#: module name or a package prefix ending in ".". A module may import its own layer or lower.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    (
        "base",
        (
            "contract",
            "settings",
            "errors",
            "logs",
            "identity",
            "invisible",
            "terminal",
            "regexcheck",
            "timespec",
        ),
    ),
    (
        "services",
        (
            "db",
            "db.",
            "apikeys",
            "storage",
            "scanner",
            "events",
            "sandbox",
            "templates",
            "ratelimit",
            "apilimits",
            "definitions",
            "definitions.",
            "inbox",
            "broker_transport",
            "metrics.names",
            "metrics.worker",
            "metrics.http",
        ),
    ),
    ("steps", ("steps", "steps.")),
    ("runtime", ("runtime", "message_shape", "queue_policy")),
    (
        "workflow",
        (
            "runner",
            "finish",
            "intake",
            "intake_switch",
            "audit",
            "operator",
            "documents",
            "app",
            "celery_app",
        ),
    ),
    ("operations", ("jobs", "jobs.", "metrics", "metrics.", "health", "report", "embedded", "tasks")),
    ("surface", ("cli", "cli.", "api", "api.")),
]
#: Not modules of the package: migrations run under Alembic, the root __init__ wires it all up.
EXEMPT = ("migrations", "migrations.", "")


def layer_of(module: str, layers: list[tuple[str, tuple[str, ...]]] = LAYERS) -> int | None:
    for index, (_, entries) in enumerate(layers):
        for entry in entries:
            if module == entry or (entry.endswith(".") and module.startswith(entry)):
                return index
    return None


def modules(root: Path) -> dict[str, Path]:
    """Module name (relative to the package, "" for its __init__) → file."""
    found: dict[str, Path] = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                skipped.update(id(n) for n in ast.walk(child))
    return skipped


def imports_of(module: str, path: Path, package: str, known: Iterable[str]) -> set[str]:
    """The package's modules that ``module`` imports (relative or absolute, anywhere in it)."""
    known = set(known)
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped = _type_checking_nodes(tree)
    here = module.split(".") if module else []
    if path.name != "__init__.py":
        here = here[:-1]
    targets: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        names: list[str] = []
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - (node.level - 1)] if node.level > 1 else here
                prefix = ".".join([*base, *([node.module] if node.module else [])])
            elif node.module and (node.module == package or node.module.startswith(package + ".")):
                prefix = node.module[len(package) + 1 :]
            else:
                continue
            # `from .db import store` imports the module db.store; `from .db.store import now`
            # imports db.store for a name in it.
            names = [f"{prefix}.{a.name}".lstrip(".") for a in node.names]
            names = [n if n in known else prefix for n in names]
        elif isinstance(node, ast.Import):
            names = [a.name[len(package) + 1 :] for a in node.names if a.name.startswith(package + ".")]
        for name in names:
            while name and name not in known:
                name = name.rsplit(".", 1)[0] if "." in name else ""
            # "" is the package's __init__, which Python imports before any module of it:
            # an edge to it says nothing.
            if name and name != module:
                targets.add(name)
    return targets


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    mods = modules(root)
    return {m: imports_of(m, p, package, mods) for m, p in mods.items()}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def upward(graph: dict[str, set[str]], layers: list[tuple[str, tuple[str, ...]]] = LAYERS) -> list[str]:
    bad = []
    for module, targets in sorted(graph.items()):
        if module in EXEMPT or module.startswith("migrations."):
            continue
        mine = layer_of(module, layers)
        for target in sorted(targets):
            theirs = layer_of(target, layers)
            if mine is not None and theirs is not None and theirs > mine:
                bad.append(
                    f"{module} ({layers[mine][0]}) imports {target} ({layers[theirs][0]}), a higher layer"
                )
    return bad


def unplaced(graph: dict[str, set[str]], layers: list[tuple[str, tuple[str, ...]]] = LAYERS) -> list[str]:
    return sorted(
        m
        for m in graph
        if m not in EXEMPT and not m.startswith("migrations.") and layer_of(m, layers) is None
    )


# -- the package ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph(PACKAGE, "dox_tasks")


def test_every_module_has_a_layer(graph: dict[str, set[str]]) -> None:
    assert unplaced(graph) == [], "place these modules in LAYERS (and docs/ARCHITECTURE.md §2)"


def test_no_import_circles(graph: dict[str, set[str]]) -> None:
    assert circles(graph) == []


def test_no_upward_imports(graph: dict[str, set[str]]) -> None:
    assert upward(graph) == []


def test_architecture_module_map_names_every_module(graph: dict[str, set[str]]) -> None:
    """docs/ARCHITECTURE.md's module map matches the tree: each file is named there."""
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    named = set(re.findall(r"`((?:\w+/)*\w+\.py)`", text))
    missing = []
    for module, path in modules(PACKAGE).items():
        rel = path.relative_to(PACKAGE).as_posix()
        if path.name == "__init__.py" or rel.startswith("migrations/versions/"):
            continue
        if rel not in named and rel.rsplit("/", 1)[-1] not in named:
            missing.append(rel)
    assert missing == [], f"not in docs/ARCHITECTURE.md's module map: {missing}"


def test_architecture_names_every_migration() -> None:
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    for path in sorted((PACKAGE / "migrations" / "versions").glob("0*.py")):
        assert path.stem[:4] in text, f"docs/ARCHITECTURE.md's module map stops before {path.name}"


# -- the checks catch what they should (planted violations) -----------------------------


def plant(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "pkg"
    for name, body in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(body), encoding="utf-8")
    return root


TOY_LAYERS: list[tuple[str, tuple[str, ...]]] = [("low", ("db", "db.")), ("high", ("jobs", "jobs."))]


def test_a_circle_through_a_function_level_import_is_found(tmp_path: Path) -> None:
    root = plant(
        tmp_path,
        {
            "__init__.py": "",
            "a.py": "from . import b\n",
            "b.py": "def later():\n    from .a import thing\n    return thing\n",
        },
    )
    assert circles(import_graph(root, "pkg")) == [["a", "b"]]


def test_an_absolute_import_and_a_package_import_count(tmp_path: Path) -> None:
    root = plant(
        tmp_path,
        {
            "__init__.py": "",
            "db/__init__.py": "",
            "db/store.py": "def f():\n    import pkg.jobs.reaper\n",
            "jobs/__init__.py": "",
            "jobs/reaper.py": "from ..db import store\n",
        },
    )
    graph = import_graph(root, "pkg")
    assert graph["db.store"] == {"jobs.reaper"}
    assert circles(graph) == [["db.store", "jobs.reaper"]]
    assert upward(graph, TOY_LAYERS) == ["db.store (low) imports jobs.reaper (high), a higher layer"]


def test_type_checking_imports_do_not_count(tmp_path: Path) -> None:
    root = plant(
        tmp_path,
        {
            "__init__.py": "",
            "a.py": "from . import b\n",
            "b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import thing\n",
        },
    )
    assert circles(import_graph(root, "pkg")) == []


def test_an_upward_import_is_found_and_a_downward_one_is_not(tmp_path: Path) -> None:
    root = plant(
        tmp_path,
        {
            "__init__.py": "",
            "db/__init__.py": "",
            "db/store.py": "x = 1\n",
            "db/read.py": "def f():\n    from ..jobs import steps\n",
            "jobs/__init__.py": "",
            "jobs/steps.py": "from ..db.store import x\n",
            "loose.py": "",
        },
    )
    graph = import_graph(root, "pkg")
    assert upward(graph, TOY_LAYERS) == ["db.read (low) imports jobs.steps (high), a higher layer"]
    assert unplaced(graph, TOY_LAYERS) == ["loose"]


# -- imports inside functions -------------------------------------------------------------

#: The only imports that must wait until a function runs, and why:
#: prometheus_client picks its value storage when first imported, so nothing may import it
#: (or DOX's metrics modules, which do) before `dox worker` has set the multi-process folder;
#: beat_schedule is the top-level module that imports DOX's jobs, loaded when Beat asks;
#: Flower (and the tornado it runs on) is loaded by `dox flower` alone, not by every command.
LAZY_ALLOWED = (
    "prometheus_client",
    "metrics.http",
    "metrics.exporter",
    ".http",
    "beat_schedule",
    "flower",
    "tornado",
)


def function_level_imports(root: Path) -> list[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        if "migrations" in path.relative_to(root).parts:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        seen: set[int] = set()
        for fn in ast.walk(tree):
            if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(fn):
                if isinstance(node, ast.Import | ast.ImportFrom) and node.lineno not in seen:
                    seen.add(node.lineno)
                    name = (
                        "." * node.level + (node.module or "")
                        if isinstance(node, ast.ImportFrom)
                        else node.names[0].name
                    )
                    if not name.lstrip(".").startswith(LAZY_ALLOWED) and name not in LAZY_ALLOWED:
                        found.append(f"{path.relative_to(root)}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_imports_inside_functions_only_where_they_must_wait() -> None:
    assert function_level_imports(PACKAGE) == [], "import these at the top of the module"


def test_a_needless_function_level_import_is_found(tmp_path: Path) -> None:
    root = plant(
        tmp_path,
        {
            "__init__.py": "",
            "a.py": "def f():\n    from .b import x\n    return x\n",
            "m.py": "def g():\n    from prometheus_client import Histogram\n    return Histogram\n",
        },
    )
    assert function_level_imports(root) == ["a.py:2: from .b import x"]


def test_the_cli_does_not_import_prometheus_client() -> None:
    """`dox worker` sets the multi-process folder before prometheus_client is first imported."""
    import subprocess
    import sys

    code = "import sys, dox_tasks.cli; print('prometheus_client' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "False", done.stderr
