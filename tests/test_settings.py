"""Settings: documented defaults, and a wrong value stops start-up naming the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.config.settings import Settings, load_settings
from worker.domain.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def test_without_any_variable_the_embedded_default_is_chosen(monkeypatch):
    for name in ("REDIS_URL", "SMTP_HOST", "SMTP_PORT"):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings()
    assert settings.embedded
    assert settings.smtp_host is None
    assert settings.hubspot_contact_roles == ("primary", "billing", "decision_maker")
    assert settings.event_id_ttl_days == 30


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SMTP_PORT", "seventy"),
        ("SMTP_PORT", "70000"),
        ("SMTP_SECURITY", "maybe"),
        ("SMTP_TIMEOUT_S", "-1"),
        ("EVENT_ID_TTL_DAYS", "0"),
        ("HUBSPOT_CONTACT_ROLES", "primary,ceo"),
        ("SMTP_POOL_SIZE", "0"),
    ],
)
def test_a_wrong_value_names_the_variable(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=name):
        load_settings()


def test_credentials_over_plaintext_are_refused_at_start(monkeypatch):
    monkeypatch.setenv("SMTP_HOST", "smtp.example.com")
    monkeypatch.setenv("SMTP_SECURITY", "none")
    monkeypatch.setenv("SMTP_USERNAME", "user")
    monkeypatch.setenv("SMTP_PASSWORD", "secret")
    with pytest.raises(ConfigError, match="plaintext"):
        load_settings()


def test_contact_roles_are_read_as_a_comma_separated_list(monkeypatch):
    monkeypatch.setenv("HUBSPOT_CONTACT_ROLES", "decision_maker")
    assert load_settings().hubspot_contact_roles == ("decision_maker",)


def test_the_example_file_names_only_real_settings():
    names = {
        line.split("=", 1)[0].lstrip("# ").strip()
        for line in (ROOT / "config" / "example.env").read_text(encoding="utf-8").splitlines()
        if "=" in line and line.lstrip("# ").split("=", 1)[0].isupper()
    }
    assert names <= {field.upper() for field in Settings.model_fields}
    assert "REDIS_URL" in names and "SMTP_SECURITY" in names
