"""The package as users install it: a built wheel, in a fresh venv, far from the source tree.

An editable install finds everything beside the checkout, so it cannot show what a wheel
forgot. These tests build the wheel from a copy of the sources, install it into a new venv
under tmp_path and run `dox` from another folder with a clean environment.

Speed and offline safety: the new venv gets the wheel only (``pip --python``, ``--no-deps``);
its dependencies come from the running venv's site-packages through a ``.pth`` line, so
nothing is downloaded or reinstalled. A ``.pth`` line adds that folder to ``sys.path`` but
does not run the ``.pth`` files in it, so the checkout's editable finder stays out, and the
test asserts that ``dox_tasks`` and ``beat_schedule`` are imported from inside the new venv.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest
from services import assert_expected_results, clean_env

from dox_tasks.definitions import load_all
from dox_tasks.settings import Settings, shipped_definitions

ROOT = Path(__file__).resolve().parent.parent
INBOX = ROOT / "examples" / "inbox"

#: Not part of a build: caches, local state, other venvs, earlier builds (setuptools' build/lib
#: keeps deleted modules and would put them back in the wheel).
NOT_SOURCES = shutil.ignore_patterns(
    ".git", ".venv", ".dox", ".ci", "build", "dist", "*.egg-info", "__pycache__", ".*_cache"
)
#: Tools that must not be runtime dependencies of the wheel.
TEST_TOOLS = {"pytest", "pytest-timeout", "fpdf2", "ruff", "mypy", "selenium", "types-pyyaml"}


def run(
    cmd: list[str | Path], env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(c) for c in cmd], capture_output=True, text=True, timeout=300, env=env, cwd=cwd
    )


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """dox's wheel, built (pip wheel --no-deps) from a copy of the sources."""
    base = tmp_path_factory.mktemp("wheel")
    src = base / "src"
    shutil.copytree(ROOT, src, ignore=NOT_SOURCES)
    res = run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", base / "dist", src])
    assert res.returncode == 0, res.stdout + res.stderr
    (built,) = (base / "dist").glob("dox-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel installed; dependencies borrowed from this venv."""
    env_dir = tmp_path_factory.mktemp("venv") / "v"
    run([sys.executable, "-m", "venv", "--without-pip", env_dir]).check_returncode()
    python = env_dir / "bin" / "python"
    res = run([sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", wheel])
    assert res.returncode == 0, res.stdout + res.stderr
    purelib = run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]).stdout.strip()
    ours = {sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}
    (Path(purelib) / "dox_test_dependencies.pth").write_text("".join(f"{p}\n" for p in sorted(ours)))
    return env_dir


def outside_env(tmp_path: Path, venv: Path) -> dict[str, str]:
    """clean_env, minus anything that could lead Python back to the checkout."""
    env = clean_env(tmp_path)
    for k in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV"):
        env.pop(k, None)
    env["PATH"] = f"{venv / 'bin'}:{env.get('PATH', '')}"
    return env


def test_wheel_carries_every_module_and_definition(wheel: Path):
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        (metadata,) = (n for n in names if n.endswith(".dist-info/METADATA"))
        requires = [
            line.split(":", 1)[1].strip()
            for line in z.read(metadata).decode().splitlines()
            if line.startswith("Requires-Dist:")
        ]
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "dox_tasks").rglob("*.py")}
    assert modules - names == set(), "pyproject's packages list misses a package under dox_tasks/"
    defs = ROOT / "workflow_defs"
    shipped = {f"dox_tasks/workflow_defs/{p.relative_to(defs).as_posix()}" for p in defs.rglob("*.yaml")}
    assert "dox_tasks/workflow_defs/teams.yaml" in shipped
    assert "dox_tasks/workflow_defs/templates/invoice.yaml" in shipped
    assert shipped - names == set()
    assert "beat_schedule.py" in names
    runtime = {re.split(r"[\s\[<>=!~;]", r, maxsplit=1)[0].lower() for r in requires if "extra ==" not in r}
    assert runtime & TEST_TOOLS == set(), runtime


