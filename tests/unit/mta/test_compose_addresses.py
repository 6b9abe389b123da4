"""The everyday-address fast path must agree with email_validator wherever it answers."""

from __future__ import annotations

import random
from email.utils import getaddresses

import pytest
from email_validator import EmailNotValidError, validate_email

from envoi.mta import compose
from envoi.mta.errors import InvalidRecipient


def _reference(addr: str) -> str | None:
    """What _normalized answered before the fast path: email_validator with our settings (after
    normalize_address's unquoting of a quoted local part that needs no quotes, RFC 5321 4.1.2)."""
    addr = compose._QUOTED_LOCAL.sub(r"\1@", addr, count=1)
    try:
        result = validate_email(addr, check_deliverability=False, allow_smtputf8=True,
                                globally_deliverable=False, test_environment=True)
    except EmailNotValidError:
        return None
    if "." not in result.domain:
        return None
    local, _, domain = result.normalized.rpartition("@")
    return f"{local}@{domain.lower()}"


def _ours(addr: str) -> str | None:
    compose._normalized.cache_clear()
    try:
        return compose.normalize_address(addr)
    except InvalidRecipient:
        return None


def _random_address(rng: random.Random) -> str:
    """Mostly well-formed addresses, perturbed now and then: the cases where the two could differ."""
    odd = "\"() ,;:<>[]\\@é\t"
    def chars(alphabet, n):
        return "".join(rng.choice(odd if rng.random() < 0.02 else alphabet) for _ in range(n))
    atoms = [chars("abcXYZ0189!#$%&'*+/=?^_`{|}~-", rng.choice([0, 1, 2, 8, 20, 40]))
             for _ in range(rng.choice([1, 1, 2, 3]))]
    labels = [chars("abcxyzABC0189-", rng.choice([0, 1, 2, 3, 10, 62, 63, 64]))
              for _ in range(rng.choice([1, 1, 2, 3]))]
    tld = rng.choice(["com", "test", "io", "c", "123", "x1", "COM", "museum", "a" * 63, "a" * 64, "xn--p1ai",
                      "com-", ""])
    addr = f"{'.'.join(atoms)}@{'.'.join(labels + [tld])}"
    if rng.random() < 0.05:
        addr = "a" * rng.choice([180, 200, 240, 250]) + addr
    return addr


def test_fast_path_agrees_with_email_validator_on_generated_addresses():
    rng = random.Random(1234)
    fast = 0
    for _ in range(20000):
        addr = _random_address(rng)
        if compose._EVERYDAY_ADDRESS.fullmatch(addr):
            fast += 1
        assert _ours(addr) == _reference(addr.strip()), addr  # normalize_address strips first
    assert fast > 1000  # the comparison really exercised the fast path


@pytest.mark.parametrize("addr", [
    "John.Doe@Example.COM", "a@b.co", "x+tag@mail.example.org", "o'brien@example.ie",
    "a-b@xn--p1ai.example.com", "a@ab--cd.example.com", "a@-bad.example.com", "a@bad-.example.com",
    "a..b@example.com", ".a@example.com", "a.@example.com", "a@example.123", "a@example", "a@example.com.",
    "\"quoted\"@example.com", "josé@example.com", "a@exämple.com", "a" * 65 + "@example.com",
    "a@" + "b" * 64 + ".com", "user@[127.0.0.1]", "a@b.c",
])
def test_fast_path_agrees_with_email_validator_on_edge_cases(addr):
    assert _ours(addr) == _reference(addr.strip())


@pytest.mark.parametrize(("addr", "normalized"), [
    ('"quoted"@example.com', "quoted@example.com"), ('"a.b"@example.com', "a.b@example.com"),
    ('"a b"@example.com', None), ('"a..b"@example.com', None), ('"a\\"b"@example.com', None), ('""@example.com', None),
])
def test_quoted_local_part_is_the_unquoted_mailbox_or_refused(addr, normalized):
    assert _ours(addr) == normalized


def _parsed_the_slow_way(raw: str) -> list[tuple[str, str]] | None:
    """parse_addresses before its bare-address fast path: every value through email.utils.getaddresses."""
    try:
        return [(name, compose.normalize_address(addr)) for name, addr in getaddresses([raw]) if addr or name]
    except InvalidRecipient:
        return None


def _parsed(raw: str) -> list[tuple[str, str]] | None:
    try:
        return compose.parse_addresses("to", [raw])
    except InvalidRecipient:
        return None


def test_bare_address_fast_path_agrees_with_getaddresses_on_generated_addresses():
    rng = random.Random(4321)
    fast = 0
    for _ in range(20000):
        raw = _random_address(rng)
        if rng.random() < 0.1:  # a display name, brackets, a list: never the fast path
            raw = rng.choice([f"Name <{raw}>", f"{raw}, b@example.com", f" {raw}", f"<{raw}>", f'"x" <{raw}>'])
        if compose._EVERYDAY_ADDRESS.fullmatch(raw):
            fast += 1
        assert _parsed(raw) == _parsed_the_slow_way(raw), raw
    assert fast > 1000  # the comparison really exercised the fast path


def test_address_list_fast_path_agrees_with_getaddresses_on_generated_lists():
    """A batch send's `to` (comma-separated bare addresses) skips email's list parser: the same pairs."""
    rng = random.Random(2468)
    fast = 0
    def item() -> str:  # mostly clean (so that whole lists take the fast path), now and then perturbed
        if rng.random() < 0.1:
            return _random_address(rng)
        return f"{rng.choice(['a', 'B.c', 'x+y', 'o`k', 'a' * 64, 'a' * 65])}@{rng.choice(['d.example.NET', 'e.io', 'ab--c.io', 'a.b'])}"
    for _ in range(3000):
        items = [item() for _ in range(rng.choice([2, 3, 10]))]
        if rng.random() < 0.2:  # an odd item: a name, brackets, an empty item, other whitespace
            items[rng.randrange(len(items))] = rng.choice(["Name <a@example.com>", "<a@example.com>", "", " ",
                                                           "a@example.com\t", "\ta@example.com", '"x" <a@b.com>'])
        raw = rng.choice([",", ", ", " ,", " , ", ",\t"]).join(items)
        if compose._everyday_list(raw) is not None:
            fast += 1
        assert _parsed(raw) == _parsed_the_slow_way(raw), raw
    assert fast > 500  # the comparison really exercised the fast path


def test_a_thousand_address_to_parses_as_getaddresses_does():
    raw = ",".join(f"b1r{i}@d{i % 1000:03d}.Example.NET" for i in range(1000))
    assert compose._everyday_list(raw) is not None
    assert compose.parse_addresses("to", [raw]) == _parsed_the_slow_way(raw)
