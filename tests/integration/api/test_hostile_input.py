"""Hostile parameters on every endpoint: a clear 400 {"message": ...}, never a 5xx (issue 11, defect 9).

The sweep walks the app's own route table, so a new endpoint is covered without editing this file.
"""

from __future__ import annotations

import base64
import json
import re
from urllib.parse import quote, urlencode, urlsplit

import falcon
import pytest
from falcon import testing

from envoi.api.app import create_app
from tests.conftest import basic
from tests.support.events import record

FORM = {"Content-Type": "application/x-www-form-urlencoded"}

# One of each kind of value that broke a parser: huge, negative, not finite, empty, NUL, a lone
# surrogate (percent-encoded invalid UTF-8 in a URL, a \ud800 escape in JSON), long, far future, a stray %.
HOSTILE = ["1" + "0" * 30, "-1", "nan", "-inf", "", "a\x00b", "\ud800", "9" * 3000,
           "Thu, 01 Jan 9999 00:00:00 +0000", "%"]
SUPPRESSION = ["address", "code", "error", "created_at", "tag", "tags", "value", "reason"]
# What each route reads (query for GET, form for POST/PUT), one name at a time; every route also gets
# one request with every name of the table at once, so a route missing here is still swept.
READS = {
    "/v3/{domain}/events": ["begin", "end", "ascending", "limit", "event", "recipient", "message-id",
                            "severity", "tags", "from", "subject", "size"],
    "/v3/{domain}/events/{token}": ["limit", "begin"],
    "/v3/{domain}/stats/total": ["event", "start", "end", "duration", "resolution"],
    "/v3/{domain}/tags": ["limit", "page", "tag", "prefix"],
    "/v3/{domain}/tags/{tag}": ["description"],
    "/v3/{domain}/tags/{tag}/stats": ["event", "start", "end", "duration", "resolution"],
    "/v4/domains": ["limit", "skip", "state", "name", "dkim_key_size", "dkim_selector", "spam_action",
                    "web_prefix", "web_scheme", "smtp_password"],
    "/v3/domains/{domain}/credentials": ["login", "password"],
    "/v3/domains/{domain}/credentials/{login}": ["password"],
    "/v3/domains/{domain}/webhooks": ["id", "url"],
    "/v3/domains/{domain}/webhooks/{name}": ["url"],
    "/v3/domains/{domain}/webhooks/attempts": ["limit", "before", "url"],
    "/v3/domains/{domain}/webhooks/{name}/attempts": ["limit", "before", "url"],
    "/v4/domains/{domain}/webhooks": ["url", "event_types"],
    "/v3/domains/{domain}/tracking/{kind}": ["active", "html_footer", "text_footer"],
    "/v3/{domain}/messages": ["from", "to", "cc", "bcc", "subject", "text", "html", "amp-html", "o:tag",
                              "o:deliverytime", "o:testmode", "o:tracking", "o:sending-ip", "v:x", "h:X-Y",
                              "recipient-variables"],
    "/v3/{domain}/messages.mime": ["to", "message", "o:tag", "v:x", "o:deliverytime"],
    "/v3/ips": ["dedicated", "ip", "host", "helo", "ptr", "enabled"],
    "/v3/ips/audit": ["limit", "ip"],
    "/v3/ips/{ip}": ["host", "helo", "ptr", "enabled", "dedicated", "account_id"],
    "/v3/domains/{domain}/ips": ["pool_id", "ip"],
    "/v1/ip_pools": ["name", "description", "ips", "ip", "account_id"],
    "/v1/ip_pools/{pool_id}": ["name", "description", "add_ip", "remove_ip", "ip", "pool_id"],
    "/v3/ip_warmups/{ip}": ["plan"],
    **{f"{base}{path}": names for base in ("/v3/{domain}/templates", "/v4/templates") for path, names in (
        ("", ["limit", "page", "p", "name", "description", "template", "tag", "comment", "headers"]),
        ("/{name}", ["active", "description"]),
        ("/{name}/versions", ["limit", "page", "p", "template", "tag", "comment", "active", "headers"]),
        ("/{name}/versions/{tag}", ["template", "comment", "active", "headers"]))},
    **{f"/v3/{{domain}}/{kind}{item}": (["limit", "page", "address"] if not item else []) + SUPPRESSION
       for kind in ("bounces", "unsubscribes", "complaints", "whitelists") for item in ("", "/{address}")},
}
ALL_NAMES = sorted({name for names in READS.values() for name in names})
OPERATOR_ROUTES = ("/v3/ips", "/v1/ip_pools", "/v3/ip_pools", "/v3/ip_warmups", "/v3/tls")


