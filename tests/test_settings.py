"""Settings from the environment, and the start-up refusal around the visibility timeout."""

from __future__ import annotations

import pytest

from dox_tasks.errors import ConfigError
from dox_tasks.settings import Settings, parse_clamd_url


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


def test_redacted_hides_passwords():
    s = Settings().model_copy(update={"broker_url": "redis://:hunter2@redis:6379/0"})
    assert "hunter2" not in str(s.redacted())
