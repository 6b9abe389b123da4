"""The `envoi` command as an operator meets it: help in two sections, help text everywhere, the version,
and a user error as one `Error: ...` line with a non-zero exit (never a traceback)."""

from __future__ import annotations

import logging
from importlib.metadata import version

import click
from click.testing import CliRunner

from envoi.cli import ADMINISTRATION, PROCESSES, main


def _walk(command: click.Command, path: str = "envoi"):
    yield path, command
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            yield from _walk(sub, f"{path} {name}")


def _assert_one_line_error(result, *fragments: str) -> None:
    assert result.exit_code not in (0, None), result.output
    assert "Traceback" not in result.output and result.exc_info[0] is SystemExit, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, result.output
    for fragment in fragments:
        assert fragment in errors[0], result.output


def test_help_lists_processes_and_administration_in_two_sections():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "Processes:" in out and "Administration:" in out and "Other commands:" not in out
    processes, administration = out.split("Processes:")[1].split("Administration:")

    def names(section: str) -> list[str]:  # a command's row starts at the section's indent
        return [line.split()[0] for line in section.splitlines() if line[:2] == "  " and line[2:3] != " "]

    assert names(processes) == list(PROCESSES)
    assert names(administration) == list(ADMINISTRATION)
    assert set(main.commands) == set(PROCESSES) | set(ADMINISTRATION)  # nothing left out of both sections


def test_every_command_and_option_has_help_text():
    missing = []
    for path, command in _walk(main):
        if not (command.help or command.short_help or "").strip():
            missing.append(path)
        for param in command.params:
            if isinstance(param, click.Option) and not (param.help or "").strip():
                missing.append(f"{path} {param.opts[-1]}")
    assert not missing, "no help text: " + ", ".join(missing)


def test_version_prints_the_package_version():
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"envoi {version('envoi')}"


def test_domain_for_a_missing_account_is_one_line(cli_env, db):
    result = CliRunner().invoke(main, ["domains", "add", "999999", "missing-account.cli.test"])
    _assert_one_line_error(result, "Account not found: 999999")
    assert db.execute("SELECT 1 FROM domains WHERE name = 'missing-account.cli.test'").fetchone() is None


def test_unknown_key_role_is_a_usage_error():
    result = CliRunner().invoke(main, ["keys", "create", "--role", "bogus"])
    assert result.exit_code == 2
    _assert_one_line_error(result, "'bogus'")


def test_invalid_domain_name_is_one_line(cli_env, account):
    result = CliRunner().invoke(main, ["domains", "add", str(account["id"]), "not a domain"])
    _assert_one_line_error(result, "is not a valid domain name")


def test_unreachable_database_is_one_line(cli_env, settings, caplog):
    # Port 1 on loopback refuses at once; the pool gives up after half a second.
    cli_env.setenv(f"ENVOI_DATABASE_URL_{settings.region.upper()}", "postgresql://postgres@127.0.0.1:1/envoi")
    cli_env.setenv("ENVOI_DB_POOL_TIMEOUT", "0.5")
    with caplog.at_level(logging.WARNING, logger="psycopg.pool"):
        result = CliRunner().invoke(main, ["accounts", "list"])
    _assert_one_line_error(result, "database unavailable", "envoi -v")
    assert "error connecting" not in caplog.text  # the outage is reported once, not per attempt
    result = CliRunner().invoke(main, ["migrate"])
    _assert_one_line_error(result, "database unavailable")


def test_missing_secret_key_is_one_line(cli_env):
    cli_env.delenv("ENVOI_SECRET_KEY")
    result = CliRunner().invoke(main, ["accounts", "list"])
    _assert_one_line_error(result, "ENVOI_SECRET_KEY")


def test_unknown_ip_is_one_line(cli_env, domain):
    result = CliRunner().invoke(main, ["ips", "domain", "add", domain["name"], "127.0.0.250"])
    _assert_one_line_error(result, "not found")


def test_keys_list_and_revoke(cli_env, services, account, domain, db):
    key, secret = services.accounts.create_key(account["id"], "developer", domain["name"], "deploys")
    assert services.accounts.authenticate_key(secret) is not None  # now in this process's cache
    result = CliRunner().invoke(main, ["keys", "list", "--account-id", str(account["id"])])
    assert result.exit_code == 0, result.output
    assert f"{key['id']}\tdeveloper\t{domain['name']}\t...{secret[-4:]}\tdeploys" in result.output
    assert secret not in result.output
    result = CliRunner().invoke(main, ["keys", "revoke", key["id"]])
    assert result.exit_code == 0 and f"key {key['id']} revoked" in result.output, result.output
    assert db.execute("SELECT 1 FROM api_keys WHERE id = %s", (key["id"],)).fetchone() is None
    assert services.accounts.authenticate_key(secret) is None  # the CLI's revocation reached this process
    _assert_one_line_error(CliRunner().invoke(main, ["keys", "revoke", key["id"]]), "Key not found")
    _assert_one_line_error(CliRunner().invoke(main, ["keys", "list", "--account-id", "999999"]),
                           "Account not found: 999999")


