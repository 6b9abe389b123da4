"""Sending with a stored template: through the mailgun SDK and over SMTP submission, delivered by the real
relay to the sink; per-recipient rendering in a batch; refusals at accept; hostile values stay in bodies."""

from __future__ import annotations

import email
import email.policy
import json

import pytest
from mailgun.client import Client

from envoi.api.app import create_app
from tests.support.api import post_form
from tests.support.events import AppServer
from tests.support.submission import mime, starttls_client

ORDER = ("<h1>Hello {{name}}</h1>{{#if vip}}<p>VIP</p>{{/if}}<ul>{{#each items}}<li>{{this}}</li>{{/each}}</ul>"
         "{{#equal plan \"pro\"}}<p>Pro plan</p>{{else}}<p>Free plan</p>{{/equal}}")


def parsed(sink_message: dict) -> email.message.EmailMessage:
    return email.message_from_string(sink_message["data"], policy=email.policy.default)


def part(msg: email.message.EmailMessage, subtype: str) -> str | None:
    found = msg.get_body((subtype,))
    return found.get_content() if found is not None else None


def store(client, api_key, domain, name: str, content: str, tag: str = "v1") -> None:
    resp = post_form(client, f"/v3/{domain['name']}/templates", api_key,
                     {"name": name, "template": content, "tag": tag})
    assert resp.status_code == 200, resp.json


def test_sdk_send_renders_the_stored_template(settings, services, api_key, domain, client, sink, relay):
    store(client, api_key, domain, "order", ORDER)
    with AppServer(create_app(settings, services)) as srv:
        sdk = Client(auth=("api", api_key), api_url=srv.url)
        resp = sdk.messages.create(domain=domain["name"], data={
            "from": f"shop@{domain['name']}", "to": "buyer@dest.test", "subject": "Your order",
            "template": "order", "t:text": "yes",
            "t:variables": json.dumps({"name": "Ana", "vip": True, "items": ["pen", "ink"], "plan": "pro"})})
        assert resp.status_code == 200, resp.text
    [received] = sink.wait_for(1)
    msg = parsed(received)
    html = part(msg, "html")
    assert "<h1>Hello Ana</h1>" in html and "<p>VIP</p>" in html and "<li>pen</li><li>ink</li>" in html
    assert "<p>Pro plan</p>" in html and "Free plan" not in html
    assert "Hello Ana" in part(msg, "plain")  # t:text=yes: a text part too
    assert msg["Subject"] == "Your order"


def test_version_and_v_variables(client, api_key, domain, sink, relay, db):
    store(client, api_key, domain, "greet", "<p>v1 {{name}}</p>")
    assert post_form(client, f"/v3/{domain['name']}/templates/greet/versions", api_key,
                     {"tag": "v2", "template": "<p>v2 {{name}} {{plan}}</p>"}).status_code == 200
    resp = post_form(client, f"/v3/{domain['name']}/messages", api_key, {
        "from": f"s@{domain['name']}", "to": "a@dest.test", "subject": "x", "template": "greet", "t:version": "v2",
        "v:name": "Bo", "h:X-Mailgun-Variables": json.dumps({"plan": "gold"})})
    assert resp.status_code == 200, resp.json
    [received] = sink.wait_for(1)
    assert "<p>v2 Bo gold</p>" in part(parsed(received), "html")
    event = db.execute("SELECT data FROM events WHERE message_id = %s AND event = 'accepted'",
                       (resp.json["id"].strip("<>"),)).fetchone()["data"]
    assert event["template"] == {"name": "greet", "version": "v2"}  # as Mailgun's events name it


def test_the_versions_headers_fill_what_the_message_leaves_out(client, api_key, domain, sink, relay):
    resp = post_form(client, f"/v3/{domain['name']}/templates", api_key, {
        "name": "with-headers", "template": "<p>{{n}}</p>",
        "headers": json.dumps({"From": f"Shop <shop@{domain['name']}>", "Subject": "From the template",
                               "Reply-To": "help@dest.test"})})
    assert resp.status_code == 200, resp.json
    for subject in (None, "The message's own"):
        fields = {"to": "a@dest.test", "template": "with-headers", "t:variables": '{"n": 1}'}
        if subject:
            fields["subject"] = subject
        sent = post_form(client, f"/v3/{domain['name']}/messages", api_key, fields)
        assert sent.status_code == 200, sent.json
    got = {msg["Subject"]: msg for msg in (parsed(m) for m in sink.wait_for(2))}
    assert set(got) == {"From the template", "The message's own"}  # the message's headers win over the template's
    filled = got["From the template"]
    assert filled["From"] == f"Shop <shop@{domain['name']}>" and filled["Reply-To"] == "help@dest.test"


