"""read_form() splits a small multipart body in memory (envoi.api.form_parts) and reads exactly what falcon's
multipart parser reads: the same fields, the same uploads (name, declared type, bytes), the same refusal
(status and message) for every generated body, well-formed or not."""

import random

import falcon
import falcon.testing
import pytest

from envoi.api import form_parts, forms
from envoi.api.errors import ApiError

_APP = falcon.App()
forms.configure(_APP)


def _read(body: bytes, content_type: str, fast: bool):
    env = falcon.testing.create_environ(path="/v3/d/messages", method="POST", body=body,
                                        headers={"Content-Type": content_type})
    old = forms.FAST_MULTIPART
    forms.FAST_MULTIPART = fast
    try:
        fields, files = forms.read_form(falcon.Request(env, options=_APP.req_options))
    except ApiError as ex:
        return ("refused", ex.status, ex.to_dict().get("message"))
    except Exception as ex:  # noqa: BLE001 - whatever falcon raises, the fast path must raise the same
        return ("raised", type(ex).__name__, str(ex))
    finally:
        forms.FAST_MULTIPART = old
    return fields, {name: [(u.filename, u.content_type, u.data, u.size) for u in ups] for name, ups in files.items()}


def _same(body: bytes, content_type: str):
    fast, slow = _read(body, content_type, True), _read(body, content_type, False)
    assert fast == slow, (body[:300], content_type)
    return fast


_NAMES = ["from", "to", "subject", "text", "html", "o:tag", "v:x", "h:X-A", "attachment", "inline", "message",
          "file", "", "na;me", 'qu"ote', "ünï", "a b", "name=", "to\\"]
_DISPOSITIONS = [
    'form-data; name="{n}"', "form-data; name={n}", 'form-data; name="{n}"; filename="{f}"',
    "form-data; name={n}; filename={f}", "form-data; name=\"{n}\"; filename*=utf-8''{f}",
    "form-data; name=\"{n}\"; filename*=latin-1''{f}", "form-data; name=\"{n}\"; filename*=nope''{f}",
    'form-data;name="{n}"', 'FORM-DATA; NAME="{n}"', 'form-data; name="{n}"; filename=""', "form-data",
    'form-data; name="{n}"; name="other"', 'form-data; name="{n}\\"x"', 'attachment; name="{n}"',
]
_FILES = ["invoice.pdf", "a b.txt", "%C3%A9t%C3%A9.txt", "x;y.png", 'q"t.txt', "", "ünï.txt", "%ZZ"]
_TYPES = ["text/plain", "text/plain; charset=utf-8", "text/plain; charset=latin-1", "text/plain; charset=nope",
          "application/pdf", "image/png; name=x", "TEXT/PLAIN", 'text/plain; charset="utf-8"', "", "text/html"]
_VALUES = [b"", b"x", b"Thank you\r\n" * 40, "é€ü".encode(), b"\xff\xfe bad utf-8", b"--", b"\r\n", b"a\r\n\r\nb",
           b"%PDF-1.4 bytes\n" * 20, b"--notb\r\n", b"tail\r"]


