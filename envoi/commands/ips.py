"""`envoi ips …`: the IP inventory, assignment, pools, warm-up, audit and export (operator).

Every change is audited with the actor "cli:<login user>".
"""

from __future__ import annotations

import json
import sys

import click

from envoi.commands.region import actor, with_services
from envoi.ips.service import SHARED, ip_json


def _echo(value) -> None:
    click.echo(json.dumps(value, default=str, indent=2))


@click.group("ips", short_help="IP inventory, dedicated IPs, pools, warm-up (operator).")
def ips() -> None:
    """IP inventory, dedicated assignment, pools, warm-up (operator)."""


@ips.command("list")
@click.option("--account", "account_id", type=int, default=None, help="Only this account's dedicated IPs.")
@click.option("--dedicated/--shared", default=None, help="Only dedicated or only shared IPs.")
@with_services
def ips_list(services, account_id, dedicated) -> None:
    """List the region's IPs."""
    for row in services.ips.list_ips(account_id, dedicated):
        kind = "dedicated" if row["dedicated"] else "shared"
        click.echo("\t".join([row["address"], row["host"], row["helo"], kind,
                              "enabled" if row["enabled"] else "disabled",
                              f"account={row['account_id']}" if row["account_id"] else "-",
                              "warmup" if row["is_on_warmup"] else "-"]))


@ips.command("show")
@click.argument("ip")
@with_services
def ips_show(services, ip) -> None:
    """Show one IP: its names, state, account and pools (JSON)."""
    row = services.ips.get_ip(ip)
    _echo(ip_json(row, admin=True, pools=row["pools"]))


@ips.command("add")
@click.argument("ip")
@click.option("--helo", required=True, help="EHLO name of this IP (its A record and PTR should match).")
@click.option("--ptr", default="", help="Reverse DNS name the IP should have (default: the HELO name).")
@click.option("--host", default=None, help="Relay host the IP lives on (default: ENVOI_RELAY_HOST).")
@click.option("--dedicated", is_flag=True, help="A dedicated IP (default: shared pool).")
@click.option("--disabled", is_flag=True, help="Add it disabled: no mail goes out over it yet.")
@with_services
def ips_add(services, ip, helo, ptr, host, dedicated, disabled) -> None:
    """Add an IP to the inventory."""
    row = services.ips.add_ip(actor(), ip, host=host, helo=helo, ptr=ptr, dedicated=dedicated,
                              enabled=not disabled)
    _echo(ip_json(row, admin=True))


@ips.command("update")
@click.argument("ip")
@click.option("--helo", default=None, help="New EHLO name.")
@click.option("--ptr", default=None, help="New expected reverse DNS name.")
@click.option("--host", default=None, help="New relay host the IP lives on.")
@click.option("--enable/--disable", "enabled", default=None, help="Send over it, or not.")
@click.option("--dedicated/--shared", default=None, help="Make it dedicated, or return it to the shared pool.")
@with_services
def ips_update(services, ip, helo, ptr, host, enabled, dedicated) -> None:
    """Change an IP's names, host, state or kind (only the options given)."""
    row = services.ips.update_ip(actor(), ip, helo=helo, ptr=ptr, host=host, enabled=enabled, dedicated=dedicated)
    _echo(ip_json(row, admin=True))


@ips.command("remove")
@click.argument("ip")
@with_services
def ips_remove(services, ip) -> None:
    """Remove an (unassigned) IP from the inventory."""
    services.ips.delete_ip(actor(), ip)
    click.echo(f"removed {ip}")


@ips.command("assign")
@click.argument("ip")
@click.argument("account_id", type=int)
@with_services
def ips_assign(services, ip, account_id) -> None:
    """Make a dedicated IP an account's own."""
    services.ips.assign_ip(actor(), ip, account_id)
    click.echo(f"{ip} assigned to account {account_id}")


@ips.command("unassign")
@click.argument("ip")
@with_services
def ips_unassign(services, ip) -> None:
    """Take a dedicated IP back (also off the account's domains and pools)."""
    services.ips.unassign_ip(actor(), ip)
    click.echo(f"{ip} unassigned")


@ips.command("export")
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Write to this file (default: stdout).")
@with_services
def ips_export(services, output) -> None:
    """CSV of dedicated IP assignments (IP, customer, assigned since) for the IP registry."""
    text = services.ips.export_csv()
    if output:
        with open(output, "w", newline="", encoding="utf-8") as fh:
            fh.write(text)
        click.echo(f"wrote {output}")
    else:
        sys.stdout.write(text)


@ips.command("audit")
@click.option("--ip", default=None, help="Only changes to this IP.")
@click.option("--limit", default=50, show_default=True, type=int, help="Newest entries shown.")
@with_services
def ips_audit(services, ip, limit) -> None:
    """Who changed which assignment, when."""
    for row in services.ips.audit_log(ip, limit):
        target = " ".join(f"{k}={row[k]}" for k in ("address", "account_id", "domain", "pool_id") if row[k])
        click.echo(f"{row['at'].isoformat()}\t{row['actor']}\t{row['action']}\t{target}"
                   + (f"\t{json.dumps(row['detail'])}" if row["detail"] else ""))


@ips.command("check")
@click.argument("ip", required=False)
@with_services
def ips_check(services, ip) -> None:
    """Check each IP's reverse DNS (PTR) and that its HELO name resolves back to it."""
    bad = 0
    for row in services.ips.dns_check(ip, services.settings.dns_resolver):
        ok = row["ptr_ok"] and row["helo_ok"]
        bad += not ok
        click.echo(f"{row['ip']}\t{'ok' if ok else 'MISMATCH'}\tptr={','.join(row['ptr_found']) or '-'}"
                   f" (want {row['ptr_expected']})\thelo {row['helo']} -> {','.join(row['helo_resolves_to']) or '-'}")
    if bad:
        raise click.ClickException(f"{bad} IP(s) with DNS that does not match")


