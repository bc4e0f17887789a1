"""docker-compose.yml: no engine runs here, so check the file and run what it runs."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import services
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_core_services_are_there():
    assert {
        "redis",
        "postgres",
        "clamav",
        "migrate",
        "worker",
        "worker-scan",
        "worker-ops",
        "worker-coord",
        "beat",
        "beat-standby",
        "flower",
        "exporter",
        "api",
        "prometheus",
        "grafana",
    } <= set(COMPOSE["services"])
    assert COMPOSE["services"]["prometheus"]["profiles"] == ["monitoring"]
    assert COMPOSE["services"]["grafana"]["profiles"] == ["monitoring"]


def test_http_surfaces_need_credentials():
    env = COMPOSE["x-dox"]["environment"]
    assert env["DOX_METRICS_PASSWORD"].startswith("${DOX_METRICS_PASSWORD:?")
    flower = COMPOSE["services"]["flower"]["environment"]
    assert flower["DOX_FLOWER_PASSWORD"].startswith("${DOX_FLOWER_PASSWORD:?")
    grafana = COMPOSE["services"]["grafana"]["environment"]
    # Required when Grafana starts, not by compose (a plain `up` without the profile needs none).
    assert grafana["GF_SECURITY_ADMIN_PASSWORD"] == "${GRAFANA_ADMIN_PASSWORD:-}"
    assert grafana["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert COMPOSE["services"]["prometheus"]["ports"] == ["127.0.0.1:9090:9090"]  # no auth of its own


def test_env_example_names_every_variable_compose_reads():
    import re

    text = (ROOT / "docker-compose.yml").read_text()
    used = set(re.findall(r"\$\{([A-Z_]+)", text))
    example = {
        line.split("=", 1)[0]
        for line in (ROOT / ".env.example").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    }
    assert used <= example, sorted(used - example)


def test_workers_consume_every_queue():
    from dox_tasks.contract import QUEUES

    consumed = set()
    for svc in COMPOSE["services"].values():
        cmd = svc.get("command")
        if isinstance(cmd, list) and cmd[:1] == ["worker"]:
            consumed |= set(cmd[cmd.index("-Q") + 1].split(","))
    assert consumed == set(QUEUES)


def _argv_texts() -> list[tuple[str, str]]:
    """(service, text) of every command, entrypoint and healthcheck compose runs."""
    found = []
    for name, svc in COMPOSE["services"].items():
        for key in ("command", "entrypoint"):
            if svc.get(key):
                found.append((name, json.dumps(svc[key])))
        if svc.get("healthcheck", {}).get("test"):
            found.append((name, json.dumps(svc["healthcheck"]["test"])))
    return found


def test_no_secret_on_any_command_line():
    """argv is public (`ps`, /proc/<pid>/cmdline): secrets go through the environment or files."""
    secrets = ("PASSWORD", "REDISCLI_AUTH", "requirepass", " -a ", "--pass")
    leaks = [(name, text) for name, text in _argv_texts() for s in secrets if s in text]
    assert leaks == []
    redis = COMPOSE["services"]["redis"]
    assert redis["environment"]["REDISCLI_AUTH"].startswith("${REDIS_PASSWORD:?")
    assert "redis-cli ping" in json.dumps(redis["healthcheck"]["test"])


def test_the_api_is_the_seeds_orchestrator_and_validation_service():
    """The team sync probes DOX's own API under the seed's names, on the port it serves."""
    from urllib.parse import urlsplit

    api = COMPOSE["services"]["api"]
    port = api["command"][api["command"].index("--port") + 1]
    assert api["ports"] == [f"{port}:{port}"] and "/health" in json.dumps(api["healthcheck"]["test"])
    assert "--host" in api["command"] and api["environment"]["API_KEY"] == "${API_KEY:-}"
    assert "REQUIRE_AUTH" not in api["environment"]  # keys are required (the default)
    teams = yaml.safe_load((ROOT / "workflow_defs" / "teams.yaml").read_text())
    ours = {s["name"]: urlsplit(s["health_url"]) for s in teams["services"]}
    for alias in api["networks"]["default"]["aliases"]:
        assert (ours[alias].hostname, str(ours[alias].port), ours[alias].path) == (alias, port, "/health")


def test_metrics_and_flower_listen_on_all_addresses_only_inside_compose():
    services = COMPOSE["services"]
    assert services["worker"]["environment"]["DOX_METRICS_HOST"] == "0.0.0.0"
    assert services["exporter"]["command"][-2:] == ["--address", "0.0.0.0"]
    assert "--address=0.0.0.0" in services["flower"]["command"]


def test_broker_never_evicts_and_has_a_password(tmp_path):
    """Run the entrypoint compose uses, with a real redis-server: the config it writes
    requires the password and never evicts, and the password is in no process's argv."""
    import redis as redis_py

    redis_server = shutil.which("redis-server")
    if redis_server is None:
        services.unavailable("redis-server", "not installed")
    entry = COMPOSE["services"]["redis"]["entrypoint"]
    script = ROOT / "deploy" / Path(entry[-1]).name.removeprefix("dox-")
    assert any(v.endswith(f":{entry[-1]}:ro") for v in COMPOSE["services"]["redis"]["volumes"])
    port = services.free_port()
    password = 'pa ss"w\\o#rd'
    env = {
        **os.environ,
        "REDIS_PASSWORD": password,
        "REDIS_CONF_DIR": str(tmp_path / "conf"),
        "REDIS_LAUNCHER": "",
    }
    args = [
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(tmp_path),
        "--appendonly",
        "no",
        "--save",
        "",
    ]
    proc = subprocess.Popen(["/bin/sh", str(script), *args], env=env, cwd=tmp_path)
    try:
        client = redis_py.Redis(port=port, password=password, socket_connect_timeout=1)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis_py.ConnectionError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.1)
        with pytest.raises(redis_py.AuthenticationError):
            redis_py.Redis(port=port, password="wrong").ping()
        assert client.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
        conf = tmp_path / "conf" / "redis.conf"
        assert stat.S_IMODE(conf.stat().st_mode) == 0o600
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes()
        assert b"redis-server" in cmdline and password.encode() not in cmdline
        # The healthcheck's way: redis-cli with the password in REDISCLI_AUTH only.
        cli = shutil.which("redis-cli")
        if cli:
            pong = subprocess.run(
                [cli, "-p", str(port), "ping"],
                env={**os.environ, "REDISCLI_AUTH": password},
                capture_output=True,
            )
            assert pong.stdout.strip() == b"PONG", pong
    finally:
        proc.terminate()
        proc.wait(10)


