"""A mailing list's validation (`/v3/lists/{address}/validate`, Mailgun's list validation): its members run as
a bulk validation job named by the list's address, on a real RQ worker; another account's list is a 404."""

from __future__ import annotations

from envoi.validation import jobs as validation_jobs
from envoi.webhooks import jobs as webhook_jobs
from tests.conftest import basic

MEMBERS = ["jane@good.test", "x@nullmx.test", "y@mailinator.com", "z@aonly.test"]


def test_a_lists_members_are_validated_as_a_job_named_by_the_list(client, api_key, validation_services, account,
                                                                   domain):
    lists = validation_services.lists
    address = f"team@{domain['name']}"
    lists.create(account["id"], {"address": address, "name": "Team"})
    for member in MEMBERS:
        lists.add_member(account["id"], address, {"address": member})

    started = client.simulate_post(f"/v3/lists/{address.upper()}/validate", headers=basic(api_key))
    assert started.status_code == 202, started.text
    assert started.json == {"id": address, "message": "The validation job was submitted."}
    job = client.simulate_get(f"/v3/lists/{address}/validate", headers=basic(api_key)).json
    assert (job["status"], job["quantity"], job["records_processed"]) == ("created", len(MEMBERS), 0)

    validation_jobs.configure(validation_services.validation)
    worker = webhook_jobs.worker(validation_services.webhooks,
                                 webhook_jobs.worker_connection(validation_services.settings.redis_url),
                                 (validation_jobs.QUEUE,))
    worker.subscribe = worker.unsubscribe = lambda: None  # as in test_bulk.py: rq's pubsub is not the subject
    worker.work(burst=True)
    job = client.simulate_get(f"/v3/lists/{address}/validate", headers=basic(api_key)).json
    assert (job["status"], job["records_processed"]) == ("uploaded", len(MEMBERS))
    # the risky members are reported: the null MX and the disposable address
    assert job["summary"]["result"]["undeliverable"] == 1 and job["summary"]["result"]["do_not_send"] == 1
    assert job["summary"]["result"]["deliverable"] == 2

    # another account cannot start, read or cancel it
    other = validation_services.accounts.create_account("list-validation-other")
    _, other_key = validation_services.accounts.create_key(other["id"], "admin")
    for method in ("simulate_post", "simulate_get", "simulate_delete"):
        assert getattr(client, method)(f"/v3/lists/{address}/validate", headers=basic(other_key)).status_code == 404

    cancelled = client.simulate_delete(f"/v3/lists/{address}/validate", headers=basic(api_key))
    assert cancelled.status_code == 200 and cancelled.json == {"message": "Validation job canceled."}
    assert client.simulate_get(f"/v3/lists/{address}/validate", headers=basic(api_key)).status_code == 404


def test_an_unknown_list_is_a_404_and_starts_nothing(client, api_key, domain, db):
    resp = client.simulate_post(f"/v3/lists/nobody@{domain['name']}/validate", headers=basic(api_key))
    assert resp.status_code == 404 and "not found" in resp.json["message"]
    assert db.execute("SELECT count(*) AS n FROM validation_jobs WHERE list_id = %s",
                      (f"nobody@{domain['name']}",)).fetchone()["n"] == 0