# domains ---------------------------------------------------------------------------------------
@ips.group("domain")
def domain_group() -> None:
    """A domain's dedicated IPs and linked pool."""


@domain_group.command("list")
@click.argument("domain")
@with_services
def domain_list(services, domain) -> None:
    """Show the domain's dedicated IPs and linked pool (JSON)."""
    _echo(services.ips.domain_ips(services.accounts.get_domain(domain)))


@domain_group.command("add")
@click.argument("domain")
@click.argument("ip")
@with_services
def domain_add(services, domain, ip) -> None:
    """Send the domain's mail over this dedicated IP (assigns it to the domain's account)."""
    services.ips.add_domain_ip(actor(), services.accounts.get_domain(domain), ip)
    click.echo(f"{ip} added to {domain}")


@domain_group.command("remove")
@click.argument("domain")
@click.argument("ip")
@with_services
def domain_remove(services, domain, ip) -> None:
    """Stop sending the domain's mail over this dedicated IP."""
    services.ips.remove_domain_ip(actor(), services.accounts.get_domain(domain), ip)
    click.echo(f"{ip} removed from {domain}")


@domain_group.command("link")
@click.argument("domain")
@click.argument("pool_id")
@with_services
def domain_link(services, domain, pool_id) -> None:
    """Send the domain's mail over an IP pool."""
    services.ips.link_pool(actor(), services.accounts.get_domain(domain), pool_id)
    click.echo(f"{domain} linked to pool {pool_id}")


@domain_group.command("unlink")
@click.argument("domain")
@with_services
def domain_unlink(services, domain) -> None:
    """Stop sending the domain's mail over its linked pool."""
    services.ips.unlink_pool(actor(), services.accounts.get_domain(domain))
    click.echo(f"{domain} unlinked from its pool")


# pools -----------------------------------------------------------------------------------------
@ips.group("pool")
def pool_group() -> None:
    """IP pools (of dedicated IPs)."""


@pool_group.command("create")
@click.argument("name")
@click.option("--description", default="", help="A note about the pool.")
@click.option("--ip", "addresses", multiple=True, help="A dedicated IP to put in the pool (repeatable).")
@click.option("--account", "account_id", type=int, default=None, help="The account that owns the pool.")
@with_services
def pool_create(services, name, description, addresses, account_id) -> None:
    """Create an IP pool called NAME (prints it as JSON)."""
    pool = services.ips.create_pool(actor(), name, description, list(addresses), account_id)
    click.echo(json.dumps({"pool_id": pool["id"]}))


@pool_group.command("list")
@click.option("--account", "account_id", type=int, default=None, help="Only this account's pools.")
@with_services
def pool_list(services, account_id) -> None:
    """List the IP pools: id, name, IPs, owner, whether linked."""
    for pool in services.ips.list_pools(account_id):
        click.echo("\t".join([pool["id"], pool["name"], ",".join(pool["ips"]) or "-",
                              f"account={pool['account_id']}" if pool["account_id"] else "-",
                              "linked" if pool["is_linked"] else "-"]))


@pool_group.command("add")
@click.argument("pool_id")
@click.argument("ip")
@with_services
def pool_add(services, pool_id, ip) -> None:
    """Put a dedicated IP in the pool."""
    services.ips.update_pool(actor(), pool_id, add_ips=[ip])
    click.echo(f"{ip} added to pool {pool_id}")


@pool_group.command("remove")
@click.argument("pool_id")
@click.argument("ip")
@with_services
def pool_remove(services, pool_id, ip) -> None:
    """Take an IP out of the pool."""
    services.ips.update_pool(actor(), pool_id, remove_ips=[ip])
    click.echo(f"{ip} removed from pool {pool_id}")


@pool_group.command("delete")
@click.argument("pool_id")
@click.option("--replacement-ip", default=None, help=f"Dedicated IP (or '{SHARED}') for the linked domains.")
@click.option("--replacement-pool", default=None, help="Pool for the linked domains.")
@with_services
def pool_delete(services, pool_id, replacement_ip, replacement_pool) -> None:
    """Delete a pool; its linked domains move to the replacement given."""
    services.ips.delete_pool(actor(), pool_id, ip=replacement_ip, replacement_pool=replacement_pool)
    click.echo(f"pool {pool_id} deleted")


# warm-up ---------------------------------------------------------------------------------------
@ips.group("warmup")
def warmup_group() -> None:
    """IP warm-up: daily caps rising stage by stage."""


@warmup_group.command("start")
@click.argument("ip")
@click.option("--plan", default=None, help="DAYSxCAP,… (default: ENVOI_WARMUP_PLAN).")
@with_services
def warmup_start(services, ip, plan) -> None:
    """Start warming IP up: its daily cap rises stage by stage."""
    services.ips.start_warmup(actor(), ip, plan)
    click.echo(f"warm-up of {ip} started")


@warmup_group.command("stop")
@click.argument("ip")
@with_services
def warmup_stop(services, ip) -> None:
    """Stop the IP's warm-up (no cap from now on)."""
    services.ips.stop_warmup(actor(), ip)
    click.echo(f"warm-up of {ip} stopped")


@warmup_group.command("show")
@click.argument("ip", required=False)
@with_services
def warmup_show(services, ip) -> None:
    """Progress of one IP's warm-up (or all)."""
    _echo(services.ips.warmup(ip) if ip else services.ips.warmups())


COMMANDS: list = [ips]  # click commands/groups added to `envoi`
