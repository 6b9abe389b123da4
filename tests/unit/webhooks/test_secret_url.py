"""secret_url masks exactly the password the dialler sends (ssrf.parse reads it with urlsplit)."""

import base64
from urllib.parse import unquote

import pytest

from envoi.webhooks import secret_url, ssrf


@pytest.mark.parametrize("url, shown", [
    ("https://u:pw@h.example/hook?x=1", "https://u:***@h.example/hook?x=1"),
    ("https://me@corp.example:pa:ss@h.example:8443/", "https://me@corp.example:***@h.example:8443/"),
    ("https://u:p@ss@h.example/", "https://u:***@h.example/"),
    ("https://u:p%40ss@h.example/", "https://u:***@h.example/"),
    ("HTTP://U:PW@H.example", "HTTP://U:***@H.example"),
    ("https://token@h.example/", "https://token@h.example/"),  # no password: nothing to mask
    ("https://u:@h.example/", "https://u:@h.example/"),
    ("https://h.example:8080/a@b:c", "https://h.example:8080/a@b:c"),  # '@' in the path is not userinfo
])
def test_the_masked_password_is_the_one_sent(url, shown):
    assert secret_url.redact(url) == shown
    auth = ssrf.parse(url)[4]
    _, password = secret_url.split(url)
    if password:
        sent = base64.b64decode(auth.removeprefix("Basic ")).decode().split(":", 1)[1]
        assert sent == unquote(password)
        assert secret_url.scrub(f"error: {password} / {sent}", url) == "error: *** / ***"
    else:
        assert auth is None or ":" not in base64.b64decode(auth.removeprefix("Basic ")).decode().rstrip(":")
