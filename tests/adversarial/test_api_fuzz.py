"""Schemathesis over the real falcon WSGI app (real Postgres and Redis, real keys), from /openapi.json.

Every operation gets schema-valid and schema-invalid inputs; every response must be non-5xx and
match the description (status code, content type, body schema). Bounded by MAX_EXAMPLES per
operation so the run takes about a minute; the figures are printed (`-s`) for docs/reliability.md.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter

import hypothesis
import pytest
import schemathesis
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from envoi.api import openapi
from envoi.api.app import create_app
from tests.conftest import basic

pytestmark = pytest.mark.fuzz
MAX_EXAMPLES = 30
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
OPERATOR_PATHS = re.compile(r"^/v[13]/(ips|ip_pools|ip_warmups)|^/v3/domains/\{domain\}/ips")
TALLY: Counter = Counter()


@pytest.fixture(scope="module")
def fuzz_target(settings, services):
    account = services.accounts.create_account("schemathesis")
    domain = services.accounts.add_domain(account["id"], "fuzz.example.test", dkim_key_size=1024)
    _, admin = services.accounts.create_key(account["id"], "admin")
    _, operator = services.accounts.create_key(None, "operator")
    yield {"app": create_app(settings, services), "domain": domain["name"], "admin": basic(admin),
           "operator": basic(operator)}
    print(f"\nschemathesis: {TALLY['requests']} requests over {TALLY['operations']} operations, "
          f"{TALLY['5xx']} 5xx, {TALLY['failures']} check failures, {TALLY['seconds']:.0f} s")


@pytest.fixture(scope="module")
def api_schema(fuzz_target):
    doc = openapi.document()
    for methods in doc["paths"].values():  # aim most requests at a domain that exists
        for operation in methods.values():
            for p in operation.get("parameters", []):
                if p["in"] == "path" and p["name"] == "domain":
                    p["schema"] = {"type": "string", "enum": [fuzz_target["domain"]]}
    schema = schemathesis.openapi.from_dict(doc)
    schema.app = fuzz_target["app"]
    schema.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
                                    max_examples=MAX_EXAMPLES, database="none", deterministic=True)
    return schema


# Operations where this run finds a 500 on the current code (a NUL byte in a parameter reaches Postgres,
# psycopg.DataError); another branch fixes API parameter handling: the lead removes these after merging.
NUL_500 = pytest.mark.xfail(strict=False, reason="issue 11 defect: fuzz-found 500s in API params (NUL byte "
                                                "reaches Postgres), fixed on branch h4-api-input")
KNOWN = {"PUT /v3/{domain}/tags/{tag}": NUL_500, "DELETE /v3/{domain}/unsubscribes/{address}": NUL_500,
         "POST /v3/domains/{domain}/ips": NUL_500}


def _labels() -> list:
    out = []
    for path, methods in openapi.document()["paths"].items():
        for method in methods:
            if path.endswith("/events/live") or (method == "delete" and re.fullmatch(r"/v[34]/domains/\{domain\}", path)):
                continue  # SSE streams until its timeout; deleting the run's domain would end the run
            label = f"{method.upper()} {path}"
            out.append(pytest.param(label, marks=KNOWN[label]) if label in KNOWN else label)
    return out


# schemathesis's own pytest plugin (from_fixture) breaks on pytest 9, so the operations are driven
# here: one test per operation, hypothesis over its positive and negative strategies.
@pytest.mark.parametrize("label", _labels())
def test_api_conforms_and_never_5xx(label, api_schema, fuzz_target):
    operation = api_schema.find_operation_by_label(label)
    assert operation is not None, label
    headers = fuzz_target["operator" if OPERATOR_PATHS.match(operation.path) else "admin"]
    strategy = st.one_of(operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE))
    TALLY["operations"] += 1

    @hypothesis.settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, derandomize=True,
                         suppress_health_check=list(hypothesis.HealthCheck), phases=[hypothesis.Phase.generate])
    @hypothesis.given(case=strategy)
    def run(case):
        started = time.perf_counter()
        try:
            response = case.call(headers=headers)
        finally:
            TALLY["seconds"] += time.perf_counter() - started
            TALLY["requests"] += 1
        if response.status_code >= 500:
            TALLY["5xx"] += 1
        try:
            case.validate_response(response, checks=CHECKS)
            if response.status_code >= 400 and "json" in (response.headers.get("content-type") or [""])[0]:
                assert set(json.loads(response.content)) == {"message"}, "not Mailgun's error shape"
        except BaseException:
            TALLY["failures"] += 1
            raise

    run()