def routes(app: falcon.App) -> list[tuple[str, set[str]]]:
    found = []

    def walk(nodes):
        for node in nodes:
            if node.resource is not None and not node.uri_template.startswith("/dashboard"):
                # dashboard pages answer HTML: tests/integration/api/dashboard/ sweeps them
                methods = {m for m, responder in node.method_map.items()
                           if getattr(responder, "__self__", None) is node.resource}  # not falcon's 405s
                found.append((node.uri_template, methods))
            walk(node.children)

    walk(app._router._roots)
    return found


def token(obj) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")


def encode(value: str) -> str:
    return quote(value.encode("utf-8", "surrogatepass"), safe="%" if value == "%" else "")


@pytest.fixture
def world(services, client, account, domain, api_key, clean_ips):
    """A domain with an event, a suppression and a tag, and a real paging token for it. The operator's
    sweep creates IP pools in the region's inventory: clean_ips leaves none behind."""
    record(services, domain, "accepted", recipient="ann@one.test", tags=["t"])
    services.suppressions.add(domain, "bounces", {"address": ["ann@one.test"]})
    _, operator = services.accounts.create_key(None, "operator")
    page = client.simulate_get(f"/v3/{domain['name']}/events", headers=basic(api_key)).json
    yield {"domain": domain, "key": api_key, "operator": operator,
           "token": urlsplit(page["paging"]["next"]).path.rsplit("/", 1)[1]}
    with services.db.transaction() as conn:  # what the sweep queued must not reach a later test's relay
        conn.execute("DELETE FROM recipients WHERE domain_id = %s", (domain["id"],))


def path_values(world) -> dict[str, str]:
    return {"domain": world["domain"]["name"], "token": world["token"], "address": "ann@one.test",
            "storage_key": "k", "login": "postmaster", "ip": "127.0.0.9", "pool_id": "p", "name": "delivered",
            "tag": "t", "kind": "open", "message_id": "m@x.test"}


def fill(template: str, values: dict[str, str], override: dict[str, str] | None = None) -> str:
    def one(m):
        name = m.group(1)
        if override and name in override:
            return encode(override[name])
        return encode(values.get(name, "x"))

    return re.sub(r"{(\w+)}", one, template)


def base_fields(template: str, world) -> dict[str, str]:
    """A valid body for the POSTs whose first check would otherwise stop every hostile field."""
    name = world["domain"]["name"]
    if template.endswith("/messages"):
        return {"from": f"a@{name}", "to": "b@one.test", "subject": "s", "text": "t"}
    if template.endswith("/messages.mime"):
        return {"to": "b@one.test", "message": f"From: a@{name}\r\nSubject: s\r\n\r\nbody\r\n"}
    if re.search(r"/(bounces|unsubscribes|complaints|whitelists)$", template):
        return {"address": "c@one.test"}
    return {}


def check(resp, what: str, failures: list) -> None:
    if resp.status_code >= 500:
        failures.append(f"{what}: {resp.status_code} {resp.text[:200]}")
    elif resp.status_code >= 400:
        body = resp.json if resp.content_type and resp.content_type.startswith("application/json") else None
        if not (isinstance(body, dict) and isinstance(body.get("message"), str) and body["message"]):
            failures.append(f"{what}: {resp.status_code} without a JSON message: {resp.text[:200]}")


