"""The templates API (/v3/{domain}/templates, /v4/templates) through the official `mailgun` SDK, over a
real HTTP server; limits, bad input and tenant isolation through the in-process client."""

from __future__ import annotations

import pytest
from mailgun.client import Client

from envoi.api.app import create_app
from envoi.templates import service
from tests.conftest import basic
from tests.support.api import FORM, post_form
from tests.support.events import AppServer

TEMPLATE = "<p>Hello {{name}}</p>"


@pytest.fixture
def sdk(settings, services, api_key):
    with AppServer(create_app(settings, services)) as srv:
        yield Client(auth=("api", api_key), api_url=srv.url)


def test_sdk_manages_domain_templates_and_versions(sdk, domain, db):
    d = domain["name"]
    created = sdk.templates.create(data={"name": "Welcome", "description": "first", "template": TEMPLATE,
                                         "tag": "v1", "comment": "initial"}, domain=d)
    assert created.status_code == 200, created.text
    body = created.json()
    assert body["message"] == "template has been stored"
    assert body["template"]["name"] == "welcome"  # stored lower case, as Mailgun
    assert body["template"]["version"]["tag"] == "v1" and body["template"]["version"]["active"] is True

    got = sdk.templates.get(domain=d, template_name="welcome", filters={"active": "yes"}).json()["template"]
    assert got["version"]["template"] == TEMPLATE and got["version"]["engine"] == "handlebars"
    assert "version" not in sdk.templates.get(domain=d, template_name="welcome").json()["template"]

    assert sdk.templates.put(data={"description": "second"}, domain=d, template_name="welcome").status_code == 200
    assert sdk.templates.get(domain=d, template_name="welcome").json()["template"]["description"] == "second"

    # versions: create (not active), list, make active, copy, delete
    v2 = sdk.templates.create(data={"template": "<p>Hi {{name}}</p>", "tag": "v2", "comment": "shorter"},
                              domain=d, template_name="welcome", versions=True)
    assert v2.status_code == 200, v2.text
    assert v2.json()["template"]["version"]["active"] is False
    listed = sdk.templates.get(domain=d, template_name="welcome", versions=True).json()
    assert [(v["tag"], v["active"]) for v in listed["template"]["versions"]] == [("v1", True), ("v2", False)]
    assert "paging" in listed
    upd = sdk.templates.put(data={"active": "yes", "comment": "now live"}, domain=d, template_name="welcome",
                            versions=True, tag="v2")
    assert upd.status_code == 200, upd.text
    one = sdk.templates.get(domain=d, template_name="welcome", versions=True, tag="v2").json()["template"]["version"]
    assert one["active"] is True and one["comment"] == "now live" and one["template"] == "<p>Hi {{name}}</p>"
    active = sdk.templates.get(domain=d, template_name="welcome", filters={"active": "yes"}).json()["template"]
    assert active["version"]["tag"] == "v2"  # one active version: activating v2 deactivated v1
    copied = sdk.templates.put(domain=d, template_name="welcome", versions=True, tag="v2", copy=True,
                               new_tag="v3")
    assert copied.status_code == 200, copied.text
    assert copied.json()["version"]["tag"] == "v3"
    assert sdk.templates.delete(domain=d, template_name="welcome", versions=True, tag="v1").status_code == 200
    tags = [v["tag"] for v in sdk.templates.get(domain=d, template_name="welcome",
                                                 versions=True).json()["template"]["versions"]]
    assert tags == ["v2", "v3"]

    # delete one, delete all
    assert sdk.templates.delete(domain=d, template_name="welcome").json()["message"] == "template has been deleted"
    assert sdk.templates.get(domain=d, template_name="welcome").status_code == 404
    for name in ("a", "b"):
        sdk.templates.create(data={"name": name}, domain=d)
    assert sdk.templates.delete(domain=d).status_code == 200
    assert db.execute("SELECT count(*) AS n FROM templates WHERE domain_id = %s", (domain["id"],)).fetchone()["n"] == 0


def test_sdk_pages_templates_and_manages_account_templates(sdk, domain, account, db):
    d = domain["name"]
    for i in range(5):
        assert sdk.templates.create(data={"name": f"t{i}"}, domain=d).status_code == 200
    first = sdk.templates.get(domain=d, filters={"limit": 2}).json()
    assert [t["name"] for t in first["items"]] == ["t0", "t1"]
    assert "page=next" in first["paging"]["next"] and "p=t1" in first["paging"]["next"]
    second = sdk.templates.get(domain=d, filters={"limit": 2, "page": "next", "p": "t1"}).json()
    assert [t["name"] for t in second["items"]] == ["t2", "t3"]
    back = sdk.templates.get(domain=d, filters={"limit": 2, "page": "prev", "p": "t2"}).json()
    assert [t["name"] for t in back["items"]] == ["t0", "t1"]
    last = sdk.templates.get(domain=d, filters={"limit": 2, "page": "last"}).json()
    assert [t["name"] for t in last["items"]] == ["t3", "t4"]

    # account templates: /v4/templates (the SDK without a domain)
    made = sdk.templates.create(data={"name": "shared", "template": TEMPLATE})
    assert made.status_code == 200, made.text
    assert [t["name"] for t in sdk.templates.get().json()["items"]] == ["shared"]
    row = db.execute("SELECT account_id, domain_id FROM templates WHERE name = 'shared' AND account_id = %s",
                     (account["id"],)).fetchone()
    assert row["domain_id"] is None
    assert sdk.templates.get(template_name="shared", filters={"active": "yes"}).json()["template"]["version"][
        "template"] == TEMPLATE
    assert sdk.templates.delete(template_name="shared").status_code == 200


