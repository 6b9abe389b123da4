"""People who use the dashboard: account users (invited by an admin, with one of Mailgun's roles) and
operators (no account: they run the platform and never act for a customer). Passwords are argon2,
an optional TOTP second factor has ten single-use recovery codes, and every change is in the audit log.

Login goes: throttle check (before anything about the email is read), password, second factor, then a
server-side session (envoi.accounts.sessions). Wrong email, wrong password and wrong code all fail
with the same InvalidLogin, and an unknown email costs the same argon2 work as a known one.
"""

from __future__ import annotations

import re
import secrets
from datetime import UTC, datetime, timedelta
from functools import cached_property

from envoi.accounts import activity, roles, totp
from envoi.accounts.audit import Audit
from envoi.accounts.errors import (
    AccountClosed,
    AlreadyExists,
    InvalidInput,
    InvalidLogin,
    InvitationInvalid,
    NotFound,
    SecondFactorRequired,
)
from envoi.accounts.limits import USERS, PlanLimits, enforce
from envoi.accounts.sessions import Sessions
from envoi.accounts.throttle import LoginThrottle
from envoi.infra import crypto
from envoi.infra.db import Connection, Database, IntegrityError

EMAIL_RE = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,253}\.[^@\s.]{2,}$")
MIN_PASSWORD, MAX_PASSWORD = 10, 256
INVITATION_TTL = timedelta(days=7)
USER_COLUMNS = "id, account_id, email, role, totp_secret IS NOT NULL AS totp_enabled, created_at"


def actor_of(user: dict) -> str:
    """The audit actor naming a user: `user:<id>`, or `operator:<id>` for a platform admin."""
    return f"{'operator' if user['account_id'] is None else 'user'}:{user['id']}"


