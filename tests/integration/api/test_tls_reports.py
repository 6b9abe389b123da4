"""Operator API for TLS-RPT reports (RFC 8460): GET /v3/tls/reports[/{policy_domain}]."""

from __future__ import annotations

from tests.conftest import basic


def test_operator_reads_a_domains_rfc8460_report(client, services, db, api_key):
    db.execute("INSERT INTO tls_report_results (day, policy_domain, policy_type, result_type, receiving_mx,"
               " sessions, detail) VALUES ('2026-04-02', 'api-rpt.test', 'no-policy-found', 'success',"
               " 'mx.api-rpt.test', 4, ''), ('2026-04-02', 'api-rpt.test', 'no-policy-found',"
               " 'starttls-not-supported', 'mx.api-rpt.test', 1, 'mx.api-rpt.test does not offer STARTTLS')")
    _, operator = services.accounts.create_key(None, "operator")
    listed = client.simulate_get("/v3/tls/reports", params={"day": "2026-04-02"}, headers=basic(operator))
    assert listed.status_code == 200 and "api-rpt.test" in listed.json["items"]
    resp = client.simulate_get("/v3/tls/reports/API-RPT.test", params={"day": "2026-04-02"}, headers=basic(operator))
    assert resp.status_code == 200
    body = resp.json
    assert body["date-range"]["start-datetime"] == "2026-04-02T00:00:00Z"
    (policy,) = body["policies"]
    assert policy["policy"] == {"policy-type": "no-policy-found", "policy-domain": "api-rpt.test"}
    assert policy["summary"] == {"total-successful-session-count": 4, "total-failure-session-count": 1}
    assert policy["failure-details"] == [{
        "result-type": "starttls-not-supported", "failed-session-count": 1,
        "receiving-mx-hostname": "mx.api-rpt.test", "additional-information": "mx.api-rpt.test does not offer STARTTLS"}]
    bad = client.simulate_get("/v3/tls/reports/api-rpt.test", params={"day": "soon"}, headers=basic(operator))
    assert bad.status_code == 400 and bad.json == {"message": "day must be a date (YYYY-MM-DD)"}
    # A customer key (even an admin's) reads no recipient domain's results.
    refused = client.simulate_get("/v3/tls/reports/api-rpt.test", params={"day": "2026-04-02"}, headers=basic(api_key))
    assert refused.status_code == 401 and "api-rpt.test" not in refused.text