def test_domains_list_and_remove(cli_env, services, account, domain, db):
    result = CliRunner().invoke(main, ["domains", "list", "--account-id", str(account["id"])])
    assert result.exit_code == 0 and result.output.startswith(f"{domain['name']}\tactive\t"), result.output
    _, scoped = services.accounts.create_key(account["id"], "sending", domain["name"])
    result = CliRunner().invoke(main, ["domains", "remove", domain["name"], "--account-id", str(account["id"]),
                                       "--yes"])
    assert result.exit_code == 0, result.output
    assert db.execute("SELECT 1 FROM domains WHERE id = %s", (domain["id"],)).fetchone() is None
    assert services.accounts.authenticate_key(scoped) is None
    result = CliRunner().invoke(main, ["domains", "remove", domain["name"], "--account-id", str(account["id"]),
                                       "--yes"])
    _assert_one_line_error(result, f"Domain not found: {domain['name']}")


def test_credentials_list_and_delete(cli_env, services, account, domain, db):
    services.accounts.create_credential(account["id"], domain["name"], "app", "secret-pass")
    where = ["--account-id", str(account["id"]), "--domain", domain["name"]]
    result = CliRunner().invoke(main, ["credentials", "list", *where])
    assert result.exit_code == 0 and result.output.startswith(f"app@{domain['name']}\t"), result.output
    result = CliRunner().invoke(main, ["credentials", "delete", "app", *where])
    assert result.exit_code == 0 and f"deleted SMTP login app@{domain['name']}" in result.output, result.output
    assert services.accounts.authenticate_smtp(f"app@{domain['name']}", "secret-pass") is None
    _assert_one_line_error(CliRunner().invoke(main, ["credentials", "delete", "app", *where]),
                           "Credentials not found")
    _assert_one_line_error(CliRunner().invoke(main, ["credentials", "list", "--account-id", str(account["id"]),
                                                     "--domain", "nope.example.test"]),
                           "Domain not found: nope.example.test")


def test_users_invite_list_and_create_operator(cli_env, services, account):
    import json
    import uuid

    email = f"cli-{uuid.uuid4().hex[:6]}@people.example.test"
    result = CliRunner().invoke(main, ["users", "invite", email, "--account-id", str(account["id"]), "--role", "analyst"])
    assert result.exit_code == 0, result.output
    token = json.loads(result.output)["token"]
    services.users.accept_invitation(token, "a long enough password")
    result = CliRunner().invoke(main, ["users", "list", "--account-id", str(account["id"])])
    assert result.exit_code == 0 and f"\t{email}\tanalyst\t-" in result.output, result.output

    operator = f"op-{uuid.uuid4().hex[:6]}@platform.example.test"
    result = CliRunner().invoke(main, ["users", "create-operator", operator])
    assert result.exit_code == 0, result.output
    created = json.loads(result.output)
    assert created["role"] == "operator" and len(created["password"]) >= 20
    user, _ = services.users.login(operator, created["password"], ip="192.0.2.99")
    assert user["account_id"] is None
    result = CliRunner().invoke(main, ["users", "create-operator", f"x{operator}", "--password-stdin"],
                                input="typed password here\n")
    assert result.exit_code == 0 and "password" not in json.loads(result.output), result.output
    services.users.login(f"x{operator}", "typed password here", ip="192.0.2.99")
    assert operator in CliRunner().invoke(main, ["users", "list"]).output


def test_users_set_role_and_remove(cli_env, services, account, db):
    import json

    from tests.support.dashboard import user_of

    admin, _ = user_of(services, account, "admin")
    email, _ = user_of(services, account, "support")
    ids = {u["email"]: u["id"] for u in services.users.list_users(account["id"])}
    account_id = str(account["id"])
    result = CliRunner().invoke(main, ["users", "set-role", str(ids[email]), "analyst", "--account-id", account_id])
    assert result.exit_code == 0 and json.loads(result.output)["role"] == "analyst", result.output
    result = CliRunner().invoke(main, ["users", "remove", str(ids[admin]), "--account-id", account_id])
    _assert_one_line_error(result, "last admin")
    result = CliRunner().invoke(main, ["users", "remove", str(ids[email]), "--account-id", account_id])
    assert result.exit_code == 0, result.output
    assert [u["email"] for u in services.users.list_users(account["id"])] == [admin]
    actions = [r["action"] for r in db.execute("SELECT action FROM audit_log WHERE account_id = %s AND actor = 'cli'"
                                                  " ORDER BY id", (account["id"],)).fetchall()]
    assert actions == ["user.role_changed", "user.removed"]
    result = CliRunner().invoke(main, ["users", "remove", str(ids[admin]), "--account-id", "999999999"])
    _assert_one_line_error(result, "User not found")


def test_users_errors_are_one_line(cli_env, account):
    result = CliRunner().invoke(main, ["users", "invite", "not-an-email", "--account-id", str(account["id"])])
    _assert_one_line_error(result, "Not an email address")
    result = CliRunner().invoke(main, ["users", "invite", "a@people.example.test", "--account-id", "999999999"])
    _assert_one_line_error(result, "Account not found")
    result = CliRunner().invoke(main, ["users", "create-operator", "b@platform.example.test", "--password-stdin"],
                                input="short\n")
    _assert_one_line_error(result, "Password length")