def requests(template: str):
    """Each hostile value in each name the route reads, then in every name at once."""
    for name in READS.get(template.replace("/v3/ip_pools", "/v1/ip_pools"), []):
        for value in HOSTILE:
            yield {name: value}
    for value in HOSTILE:
        yield dict.fromkeys(ALL_NAMES, value)


def shown(params: dict) -> str:
    return "all names" if len(params) > 1 else repr(params)[:40]


def sweep(client, world, kind: str) -> list[str]:
    failures: list[str] = []
    values = path_values(world)
    for template, methods in routes(client.app):
        if template.endswith("/live"):
            continue  # an event stream: a valid request never ends; its parameters are in the table below
        key = world["operator"] if template.startswith(OPERATOR_ROUTES) else world["key"]
        headers = basic(key)
        fields_in_path = re.findall(r"{(\w+)}", template)
        if kind == "path":
            for method in sorted(methods):
                for name in fields_in_path:
                    for value in HOSTILE:
                        path = fill(template, values, {name: value})
                        check(client.simulate_request(method, path, headers=headers),
                              f"{method} {template} {name}={value[:20]!r}", failures)
        elif kind == "query" and "GET" in methods:
            path = fill(template, values)
            for params in requests(template):
                query = urlencode(params, encoding="utf-8", errors="surrogatepass")
                check(client.simulate_get(path, query_string=query, headers=headers),
                      f"GET {template}?{shown(params)}", failures)
        elif kind == "form" and methods & {"POST", "PUT", "PATCH"}:
            path = fill(template, values)
            for method in sorted(methods & {"POST", "PUT", "PATCH"}):
                for params in requests(template):
                    body = urlencode({**base_fields(template, world), **params}, encoding="utf-8",
                                     errors="surrogatepass")
                    check(client.simulate_request(method, path, body=body, headers={**headers, **FORM}),
                          f"{method} {template} {shown(params)}", failures)
        elif kind == "json" and "POST" in methods:
            path = fill(template, values)
            for value in HOSTILE:
                for doc in ([{"address": value}], {"address": value}, value, [value], [{"address": "a@b.test",
                                                                                        "created_at": value}]):
                    body = json.dumps(doc)  # \ud800 travels as the JSON escape, as a client would send it
                    check(client.simulate_post(path, body=body, headers={**headers,
                                                                         "Content-Type": "application/json"}),
                          f"POST {template} json {body[:40]!r}", failures)
    return failures


@pytest.mark.parametrize("kind", ["path", "query", "form", "json"])
def test_no_endpoint_answers_5xx_to_hostile_parameters(client, world, kind):
    failures = sweep(client, world, kind)
    assert not failures, f"{len(failures)} requests failed:\n" + "\n".join(failures[:40])


Q = {"ascending": True, "limit": 10, "filters": {}}


