"""`envoi users`: dashboard users. Invite an account's users, list them, create operators (platform
admins, who belong to no account)."""

from __future__ import annotations

import json
import secrets
import sys

import click

from envoi.accounts.roles import ROLES
from envoi.commands import region

ACTOR = "cli"  # how the audit log names what an operator did from the command line


@click.group()
def users() -> None:
    """Manage dashboard users: invitations, roles, operators."""


@users.command("invite")
@click.argument("email")
@click.option("--account-id", type=int, required=True, help="The account the user will belong to.")
@click.option("--role", type=click.Choice(ROLES), default="developer", show_default=True,
              help="admin: everything; developer: all but users and billing; support: logs and suppressions; "
                   "analyst: read-only logs and stats; billing: billing only.")
def users_invite(email: str, account_id: int, role: str) -> None:
    """Invite EMAIL into an account; prints the invitation token once (valid 7 days, single use)."""
    invitation, token = region.services(pool_size=1).users.invite(account_id, email, role, actor=ACTOR)
    click.echo(json.dumps({"id": invitation["id"], "email": invitation["email"], "role": invitation["role"],
                           "expires_at": invitation["expires_at"].isoformat(), "token": token}))


@users.command("list")
@click.option("--account-id", type=int, default=None, help="The account whose users to list (default: operators).")
def users_list(account_id: int | None) -> None:
    """List an account's users (or the operators): id, email, role, second factor."""
    for row in region.services(pool_size=1).users.list_users(account_id):
        click.echo(f"{row['id']}\t{row['email']}\t{row['role']}\t{'totp' if row['totp_enabled'] else '-'}")


@users.command("set-role")
@click.argument("user_id", type=int)
@click.argument("role", type=click.Choice(ROLES))
@click.option("--account-id", type=int, required=True, help="The account the user belongs to.")
def users_set_role(user_id: int, role: str, account_id: int) -> None:
    """Give USER_ID of the account another ROLE (the account's last admin stays admin)."""
    user = region.services(pool_size=1).users.change_role(account_id, user_id, role, actor=ACTOR)
    click.echo(json.dumps({"id": user["id"], "email": user["email"], "role": user["role"]}))


@users.command("remove")
@click.argument("user_id", type=int)
@click.option("--account-id", type=int, required=True, help="The account the user belongs to.")
def users_remove(user_id: int, account_id: int) -> None:
    """Remove USER_ID from the account; their sessions end (the account's last admin stays)."""
    region.services(pool_size=1).users.remove(account_id, user_id, actor=ACTOR)
    click.echo(json.dumps({"id": user_id, "removed": True}))


@users.command("create-operator")
@click.argument("email")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input instead of "
                                                      "generating one.")
def users_create_operator(email: str, password_stdin: bool) -> None:
    """Create a platform admin EMAIL (no account); prints a generated one-time password unless one is read
    from stdin."""
    password = sys.stdin.readline().rstrip("\r\n") if password_stdin else secrets.token_urlsafe(18)
    user = region.services(pool_size=1).users.create_operator(email, password, actor=ACTOR)
    out = {"id": user["id"], "email": user["email"], "role": user["role"]}
    if not password_stdin:
        out["password"] = password
    click.echo(json.dumps(out))


COMMANDS: list = [users]  # click commands/groups added to `envoi`
