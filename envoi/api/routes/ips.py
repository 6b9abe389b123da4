"""HTTP routes of the ips feature: IP inventory, domain IPs, IP pools, warm-ups (Mailgun §6)."""

from __future__ import annotations

from envoi.api.resources.ips import DomainIps, IpCollection, IpItem, Pools, Warmups


def add_routes(app, settings, services) -> None:
    """Register this feature's resources on the falcon app."""
    if services.ips is None:
        return
    ips, accounts = services.ips, services.accounts
    collection = IpCollection(ips, accounts)
    app.add_route("/v3/ips", collection)
    app.add_route("/v3/ips/export", collection, suffix="export")  # CSV of dedicated assignments
    app.add_route("/v3/ips/audit", collection, suffix="audit")
    app.add_route("/v3/ips/{ip}", IpItem(ips, accounts))
    domain_ips = DomainIps(ips, accounts)
    app.add_route("/v3/domains/{domain}/ips", domain_ips)
    app.add_route("/v3/domains/{domain}/ips/{ip}", domain_ips, suffix="item")
    pools = Pools(ips, accounts)
    for version in ("v1", "v3"):  # Mailgun documents /v1/ip_pools; its Python SDK maps v3
        app.add_route(f"/{version}/ip_pools", pools)
        app.add_route(f"/{version}/ip_pools/{{pool_id}}", pools, suffix="item")
    warmups = Warmups(ips, accounts)
    app.add_route("/v3/ip_warmups", warmups)
    app.add_route("/v3/ip_warmups/{ip}", warmups, suffix="item")