def _body(rnd: random.Random, boundary: str) -> bytes:
    dash = b"--" + boundary.encode()
    out = bytearray()
    if rnd.random() < 0.05:
        out += b"preamble text\r\n"
    for i in range(rnd.randint(0, 7)):
        out += dash if i == 0 or rnd.random() < 0.97 else b"--other"
        if rnd.random() < 0.03:
            out += b"  "  # transport padding
        out += b"\r\n"
        name = rnd.choice(_NAMES)
        lines = []
        if rnd.random() < 0.95:
            disp = rnd.choice(_DISPOSITIONS).format(n=name, f=rnd.choice(_FILES))
            key = rnd.choice(["Content-Disposition", "content-disposition", "CONTENT-DISPOSITION"])
            lines.append(f"{key}: {disp}".encode() if rnd.random() < 0.97 else f"{key}:{disp}".encode())
        if rnd.random() < 0.4:
            lines.append(f"Content-Type: {rnd.choice(_TYPES)}".encode())
        if rnd.random() < 0.05:
            lines.append(rnd.choice([b"Content-Transfer-Encoding: binary", b"Content-Transfer-Encoding: base64",
                                     b"X-Other: 1", b"garbage line", b"Content-Type: \xff\xfe"]))
        if rnd.random() < 0.02:
            lines.append(b"X-Long: " + b"h" * 5000)
        rnd.shuffle(lines)
        out += b"\r\n".join(lines) + b"\r\n\r\n"
        value = rnd.choice(_VALUES)
        if rnd.random() < 0.05:
            value += b"\r\n" + dash[:-1]  # almost the delimiter
        if rnd.random() < 0.05:
            value += dash + b"x"  # the boundary, not after CRLF
        out += value + b"\r\n"
    if rnd.random() < 0.95:
        out += dash + b"--"
        if rnd.random() < 0.8:
            out += b"\r\n"
        if rnd.random() < 0.05:
            out += b"epilogue"
    if rnd.random() < 0.05 and out:
        del out[rnd.randrange(len(out)):]  # cut short
    return bytes(out)


def test_fast_split_reads_what_falcon_reads_on_generated_bodies():
    rnd = random.Random(2026)
    outcomes = {"read": 0, "refused": 0, "raised": 0}
    for _ in range(6000):
        boundary = rnd.choice(["envoiwrkbench", "b", "----WebKitFormBoundary7MA4YWxkTrZu0gW", "x" * 70,
                               "a'()+_,-./:=?", "bound ary"])
        param = rnd.choice([f"boundary={boundary}", f'boundary="{boundary}"', f"boundary={boundary}  ",
                            f"charset=utf-8; boundary={boundary}"]) if " " not in boundary else f'boundary="{boundary}"'
        result = _same(_body(rnd, boundary), f"multipart/form-data; {param}")
        outcomes[result[0] if isinstance(result[0], str) else "read"] += 1
    # Both kinds of body were generated: the comparison covered acceptance and refusal.
    assert outcomes["read"] > 2000 and outcomes["refused"] > 200, outcomes


def test_the_benchmarks_form_with_an_attachment():
    body = (b'--bnd\r\nContent-Disposition: form-data; name="from"\r\n\r\nBench <b@d.test>\r\n'
            b'--bnd\r\nContent-Disposition: form-data; name="text"\r\n\r\nHello\r\nthere\r\n'
            b'--bnd\r\nContent-Disposition: form-data; name="attachment"; filename="invoice.pdf"\r\n'
            b"Content-Type: application/pdf\r\n\r\n%PDF-1.4\n\r\n--bnd--\r\n")
    fields, files = _same(body, "multipart/form-data; boundary=bnd")
    assert fields == {"from": ["Bench <b@d.test>"], "text": ["Hello\r\nthere"]}
    assert files == {"attachment": [("invoice.pdf", "application/pdf", b"%PDF-1.4\n", 9)]}
    parts = form_parts.split(body, b"bnd", _APP.req_options.media_handlers[falcon.MEDIA_MULTIPART].parse_options)
    assert parts is not None and len(parts) == 3  # the fast path itself read it


@pytest.mark.parametrize("count", [4000, 4001])
def test_the_part_count_limit_is_falcons(count):
    body = b"".join(b"--b\r\nContent-Disposition: form-data; name=o:tag\r\n\r\nt\r\n" for _ in range(count)) + b"--b--\r\n"
    assert len(body) <= forms.SPLIT_BYTES
    result = _same(body, "multipart/form-data; boundary=b")
    if count > 4000:
        assert result == ("refused", "400 Bad Request", "malformed multipart body: maximum number of form body parts exceeded")


def test_a_body_over_the_split_size_is_read_by_falcon_alike():
    big = b"y" * (forms.SPLIT_BYTES + 10)
    body = b'--b\r\nContent-Disposition: form-data; name="attachment"; filename="a.bin"\r\n\r\n' + big + b"\r\n--b--\r\n"
    fields, files = _same(body, "multipart/form-data; boundary=b")
    assert files["attachment"][0][2] == big
