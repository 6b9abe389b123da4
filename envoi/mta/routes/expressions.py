"""Route filters and actions in Mailgun's syntax: parsed once when a route is saved, evaluated per message.

Filters: `match_recipient("regex")`, `match_header("name", "regex")`, `catch_all()`, joined with `and`.
Regexes are Python's (as Mailgun's), matched from the start of the value, case-insensitively; the
groups of `match_recipient` (numbered `\\1`, named `(?P<name>...)` used as `\\g<name>`) fill in the
actions' destinations. Actions: `forward("https://...")`, `forward("addr@...")` (several destinations
separated by commas), `store()`, `store(notify="https://...")`, `stop()`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

MAX_TEXT = 4096  # Mailgun: each filter and action is at most 4 KB
_STRING = r"""(?:"((?:[^"\\]|\\.)*)"|'((?:[^'\\]|\\.)*)')"""
_CALL = re.compile(rf"\s*(match_recipient|match_header|catch_all)\s*\(\s*((?:{_STRING}\s*(?:,\s*)?)*)\)\s*", re.S)
_ARG = re.compile(rf"\s*{_STRING}\s*,?")
_AND = re.compile(r"\s*and\s+", re.I)
_FORWARD = re.compile(rf"^\s*forward\s*\(\s*{_STRING}\s*\)\s*$", re.S)
_STORE = re.compile(rf"^\s*store\s*\(\s*(?:notify\s*=\s*{_STRING}\s*)?\)\s*$", re.S)
_STOP = re.compile(r"^\s*stop\s*\(\s*\)\s*$")
_ADDRESS = re.compile(r"^[^@\s,<>\"\\]{1,64}@[A-Za-z0-9.-]{1,253}$")


class InvalidExpression(ValueError):
    """The filter or action is not one Mailgun's syntax allows (the message says why)."""


def _unquote(double: str | None, single: str | None) -> str:
    text = double if double is not None else single or ""
    return re.sub(r"\\([\"'])", r"\1", text)


@dataclass(frozen=True)
class Condition:
    kind: str  # recipient | header | catch_all
    pattern: re.Pattern | None = None
    header: str = ""


@dataclass(frozen=True)
class Filter:
    conditions: tuple[Condition, ...]

    @property
    def header_only(self) -> bool:
        """True when the recipient alone cannot decide it (it reads a header of the message)."""
        return any(c.kind == "header" for c in self.conditions)

    def match(self, recipient: str, headers=None) -> re.Match | bool | None:
        """None when it does not match; else the recipient's match (for captures) or True."""
        found: re.Match | bool = True
        for cond in self.conditions:
            if cond.kind == "recipient":
                m = cond.pattern.match(recipient)
                if m is None:
                    return None
                found = m
            elif cond.kind == "header":
                if headers is None:
                    return True  # at RCPT time: the message may still match
                values = [str(v) for v in headers.get_all(cond.header, [])]
                if not any(cond.pattern.match(v) for v in values):
                    return None
        return found


def parse_filter(expression: str) -> Filter:
    if not expression or not expression.strip():
        raise InvalidExpression("expression parameter is missing")
    if len(expression) > MAX_TEXT:
        raise InvalidExpression(f"expression is longer than {MAX_TEXT} characters")
    conditions, rest = [], expression
    while True:
        call = _CALL.match(rest)
        if call is None:
            raise InvalidExpression(f"Invalid expression: {expression!r}")
        name = call.group(1)
        args = [_unquote(a.group(1), a.group(2)) for a in _ARG.finditer(call.group(2))]
        conditions.append(_condition(name, args, expression))
        rest = rest[call.end():]
        if not rest.strip():
            break
        joiner = _AND.match(rest)
        if joiner is None:
            raise InvalidExpression(f"Invalid expression: {expression!r} (join filters with 'and')")
        rest = rest[joiner.end():]
    return Filter(tuple(conditions))


