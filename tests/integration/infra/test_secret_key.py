"""ENVOI_SECRET_KEY is required: no process starts on a well-known key; `envoi up` makes one and keeps it."""

from __future__ import annotations

import base64
import os
import subprocess
import sys

import pytest

from envoi import runtime
from envoi.dev import up as devup
from envoi.infra.settings import Settings, SettingsError


def _run(args: list[str], **extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("ENVOI_SECRET_KEY", "ENVOI_LOOKUP_KEY")} | extra
    return subprocess.run([sys.executable, "-m", "envoi.cli", *args], env=env, capture_output=True, text=True,
                          timeout=30)


@pytest.mark.parametrize("command", [["relay", "--metrics-port", "0"], ["api", "--bind", "127.0.0.1:0"], ["migrate"]])
def test_a_process_without_the_key_refuses_to_start(command, database_url):
    done = _run(command, DATABASE_URL=database_url)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ENVOI_SECRET_KEY is not set"), done.stderr
    assert "Traceback" not in done.stderr + done.stdout


def test_a_process_without_the_lookup_key_refuses_to_start(database_url):
    key = base64.b64encode(bytes(range(32))).decode()
    done = _run(["migrate"], DATABASE_URL=database_url, ENVOI_SECRET_KEY=key)
    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == ["Error: ENVOI_LOOKUP_KEY is not set: give this region's key (base64"
                                                " of 32 bytes, e.g. `openssl rand -base64 32`, the same for every"
                                                " process of the region)"]


def test_a_malformed_key_is_refused():
    for bad in ("c2hvcnQ=", "not base64 at all!", base64.b64encode(bytes(33)).decode()):
        with pytest.raises(SettingsError, match="exactly 32 bytes"):
            Settings.from_env({"ENVOI_SECRET_KEY": bad})


def test_settings_made_in_code_without_a_key_build_nothing(settings):
    with pytest.raises(SettingsError, match="ENVOI_SECRET_KEY"):
        runtime.build(settings.replace(secret_key=b""))
    with pytest.raises(SettingsError, match="ENVOI_LOOKUP_KEY"):
        runtime.build(settings.replace(lookup_key=b""))


def test_envoi_up_makes_a_key_once_and_its_processes_start(tmp_path, database_url):
    key = devup._secret_key(tmp_path)  # what `envoi up` hands every process it starts
    assert (tmp_path / "secret.key").stat().st_mode & 0o777 == 0o600
    assert devup._secret_key(tmp_path) == key  # kept: a restart can still open what was sealed
    lookup = devup._secret_key(tmp_path, "lookup.key")  # the suppression hashes' key, its own file
    assert lookup != key and devup._secret_key(tmp_path, "lookup.key") == lookup
    assert len(Settings.from_env({"ENVOI_SECRET_KEY": key, "ENVOI_LOOKUP_KEY": lookup}).lookup_key) == 32
    done = _run(["migrate"], DATABASE_URL=database_url, ENVOI_SECRET_KEY=key, ENVOI_LOOKUP_KEY=lookup)
    assert done.returncode == 0, done.stderr
    assert "up to date" in done.stdout
