"""SMTP logins: argon2 runs once per (stored hash, password) that matched, in a process; every AUTH still
reads the credential's row, so a changed password, a deleted login and an unknown one take effect at
once, and a wrong password or an unknown login costs the argon2 work every time."""

from __future__ import annotations

import uuid
from unittest import mock

import pytest

from envoi.accounts import service as service_module

PASSWORD = "memo-secret-1"


@pytest.fixture
def login(services, account, domain):
    name = f"memo-{uuid.uuid4().hex[:8]}"
    services.accounts.create_credential(account["id"], domain["name"], name, PASSWORD)
    return f"{name}@{domain['name']}"


@pytest.fixture
def argon2_calls():
    with mock.patch.object(service_module.crypto, "verify_password",
                           wraps=service_module.crypto.verify_password) as spy:
        yield spy


def test_a_matching_password_is_hashed_once_a_wrong_one_every_time(services, login, argon2_calls):
    accounts = services.accounts
    first, second = accounts.authenticate_smtp(login, PASSWORD), accounts.authenticate_smtp(login, PASSWORD)
    assert first is not None and first == second
    assert argon2_calls.call_count == 1
    assert accounts.authenticate_smtp(login, "wrong-pass") is None
    assert accounts.authenticate_smtp(login, "wrong-pass") is None
    assert accounts.authenticate_smtp(login.upper() + "x", PASSWORD) is None  # unknown login: the dummy hash
    assert accounts.authenticate_smtp(login.upper() + "x", PASSWORD) is None
    assert argon2_calls.call_count == 5


def test_a_changed_password_and_a_deleted_login_take_effect_at_once(services, account, domain, login):
    accounts = services.accounts
    assert accounts.authenticate_smtp(login, PASSWORD) is not None
    accounts.change_credential_password(account["id"], domain["name"], login, "memo-secret-2")
    assert accounts.authenticate_smtp(login, PASSWORD) is None
    assert accounts.authenticate_smtp(login, "memo-secret-2") is not None
    accounts.delete_credential(account["id"], domain["name"], login)
    assert accounts.authenticate_smtp(login, "memo-secret-2") is None


def _at_once(calls):
    """Run the calls on threads started together; their results in order."""
    import threading

    results = [None] * len(calls)
    start = threading.Barrier(len(calls))

    def run(i, call):
        start.wait()
        results[i] = call()

    threads = [threading.Thread(target=run, args=(i, call)) for i, call in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return results


def test_logins_at_once_share_one_argon2_run_wrong_ones_do_not(services, login, argon2_calls):
    accounts = services.accounts
    results = _at_once([lambda: accounts.authenticate_smtp(login, PASSWORD)] * 4)
    assert all(r is not None for r in results) and len(set(results)) == 1
    assert argon2_calls.call_count == 1  # a pool of connections logging in at once: one argon2
    assert _at_once([lambda: accounts.authenticate_smtp(login, "wrong-pass")] * 3) == [None] * 3
    assert argon2_calls.call_count == 4  # each wrong attempt pays its own