def test_clamav_uses_dox_clamd_conf():
    vols = COMPOSE["services"]["clamav"]["volumes"]
    assert any(v.startswith("./deploy/clamd.conf:") for v in vols)
    conf = (ROOT / "deploy" / "clamd.conf").read_text()
    assert "AlertExceedsMax yes" in conf
    assert "StreamMaxLength 64M" in conf  # above MAX_FILE_SIZE_MB=50


def test_compose_config_validates():
    binary = shutil.which("docker-compose")
    if binary is None:
        services.unavailable("docker-compose", "not installed (apt-get install docker-compose)")
    env = {
        **os.environ,
        "REDIS_PASSWORD": "x",
        "POSTGRES_PASSWORD": "y",
        "DOX_METRICS_PASSWORD": "z",
        "DOX_FLOWER_USER": "ops",
        "DOX_FLOWER_PASSWORD": "w",
        "GRAFANA_ADMIN_PASSWORD": "v",
    }
    # With the monitoring profile; then a plain `up`, which needs no Grafana password.
    for profile, without in ((["--profile", "monitoring"], ()), ([], ("GRAFANA_ADMIN_PASSWORD",))):
        res = subprocess.run(
            [binary, "-f", str(ROOT / "docker-compose.yml"), *profile, "config", "-q"],
            capture_output=True,
            text=True,
            env={k: v for k, v in env.items() if k not in without},
            cwd=ROOT,
            timeout=60,
        )
        assert res.returncode == 0, (profile, res.stderr)