@pytest.mark.parametrize(("path", "query"), [
    # forged paging tokens
    ("events/" + token({"q": Q, "c": [10**30, 1]}), None),
    ("events/" + token({"q": Q, "c": [-10**30, 1]}), None),
    ("events/" + token({"q": Q, "c": [0, 2**63]}), None),
    ("events/" + token({"q": Q, "c": [True, False]}), None),
    ("events/" + token({"q": dict(Q, begin=float("nan"))}), None),
    ("events/" + token({"q": dict(Q, begin=float("inf"))}), None),
    ("events/" + token({"q": dict(Q, end=-1e308)}), None),
    ("events/" + token({"q": dict(Q, limit="5")}), None),
    ("events/" + token({"q": dict(Q, limit=True)}), None),
    ("events/" + token({"q": dict(Q, filters={"event": [5]})}), None),
    ("events/" + token({"q": dict(Q, filters={"event": ["a\x00b"]})}), None),
    ("events/" + token({"q": dict(Q, filters={"subject": ["\ud800"]})}), None),
    ("events/" + token([]), None),
    ("events/not-base64!", None),
    # query parameters
    ("events", {"begin": "1e400"}),
    ("events", {"begin": "-1"}),
    ("events", {"end": "nan"}),
    ("events", {"end": "Thu, 01 Jan 9999 00:00:00 +0000"}),
    ("events", {"limit": "-1"}),
    ("events", {"limit": "1" + "0" * 30}),
    ("events", {"event": "a\x00b"}),
    ("events", {"recipient": "\x00"}),
    ("bounces", {"limit": "-1"}),
    ("bounces", {"page": "next", "address": "a\x00b"}),
    ("tags", {"prefix": "\x00"}),
    ("stats/total", {"event": "accepted", "start": "inf"}),
    ("stats/total", {"event": "accepted", "duration": "9" * 40 + "d"}),
    ("/v4/domains", {"skip": "1" + "0" * 30}),
    ("/v4/domains", {"skip": "-1"}),
    ("/v4/domains", {"limit": "-1"}),
    ("/v4/domains", {"state": "a\x00b"}),
])
def test_hostile_values_get_a_400_with_a_message(client, world, path, query):
    url = path if path.startswith("/") else f"/v3/{world['domain']['name']}/{path}"
    qs = urlencode(query, encoding="utf-8", errors="surrogatepass") if query else None
    resp = client.simulate_get(url, query_string=qs, headers=basic(world["key"]))
    assert resp.status_code == 400, resp.text
    assert resp.json["message"]


def test_nul_in_the_path_or_a_form_field_or_json_is_a_400_and_changes_nothing(client, world, db):
    domain, key = world["domain"], world["key"]
    resp = client.simulate_get(f"/v3/{domain['name']}/messages/a%00b/trace", headers=basic(key))
    assert resp.status_code == 400 and "NUL" in resp.json["message"]
    before = db.execute("SELECT count(*) AS n FROM suppress_unsubscribes WHERE domain_id = %s", (domain["id"],)).fetchone()
    resp = client.simulate_post(f"/v3/{domain['name']}/unsubscribes", body="address=a%00b@one.test",
                                headers={**basic(key), **FORM})
    assert resp.status_code == 400 and "address" in resp.json["message"]
    resp = client.simulate_post(f"/v3/{domain['name']}/unsubscribes", body='[{"address": "\\ud800@one.test"}]',
                                headers={**basic(key), "Content-Type": "application/json"})
    assert resp.status_code == 400 and resp.json["message"]
    after = db.execute("SELECT count(*) AS n FROM suppress_unsubscribes WHERE domain_id = %s", (domain["id"],)).fetchone()
    assert after == before


def test_a_genuine_server_error_is_still_a_500(settings, services):
    """The 400 mappings are by what the request carried, not blanket: a bug's ValueError stays a 500."""

    class Broken:
        auth = "public"

        def on_get(self, req, resp):
            raise ValueError("not enough values to unpack")  # a bug, not the client's input

        def on_post(self, req, resp):
            raise OverflowError("a bug")

    app = create_app(settings, services)
    app.add_route("/broken", Broken())
    client = testing.TestClient(app)
    for resp in (client.simulate_get("/broken"), client.simulate_post("/broken")):
        assert resp.status_code == 500 and resp.json == {"message": "500 Internal Server Error"}


def test_a_value_postgres_refuses_is_a_400_not_a_500(settings, services):
    """The backstop for a value no reader checked: Postgres's data exception (SQLSTATE class 22)."""

    class Unchecked:
        auth = "public"

        def on_get(self, req, resp):
            with services.db.transaction() as conn:
                conn.execute("SELECT %s::int", (req.get_param("n"),))

    app = create_app(settings, services)
    app.add_route("/unchecked", Unchecked())
    resp = testing.TestClient(app).simulate_get("/unchecked", params={"n": "1" + "0" * 30})
    assert resp.status_code == 400 and resp.json["message"]
