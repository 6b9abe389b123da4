"""The webhook SSRF guard: which URLs may be saved and dialled."""

from __future__ import annotations

import pytest

from envoi.webhooks import ssrf

NONE = ssrf.Allow.parse(())


@pytest.mark.parametrize("url", [
    "http://127.0.0.1/", "http://127.1.2.3:8080/x", "http://localhost/", "http://[::1]/",
    "http://[::ffff:127.0.0.1]/", "http://[::ffff:7f00:1]/", "http://[2002:7f00:1::]/",  # mapped / 6to4
    "http://169.254.169.254/latest/meta-data/", "http://[fd00:ec2::254]/",  # cloud metadata
    "http://10.0.0.1/", "http://172.16.5.4/", "http://192.168.1.1/", "http://100.64.0.1/",  # RFC 1918, CGNAT
    "http://[fc00::1]/", "http://[fe80::1]/", "http://0.0.0.0/", "http://224.0.0.1/", "http://240.0.0.1/",
    "http://2130706433/", "http://0x7f000001/", "http://0x7f.0.0.1/", "http://0177.0.0.1/", "http://127.1/",
    "ftp://example.com/", "javascript:alert(1)", "http:///nohost", "http://exa mple.com/", "",
])
def test_refused(url):
    with pytest.raises(ssrf.UnsafeURL):
        ssrf.check(url, NONE)


def test_public_literal_allowed_and_operator_allowlist():
    assert ssrf.check("https://8.8.8.8/hook", NONE)
    allow = ssrf.Allow.parse(["127.0.0.1/32", "hooks.internal"])
    assert ssrf.check("http://127.0.0.1:9000/x", allow)
    with pytest.raises(ssrf.UnsafeURL):
        ssrf.check("http://127.0.0.2/", allow)  # only what was allowed
    with pytest.raises(ssrf.UnsafeURL):
        ssrf.check("http://[::ffff:127.0.0.1]/", allow)


def test_refused_at_dial_without_connecting():
    # "localhost" stands for a name whose DNS answer turned private after it was saved (rebinding).
    response = ssrf.post("http://localhost:9/hook", b"{}", NONE, timeout=1)
    assert response.status is None and response.error.startswith("refused")
