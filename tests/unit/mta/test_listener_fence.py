"""The fence around aiosmtpd: envoi.mta.listener is the only module importing it, and an aiosmtpd
upgrade that changes a private name, signature or method the listener relies on fails here, saying
what to re-check, instead of breaking submission at run time.

After re-checking a changed method against envoi.mta.listener, update its hash in COPIED (and widen
the aiosmtpd pin in pyproject.toml)."""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import re
import tomllib
from importlib import metadata
from pathlib import Path

import grimp
import pytest
from aiosmtpd import smtp as upstream

from envoi.mta import listener
from tests.support.paths import ROOT

SMTP = upstream.SMTP

# Upstream methods the listener overrides or copies, with the sha256 of their source in the tested
# aiosmtpd, and what to re-check in envoi.mta.listener when one changes.
COPIED = {
    "smtp_DATA": ("3a33f30d3fd6d02f", "Connection.smtp_DATA is a chunked copy: same checks, replies, limits, "
                                      "dot-unstuffing and handler call"),
    "smtp_STARTTLS": ("6565289f4131fa13", "Connection.smtp_STARTTLS replaces it with loop.start_tls: buffer "
                                          "clearing (RFC 3207 4.2), replies, _tls_protocol/_original_transport"),
    "_reset_timeout": ("fef19b94d28dff31", "Connection._reset_timeout keeps one timer per connection; "
                                           "_timeout_handle and _timeout_cb must mean the same"),
    "_getaddr": ("0aeb21c56ac1260e", "Connection._getaddr's fast path must still agree with it "
                                     "(tests/integration/dev/test_sink.py)"),
    "connection_made": ("77a45df5065bba34", "Connection.connection_made: the STARTTLS second call (reads "
                                            "_tls_protocol._extra) and the implicit-TLS marking"),
    "connection_lost": ("d3bf6349bc3c25c1", "Connection.connection_lost releases the cap slot before it"),
    "eof_received": ("baab5aaf93160933", "Connection.eof_received for refused connections"),
    "_authenticate": ("4252dad9a1780535", "Connection._authenticate defers the check (auth_PLAIN/LOGIN must "
                                          "still call it with a LoginPassword)"),
    "auth_PLAIN": ("71fe14c537cc5039", "Connection.auth_PLAIN/_check: the AuthResult it returns"),
    "auth_LOGIN": ("f121f6cb809cc2ad", "Connection.auth_LOGIN/_check: the AuthResult it returns"),
    "_create_session": ("22b243e82ff1c7a4", "_Session (login_data without a deprecation warning)"),
    "push": ("15f4f1de5e30c337", "Connection.push is a copy that drains only when needed and, on an "
                                 "EnhancedConnection, rewrites the status first"),
    "_handle_client": ("0e4d096403af6c74", "Connection._handle_client is a copy (logging only when enabled): "
                                           "same replies, limits, order of checks, exception handling"),
    "smtp_MAIL": ("80dd938e7791acfb", "Connection.smtp_MAIL is a copy calling the hook directly: same checks, "
                                      "parameters, replies"),
    "smtp_RCPT": ("a0d6605883c0e608", "Connection.smtp_RCPT is a copy calling the hook directly: same checks, "
                                      "parameters, replies"),
    "check_helo_needed": ("9829bb73251c983e", "Connection._not_ready inlines it (its reply)"),
    "check_auth_needed": ("812bbc794078b1b0", "Connection._not_ready inlines it (its reply, its log line)"),
    "_call_handler_hook": ("6ff23a6634ea0307", "smtp_MAIL/RCPT/DATA call self._handle_hooks' hook directly"),
    "_cb_client_connected": ("a73e95bb7f362ab9", "Connection reads self._reader/_writer (set here) and "
                                                 "self._reader._buffer"),
}

# Private upstream names the listener calls or reads, and the parameters of the methods among them.
PRIVATE_USED = {
    "_set_post_data_state": ["self"],
    "_strip_command_keyword": ["self", "keyword", "arg"],
    "_getparams": ["self", "params"],
    "_handle_hooks": None, "_smtp_methods": None, "_auth_required": None, "_decode_data": None,
    "_tls_handshake_okay": None, "_proxy_timeout": None,
    "_enforce_call_limit": None, "_call_limit_default": None, "_call_limit_base": None,
    "_timeout_cb": ["self"],
    "_timeout_duration": None, "_timeout_handle": None, "_original_transport": None, "_tls_protocol": None,
    "_reader": None, "_writer": None,  # set by _cb_client_connected
    "_paused": None, "_connection_lost": None,  # asyncio's FlowControlMixin: when push must await drain
}
SET_BY_CB = {"_reader", "_writer"}

# Private names that are the listener's own (attributes of its classes and connections).
OWN = {"_limit", "_check_login", "_on_connect", "_on_disconnect", "_slot", "_refused", "_idle_deadline",
       "_idle_check", "_check", "_login_data", "_extra", "_factory", "_servers", "_loop", "_thread", "_stopped",
       "_close_all", "_wind_down", "_not_ready", "_path_argument"}

