"""Settings at the edge: every secret of a connection URI is registered with the masker."""

from __future__ import annotations

import pytest

from core import settings


@pytest.mark.parametrize(
    "uri, secrets",
    [
        ("postgresql://app:s3cr%40t@db:5432/shop", ["s3cr@t"]),
        ("postgresql://app@db/shop?password=q-s3cret&sslmode=require", ["q-s3cret"]),
        ("https://:tok3n@api.example.com", ["tok3n"]),
        ("mysql://u:p1@h/db?PWD=p2", ["p1", "p2"]),
        ("sqlite:////data/source.db", []),
    ],
)
def test_secrets_in_uri(uri: str, secrets: list[str]) -> None:
    assert settings.secrets_in_uri(uri) == secrets


def test_each_secret_of_a_connection_is_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    masked: list[str] = []
    monkeypatch.setattr(settings, "_mask", masked.append)  # Airflow's masker, recorded
    monkeypatch.setenv("AIRFLOW_CONN_SOURCE_DB", "postgresql://u:p1@h/db?password=p2")
    settings.get_connection_uri(settings.SOURCE_DB_CONN_ID)
    assert masked == ["p1", "p2"]


def test_accept_schema_drift(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ACCEPT_SCHEMA_DRIFT", raising=False)
    assert settings.accept_schema_drift() == ()
    monkeypatch.setenv("ACCEPT_SCHEMA_DRIFT", " orders.total, payments.* ")
    assert settings.accept_schema_drift("orders.order-ref,orders.total") == (
        "orders.total",
        "payments.*",
        "orders.order-ref",
    )
    for bad in ("total", "orders.", "orders"):
        with pytest.raises(settings.ConfigError, match="<table>.<column>"):
            settings.accept_schema_drift(bad)
