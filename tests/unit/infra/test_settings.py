"""Settings: parsing from the environment, and docs/settings.md kept in step with the code."""

from __future__ import annotations

import base64
import dataclasses

import pytest

from envoi.infra.settings import Settings, SettingsError, documentation
from tests.support.paths import ROOT


def test_docs_settings_is_current():
    assert (ROOT / "docs/settings.md").read_text() == documentation(), (
        "run: python -m envoi.infra.settings > docs/settings.md")


def test_every_field_is_documented():
    import inspect

    source = inspect.getsource(Settings).splitlines()
    fields = {f.name for f in dataclasses.fields(Settings)}
    undocumented = []
    for i, line in enumerate(source):
        name = line.strip().split(":", 1)[0]
        is_field = name in fields and ":" in line and not line.strip().startswith("#")
        if is_field and not source[i - 1].strip().startswith("#:"):
            undocumented.append(name)
    assert undocumented == []


KEY = base64.b64encode(bytes(range(32))).decode()


def test_region_selects_its_own_stores():
    env = {"ENVOI_SECRET_KEY": KEY, "ENVOI_LOOKUP_KEY": KEY, "ENVOI_REGION": "us", "ENVOI_DATABASE_URL_EU": "postgresql://eu/db",
           "ENVOI_DATABASE_URL_US": "postgresql://us/db", "DATABASE_URL": "postgresql://fallback/db",
           "ENVOI_REDIS_URL_US": "redis://us:6379/0"}
    settings = Settings.from_env(env)
    assert settings.region == "us"
    assert settings.database_url == "postgresql://us/db" and settings.redis_url == "redis://us:6379/0"
    assert Settings.from_env({"ENVOI_SECRET_KEY": KEY, "ENVOI_LOOKUP_KEY": KEY, "ENVOI_REGION": "eu",
                              "DATABASE_URL": "postgresql://x/y"}).database_url == \
        "postgresql://x/y"


def test_durations_and_bad_values():
    settings = Settings.from_env({"ENVOI_SECRET_KEY": KEY, "ENVOI_LOOKUP_KEY": KEY, "ENVOI_MESSAGE_LIFETIME": "2d", "ENVOI_RETRY_SCHEDULE": "30s,5m,1h"})
    assert settings.message_lifetime == 2 * 86400 and settings.retry_schedule == (30, 300, 3600)
    # The API's group commit and the SMTP server's commit stage wait under load each by its own setting.
    waits = Settings.from_env({"ENVOI_SECRET_KEY": KEY, "ENVOI_LOOKUP_KEY": KEY, "ENVOI_SMTP_COMMIT_DELAY": "0.001"})
    assert (waits.smtp_commit_delay, waits.intake_commit_delay) == (0.001, 0.005)
    with pytest.raises(SettingsError):
        Settings.from_env({"ENVOI_SECRET_KEY": KEY, "ENVOI_LOOKUP_KEY": KEY, "ENVOI_REGION": "mars"})
    with pytest.raises(SettingsError):
        Settings.from_env({"ENVOI_SECRET_KEY": base64.b64encode(b"short").decode()})
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.region = "us"


@pytest.mark.parametrize("name, value", [("ENVOI_WEBHOOK_TRACE", "abc"), ("ENVOI_RELAY_LEASE", "5x"),
                                         ("ENVOI_RETRY_SCHEDULE", "30s,soon"),
                                         ("ENVOI_SMTP_COMMIT_DELAY", "2 ms")])
def test_a_value_that_does_not_convert_names_its_variable(name, value):
    """A bad number or duration is a SettingsError naming the variable (one line at start), not a traceback."""
    with pytest.raises(SettingsError, match=f"^{name}: "):
        Settings.from_env({"ENVOI_SECRET_KEY": KEY, "ENVOI_LOOKUP_KEY": KEY, name: value})


def test_routing_between_regions():
    env = {"ENVOI_SECRET_KEY": KEY, "ENVOI_LOOKUP_KEY": KEY, "ENVOI_REGION": "eu",
           "ENVOI_OTHER_REGION_URLS": "eu=https://api.eu.test,us=https://api.us.test/",
           "ENVOI_REGION_SMTP_HOSTS": "eu=smtp.eu.test:587, us=smtp.us.test:587, mars=x",
           "ENVOI_ROUTING_SECRET": "s" * 32, "ENVOI_ROUTING_TIMEOUT": "0.5"}
    settings = Settings.from_env(env)
    assert settings.routing_peer_urls == {"us": "https://api.us.test"}  # the others' public URLs by default
    assert settings.region_smtp_hosts == {"eu": "smtp.eu.test:587", "us": "smtp.us.test:587"}
    assert settings.routing_secret == b"s" * 32 and settings.routing_timeout == 0.5
    private = Settings.from_env({**env, "ENVOI_ROUTING_PEER_URLS": "us=http://10.0.2.5:8025"})
    assert private.routing_peer_urls == {"us": "http://10.0.2.5:8025"}
    with pytest.raises(SettingsError, match="ENVOI_ROUTING_SECRET must be at least 32 characters"):
        Settings.from_env({**env, "ENVOI_ROUTING_SECRET": "short"})
    assert Settings.from_env({"ENVOI_SECRET_KEY": KEY, "ENVOI_LOOKUP_KEY": KEY}).routing_secret == b""  # unset: routing off


def test_metrics_listen_on_the_metrics_host_or_the_explicit_bind():
    base = {"ENVOI_SECRET_KEY": KEY, "ENVOI_LOOKUP_KEY": KEY}
    assert Settings.from_env(base).metrics_address("", 9125) == "127.0.0.1:9125"
    private = Settings.from_env({**base, "ENVOI_METRICS_HOST": "10.0.0.11"})
    assert private.metrics_address("", 9120) == "10.0.0.11:9120"
    assert private.metrics_address("", 0) == ""  # off
    assert private.metrics_address("10.0.0.12:9999", 9120) == "10.0.0.12:9999"
    assert Settings.from_env({**base, "ENVOI_METRICS_HOST": "fd00::5"}).metrics_address("", 9121) == "[fd00::5]:9121"


def test_tracking_host_mode_and_tls_files():
    base = {"ENVOI_SECRET_KEY": KEY, "ENVOI_LOOKUP_KEY": KEY}
    assert Settings.from_env(base).tracking_host_mode == "domain"  # Mailgun's: links on email.<domain>
    dev = Settings.from_env({**base, "ENVOI_TRACKING_HOST_MODE": "public_url", "ENVOI_TRACKING_TLS_CERT": "/c.pem",
                             "ENVOI_TRACKING_TLS_KEY": "/k.pem", "ENVOI_TRACKING_TLS_DIR": "/certs"})
    assert (dev.tracking_host_mode, dev.tracking_tls_cert, dev.tracking_tls_key, dev.tracking_tls_dir) == (
        "public_url", "/c.pem", "/k.pem", "/certs")
    with pytest.raises(SettingsError, match="ENVOI_TRACKING_HOST_MODE"):
        Settings.from_env({**base, "ENVOI_TRACKING_HOST_MODE": "api"})
    with pytest.raises(SettingsError, match="go together"):
        Settings.from_env({**base, "ENVOI_TRACKING_TLS_CERT": "/c.pem"})
