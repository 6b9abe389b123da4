"""`envoi tls report DOMAIN`: the outbound TLS results of a recipient domain for one UTC day, as an
RFC 8460 (TLS-RPT) JSON report; `envoi tls domains`: the recipient domains with results that day."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime

import click

from envoi.commands.region import with_services


def _day(value: str | None) -> date:
    if not value:
        return datetime.now(UTC).date()
    try:
        return date.fromisoformat(value)
    except ValueError as ex:
        raise click.BadParameter(f"{value!r} is not a date (YYYY-MM-DD)") from ex


@click.group("tls", short_help="Outbound TLS: MTA-STS results as TLS-RPT (RFC 8460) reports.")
def tls() -> None:
    """Outbound TLS results the relay collected (MTA-STS, RFC 8461; reports in RFC 8460's format)."""


@tls.command("report")
@click.argument("domain")
@click.option("--day", help="UTC day, YYYY-MM-DD (default: today).")
@click.option("--organization", default="Envoi", show_default=True, help="organization-name of the report.")
@click.option("--contact", default="", help="contact-info of the report (an address or URL).")
@with_services
def tls_report(services, domain: str, day: str | None, organization: str, contact: str) -> None:
    """The RFC 8460 report of recipient DOMAIN for one UTC day (JSON on stdout)."""
    from envoi.mta.delivery.tls_report import report

    when = _day(day)
    body = report(services.db, domain, when, organization=organization, contact=contact,
                  report_id=f"{when.isoformat()}_{domain.lower()}_{services.settings.region}")
    click.echo(json.dumps(body, indent=2))


@tls.command("domains")
@click.option("--day", help="UTC day, YYYY-MM-DD (default: today).")
@with_services
def tls_domains(services, day: str | None) -> None:
    """Recipient domains with TLS results on one UTC day, one a line."""
    from envoi.mta.delivery.tls_report import domains

    for name in domains(services.db, _day(day)):
        click.echo(name)


COMMANDS = [tls]