def test_grafana_refuses_to_start_without_its_password(tmp_path):
    """The entrypoint compose gives Grafana, run by sh with a stand-in for Grafana's /run.sh."""
    grafana = COMPOSE["services"]["grafana"]
    script = grafana["entrypoint"][-1]
    assert any(v.startswith("./deploy/grafana-entrypoint.sh:" + script) for v in grafana["volumes"])
    assert grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD"] == "${GRAFANA_ADMIN_PASSWORD:-}"
    run = tmp_path / "run.sh"
    run.write_text("#!/bin/sh\necho grafana runs\n")
    run.chmod(0o755)
    local = str(ROOT / "deploy" / "grafana-entrypoint.sh")
    for password, code, said in (("", 1, b"set GRAFANA_ADMIN_PASSWORD in .env"), ("x", 0, b"grafana runs")):
        env = {"GF_SECURITY_ADMIN_PASSWORD": password, "GRAFANA_RUN": str(run), "PATH": "/usr/bin:/bin"}
        result = subprocess.run(["sh", local], env=env, capture_output=True)
        assert result.returncode == code and said in result.stdout + result.stderr, result


def dox_commands() -> list[tuple[str, list[str]]]:
    out = []
    for name, svc in COMPOSE["services"].items():
        if svc.get("build") or svc.get("image") == "dox:latest":
            cmd = svc["command"]
            out.append((name, cmd if isinstance(cmd, list) else shlex.split(cmd)))
    return out


@pytest.mark.parametrize(("service", "command"), dox_commands())
def test_every_dox_command_in_compose_runs(service, command, pg_url, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOX_")}
    env.update(DOX_DATABASE_URL=pg_url, DOX_HOME=str(tmp_path))
    args = [
        c.replace("${WORKFLOW_CONCURRENCY:-10}", "2").replace("${SCAN_CONCURRENCY:-4}", "2") for c in command
    ]
    if args[0] in ("worker", "beat", "flower") or args[:2] in (["metrics", "serve"], ["api", "serve"]):
        args = [*args, "--help"]  # these run forever; check their arguments parse
    res = subprocess.run(
        [sys.executable, "-m", "dox_tasks.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert res.returncode == 0, (service, res.stdout, res.stderr)
    if args[:2] == ["db", "upgrade"]:
        assert "created the schema at revision" in res.stdout


def test_intake_has_a_worker_of_its_own_and_redis_knows_the_upstream_user():
    from dox_tasks.queue_policy import intake_mixing

    for name, svc in COMPOSE["services"].items():
        cmd = svc.get("command")
        if isinstance(cmd, list) and cmd[:1] == ["worker"]:
            assert intake_mixing(set(cmd[cmd.index("-Q") + 1].split(","))) is None, name
    assert "DOX_UPSTREAM_REDIS_PASSWORD" in COMPOSE["services"]["redis"]["environment"]


def _dockerfile_commands() -> list[str]:
    """The Dockerfile's RUN commands, continuation lines joined."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    return [line.split(None, 1)[1] for line in text.splitlines() if line.startswith("RUN ")]


def test_every_volume_the_image_mounts_is_created_and_owned_by_its_user():
    """A named volume new to Docker copies the owner of the image's folder at its mount point:
    a folder the image lacks becomes root's, and the workers (uid 10001) cannot write it."""
    text = (ROOT / "Dockerfile").read_text()
    user = [line.split()[1] for line in text.splitlines() if line.startswith("USER ")][-1]
    made: set[str] = set()
    owned: set[str] = set()
    for command in _dockerfile_commands():
        for part in command.split("&&"):
            words = shlex.split(part)
            if words[:2] == ["mkdir", "-p"]:
                made.update(words[2:])
            elif words[:1] == ["chown"]:
                assert words[1].split(":")[0] == user, part
                owned.update(words[2:])
    targets = {
        mount.split(":")[1]
        for svc in COMPOSE["services"].values()
        if svc.get("image") == "dox:latest"
        for mount in svc.get("volumes", [])
        if not mount.startswith((".", "/"))  # named volumes, not bind mounts
    }
    assert targets >= {"/data/store", "/data/state", "/data/inbox", "/backups"}, targets
    assert targets <= made, sorted(targets - made)
    assert targets <= owned, sorted(targets - owned)


def test_operations_section_1_names_every_service_and_variable_compose_has():
    import re

    text = (ROOT / "docs" / "OPERATIONS.md").read_text()
    first = text[text.index("## 1. Starting the stack") : text.index("## 2.")]
    named = set(re.findall(r"`([a-z][a-z-]*)`", first))
    assert set(COMPOSE["services"]) <= named, sorted(set(COMPOSE["services"]) - named)
    used = set(re.findall(r"\$\{([A-Z_]+)", (ROOT / "docker-compose.yml").read_text()))
    assert {v for v in used if f"`{v}`" not in first} == set()