# The parameters of every upstream method the listener overrides.
SIGNATURES = {
    "smtp_DATA": ["self", "arg"], "smtp_STARTTLS": ["self", "arg"], "_reset_timeout": ["self", "duration=None"],
    "_getaddr": ["self", "arg"], "connection_made": ["self", "transport"], "connection_lost": ["self", "error"],
    "eof_received": ["self"], "data_received": ["self", "data"], "_authenticate": ["self", "mechanism", "auth_data"],
    "auth_PLAIN": ["self", "_", "args"], "auth_LOGIN": ["self", "_", "args"], "_create_session": ["self"],
    "push": ["self", "status"], "_handle_client": ["self"], "smtp_MAIL": ["self", "arg"], "smtp_RCPT": ["self", "arg"],
}


def params(fn) -> list[str]:
    out = []
    for p in inspect.signature(fn).parameters.values():
        name = "*" + p.name if p.kind is p.VAR_POSITIONAL else "**" + p.name if p.kind is p.VAR_KEYWORD else p.name
        out.append(name if p.default is p.empty else f"{name}={p.default!r}")
    return out


def source_hash(fn) -> str:
    return hashlib.sha256(inspect.getsource(fn).encode()).hexdigest()[:16]


@pytest.fixture(scope="module")
def instance():
    loop = asyncio.new_event_loop()
    try:
        yield SMTP(object(), loop=loop, command_call_limit={"MAIL": 1})  # as the listener's: _call_limit_* set
    finally:
        loop.close()


def version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def test_installed_aiosmtpd_is_in_the_pinned_range():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    [pin] = [d for d in project["dependencies"] if d.startswith("aiosmtpd")]
    low, high = re.fullmatch(r"aiosmtpd>=([\d.]+),<([\d.]+)", pin).groups()  # the tested range, both ends
    assert version(low) <= version(metadata.version("aiosmtpd")) < version(high)


@pytest.mark.parametrize("name", sorted(COPIED))
def test_methods_the_listener_overrides_or_copies_are_unchanged_upstream(name):
    expected, recheck = COPIED[name]
    assert source_hash(getattr(SMTP, name)) == expected, (
        f"aiosmtpd {metadata.version('aiosmtpd')} changed SMTP.{name}: re-check {recheck} "
        f"(envoi/mta/listener.py), then update its hash in {Path(__file__).name}")


@pytest.mark.parametrize("name", sorted(SIGNATURES))
def test_overridden_methods_keep_their_signature(name):
    assert params(getattr(SMTP, name)) == SIGNATURES[name], (
        f"aiosmtpd changed the signature of SMTP.{name}, which envoi.mta.listener.Connection overrides")


def test_every_override_is_listed():
    ours = set(vars(listener.Connection)) | set(vars(listener.EnhancedConnection))
    overridden = {name for name in ours if hasattr(SMTP, name) and not name.startswith("__")}
    assert overridden == set(SIGNATURES), "list each upstream method the listener overrides in SIGNATURES"


def test_every_private_name_the_listener_uses_is_listed():
    source = inspect.getsource(listener)
    used = set(re.findall(r"\b(?:self|conn|super\(\))\.(_[a-z]\w*)", source))
    unlisted = used - OWN - set(PRIVATE_USED) - set(COPIED) - set(SIGNATURES)
    assert not unlisted, f"list these private aiosmtpd names in PRIVATE_USED (or OWN if the listener's): {unlisted}"


@pytest.mark.parametrize("name", sorted(PRIVATE_USED))
def test_private_names_the_listener_uses_still_exist(name, instance):
    if name in SET_BY_CB:
        assert f"self.{name} = " in inspect.getsource(SMTP._cb_client_connected), \
            f"aiosmtpd no longer sets SMTP.{name}, which envoi.mta.listener.Connection reads"
        return
    assert hasattr(instance, name), f"aiosmtpd's SMTP has no {name} any more: re-check envoi.mta.listener"
    if PRIVATE_USED[name] is not None:
        assert params(getattr(SMTP, name)) == PRIVATE_USED[name], \
            f"aiosmtpd changed the signature of SMTP.{name}, which envoi.mta.listener calls"


def test_the_stream_buffer_the_listener_edits_is_still_a_bytearray():
    # smtp_DATA puts bytes pipelined behind the final dot back, and STARTTLS clears plaintext, in it.
    loop = asyncio.new_event_loop()
    try:
        assert isinstance(asyncio.StreamReader(loop=loop)._buffer, bytearray)
    finally:
        loop.close()


def test_session_login_data_is_still_a_property():
    assert isinstance(vars(upstream.Session).get("login_data"), property), \
        "aiosmtpd's Session.login_data changed: re-check envoi.mta.listener._Session"
    assert params(upstream.Session.__init__) == ["self", "loop"]


def test_the_replies_enhanced_connection_rewrites_are_still_aiosmtpd_s():
    source = re.sub(r"'\s*\n\s*'", "", inspect.getsource(upstream))  # join literals split across lines
    helo_template = re.compile(r"(?<=send )[HE]+LO(?= first)")  # check_helo_needed's f"send {helo} first"
    stale = [reply for reply in listener._REWRITE
             if reply not in source and helo_template.sub("{helo}", reply) not in source]
    assert not stale, f"aiosmtpd no longer sends these replies; update listener._REWRITE: {stale}"
    assert '500 Error: command "' in source  # enhanced() rewrites these by prefix


def test_no_envoi_module_but_the_listener_imports_aiosmtpd():
    graph = grimp.build_graph("envoi", include_external_packages=True, cache_dir=None)
    assert graph.find_modules_that_directly_import("aiosmtpd") == {"envoi.mta.listener"}