@pytest.mark.parametrize("fields, status, message", [
    ({}, 400, "Missing mandatory parameter: name"),
    ({"name": "bad name!"}, 400, "name is not valid"),
    ({"name": "x", "template": "{{oops}"}, 400, "template is not valid handlebars"),
    ({"name": "x", "template": "{{#if a}}never closed"}, 400, "{{#if}} is not closed"),
    ({"name": "x", "template": "a" * (service.MAX_CONTENT + 1)}, 400, "template is too long"),
    ({"name": "x", "template": "ok", "headers": "[1]"}, 400, "headers must be a JSON object"),
    ({"name": "x", "template": "ok", "headers": '{"Subject": "a\\r\\nBcc: e@x.test"}'}, 400, "control characters"),
    ({"name": "x", "template": "ok", "engine": "mustache"}, 400, "engine 'mustache' is not supported"),
])
def test_bad_input_is_refused_and_nothing_is_stored(client, api_key, domain, db, fields, status, message):
    resp = post_form(client, f"/v3/{domain['name']}/templates", api_key, fields)
    assert resp.status_code == status and message in resp.json["message"]
    assert db.execute("SELECT count(*) AS n FROM templates WHERE domain_id = %s", (domain["id"],)).fetchone()["n"] == 0


def test_limits_duplicates_and_missing(client, api_key, domain, db, monkeypatch):
    url = f"/v3/{domain['name']}/templates"
    assert post_form(client, url, api_key, {"name": "dup"}).status_code == 200
    dup = post_form(client, url, api_key, {"name": "DUP"})
    assert dup.status_code == 409 and "already exists" in dup.json["message"]
    monkeypatch.setattr(service, "MAX_TEMPLATES", 1)
    assert post_form(client, url, api_key, {"name": "other"}).status_code == 400
    monkeypatch.setattr(service, "MAX_VERSIONS", 2)
    for tag in ("a", "b"):
        assert post_form(client, f"{url}/dup/versions", api_key, {"tag": tag, "template": "x"}).status_code == 200
    over = post_form(client, f"{url}/dup/versions", api_key, {"tag": "c", "template": "x"})
    assert over.status_code == 400 and "version limit" in over.json["message"]
    assert client.simulate_get(f"{url}/nope", headers=basic(api_key)).json == {"message": "template not found"}
    assert client.simulate_get(f"{url}/dup/versions/zz", headers=basic(api_key)).status_code == 404


def test_tenant_isolation(client, services, api_key, domain, db):
    """Another account's key reaches neither this account's domain templates nor its account templates."""
    url = f"/v3/{domain['name']}/templates"
    assert post_form(client, url, api_key, {"name": "secret", "template": "s3cret {{x}}"}).status_code == 200
    assert post_form(client, "/v4/templates", api_key, {"name": "acct-secret", "template": "z"}).status_code == 200
    other = services.accounts.create_account("other-tenant")
    services.accounts.add_domain(other["id"], f"other-{domain['name']}", dkim_key_size=1024, verified=True)
    _, other_key = services.accounts.create_key(other["id"], "admin")
    h = basic(other_key)
    assert client.simulate_get(url, headers=h).status_code == 404
    assert client.simulate_get(f"{url}/secret", headers=h).status_code == 404
    assert client.simulate_delete(url, headers=h).status_code == 404
    assert client.simulate_get("/v4/templates", headers=h).json["items"] == []
    assert client.simulate_get("/v4/templates/acct-secret", headers=h).status_code == 404
    assert client.simulate_delete("/v4/templates", headers=h).status_code == 200  # its own (none)
    # ...and a send of the other account never renders this account's template
    sent = client.simulate_post(f"/v3/other-{domain['name']}/messages", headers={**FORM, **h},
                                body=f"from=a@other-{domain['name']}&to=r@dest.test&subject=x&template=acct-secret")
    assert sent.status_code == 400 and sent.json["message"] == "template 'acct-secret' not found"
    assert db.execute("SELECT count(*) AS n FROM templates WHERE account_id = %s",
                      (domain["account_id"],)).fetchone()["n"] == 2


def test_compiled_templates_are_not_kept_as_modules():
    """pybars' Compiler.compile() registers each template in sys.modules for good; Envoi's cache must be
    the only thing holding a compiled template, so an evicted one is freed."""
    import sys

    from envoi.templates import render

    before = len(sys.modules)
    for i in range(20):
        assert render.render(f"<p>{{{{x}}}} {i}</p>", {"x": "<b>"}) == f"<p>&lt;b&gt; {i}</p>"
    assert len(sys.modules) == before