class Users:
    def __init__(self, db: Database, sealer: crypto.Sealer, sessions: Sessions, audit: Audit,
                 throttle: LoginThrottle, *, invitation_ttl: timedelta = INVITATION_TTL,
                 limits: PlanLimits | None = None):
        self.db = db
        self.limits = limits  # plans' max_users (users and pending invitations), with billing on
        self.sealer = sealer
        self.sessions = sessions
        self.audit = audit
        self.throttle = throttle
        self.invitation_ttl = invitation_ttl

    # creating users ---------------------------------------------------------------------------
    def create_operator(self, email: str, password: str, *, actor: str = "cli", ip: str | None = None) -> dict:
        """A platform admin (no account)."""
        with self.db.transaction() as conn:
            user = self._insert(conn, None, email, password, "operator")
            self.audit.record(None, actor, "operator.created", user["email"], ip=ip, conn=conn)
        return user

    def invite(self, account_id: int, email: str, role: str, *, actor: str, actor_role: str | None = None,
               ip: str | None = None) -> tuple[dict, str]:
        """Invite EMAIL into the account with ROLE; returns (invitation, token). The token is shown once
        (the dashboard mails it as a link) and stored hashed. `actor_role` None = an operator or the CLI."""
        if actor_role is not None:
            roles.require(actor_role, "manage_users")
        email = _email(email)
        if role not in roles.ROLES:
            raise InvalidInput(f"role must be one of {', '.join(roles.ROLES)}")
        token = secrets.token_urlsafe(32)
        with self.db.transaction() as conn:
            if conn.execute("SELECT 1 FROM accounts WHERE id = %s", (account_id,)).fetchone() is None:
                raise NotFound(f"Account not found: {account_id}")
            if conn.execute("SELECT 1 FROM users WHERE account_id = %s AND lower(email) = lower(%s)",
                            (account_id, email)).fetchone():
                raise AlreadyExists(f"{email} is already a user of this account")
            enforce(conn, self.limits, account_id, USERS)
            invitation = conn.execute(
                "INSERT INTO user_invitations (account_id, email, role, token_hash, invited_by, expires_at)"
                " VALUES (%s, %s, %s, %s, %s, now() + %s)"
                " RETURNING id, account_id, email, role, invited_by, created_at, expires_at",
                (account_id, email, role, crypto.token_hash(token), actor, self.invitation_ttl)).fetchone()
            self.audit.record(account_id, actor, "user.invited", email, ip=ip, details={"role": role}, conn=conn)
        return invitation, token

    def accept_invitation(self, token: str, password: str, *, ip: str | None = None) -> dict:
        """Set the invited person's password: creates the user; the token cannot be used again."""
        with self.db.transaction() as conn:
            invitation = conn.execute(
                "UPDATE user_invitations SET accepted_at = now()"
                " WHERE token_hash = %s AND accepted_at IS NULL AND expires_at > now()"
                " RETURNING account_id, email, role, invited_by", (crypto.token_hash(token),)).fetchone()
            if invitation is None:
                raise InvitationInvalid()
            user = self._insert(conn, invitation["account_id"], invitation["email"], password, invitation["role"])
            self.audit.record(user["account_id"], actor_of(user), "user.created", user["email"], ip=ip,
                              details={"role": user["role"], "invited_by": invitation["invited_by"]}, conn=conn)
        return user

    def _insert(self, conn: Connection, account_id: int | None, email: str, password: str, role: str) -> dict:
        email = _email(email)
        if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
            raise InvalidInput(f"Password length must be between {MIN_PASSWORD} and {MAX_PASSWORD} characters")
        try:
            with conn.transaction():
                return conn.execute(
                    f"INSERT INTO users (account_id, email, password_hash, role) VALUES (%s, %s, %s, %s)"
                    f" RETURNING {USER_COLUMNS}",
                    (account_id, email, crypto.hash_password(password), role)).fetchone()
        except IntegrityError:
            raise AlreadyExists(f"{email} is already a user here") from None

    def set_password(self, user: dict, password: str, *, actor: str, ip: str | None = None) -> None:
        """A new password for the user; every session of theirs ends (whoever held one must sign in again)."""
        if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
            raise InvalidInput(f"Password length must be between {MIN_PASSWORD} and {MAX_PASSWORD} characters")
        with self.db.transaction() as conn:
            conn.execute("UPDATE users SET password_hash = %s WHERE id = %s", (crypto.hash_password(password), user["id"]))
            self.sessions.logout_everywhere(user["id"], conn=conn)
            self.audit.record(user["account_id"], actor, "user.password_set", user["email"], ip=ip, conn=conn)

    # reading ----------------------------------------------------------------------------------
    def list_users(self, account_id: int | None) -> list[dict]:
        """An account's users; None lists the operators."""
        where = "account_id IS NULL" if account_id is None else "account_id = %s"
        with self.db.transaction() as conn:
            return conn.execute(f"SELECT {USER_COLUMNS} FROM users WHERE {where} ORDER BY id",
                                () if account_id is None else (account_id,)).fetchall()

    def get_user(self, account_id: int | None, user_id: int) -> dict:
        where = "account_id IS NULL" if account_id is None else "account_id = %s"
        with self.db.transaction() as conn:
            row = conn.execute(f"SELECT {USER_COLUMNS} FROM users WHERE id = %s AND {where}",
                               (user_id,) if account_id is None else (user_id, account_id)).fetchone()
        if row is None:
            raise NotFound("User not found")
        return row

    def list_invitations(self, account_id: int) -> list[dict]:
        """The account's pending invitations (neither accepted nor expired), newest first."""
        with self.db.transaction() as conn:
            return conn.execute(
                "SELECT id, account_id, email, role, invited_by, created_at, expires_at FROM user_invitations"
                " WHERE account_id = %s AND accepted_at IS NULL AND expires_at > now() ORDER BY id DESC",
                (account_id,)).fetchall()

    # an admin's changes to the account's people ----------------------------------------------
    def revoke_invitation(self, account_id: int, invitation_id: int, *, actor: str, ip: str | None = None) -> None:
        """Withdraw a pending invitation: its link stops working. Another account's is NotFound."""
        with self.db.transaction() as conn:
            gone = conn.execute(
                "DELETE FROM user_invitations WHERE id = %s AND account_id = %s AND accepted_at IS NULL"
                " RETURNING email, role", (invitation_id, account_id)).fetchone()
            if gone is None:
                raise NotFound("Invitation not found")
            self.audit.record(account_id, actor, "user.invitation_revoked", gone["email"], ip=ip,
                              details={"role": gone["role"]}, conn=conn)

    def change_role(self, account_id: int, user_id: int, role: str, *, actor: str,
                    ip: str | None = None) -> dict:
        """Give a user of the account another role; it applies to their next request (sessions read
        the role live). The account's last admin cannot be demoted: nobody could manage users then."""
        if role not in roles.ROLES:
            raise InvalidInput(f"role must be one of {', '.join(roles.ROLES)}")
        with self.db.transaction() as conn:
            user = self._lock_user(conn, account_id, user_id)
            if user["role"] == "admin" and role != "admin":
                self._keep_an_admin(conn, account_id, "demote")
            updated = conn.execute(f"UPDATE users SET role = %s WHERE id = %s RETURNING {USER_COLUMNS}",
                                   (role, user_id)).fetchone()
            self.audit.record(account_id, actor, "user.role_changed", user["email"], ip=ip,
                              details={"from": user["role"], "to": role}, conn=conn)
        return updated

    def remove(self, account_id: int, user_id: int, *, actor: str, ip: str | None = None) -> None:
        """Delete a user of the account; their sessions end with them (the rows cascade). The account's
        last admin cannot be removed."""
        with self.db.transaction() as conn:
            user = self._lock_user(conn, account_id, user_id)
            if user["role"] == "admin":
                self._keep_an_admin(conn, account_id, "remove")
            conn.execute("DELETE FROM users WHERE id = %s", (user_id,))
            self.audit.record(account_id, actor, "user.removed", user["email"], ip=ip,
                              details={"role": user["role"]}, conn=conn)

    @staticmethod
    def _lock_user(conn: Connection, account_id: int, user_id: int) -> dict:
        # Locks every admin of the account as well, so two admins demoting each other at the same moment
        # cannot both pass the last-admin check.
        conn.execute("SELECT id FROM users WHERE account_id = %s AND role = 'admin' ORDER BY id FOR UPDATE",
                     (account_id,))
        user = conn.execute("SELECT id, account_id, email, role FROM users WHERE id = %s AND account_id = %s"
                            " FOR UPDATE", (user_id, account_id)).fetchone()
        if user is None:
            raise NotFound("User not found")
        return user

    @staticmethod
    def _keep_an_admin(conn: Connection, account_id: int, verb: str) -> None:
        admins = conn.execute("SELECT count(*) AS n FROM users WHERE account_id = %s AND role = 'admin'",
                              (account_id,)).fetchone()["n"]
        if admins <= 1:
            raise InvalidInput(f"Cannot {verb} the account's last admin: make another user admin first")

    # signing in and out -----------------------------------------------------------------------
    def login(self, email: str, password: str, *, code: str | None = None, account_id: int | None = None,
              ip: str | None = None, user_agent: str = "") -> tuple[dict, str]:
        """Check the password (and the second factor when the user has one); returns (user, session token).
        `account_id` picks among accounts where one email is a user of several (default: the first match).
        A closed account's users are refused (AccountClosed, after the password); a suspended one's sign
        in (the user dict says account_state 'suspended' and the reason)."""
        self.throttle.check(email, ip)
        user = self._password_match(email.strip(), password, account_id)
        if user is None:
            self.throttle.failed(email, ip)
            raise InvalidLogin()
        if user["account_state"] == "closed":  # said only to whoever knows the password
            self.audit.record(user["account_id"], actor_of(user), "login.failed", user["email"], ip=ip,
                              details={"reason": "account closed"})
            raise AccountClosed()
        with self.db.transaction() as conn:
            if user["totp_secret"] is None:
                how = "password"
            else:
                how = self._second_factor(conn, user, code) if code else None
            if how is not None:
                token = self.sessions.start(user["id"], ip=ip, user_agent=user_agent, conn=conn)
                if user["account_id"] is not None:  # a sign-in is activity (envoi.accounts.activity)
                    activity.touch(conn, [user["account_id"]], datetime.now(UTC).date())
                self.audit.record(user["account_id"], actor_of(user), "session.created", user["email"], ip=ip,
                                  details={"second_factor": how, "user_agent": user_agent[:200]}, conn=conn)
        if how is None:
            if not code:
                raise SecondFactorRequired()
            self.throttle.failed(email, ip)
            self.audit.record(user["account_id"], actor_of(user), "login.failed", user["email"], ip=ip,
                              details={"reason": "second factor"})
            raise InvalidLogin()
        self.throttle.succeeded(email)
        return _public(user), token

    def _password_match(self, email: str, password: str, account_id: int | None) -> dict | None:
        sql = ("SELECT u.*, u.totp_secret IS NOT NULL AS totp_enabled, a.state AS account_state,"
               " a.state_reason AS account_state_reason"
               " FROM users u LEFT JOIN accounts a ON a.id = u.account_id WHERE lower(u.email) = lower(%s)")
        args: tuple = (email,)
        if account_id is not None:
            sql += " AND u.account_id = %s"
            args += (account_id,)
        with self.db.transaction() as conn:
            # An email that is a user of several accounts signs in to an open one before a closed one.
            candidates = conn.execute(sql + " ORDER BY a.state = 'closed', u.id LIMIT 5", args).fetchall()
        if not candidates:
            crypto.verify_password(self._decoy_hash, password)  # the same argon2 work as a known email
            return None
        return next((u for u in candidates if crypto.verify_password(u["password_hash"], password)), None)

    @cached_property
    def _decoy_hash(self) -> str:
        return crypto.hash_password(secrets.token_urlsafe(16))

    def _second_factor(self, conn: Connection, user: dict, code: str) -> str | None:
        """'totp' or 'recovery code' when the code is right (a recovery code is used up), else None."""
        secret = self.sealer.open(user["totp_secret"], _totp_context(user["id"])).decode()
        step = totp.matching_step(secret, code)
        if step is not None:
            fresh = conn.execute(
                "UPDATE users SET totp_last_step = %s WHERE id = %s"
                " AND (totp_last_step IS NULL OR totp_last_step < %s) RETURNING 1", (step, user["id"], step)).fetchone()
            return "totp" if fresh else None  # a replayed code (an onlooker's, or one phished) is refused
        used = conn.execute(
            "UPDATE user_recovery_codes SET used_at = now()"
            " WHERE user_id = %s AND code_hash = %s AND used_at IS NULL RETURNING 1",
            (user["id"], crypto.token_hash(totp.normalise_recovery_code(code)))).fetchone()
        return "recovery code" if used else None

    def logout(self, token: str, *, ip: str | None = None) -> None:
        ended = self.sessions.end(token)
        if ended is not None:
            self.audit.record(ended["account_id"], _actor(ended["account_id"], ended["user_id"]), "session.ended",
                              ip=ip)

    def logout_everywhere(self, user: dict, *, actor: str, ip: str | None = None) -> int:
        """End every session of the user (theirs, or an admin's action); returns how many ended."""
        with self.db.transaction() as conn:
            count = self.sessions.logout_everywhere(user["id"], conn=conn)
            self.audit.record(user["account_id"], actor, "session.all_ended", user["email"], ip=ip,
                              details={"sessions": count}, conn=conn)
        return count

    # second factor ----------------------------------------------------------------------------
    def enable_totp(self, user: dict, secret: str, code: str, *, ip: str | None = None) -> list[str]:
        """Turn TOTP on with a secret the user's app now holds (from totp.new_secret()), once they prove
        it with a current code; returns the ten recovery codes, shown once."""
        if not totp.verify(secret, code):
            raise InvalidInput("The one-time code does not match; check the authenticator app's clock")
        codes = totp.new_recovery_codes()
        with self.db.transaction() as conn:
            conn.execute("UPDATE users SET totp_secret = %s, totp_last_step = NULL WHERE id = %s",
                         (self.sealer.seal(secret.encode(), _totp_context(user["id"])), user["id"]))
            conn.execute("DELETE FROM user_recovery_codes WHERE user_id = %s", (user["id"],))
            conn.cursor().executemany("INSERT INTO user_recovery_codes (user_id, code_hash) VALUES (%s, %s)",
                                      [(user["id"], crypto.token_hash(c)) for c in codes])
            self.audit.record(user["account_id"], actor_of(user), "totp.enabled", user["email"], ip=ip, conn=conn)
        return codes

    def reauthenticate(self, user_id: int, *, password: str = "", code: str = "") -> None:
        """Prove it is still the signed-in person before a sensitive change (turning the second factor
        off): their password, or a current one-time code. InvalidLogin otherwise."""
        with self.db.transaction() as conn:
            user = conn.execute("SELECT * FROM users WHERE id = %s", (user_id,)).fetchone()
            if user is None:
                raise NotFound("User not found")
            if password and crypto.verify_password(user["password_hash"], password):
                return
            if code and user["totp_secret"] is not None and self._second_factor(conn, user, code):
                return
        raise InvalidLogin()

    def disable_totp(self, user: dict, *, actor: str, ip: str | None = None) -> None:
        with self.db.transaction() as conn:
            conn.execute("UPDATE users SET totp_secret = NULL WHERE id = %s", (user["id"],))
            conn.execute("DELETE FROM user_recovery_codes WHERE user_id = %s", (user["id"],))
            self.audit.record(user["account_id"], actor, "totp.disabled", user["email"], ip=ip, conn=conn)


def _email(email: str) -> str:
    email = email.strip()
    if not EMAIL_RE.match(email):
        raise InvalidInput(f"Not an email address: {email!r}")
    return email


def _actor(account_id: int | None, user_id: int) -> str:
    return actor_of({"account_id": account_id, "id": user_id})


def _totp_context(user_id: int) -> bytes:
    return f"totp:{user_id}".encode()


def _public(user: dict) -> dict:
    """What login returns about the user; account_state and account_state_reason (None for an operator)
    let the dashboard tell a suspended account's users why it cannot send."""
    return {k: user.get(k) for k in ("id", "account_id", "email", "role", "totp_enabled", "created_at",
                                     "account_state", "account_state_reason")}
