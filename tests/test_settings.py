"""Settings from the environment, and the start-up refusal around the visibility timeout."""

from __future__ import annotations

import pytest

from dox_tasks.errors import ConfigError
from dox_tasks.settings import Settings, is_loopback, parse_clamd_url


def test_defaults_are_the_seed_values(monkeypatch):
    for name in ("MAX_FILE_SIZE_MB", "WORKFLOW_TIMEOUT", "DOX_BROKER_URL"):
        monkeypatch.delenv(name, raising=False)
    s = Settings()
    assert (s.max_file_size_mb, s.clamav_enabled, s.rate_limit_per_user_per_day) == (50, True, 100)
    assert (s.workflow_timeout, s.workflow_retry_attempts, s.workflow_retry_backoff) == (
        300,
        3,
        1.5,
    )
    assert s.workflow_concurrency == 10 and s.embedded
    assert s.soft_time_limit < s.workflow_timeout


def test_environment_names(monkeypatch, tmp_path):
    monkeypatch.setenv("DOX_HOME", str(tmp_path))
    monkeypatch.setenv("MAX_FILE_SIZE_MB", "5")
    monkeypatch.setenv("MEMORY_BANK_PATH", str(tmp_path / "banks"))
    monkeypatch.setenv("DOX_ALLOWED_TYPES", "pdf, png")
    s = Settings()
    assert s.max_file_size == 5 * 1024 * 1024
    assert s.storage == tmp_path / "store" and s.memory_banks == tmp_path / "banks"
    assert s.allowed_types == ["pdf", "png"]


def test_time_limit_reaching_visibility_timeout_is_refused_naming_both():
    s = Settings().model_copy(update={"workflow_timeout": 4000})
    with pytest.raises(ConfigError) as exc:
        s.check()
    assert "WORKFLOW_TIMEOUT=4000s" in str(exc.value) and "DOX_VISIBILITY_TIMEOUT=3600s" in str(exc.value)


def test_retry_delay_reaching_visibility_timeout_is_refused():
    s = Settings().model_copy(update={"workflow_retry_delay": 600, "workflow_retry_attempts": 6})
    with pytest.raises(ConfigError, match="WORKFLOW_RETRY_DELAY=600"):
        s.check()


def test_clamd_urls():
    assert parse_clamd_url("tcp://127.0.0.1:3310") == ("tcp", "127.0.0.1:3310")
    assert parse_clamd_url("unix:///run/clamd.ctl") == ("unix", "/run/clamd.ctl")
    with pytest.raises(ConfigError, match="tcp://host:port"):
        parse_clamd_url("clamd:3310")


def test_api_settings(monkeypatch):
    names = ("DOX_API_HOST", "DOX_API_PORT", "API_KEY", "DOX_API_KEY_USER", "REQUIRE_AUTH", "DOX_API_DOCS")
    for name in names:
        monkeypatch.delenv(name, raising=False)
    s = Settings()
    assert (s.api_host, s.api_port, s.api_key, s.api_key_user) == ("127.0.0.1", 5000, None, "api")
    assert s.require_auth and s.api_docs
    monkeypatch.setenv("API_KEY", "hunter2-operator")
    monkeypatch.setenv("REQUIRE_AUTH", "false")
    monkeypatch.setenv("DOX_API_DOCS", "off")
    s = Settings()
    assert s.api_key is not None and s.api_key.get_secret_value() == "hunter2-operator"
    assert not s.require_auth and not s.api_docs
    assert "hunter2" not in repr(s) and "hunter2" not in str(s.redacted())
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.0.0.5", "::1", "[::1]", "localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "10.0.0.1", "api.example", ""))


def test_redacted_hides_passwords():
    s = Settings().model_copy(update={"broker_url": "redis://:hunter2@redis:6379/0"})
    assert "hunter2" not in str(s.redacted())


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://dox@db/dox?password=hunter2",
        "postgresql://dox@db/dox?sslmode=require&PASSWORD=hunter2",
        "redis://redis:6379/0?Pwd=hunter2",
        "https://hooks.example/x?token=hunter2&a=1",
        "https://api.example/x?api_key=hunter2",
        "redis://:hunter2@redis:6379/0?secret=hunter2",
    ],
)
def test_redact_url_hides_secret_query_parameters(url):
    from dox_tasks.settings import redact_url

    shown = redact_url(url)
    assert "hunter2" not in shown and "***" in shown, shown


