"""The header block of a caller-built message, read into exactly what the email package's parser makes.

compose.parse_head gave every /messages.mime and SMTP message to email's HeaderParser (compat32): a
feed parser that pushes the text through a line buffer, matches each line and builds each field
from a list of lines, about a third of the SMTP server's CPU per message with the rest of
from_mime. A header block as mail software writes it — every line a field ("name:" then its value)
or the continuation of one (a leading space or tab), CRLF throughout — is read here by two regular
expressions into the same compat32 Message: the same (name, value) pairs in the same order, each as
Compat32.header_source_parse makes it (the value without the white space after the colon, folded
lines kept, the final CRLF dropped), with the same empty payload.

Anything else returns None and the caller uses the parser, which reads those blocks its own way and
notes defects: a first line that is a continuation, a line that is not a field (no colon, a name
with a space or outside RFC 5322 ftext, an empty name), a "From " envelope line, a bare CR or LF.
tests/unit/mta/test_mime_head.py compares both readers on generated header blocks, pair for pair.
"""

from __future__ import annotations

import email.policy
import re
from email.message import Message

# The parser's header line (email.feedparser.headerRE) with a name of at least one character; a
# value runs to the CRLF, continuation lines start with a space or a tab.
_NAME = r"[!-9;-~]+"
_VALUE = r"[^\r\n]*(?:\r\n[ \t][^\r\n]*)*"
_BLOCK = re.compile(rf"(?:{_NAME}:{_VALUE}\r\n)+")
# [ \t]* takes what header_source_parse's lstrip(" \t") removes; the CRLF it rstrips is left out.
_FIELD = re.compile(rf"({_NAME}):[ \t]*({_VALUE})\r\n")


def parse(head: str) -> Message | None:
    """The Message that email.parser.HeaderParser(policy=compat32).parsestr(head + "\\r\\n") gives, for
    a header block of fields only (each line ending in CRLF, without the blank line after it); None
    when the block has anything the parser would read differently or note as a defect."""
    if _BLOCK.fullmatch(head) is None:
        return None
    msg = Message(policy=email.policy.compat32)
    for name, value in _FIELD.findall(head):
        msg.set_raw(name, value)
    msg.set_payload("")
    return msg
