"""CPU of issue 17's additions to the accept path (items 5 and 7), against the same path without them,
in one process, interleaved (A B B A A B ...) so the shared machine's noise hits both alike:

- from_mime (messages.mime and SMTP): + reading the attachments from the parts' headers
  (compose.mime_attachments), for a ~5 KB message without attachments and a ~1 MB one with three;
- compose (the send API's form): + the o:/t: option-name check and the h:Message-Id lookup.

    .venv/bin/python bench/intake_additions.py [--rounds 7] [--n 2000]

Prints µs per message, with and without, and their ratio (median over rounds). The unique index of
h:Message-Id costs nothing here: it is checked inside the accept's existing insert (no round trip).
"""

from __future__ import annotations

import argparse
import statistics
import time
from email.message import EmailMessage

from envoi.mta import compose

DOMAIN = "bench.example.test"


def small_mime() -> bytes:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = f"s@{DOMAIN}", "r@dest.test", "hello"
    msg.set_content("Hello,\n\n" + "the body of a transactional message. " * 100)
    msg.add_alternative("<p>" + "the body of a transactional message. " * 100 + "</p>", subtype="html")
    return msg.as_bytes()


def big_mime() -> bytes:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = f"s@{DOMAIN}", "r@dest.test", "files"
    msg.set_content("see attached")
    for i in range(3):
        msg.add_attachment(bytes(range(256)) * 1300, maintype="application", subtype="pdf", filename=f"f{i}.pdf")
    return msg.as_bytes()


FIELDS = {"from": [f"s@{DOMAIN}"], "to": ["r@dest.test"], "subject": ["hello"], "text": ["body " * 200],
          "o:tag": ["a", "b"], "o:tracking": ["yes"], "v:order": ["42"], "h:Reply-To": ["x@dest.test"]}


def per_message(fn, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--n", type=int, default=2000)
    args = parser.parse_args()
    small, big = small_mime(), big_mime()
    real = compose.mime_attachments, compose.check_option_names, compose.given_message_id
    cases = {
        "from_mime, 5 KB, no attachment": lambda: compose.from_mime(DOMAIN, small, ["r@dest.test"], {}, "smtp"),
        "from_mime, 1 MB, 3 attachments": lambda: compose.from_mime(DOMAIN, big, ["r@dest.test"], {}, "smtp"),
        "compose (send API form)": lambda: compose.compose(DOMAIN, FIELDS, [], []),
    }
    for name, fn in cases.items():
        n = args.n if "1 MB" not in name else max(50, args.n // 40)
        with_, without = [], []
        for round_ in range(args.rounds * 2):  # A B, B A, A B, ...: neither side always runs first
            if (round_ % 4) in (0, 3):
                with_.append(per_message(fn, n))
                continue
            compose.mime_attachments = lambda mime, head: []
            compose.check_option_names = compose.given_message_id = lambda fields: None
            try:
                without.append(per_message(fn, n))
            finally:
                compose.mime_attachments, compose.check_option_names, compose.given_message_id = real
        a, b = statistics.median(with_), statistics.median(without)
        print(f"{name:34s} with {a:8.1f} µs  without {b:8.1f} µs  ratio {a / b:5.3f}")


if __name__ == "__main__":
    main()
