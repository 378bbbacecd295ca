"""The timeout settings: defaults, env overrides, invalid values named."""

from __future__ import annotations

import pytest

from core import settings

TIMEOUTS = {
    "SOURCE_CONNECT_TIMEOUT_S": (settings.source_connect_timeout_s, 30, 1),
    "SOURCE_STATEMENT_TIMEOUT_S": (settings.source_statement_timeout_s, 3600, 0),
    "SOURCE_READ_STALL_TIMEOUT_S": (settings.source_read_stall_timeout_s, 600, 1),
    "DBT_TIMEOUT_S": (settings.dbt_timeout_s, 3600, 0),
    "TASK_TIMEOUT_MINUTES": (settings.task_timeout_minutes, 180, 1),
}


@pytest.mark.parametrize("name", sorted(TIMEOUTS))
def test_timeout_settings(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    read, default, minimum = TIMEOUTS[name]
    monkeypatch.delenv(name, raising=False)
    assert read() == default
    monkeypatch.setenv(name, "42")
    assert read() == 42
    monkeypatch.setenv(name, str(minimum))
    assert read() == minimum
    monkeypatch.setenv(name, str(minimum - 1))
    with pytest.raises(settings.ConfigError, match=rf"{name}='{minimum - 1}' must be >= "):
        read()
    monkeypatch.setenv(name, "soon")
    with pytest.raises(settings.ConfigError, match=rf"{name}='soon' is not an integer"):
        read()
