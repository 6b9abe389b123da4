"""Stored-template rendering per recipient: a 1,000-recipient batch with a 5 KB Handlebars template.

PYTHONPATH=. .venv/bin/python bench/template_render.py [rounds]

Measures, on one core and without the database: compiling the template once (pybars3, cached after),
rendering it for each recipient (envoi.mta.templated.SendTemplate.bodies: the data merge, pybars,
%recipient% fill-in), and the whole compose() of the batch (1,000 MIME copies, as the send API builds
them at accept), against the same batch sent with a 5 KB `html` field instead.
"""

from __future__ import annotations

import json
import statistics
import sys
import time

from envoi.mta import substitution
from envoi.mta.compose import compose
from envoi.mta.templated import SendTemplate
from envoi.templates import render

RECIPIENTS = 1000


def template_5kb() -> str:
    head = ("<html><body><h1>Hello {{first}} {{last}}</h1>{{#if vip}}<p class=\"vip\">Thank you for being"
            " a VIP customer since {{since}}.</p>{{else}}<p>Welcome back.</p>{{/if}}"
            "<table>{{#each items}}<tr><td>{{this.name}}</td><td>{{this.qty}}</td><td>{{this.price}}</td></tr>"
            "{{/each}}</table>{{#equal plan \"pro\"}}<p>Your Pro plan renews on {{renews}}.</p>{{else}}"
            "<p>Upgrade to Pro.</p>{{/equal}}")
    filler = ("<p>Our store ships worldwide; orders placed before noon leave the warehouse the same day, and"
              " every parcel is tracked from door to door. Questions? Reply to this message.</p>")
    body = head + filler * ((5000 - len(head)) // len(filler) + 1)
    return body + "<p>Order {{order}} for %recipient%</p></body></html>"


def recipients() -> dict[str, dict]:
    return {f"person{i}@dest.test": {"first": f"First{i}", "last": f"Last{i}", "vip": i % 3 == 0, "since": 2019,
                                     "plan": "pro" if i % 2 else "free", "renews": "2027-01-01",
                                     "order": f"A-{i:05d}",
                                     "items": [{"name": f"item {n}", "qty": n + 1, "price": f"{n * 3}.99"}
                                               for n in range(3)]}
            for i in range(RECIPIENTS)}


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    source = template_5kb()
    people = recipients()
    start = time.perf_counter()
    render.check(source)
    compile_ms = (time.perf_counter() - start) * 1000
    template = SendTemplate(source, text=False, data={"shop": "Envoi"})

    render_times, compose_times, plain_times = [], [], []
    for _ in range(rounds):
        start = time.perf_counter()
        for address, variables in people.items():
            template.bodies(substitution.Substituter(address, variables))
        render_times.append(time.perf_counter() - start)
        fields = {"from": ["shop@example.test"], "to": list(people), "subject": ["Your order %recipient.order%"],
                  "recipient-variables": [json.dumps(people)]}
        start = time.perf_counter()
        draft = compose("example.test", fields, [], [], template=template)
        compose_times.append(time.perf_counter() - start)
        assert len(draft.copies) == RECIPIENTS
        # The reference: the same batch with a 5 KB html field (%recipient% fill-in only, no template).
        plain = dict(fields, html=[template.bodies(substitution.Unchanged())[1]])
        start = time.perf_counter()
        compose("example.test", plain, [], [])
        plain_times.append(time.perf_counter() - start)
    size = len(source.encode())
    best_render, best_compose = min(render_times), min(compose_times)
    print(f"template {size} bytes, {RECIPIENTS} recipients, {rounds} rounds (best / median)")
    print(f"compile once: {compile_ms:.0f} ms")
    print(f"render per recipient: {best_render / RECIPIENTS * 1e6:.0f} / "
          f"{statistics.median(render_times) / RECIPIENTS * 1e6:.0f} us "
          f"({RECIPIENTS / best_render:,.0f} recipients/s)")
    print(f"compose the whole batch: {best_compose:.2f} / {statistics.median(compose_times):.2f} s "
          f"({best_compose / RECIPIENTS * 1e6:.0f} us per recipient)")
    best_plain = min(plain_times)
    print(f"compose the same batch with a 5 KB html field instead: {best_plain:.2f} / "
          f"{statistics.median(plain_times):.2f} s (the template adds {(best_compose - best_plain) / best_plain:.0%})")


if __name__ == "__main__":
    main()
