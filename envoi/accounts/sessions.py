"""Server-side dashboard sessions in Postgres, their CSRF tokens and the session cookie's policy.

The cookie carries 32 random bytes; the row keeps only their SHA-256, so a database read gives nobody a
usable session. A session ends after IDLE without use or ABSOLUTE after sign-in, whichever comes
first. The CSRF token is an HMAC of the session token: one per session, nothing more to store, and
useless without the HttpOnly cookie it derives from.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import timedelta

from envoi.infra import crypto
from envoi.infra.db import Database

COOKIE_NAME = "__Host-envoi-session"  # __Host-: Secure, Path=/ and no Domain, so no subdomain can set it
IDLE = timedelta(minutes=30)
ABSOLUTE = timedelta(hours=12)


def cookie_attributes(token: str, *, max_age: int | None = None) -> str:
    """The Set-Cookie value for a session token: the dashboard's one cookie policy."""
    age = f"; Max-Age={max_age}" if max_age is not None else ""
    return f"{COOKIE_NAME}={token}; Path=/; Secure; HttpOnly; SameSite=Lax{age}"


def clearing_cookie() -> str:
    """The Set-Cookie value that removes the session cookie (logout)."""
    return cookie_attributes("", max_age=0)


def csrf_token(session_token: str) -> str:
    return hmac.new(session_token.encode(), b"envoi-csrf", hashlib.sha256).hexdigest()


def verify_csrf(session_token: str, submitted: str | None) -> bool:
    """Constant-time check of a form's CSRF token against the session's."""
    return bool(session_token and submitted) and crypto.constant_time_equal(csrf_token(session_token), submitted)


class Sessions:
    def __init__(self, db: Database, *, idle: timedelta = IDLE, absolute: timedelta = ABSOLUTE):
        self.db = db
        self.idle = idle
        self.absolute = absolute

    def start(self, user_id: int, *, ip: str | None, user_agent: str = "", conn=None) -> str:
        """A new session for the user; returns its token (for the cookie only)."""
        token = secrets.token_urlsafe(32)
        sql = ("INSERT INTO user_sessions (token_hash, user_id, expires_at, ip, user_agent)"
               " VALUES (%s, %s, now() + %s, %s, %s)")
        args = (crypto.token_hash(token), user_id, self.absolute, ip, user_agent[:500])
        if conn is not None:
            conn.execute(sql, args)
        else:
            with self.db.transaction() as own:
                own.execute(sql, args)
        return token

    def resolve(self, token: str) -> dict | None:
        """The live session's user (id, account_id, email, role) and the session's times, touching
        last_seen; None when unknown, idle too long, past its absolute limit or its account closed."""
        with self.db.transaction() as conn:
            return conn.execute(
                "UPDATE user_sessions s SET last_seen_at = now() FROM users u"
                " WHERE s.token_hash = %s AND u.id = s.user_id"
                "   AND s.expires_at > now() AND s.last_seen_at > now() - %s"
                # closing an account ends its sessions; this also refuses one a login racing the close made
                "   AND NOT EXISTS (SELECT 1 FROM accounts a WHERE a.id = u.account_id AND a.state = 'closed')"
                " RETURNING u.id AS user_id, u.account_id, u.email, u.role, s.created_at, s.ip",
                (crypto.token_hash(token), self.idle)).fetchone()

    def end(self, token: str) -> dict | None:
        """Delete one session (logout); returns its user_id and account_id, or None if it was unknown."""
        with self.db.transaction() as conn:
            return conn.execute(
                "DELETE FROM user_sessions s USING users u WHERE s.token_hash = %s AND u.id = s.user_id"
                " RETURNING s.user_id, u.account_id", (crypto.token_hash(token),)).fetchone()

    def logout_everywhere(self, user_id: int, *, conn=None) -> int:
        """Delete every session of the user; returns how many there were."""
        if conn is not None:
            return conn.execute("DELETE FROM user_sessions WHERE user_id = %s", (user_id,)).rowcount
        with self.db.transaction() as own:
            return own.execute("DELETE FROM user_sessions WHERE user_id = %s", (user_id,)).rowcount

    def purge_expired(self) -> int:
        with self.db.transaction() as conn:
            return conn.execute("DELETE FROM user_sessions WHERE expires_at <= now() OR last_seen_at <= now() - %s",
                                (self.idle,)).rowcount
