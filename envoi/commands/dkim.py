"""`envoi domains ed25519`: an optional ed25519 DKIM key per domain, signed next to the RSA one."""

from __future__ import annotations

import click


@click.command("ed25519")
@click.argument("domain")
@click.option("--selector", default="ed", show_default=True, help="DKIM selector of the ed25519 key.")
def domains_ed25519(domain: str, selector: str) -> None:
    """Give DOMAIN an ed25519 DKIM key: the relay adds a second signature (ed25519-sha256, RFC 8463)
    next to the RSA one, within a minute. Prints the TXT record to publish. Re-running replaces it (the
    old key is kept retiring, docs/dkim.md); `/v1/dkim/keys` with `algorithm=ed25519` waits for the record."""
    from envoi import runtime
    from envoi.accounts import dkim_store
    from envoi.infra import dkim_keys
    from envoi.infra.settings import Settings
    from envoi.mta import store

    services = runtime.build(Settings.from_env(), pool_size=1)
    try:
        row = services.accounts.get_domain(domain)
        private, public = dkim_keys.generate_ed25519()
        with services.db.transaction() as conn:
            dkim_store.retire_ed25519(conn, row["id"])  # its record stays listed while its mail is queued
            store.set_domain_ed25519(conn, row["id"], selector,
                                     dkim_keys.seal_ed25519(services.sealer, row["name"], private), public)
    finally:
        services.close()
    click.echo(f"domain {row['name']}: ed25519 DKIM key set; publish:")
    click.echo(f"  TXT   {selector}._domainkey.{row['name']}  v=DKIM1; k=ed25519; p={public}")


DOMAIN_COMMANDS: list = [domains_ed25519]  # added to the `envoi domains` group