def test_batch_renders_each_recipient_with_its_own_variables(client, api_key, domain, sink, relay):
    """recipient-variables: each copy is rendered with its recipient's values (directly, and through
    v: values holding %recipient.KEY%, as django-anymail sends merge_data)."""
    store(client, api_key, domain, "batch", "<p>Dear {{first}}, code {{code}}, for %recipient%</p>")
    people = {"ann@dest.test": {"first": "Ann", "code": "A-1"}, "bob@dest.test": {"first": "Bob", "code": "B-2"},
              "cy@dest.test": {"first": "Cy", "code": "C-3"}}
    resp = post_form(client, f"/v3/{domain['name']}/messages", api_key, {
        "from": f"s@{domain['name']}", "to": list(people), "subject": "Hi %recipient.first%", "template": "batch",
        "recipient-variables": json.dumps({a: {"first": v["first"], "c": v["code"]} for a, v in people.items()}),
        "v:code": "%recipient.c%"})
    assert resp.status_code == 200, resp.json
    received = sink.wait_for(3)
    assert len(received) == 3
    for message in received:
        [rcpt] = message["rcpt_tos"]
        msg = parsed(message)
        expected = people[rcpt]
        assert f"<p>Dear {expected['first']}, code {expected['code']}, for {rcpt}</p>" in part(msg, "html")
        assert msg["To"] == rcpt and msg["Subject"] == f"Hi {expected['first']}"


def test_hostile_content_and_variables_never_become_headers(client, api_key, domain, sink, relay):
    store(client, api_key, domain, "hostile", "Bcc: evil@attacker.test\r\nX-Injected: 1\r\n\r\n<p>{{v}}</p>")
    evil = "x\r\nBcc: evil2@attacker.test\r\nX-Injected-2: yes"
    resp = post_form(client, f"/v3/{domain['name']}/messages", api_key, {
        "from": f"s@{domain['name']}", "to": ["a@dest.test", "b@dest.test"], "subject": "x", "template": "hostile",
        "t:variables": json.dumps({"v": evil}), "v:v": evil,
        "recipient-variables": json.dumps({"a@dest.test": {"v": evil}, "b@dest.test": {}})})
    assert resp.status_code == 200, resp.json
    received = sink.wait_for(2)
    assert sorted(r for m in received for r in m["rcpt_tos"]) == ["a@dest.test", "b@dest.test"]  # nobody else
    for message in received:
        msg = parsed(message)
        assert msg["Bcc"] is None and msg["X-Injected"] is None and msg["X-Injected-2"] is None
        assert "Bcc: evil@attacker.test" in part(msg, "html")  # the template's text stays body text


@pytest.mark.parametrize("fields, message", [
    ({"template": "nope"}, "template 'nope' not found"),
    ({"template": "known", "t:version": "v9"}, "template 'known' version 'v9' not found"),
    ({"template": "known", "html": "<p>x</p>"}, "Cannot specify both 'html' and 'template' parameters"),
    ({"template": "known", "t:variables": "{not json"}, "t:variables"),
    ({"template": "partial"}, "template rendering failed"),
])
def test_lookup_and_render_errors_are_400_at_accept(client, api_key, domain, db, fields, message):
    store(client, api_key, domain, "known", "<p>{{x}}</p>")
    store(client, api_key, domain, "partial", "<p>{{> missing}}</p>")
    resp = post_form(client, f"/v3/{domain['name']}/messages", api_key,
                     {"from": f"s@{domain['name']}", "to": "a@dest.test", "subject": "x", **fields})
    assert resp.status_code == 400 and message in resp.json["message"]
    assert db.execute("SELECT count(*) AS n FROM messages WHERE domain_id = %s", (domain["id"],)).fetchone()["n"] == 0


