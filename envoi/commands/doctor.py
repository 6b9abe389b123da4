"""`envoi doctor`: check a deployment from one host: stores, region stamps, sealing keys, the platform's
own DNS records, each IP's PTR and HELO, and the TLS certificates. A table of PASS/WARN/FAIL, exit 1 on
any FAIL."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import click

CERT_WARN_DAYS = 14  # as the EnvoiCertificateExpiresSoon alert

Result = tuple[str, str, str]  # (check, PASS | WARN | FAIL, detail)


def _run(name: str, check: Callable[[], str]) -> Result:
    try:
        detail = check()
    except Warning as ex:
        return name, "WARN", str(ex)
    except Exception as ex:  # what failed is the result
        return name, "FAIL", f"{type(ex).__name__}: {ex}"[:300]
    return name, "PASS", detail


def checks(settings, services) -> Iterator[Result]:
    from envoi import runtime
    from envoi.accounts import dnscheck
    from envoi.infra import health

    for name, check in health.store_checks(settings.database_url, settings.redis_url).items():
        yield _run(f"{name} reachable", lambda check=check: check() or "answers")
    yield _run("region stamps", lambda: runtime.check_stores(settings) or f"Postgres and Redis are {settings.region}'s")
    yield _run("sealing keys", lambda: runtime.check_sealing_keys(settings) or "every key id in use is given")

    resolver = settings.dns_resolver
    names = [("A", settings.smtp_hostname or settings.helo_name, "SMTP host")]
    names += [("A", host, "inbound MX") for host in settings.inbound_mx_hosts]
    if settings.tracking_host:
        names.append(("A", settings.tracking_host, "tracking host"))
    for kind, host, what in names:
        def resolve(kind=kind, host=host) -> str:
            found = dnscheck.check([{"record_type": kind, "name": host, "value": ""}], resolver)[0]
            if found["valid"] == "unknown":
                raise LookupError(f"no answer for {host} {kind}")
            if not found["cached"]:
                raise LookupError(f"{host} has no {kind} record")
            return f"{host} {kind} {', '.join(found['cached'])}"
        yield _run(f"DNS: {what}", resolve)
    if settings.spf_include:
        def spf() -> str:
            found = dnscheck.check([{"record_type": "TXT", "name": settings.spf_include, "value": "v=spf1"}],
                                   resolver)[0]
            if found["valid"] != "valid":
                raise LookupError(f"{settings.spf_include} has no v=spf1 TXT record ({found['valid']})")
            return f"{settings.spf_include} TXT {next(v for v in found['cached'] if v.startswith('v=spf1'))}"
        yield _run("DNS: SPF include", spf)

    try:
        ips = services.ips.dns_check(nameserver=resolver)
    except Exception as ex:
        yield "IPs: PTR/HELO", "FAIL", f"{type(ex).__name__}: {ex}"[:300]
        ips = []
    for ip in ips:
        ok = ip["ptr_ok"] and ip["helo_ok"]
        detail = (f"PTR {','.join(ip['ptr_found']) or '(none)'} (want {ip['ptr_expected']}); HELO {ip['helo']} -> "
                  f"{','.join(ip['helo_resolves_to']) or '(none)'}")
        yield f"IP {ip['ip']}: PTR/HELO", "PASS" if ok else "FAIL", detail

    for what, path in (("SMTP", settings.tls_cert), ("tracking", settings.tracking_tls_cert)):
        if path:
            yield _run(f"TLS certificate ({what})", lambda path=path: _certificate(path))


def _certificate(path: str) -> str:
    from envoi.infra.crypto import certificate_expiry

    days = (certificate_expiry(path) - time.time()) / 86400
    if days <= 0:
        raise ValueError(f"{path} expired {-days:.0f} days ago")
    if days < CERT_WARN_DAYS:
        raise Warning(f"{path} expires in {days:.1f} days")
    return f"{path} valid for {days:.0f} more days"


@click.command("doctor", short_help="Check this deployment: stores, DNS, PTR/HELO, certificates.")
def doctor() -> None:
    """Check the deployment as this host sees it: Postgres and Redis reachable and stamped with this region,
    the sealing keys, the platform's own DNS records (SMTP host, inbound MX hosts, tracking host, SPF include)
    through ENVOI_DNS_RESOLVER, each sending IP's PTR and HELO (forward-confirmed), and the TLS certificates.
    Exits 1 when a check fails."""
    from envoi import runtime
    from envoi.infra.settings import Settings

    settings = Settings.from_env()
    services = runtime.build(settings, pool_size=1)
    try:
        results = list(checks(settings, services))
    finally:
        services.close()
    width = max(len(name) for name, _, _ in results)
    for name, status, detail in results:
        click.echo(f"{name:<{width}}  {status:<4}  {detail}")
    failed = sum(status == "FAIL" for _, status, _ in results)
    click.echo(f"\n{len(results)} checks, {failed} failed" if failed else f"\n{len(results)} checks passed")
    if failed:
        raise SystemExit(1)


COMMANDS: list = [doctor]  # click commands/groups added to `envoi`
