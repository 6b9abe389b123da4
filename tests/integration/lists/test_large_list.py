"""A send to a list of 10,000 members: one members query, one accept, every member's copy at the sink."""

from __future__ import annotations

import re
import time

import pytest

from tests.support.api import send_form

N = 10_000


@pytest.mark.timeout(600)
def test_a_10000_member_list_arrives_whole(client, api_key, services, account, domain, sink, relay, db):
    address = f"everyone@{domain['name']}"
    services.lists.create(account["id"], {"address": address})
    for start in range(0, N, 1000):
        services.lists.add_members_json(account["id"], address, [
            {"address": f"m{i:05d}@dest.test", "name": f"Member {i}", "vars": {"n": i}}
            for i in range(start, start + 1000)], None)
    started = time.monotonic()
    resp = send_form(client, api_key, domain, to=address, subject="Hello %recipient.name%",
                     text="Number %recipient.n%. Leave: %mailing_list_unsubscribe_url%")
    answered = time.monotonic() - started
    assert resp.status_code == 200, resp.text
    message_id = resp.json["id"].strip("<>")
    assert db.execute("SELECT count(*) AS n FROM recipients r JOIN messages m ON m.id = r.message_pk"
                      " WHERE m.message_id = %s", (message_id,)).fetchone()["n"] == N
    deadline = time.monotonic() + 480
    got: dict[str, str] = {}
    while time.monotonic() < deadline:
        got = {m["rcpt_tos"][0]: m["data"] for m in sink.messages() if message_id in m["data"]}
        if len(got) == N:
            break
        time.sleep(1)
    delivered = time.monotonic() - started
    print(f"\n10,000 members: accepted in {answered:.2f} s ({N / answered:,.0f} members/s),"
          f" all at the sink after {delivered:.1f} s")
    assert len(got) == N
    for i in (0, 4321, N - 1):
        data = got[f"m{i:05d}@dest.test"]
        assert f"Subject: Hello Member {i}" in data and re.search(rf"Number {i}\. Leave: http://email\.[a-z0-9.-]+/l/", data)
    assert answered < 60