def test_installed_wheel_validates_schedules_and_runs_the_sample_inbox(venv: Path, tmp_path: Path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    inbox = shutil.copytree(INBOX, tmp_path / "inbox")
    env = outside_env(tmp_path, venv)
    site = venv.resolve()

    show = "import dox_tasks, beat_schedule; print(dox_tasks.__file__); print(beat_schedule.__file__)"
    where = run([venv / "bin" / "python", "-c", show], env=env, cwd=elsewhere)
    assert where.returncode == 0, where.stderr
    for file in where.stdout.split():
        assert Path(file).resolve().is_relative_to(site), f"{file} is not from the installed wheel"

    dox = venv / "bin" / "dox"
    validate = run([dox, "defs", "validate"], env=env, cwd=elsewhere)
    assert validate.returncode == 0, validate.stdout + validate.stderr
    shipped = load_all(ROOT / "workflow_defs")
    for name in shipped:
        assert f"ok  {name} " in validate.stdout
    assert "ok  teams:" in validate.stdout
    for line in validate.stdout.splitlines():
        assert str(site) in line, line  # every file it read lies inside the venv

    schedule = run([dox, "schedule", "--json"], env=env, cwd=elsewhere)
    assert schedule.returncode == 0, schedule.stderr
    jobs = {j["name"]: j for j in map(json.loads, schedule.stdout.splitlines())}
    scheduled = {n: d for n, d in shipped.items() if d.model.trigger.type == "schedule"}
    assert set(jobs) == set(scheduled)
    for name, d in scheduled.items():
        assert jobs[name]["cron"] == d.model.trigger.cron

    # the same checks as test_cli_run's EXPECTED.json test, on the installed package
    res = run([dox, "run", inbox, "--json"], env=env, cwd=elsewhere)
    assert "Traceback" not in res.stderr, res.stderr
    assert_expected_results(res.stdout, inbox / "EXPECTED.json")
    assert res.returncode == 0


def test_defs_dir_overrides_the_shipped_definitions(venv: Path, tmp_path: Path):
    defs = shutil.copytree(ROOT / "workflow_defs", tmp_path / "defs", ignore=NOT_SOURCES)
    (defs / "retention_cleanup.yaml").unlink()
    env = outside_env(tmp_path, venv) | {"DOX_DEFS_DIR": str(defs)}
    res = run([venv / "bin" / "dox", "defs", "validate"], env=env, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert str(defs / "teams.yaml") in res.stdout
    assert "retention_cleanup" not in res.stdout


def test_editable_install_finds_the_checkouts_definitions(monkeypatch: pytest.MonkeyPatch):
    """The same lookup as the wheel's, answering with the folder a developer edits."""
    monkeypatch.delenv("DOX_DEFS_DIR", raising=False)
    monkeypatch.delenv("DOX_TEAMS_FILE", raising=False)
    assert shipped_definitions() == (ROOT / "workflow_defs").resolve()
    assert Settings().definitions == shipped_definitions()
    assert Settings().teams == (ROOT / "workflow_defs" / "teams.yaml").resolve()


def test_pyproject_packages_match_the_source_tree():
    """The package list is written out (for the workflow_defs mapping): a new subpackage must join it."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "dox_tasks").rglob("__init__.py")}
    assert listed == found | {"dox_tasks.workflow_defs"}
    assert config["package-dir"] == {"dox_tasks.workflow_defs": "workflow_defs"}


@pytest.mark.postgres
def test_alembic_upgrade_head_from_the_checkout_with_a_plain_postgresql_url(tmp_path: Path, pg_url: str):
    """README's alternative to `dox db upgrade`: a plain postgresql:// URL means psycopg 3 to
    SQLAlchemy 2.1, which DOX does not install; DOX's migrations use the driver it has."""
    from dox_tasks.db.schema import schema_behind
    from dox_tasks.db.store import open_store

    assert pg_url.startswith("postgresql://")
    alembic = Path(sys.executable).with_name("alembic")
    res = run([alembic, "upgrade", "head"], env=clean_env(tmp_path, DOX_DATABASE_URL=pg_url), cwd=ROOT)
    assert res.returncode == 0, res.stdout + res.stderr
    store = open_store(pg_url)
    try:
        assert schema_behind(store) is None
    finally:
        store.close()


@pytest.mark.postgres
def test_installed_wheel_upgrades_a_database_from_anywhere(venv: Path, tmp_path: Path, pg_url: str):
    """Outside a checkout there is no alembic.ini: `dox db upgrade` is the way, and it works."""
    env = {**outside_env(tmp_path, venv), "DOX_DATABASE_URL": pg_url}
    res = run([venv / "bin" / "dox", "db", "upgrade"], env=env, cwd=tmp_path)
    assert res.returncode == 0 and re.search(r"^created the schema at revision \d{4} in ", res.stdout), res
    head = res.stdout.split("revision ", 1)[1][:4]
    again = run([venv / "bin" / "dox", "db", "upgrade"], env=env, cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"is current (revision {head}): nothing to do" in again.stdout, again.stdout