def _condition(name: str, args: list[str], expression: str) -> Condition:
    wanted = {"match_recipient": 1, "match_header": 2, "catch_all": 0}[name]
    if len(args) != wanted:
        raise InvalidExpression(f"Invalid expression: {name}() takes {wanted} argument(s): {expression!r}")
    if name == "catch_all":
        return Condition("catch_all")
    try:
        pattern = re.compile(args[-1], re.I)
    except re.error as ex:
        raise InvalidExpression(f"Invalid regular expression {args[-1]!r}: {ex}") from ex
    if name == "match_recipient":
        return Condition("recipient", pattern)
    if not re.fullmatch(r"[!-9;-~]+", args[0]):
        raise InvalidExpression(f"Invalid header name {args[0]!r}")
    return Condition("header", pattern, args[0])


@dataclass(frozen=True)
class Action:
    kind: str  # forward | store | stop
    destinations: tuple[str, ...] = ()  # forward: URLs and addresses, with \1 / \g<name> placeholders
    notify: str = ""  # store: the URL to notify, or ""

    def urls(self) -> list[str]:
        return [d for d in self.destinations if is_url(d)]


def is_url(destination: str) -> bool:
    return destination.lower().startswith(("http://", "https://"))


def parse_action(text: str) -> Action:
    if len(text) > MAX_TEXT:
        raise InvalidExpression(f"action is longer than {MAX_TEXT} characters")
    if (m := _FORWARD.match(text)) is not None:
        destinations = tuple(d.strip() for d in _unquote(m.group(1), m.group(2)).split(",") if d.strip())
        if not destinations:
            raise InvalidExpression(f"Invalid action: {text!r} names no destination")
        for d in destinations:
            if not is_url(d) and not _ADDRESS.match(re.sub(r"\\(\d+|g<\w+>)", "x", d)):
                raise InvalidExpression(f"Invalid forward destination {d!r}: give an http(s) URL or an address")
        return Action("forward", destinations)
    if (m := _STORE.match(text)) is not None:
        notify = _unquote(m.group(1), m.group(2)).strip() if m.group(1) is not None or m.group(2) else ""
        if notify and not is_url(notify):
            raise InvalidExpression(f"Invalid notify URL {notify!r}")
        return Action("store", notify=notify)
    if _STOP.match(text):
        return Action("stop")
    raise InvalidExpression(f"Invalid action: {text!r} (use forward(), store() or stop())")


def expand(destination: str, found: re.Match | bool) -> str:
    """The destination with the recipient's captures filled in (none without a match_recipient)."""
    if not isinstance(found, re.Match) or "\\" not in destination:
        return destination
    try:
        return found.expand(destination)
    except (re.error, IndexError):
        return destination


def valid_address(address: str) -> bool:
    return bool(_ADDRESS.match(address))


@dataclass
class Plan:
    """What a message's matching routes ask for, in priority order."""

    route_ids: list[str] = field(default_factory=list)
    urls: list[str] = field(default_factory=list)  # forward(url)
    addresses: list[str] = field(default_factory=list)  # forward(address)
    store: bool = False
    notify: list[str] = field(default_factory=list)  # store(notify=url)


def plan(routes: list[tuple[str, Filter, list[Action]]], recipient: str, headers) -> Plan:
    """Evaluate the routes (already in priority order) for one recipient: every match runs, until a
    matching route's stop()."""
    result = Plan()
    for route_id, flt, actions in routes:
        found = flt.match(recipient, headers)
        if found is None:
            continue
        result.route_ids.append(route_id)
        for action in actions:
            if action.kind == "forward":
                for d in action.destinations:
                    target = expand(d, found)
                    if is_url(target):
                        result.urls.append(target)
                    elif valid_address(target):  # a capture that made no address is dropped
                        result.addresses.append(target.lower())
            elif action.kind == "store":
                result.store = True
                if action.notify:
                    result.notify.append(action.notify)
        if any(a.kind == "stop" for a in actions):
            break
    result.urls = list(dict.fromkeys(result.urls))
    result.addresses = list(dict.fromkeys(result.addresses))
    result.notify = list(dict.fromkeys(result.notify))
    return result
