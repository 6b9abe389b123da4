"""CSRF tokens and the session cookie policy."""

from envoi.accounts.sessions import COOKIE_NAME, clearing_cookie, cookie_attributes, csrf_token, verify_csrf


def test_csrf_token_is_per_session_and_verified():
    token = csrf_token("session-a")
    assert verify_csrf("session-a", token)
    assert not verify_csrf("session-b", token)
    assert not verify_csrf("session-a", token[:-1] + ("0" if token[-1] != "0" else "1"))
    assert not verify_csrf("session-a", None)
    assert not verify_csrf("session-a", "")
    assert not verify_csrf("", csrf_token(""))


def test_cookie_is_host_prefixed_secure_httponly_lax():
    value = cookie_attributes("tok")
    assert value.startswith(f"{COOKIE_NAME}=tok;") and COOKIE_NAME.startswith("__Host-")
    parts = {p.strip() for p in value.split(";")}
    assert {"Path=/", "Secure", "HttpOnly", "SameSite=Lax"} <= parts
    assert not any(p.lower().startswith("domain=") for p in parts)
    assert "Max-Age=0" in clearing_cookie()
