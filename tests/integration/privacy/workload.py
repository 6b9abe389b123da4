"""A full account for the lifecycle tests: every kind of row an account can hold, with needles (unique
strings) to look for afterwards."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from envoi.mta.routes.service import Receiving, Routes
from envoi.webhooks.service import Webhooks
from tests.support.dashboard import PASSWORD
from tests.support.delivery import send
from tests.support.webhook_receiver import Receiver


@dataclass
class Workload:
    account: dict
    domains: list[dict]
    tag: str  # in every needle
    needles: list[str] = field(default_factory=list)  # what must be gone after the purge
    message_ids: list[str] = field(default_factory=list)
    key_secret: str = ""
    admin_email: str = ""
    removed_domain: dict | None = None


def build(services, *, sink_domain: str = "dest.test") -> Workload:
    tag = uuid.uuid4().hex[:10]
    account = services.accounts.create_account(f"lifecycle-{tag}")
    domains = [services.accounts.add_domain(account["id"], f"{n}-{tag}.example.test", dkim_key_size=1024,
                                            verified=True) for n in ("mail", "news")]
    domain = domains[0]
    w = Workload(account, domains, tag)
    w.needles += [account["name"], *(d["name"] for d in domains)]  # the removed one's name too
    # users: an admin (by invitation, as in production), a pending invitation
    w.admin_email = f"admin-{tag}@{sink_domain}"
    _, token = services.users.invite(account["id"], w.admin_email, "admin", actor="test")
    services.users.accept_invitation(token, PASSWORD)
    services.users.login(w.admin_email, PASSWORD, ip="192.0.2.7")
    services.users.invite(account["id"], f"pending-{tag}@people.test", "analyst", actor="test")
    w.needles += [w.admin_email, f"pending-{tag}@people.test"]
    # keys, SMTP login, authorized recipient, tracking settings
    _, w.key_secret = services.accounts.create_key(account["id"], "admin", description=f"key-{tag}")
    services.accounts.create_credential(account["id"], domain["name"], f"app{tag}", "correct-horse-9")
    services.accounts.add_authorized_recipient(account["id"], f"tester-{tag}@people.test")
    services.tracking.update_settings(domain, "open", {"active": "yes"})
    w.needles += [f"key-{tag}", f"app{tag}", f"tester-{tag}@people.test"]
    # suppressions of each kind
    services.suppressions.add(domain, "bounces", {"address": f"bounced-{tag}@far.test", "error": "gone"})
    services.suppressions.add(domain, "unsubscribes", {"address": f"unsub-{tag}@far.test"})
    services.suppressions.add(domain, "complaints", {"address": f"complained-{tag}@far.test"})
    services.suppressions.add(domain, "whitelists", {"address": f"allowed-{tag}@far.test"})
    w.needles += [f"bounced-{tag}@far.test", f"unsub-{tag}@far.test", f"complained-{tag}@far.test",
                  f"allowed-{tag}@far.test"]
    # a mailing list and a member with vars
    services.lists.create(account["id"], {"address": f"list-{tag}@{domain['name']}", "name": f"List {tag}"})
    services.lists.add_member(account["id"], f"list-{tag}@{domain['name']}",
                              {"address": f"member-{tag}@far.test", "vars": '{"city": "Oslo"}'})
    w.needles += [f"list-{tag}@{domain['name']}", f"member-{tag}@far.test"]
    # stored templates: the domain's (with a version) and the account's own
    services.templates.create((account["id"], domain["id"]), {"name": [f"tpl-{tag}"], "template": [f"<p>tpl words {tag}</p>"]})
    services.templates.create((account["id"], None), {"name": [f"acct-tpl-{tag}"], "description": [f"about {tag}"]})
    w.needles += [f"tpl-{tag}", f"tpl words {tag}", f"about {tag}"]
    # a webhook, its deliveries and one real attempt (to a receiver on loopback)
    with Receiver() as receiver:
        hooks = Webhooks(services.settings.replace(webhook_allow=("127.0.0.1/32",)), services.db,
                         services.sealer, None)
        hooks.create(domain, "accepted", [receiver.url(f"/hook-{tag}")])
        # messages, their recipients and events (each send also makes an `accepted` webhook delivery)
        for n in range(3):
            rcpt = f"person{n}-{tag}@far.test"
            w.message_ids.append(send(services, account["id"], domain, rcpt, subject=f"subject-{tag}",
                                      text=f"private words {tag} number {n}", o_tag=f"tag-{tag}"))
            w.needles += [rcpt]
        with services.db.transaction() as conn:
            delivery = conn.execute("SELECT id FROM webhook_deliveries WHERE domain_id = %s ORDER BY id LIMIT 1",
                                    (domain["id"],)).fetchone()
        assert hooks.deliver(delivery["id"]) == "delivered"
        assert receiver.got(f"/hook-{tag}")
        # an inbound route, and a message it stored (its notification left pending)
        Routes(services.db, services.sealer, hooks, services.settings.public_url).create(
            account["id"], priority="1", description=f"route-{tag}", expression=f'match_recipient("inbox@{domain["name"]}")',
            actions=[f'store(notify="{receiver.url(f"/stored-{tag}")}")'])
        Receiving(services.db, services.sealer, services.events, services.accounts, services.intake, hooks,
                  public_url=services.settings.public_url).receive(
            f"writer-{tag}@far.test", [f"inbox@{domain['name']}"],
            f"From: writer-{tag}@far.test\r\nSubject: inbound-{tag}\r\n\r\nhello\r\n".encode())
        w.needles += [f"route-{tag}", f"writer-{tag}@far.test"]
    # a domain the customer removed: its messages went with it, its events stay (until retention or purge)
    removed = domains[1]
    send(services, account["id"], removed, f"old-{tag}@far.test", subject=f"subject-{tag}")
    services.accounts.delete_domain(account["id"], removed["name"])
    w.domains = [domain]
    w.removed_domain = removed
    w.needles += [f"old-{tag}@far.test"]
    # what the relay finds due: mark the recipients failed so no relay of another test delivers them
    with services.db.transaction() as conn:
        conn.execute("UPDATE recipients SET status = 'failed' WHERE account_id = %s", (account["id"],))
    services.stats.fold()
    w.needles += [f"subject-{tag}", f"private words {tag}", f"tag-{tag}", f"/hook-{tag}", *w.message_ids]
    return w