def test_redact_url_keeps_what_is_not_secret():
    from dox_tasks.settings import redact_url

    assert redact_url("postgresql://dox@db/dox?sslmode=require") == "postgresql://dox@db/dox?sslmode=require"
    assert redact_url("redis://redis:6379/0") == "redis://redis:6379/0"
    kept = "redis://:***@redis:6379/0?ssl_cert_reqs=none"
    assert redact_url("redis://:pw@redis:6379/0?ssl_cert_reqs=none") == kept


@pytest.mark.parametrize(
    ("namespace", "prefix"),
    [("dox", "dox:"), ("ns", "ns:"), ("a:b", "a:b:"), ("dox:q", "dox:q:")],
)
def test_event_stream_on_a_broker_key_is_refused_at_start_up(namespace, prefix):
    s = Settings().model_copy(update={"namespace": namespace, "broker_key_prefix": prefix})
    with pytest.raises(ConfigError) as exc:
        s.check()
    message = str(exc.value)
    assert f"DOX_NAMESPACE={namespace!r}" in message and f"DOX_BROKER_KEY_PREFIX={prefix!r}" in message
    assert "WRONGTYPE" in message


def test_usual_namespace_and_prefix_pass():
    for namespace, prefix in (("dox", None), ("dox", "dox-broker:"), ("dox", "dox:q:"), ("t1", "t1-broker:")):
        Settings().model_copy(update={"namespace": namespace, "broker_key_prefix": prefix}).check()


def test_the_worker_refuses_to_start_when_the_stream_is_a_queue(tmp_path):
    import subprocess
    import sys

    from services import clean_env

    env = clean_env(tmp_path, DOX_NAMESPACE="dox", DOX_BROKER_KEY_PREFIX="dox:", CLAMAV_ENABLED="false")
    done = subprocess.run(
        [sys.executable, "-m", "dox_tasks.cli", "worker", "-P", "solo", "-Q", "operations"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode != 0
    assert "refused to start" in done.stderr and "the event stream ('dox:events')" in done.stderr, done.stderr


@pytest.mark.parametrize("url", ["mysql://dox:secret@db/dox", "not a url at all", "postgresql+asyncpg://x/y"])
def test_an_unsupported_database_url_is_one_sentence_exit_2(url, tmp_path):
    from services import clean_env, dox

    result = dox(
        ["status", "00000000-0000-0000-0000-000000000000"],
        clean_env(tmp_path, DOX_DATABASE_URL=url),
        tmp_path,
    )
    assert result.returncode == 2, result.stderr
    assert "DOX_DATABASE_URL must be postgresql://" in result.stderr and "sqlite:///" in result.stderr
    assert "internal error" not in result.stderr and "Traceback" not in result.stderr
    assert "secret" not in result.stderr


@pytest.mark.parametrize(
    ("name", "value"),
    [("DOX_API_PORT", "hunter2"), ("REQUIRE_AUTH", "hunter2"), ("MAX_FILE_SIZE_MB", "hunter2")],
)
def test_a_setting_that_does_not_parse_is_one_line_exit_2(name, value, tmp_path):
    """Settings are read when dox_tasks is imported: the CLI says which variable, never its value."""
    from services import clean_env, dox

    result = dox(["status", "x"], clean_env(tmp_path, **{name: value}), tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"dox: invalid setting: {name}: "), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert value not in result.stderr


def test_a_worker_refuses_a_queue_dox_does_not_have(tmp_path):
    """A typo in -Q would start a worker that waits for ever on a queue nothing sends to."""
    from services import clean_env, dox

    env = clean_env(tmp_path, DOX_BROKER_URL="redis://127.0.0.1:1/0", CLAMAV_ENABLED="false")
    done = dox(["worker", "-P", "solo", "-Q", "validation,scna"], env, tmp_path)
    assert done.returncode != 0
    assert "refused to start" in done.stderr and "DOX has no queue 'scna'" in done.stderr, done.stderr
    assert "its queues are intake, validation, scan" in done.stderr and "Traceback" not in done.stderr
