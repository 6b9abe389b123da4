"""Mailgun's filter expressions for the events API and the live stream.

A filter value is an expression over terms: `a b` and `a AND b` (both), `a OR b`, `NOT a`,
`"a quoted phrase"`, parentheses, and `>n <m` comparisons on numeric fields. The same parsed tree
compiles to SQL (events API) and matches an event item in Python (live stream), so both agree.

How a term matches depends on the field:
- keyword fields (event, severity, recipient, message-id): the value equals the term;
- tags: the event carries the tag;
- text fields (from, subject): the value contains the term as a whole word, or the phrase as a
  substring; case-insensitive;
- size: equals the number, or compares with `>`, `>=`, `<`, `<=`;
- to, list: the To header, as a text field (a mailing list's address is the To of each member's copy);
- attachment: the message has an attachment of that file name;
- recipients: the event's message.recipients (stored events of received mail) holds the address.

Those are Mailgun's documented filter fields; any other parameter name is refused by the events API.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from envoi.infra.db import like_escape

MAX_EXPRESSION = 1000
MAX_TERMS = 50
MAX_DEPTH = 20
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


class FilterError(ValueError):
    """A filter expression that does not parse."""


@dataclass(frozen=True)
class Field:
    name: str
    kind: str  # keyword | tags | text | number | attachment | member
    column: str  # SQL expression


FIELDS: dict[str, Field] = {f.name: f for f in (
    Field("event", "keyword", "event"),
    Field("severity", "keyword", "severity"),
    Field("recipient", "keyword", "recipient"),
    Field("message-id", "keyword", "message_id"),
    Field("tags", "tags", "tags"),
    Field("from", "text", "sender"),
    Field("subject", "text", "subject"),
    Field("size", "number", "((data #>> '{message,size}')::bigint)"),
    Field("to", "text", "(data #>> '{message,headers,to}')"),
    Field("list", "text", "(data #>> '{message,headers,to}')"),
    Field("attachment", "attachment", "(data #> '{message,attachments}')"),
    Field("recipients", "member", "(data #> '{message,recipients}')"),
)}


# tree -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Term:
    value: str
    phrase: bool = False


@dataclass(frozen=True)
class Compare:
    op: str
    number: int


@dataclass(frozen=True)
class Not:
    node: object


@dataclass(frozen=True)
class And:
    nodes: tuple


@dataclass(frozen=True)
class Or:
    nodes: tuple


_TOKEN = re.compile(r'\s*(?:(\()|(\))|"((?:[^"\\]|\\.)*)"|([^\s()"]+))')


def _tokens(text: str) -> list[tuple[str, str]]:
    out = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise FilterError(f"unbalanced quote in filter expression: {text!r}")
        pos = m.end()
        if m.group(1):
            out.append(("(", "("))
        elif m.group(2):
            out.append((")", ")"))
        elif m.group(3) is not None:
            out.append(("phrase", re.sub(r"\\(.)", r"\1", m.group(3))))
        elif m.group(4) in ("AND", "OR", "NOT"):
            out.append((m.group(4), m.group(4)))
        elif m.group(4):
            out.append(("word", m.group(4)))
    return out


class _Parser:
    def __init__(self, field: Field, text: str):
        self.field = field
        self.text = text
        self.tokens = _tokens(text)
        self.pos = 0
        self.terms = 0
        self.depth = 0

    def error(self, what: str) -> FilterError:
        return FilterError(f"invalid filter expression for '{self.field.name}': {what} in {self.text!r}")

    def peek(self) -> str | None:
        return self.tokens[self.pos][0] if self.pos < len(self.tokens) else None

    def take(self) -> tuple[str, str]:
        token = self.tokens[self.pos]
        self.pos += 1
        return token

    def parse(self):
        if not self.tokens:
            raise self.error("empty expression")
        node = self.parse_or()
        if self.pos != len(self.tokens):
            raise self.error(f"unexpected '{self.tokens[self.pos][1]}'")
        return node

    def parse_or(self):
        nodes = [self.parse_and()]
        while self.peek() == "OR":
            self.take()
            nodes.append(self.parse_and())
        return nodes[0] if len(nodes) == 1 else Or(tuple(nodes))

    def parse_and(self):
        nodes = [self.parse_unary()]
        while self.peek() in ("AND", "NOT", "(", "word", "phrase"):
            if self.peek() == "AND":
                self.take()
            nodes.append(self.parse_unary())
        return nodes[0] if len(nodes) == 1 else And(tuple(nodes))

    def parse_unary(self):
        kind = self.peek()
        if kind in ("NOT", "("):
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise self.error(f"nested deeper than {MAX_DEPTH}")
        if kind == "NOT":
            self.take()
            node = Not(self.parse_unary())
            self.depth -= 1
            return node
        if kind == "(":
            self.take()
            node = self.parse_or()
            self.depth -= 1
            if self.peek() != ")":
                raise self.error("missing ')'")
            self.take()
            return node
        if kind in ("word", "phrase"):
            self.terms += 1
            if self.terms > MAX_TERMS:
                raise self.error(f"more than {MAX_TERMS} terms")
            _, value = self.take()
            return self.term(value, kind == "phrase")
        raise self.error("a term is missing" if kind is None else f"unexpected '{self.tokens[self.pos][1]}'")

    def term(self, value: str, phrase: bool):
        if self.field.kind == "number":
            m = re.fullmatch(r"(>=|<=|>|<|=)?(\d{1,15})", value)
            if not m:
                raise self.error(f"'{value}' is not a number")
            op = m.group(1) or "="
            return Compare(op, int(m.group(2)))
        if self.field.name == "message-id":
            value = value.strip("<>")
        if self.field.kind == "keyword" and self.field.name != "recipient" and not phrase:
            value = value.lower() if self.field.name in ("event", "severity") else value
        return Term(value, phrase)


def parse(name: str, text: str):
    """Parse one filter value for field `name`; raise FilterError if it is malformed."""
    field = FIELDS.get(name)
    if field is None:
        raise FilterError(f"'{name}' is not a filter field")
    if len(text) > MAX_EXPRESSION:
        raise FilterError(f"filter expression for '{name}' is longer than {MAX_EXPRESSION} characters")
    if _UNSTORABLE.search(text):  # Postgres refuses NUL in text; a lone surrogate is not UTF-8
        raise FilterError(f"filter expression for '{name}' contains a NUL character or a lone surrogate")
    return _Parser(field, text).parse()


def parse_values(name: str, values: list[str]):
    """Several values of one parameter (`event=a&event=b`) mean either of them."""
    nodes = [parse(name, v) for v in values if v.strip()]
    if not nodes:
        raise FilterError(f"filter '{name}' is empty")
    return nodes[0] if len(nodes) == 1 else Or(tuple(nodes))


# SQL ----------------------------------------------------------------------------------------------
_CMP = {"=": "=", ">": ">", ">=": ">=", "<": "<", "<=": "<="}


def _word_regex_pg(value: str) -> str:
    escaped = re.sub(r"(\W)", r"\\\1", value)
    return f"(^|[^[:alnum:]_]){escaped}($|[^[:alnum:]_])"


def to_sql(name: str, node) -> tuple[str, list]:
    """Compile a parsed filter to a SQL condition with %s placeholders and its arguments."""
    field = FIELDS[name]
    col = field.column
    if isinstance(node, Or) and all(isinstance(n, Term) for n in node.nodes) and field.kind == "keyword":
        return f"{col} = ANY(%s)", [[n.value for n in node.nodes]]
    if isinstance(node, Or | And):
        parts = [to_sql(name, n) for n in node.nodes]
        joiner = " OR " if isinstance(node, Or) else " AND "
        return "(" + joiner.join(p[0] for p in parts) + ")", [a for p in parts for a in p[1]]
    if isinstance(node, Not):
        sql, args = to_sql(name, node.node)
        return f"({sql}) IS NOT TRUE", args
    if isinstance(node, Compare):
        return f"{col} {_CMP[node.op]} %s", [node.number]
    assert isinstance(node, Term)
    if field.kind == "keyword":
        return f"{col} = %s", [node.value]
    if field.kind == "tags":
        return f"{col} @> ARRAY[%s]::text[]", [node.value]
    if field.kind == "attachment":
        return f"{col} @> jsonb_build_array(jsonb_build_object('filename', %s::text))", [node.value]
    if field.kind == "member":
        return f"{col} @> jsonb_build_array(%s::text)", [node.value]
    if node.phrase:
        return f"{col} ILIKE %s", [f"%{like_escape(node.value)}%"]
    return f"{col} ~* %s", [_word_regex_pg(node.value)]


# Python (live stream) ------------------------------------------------------------------------------
def _value(name: str, data: dict):
    headers = (data.get("message") or {}).get("headers") or {}
    if name == "message-id":
        return (headers.get("message-id") or "").strip("<>")
    if name == "from":
        return headers.get("from") or ""
    if name == "subject":
        return headers.get("subject") or ""
    if name == "tags":
        return data.get("tags") or []
    if name == "size":
        return (data.get("message") or {}).get("size")
    if name in ("to", "list"):
        return headers.get("to") or ""
    if name == "attachment":
        return [a.get("filename") for a in (data.get("message") or {}).get("attachments") or [] if isinstance(a, dict)]
    if name == "recipients":
        return (data.get("message") or {}).get("recipients") or []
    return data.get(name)


def matches(name: str, node, data: dict) -> bool:
    """Whether an event item satisfies a parsed filter (the Python twin of to_sql)."""
    field = FIELDS[name]
    if isinstance(node, Or):
        return any(matches(name, n, data) for n in node.nodes)
    if isinstance(node, And):
        return all(matches(name, n, data) for n in node.nodes)
    if isinstance(node, Not):
        return not matches(name, node.node, data)
    value = _value(name, data)
    if isinstance(node, Compare):
        if value is None:
            return False
        v = int(value)
        return {"=": v == node.number, ">": v > node.number, ">=": v >= node.number,
                "<": v < node.number, "<=": v <= node.number}[node.op]
    if field.kind == "keyword":
        return value == node.value
    if field.kind in ("tags", "attachment", "member"):
        return node.value in value
    text = (value or "").lower()
    if node.phrase:
        return node.value.lower() in text
    return re.search(rf"(?:^|[^\w]){re.escape(node.value.lower())}(?:$|[^\w])", text) is not None