def test_smtp_template_headers_render_and_are_removed(server, client_ctx, login, domain, client, api_key, sink,
                                                      relay):
    store(client, api_key, domain, "smtp-t", "<p>Hi {{name}}, {{#equal n 2}}two{{/equal}}</p>")
    extra = ("X-Mailgun-Template-Name: smtp-t\r\nX-Mailgun-Template-Version: v1\r\n"
             'X-Mailgun-Template-Variables: {"name": "Sam", "n": 2}\r\n')
    with starttls_client(server, client_ctx, login) as c:
        c.sendmail(login, ["sam@dest.test"], mime(domain, subject="Over SMTP", extra=extra, body="ignored\r\n"))
    [received] = sink.wait_for(1)
    assert "x-mailgun-template" not in received["data"].lower()
    msg = parsed(received)
    assert "<p>Hi Sam, two</p>" in part(msg, "html") and msg["Subject"] == "Over SMTP"
    assert msg["X-Mailgun-Template-Variables"] is None and msg["X-Mailgun-Template-Name"] is None
    assert "ignored" not in received["data"]


def test_smtp_unknown_template_is_refused_at_data(server, client_ctx, login, domain, db):
    with starttls_client(server, client_ctx, login) as c:
        c.mail(login)
        c.rcpt("sam@dest.test")
        code, reply = c.data(mime(domain, extra="X-Mailgun-Template-Name: missing\r\n"))
    assert code == 550 and b"template 'missing' not found" in reply
    assert db.execute("SELECT count(*) AS n FROM messages WHERE domain_id = %s", (domain["id"],)).fetchone()["n"] == 0


def test_smtp_rendered_copies_over_the_size_limit_are_refused(server, login, domain, client, api_key, services):
    """The size limit is checked on the rendered copies, not only on what was submitted (a 200 KB limit
    here: the services' own is 25 MB)."""
    from envoi.accounts.service import Principal
    from envoi.mta.errors import MessageTooLarge
    from envoi.mta.templated import TemplateSending

    store(client, api_key, domain, "big", "<p>" + "x" * 90_000 + "{{n}}</p>")
    extra = 'X-Mailgun-Template-Name: big\r\nX-Mailgun-Recipient-Variables: {"r0@dest.test": {"n": 1}}\r\n'
    principal = Principal(None, domain["account_id"], "admin", domain=domain["name"])
    recipients = [f"r{i}@dest.test" for i in range(3)]  # 3 copies of ~90 KB
    draft = server.submission.compose(principal, mime(domain, extra=extra), recipients)
    assert draft.size < 10_000  # what was submitted is small
    with pytest.raises(MessageTooLarge, match="once the template is rendered"):
        TemplateSending(services.templates, max_bytes=200_000).render_submitted(domain, draft)
    rendered = TemplateSending(services.templates, max_bytes=400_000).render_submitted(domain, draft)
    assert len(rendered.copies) == 3 and rendered.size > 270_000


def test_account_template_serves_every_domain_and_a_domain_template_wins(client, api_key, domain, sink, relay):
    assert post_form(client, "/v4/templates", api_key, {"name": "shared", "template": "<p>account {{x}}</p>"}
                     ).status_code == 200
    fields = {"from": f"s@{domain['name']}", "to": "a@dest.test", "subject": "x", "template": "shared",
              "t:variables": '{"x": 1}'}
    assert post_form(client, f"/v3/{domain['name']}/messages", api_key, fields).status_code == 200
    [first] = sink.wait_for(1)
    assert "<p>account 1</p>" in part(parsed(first), "html")
    store(client, api_key, domain, "shared", "<p>domain {{x}}</p>")
    assert post_form(client, f"/v3/{domain['name']}/messages", api_key, fields).status_code == 200
    second = [m for m in sink.wait_for(2) if m["id"] != first["id"]][0]
    assert "<p>domain 1</p>" in part(parsed(second), "html")


def test_intake_renders_a_submitted_template_when_submission_does_not(settings, services, login, domain, client,
                                                                       api_key, db):
    """Intake's renderer is the backstop: a Submission built without template_sending still renders."""
    from envoi.accounts.service import Principal
    from envoi.mta.submission.server import Submission
    from tests.support.submission import messages_of, stored

    store(client, api_key, domain, "backstop", "<p>rendered by intake {{n}}</p>")
    submission = Submission.from_settings(settings, services.intake, services.accounts, services.redis, workers=1)
    try:
        principal = Principal(None, domain["account_id"], "admin", domain=domain["name"])
        extra = 'X-Mailgun-Template-Name: backstop\r\nX-Mailgun-Template-Variables: {"n": 7}\r\n'
        submission.submit(principal, mime(domain, extra=extra), ["z@dest.test"])
    finally:
        submission.close()
    [row] = messages_of(db, domain)
    body = stored(services, row).decode()
    assert "<p>rendered by intake 7</p>" in body and "X-Mailgun-Template" not in body
    assert row["options"]["template"] == {"name": "backstop", "version": "v1"}
