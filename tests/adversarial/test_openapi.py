"""The OpenAPI description matches the falcon app route for route, and is served at /openapi.json."""

from __future__ import annotations

import falcon.inspect

from envoi.api import openapi

METHODS = {"get", "post", "put", "patch", "delete"}


def routes_of(app) -> set[tuple[str, str]]:
    out = set()
    for route in falcon.inspect.inspect_routes(app):
        if route.path.startswith("/dashboard"):
            continue  # the web dashboard's pages are not part of the API
        for m in route.methods:
            if not m.internal and m.method.lower() in METHODS:
                out.add((route.path, m.method.lower()))
    return out


def test_every_route_is_described_and_nothing_else(client):
    described = {(path, method) for path, methods in openapi.document()["paths"].items() for method in methods}
    routes = routes_of(client.app)
    assert len(routes) > 90
    assert routes - described == set(), "routes missing from envoi/api/openapi.py"
    assert described - routes == set(), "described in envoi/api/openapi.py but not routed"


def test_path_parameters_match_the_template():
    for path, methods in openapi.document()["paths"].items():
        in_path = {part[1:-1] for part in path.split("/") if part.startswith("{")}
        for method, operation in methods.items():
            declared = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
            assert declared == in_path, (method, path)
            # a success is described: 200, or 202 (Mailgun's bulk validation upload), 204 (Mailgun's
            # account webhooks' PUT and DELETE), or a 302 redirect
            assert {"200", "202", "204", "302"} & set(operation["responses"]), (method, path)


def test_served_without_auth(client):
    resp = client.simulate_get("/openapi.json")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("application/json")
    assert resp.json["openapi"] == "3.1.0" and resp.json["paths"] == openapi.document()["paths"]


def test_docs_api_md_is_generated_from_it():
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "docs" / "api.md"
    assert path.read_text() == openapi.markdown(), "regenerate: python -m envoi.api.openapi --markdown > docs/api.md"
