"""Handlebars rendering with pybars3 (the only module that imports it), as Mailgun renders templates:
`{{var}}` (HTML-escaped), `{{{var}}}`, `{{#if}}`, `{{#unless}}`, `{{#each}}`, `{{#with}}` and Mailgun's
`{{#equal a b}}...{{else}}...{{/equal}}` helper.

Compiling is the costly step (pybars builds Python code from the source), so compiled templates are
cached by their source; rendering one per recipient is then a plain function call.
"""

from __future__ import annotations

import functools
import re
import threading

import pybars

from envoi.templates.errors import InvalidInput, RenderFailed

_compiler = pybars.Compiler()
_compile_lock = threading.Lock()  # pybars' compiler keeps state while it compiles


def _equal(this, options, left, right):
    """Mailgun's equal helper: the block when both sides are equal (compared as text, so 1 equals "1")."""
    same = left == right or (left is not None and right is not None and str(left) == str(right))
    return options["fn"](this) if same else options["inverse"](this)


HELPERS = {"equal": _equal}
_COMMENT = re.compile(r"\{\{!--.*?--\}\}|\{\{![^}]*\}\}", re.S)
_BLOCK = re.compile(r"\{\{~?\s*([#^/])\s*([^\s}~]+)")


@functools.lru_cache(maxsize=128)
def _compiled(source: str):
    # precompile (Python source) and exec it here rather than Compiler.compile(), which registers
    # every template as a module in sys.modules for good: evicted templates would never be freed.
    with _compile_lock:
        container = _compiler._generate_code(source)
    namespace: dict = {}
    exec(compile(container.full_code, "<envoi template>", "exec", dont_inherit=True), namespace)  # noqa: S102
    return namespace[container.name]


def check(source: str) -> None:
    """InvalidInput if the source is not a template pybars can compile (refused when it is stored)."""
    try:
        _compiled(source)
    except Exception as ex:  # pybars raises PybarsError, PyMeta's ParseError and others
        raise InvalidInput(f"template is not valid handlebars: {_short(ex)}") from ex
    # pybars renders an unclosed block as nothing at all: refused here, as Handlebars.js refuses it.
    opened: list[str] = []
    for kind, name in _BLOCK.findall(_COMMENT.sub("", source)):
        if kind != "/":
            opened.append(name)
        elif not opened or opened.pop() != name:
            raise InvalidInput(f"template is not valid handlebars: {{{{/{name[:50]}}}}} does not close an open block")
    if opened:
        raise InvalidInput(f"template is not valid handlebars: {{{{#{opened[-1][:50]}}}}} is not closed")


def render(source: str, data: dict) -> str:
    """The template filled with data; RenderFailed (400 at accept) if it cannot be."""
    try:
        return str(_compiled(source)(data, helpers=HELPERS))
    except Exception as ex:
        raise RenderFailed(f"template rendering failed: {_short(ex)}") from ex


def _short(ex: Exception) -> str:
    return " ".join(str(ex).split())[:200] or type(ex).__name__
