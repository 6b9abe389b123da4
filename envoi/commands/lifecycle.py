"""`envoi accounts export|import|restrict|lift-restriction|purge`: an account's lifecycle (docs/account-state.md)."""

from __future__ import annotations

import json
import sys

import click

from envoi.commands import region


@click.command("export")
@click.argument("account_id", type=int)
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Write the archive to this file (default: standard output, without a progress bar).")
def accounts_export(account_id: int, output: str | None) -> None:
    """Export ACCOUNT_ID's whole data (without secrets) as a JSON-lines archive, streamed in batches."""
    from envoi.privacy import archive

    services = region.services(pool_size=1)
    services.accounts.get_account(account_id)  # NotFound: one clear line
    services.audit.record(account_id, region.actor(), "account.exported")
    lines = archive.export_lines(services.db, account_id, services.suppressions.vault)
    if output is None:
        for line in lines:
            sys.stdout.write(line)
        return
    total = sum(archive.count_rows(services.db, account_id).values()) + 2  # + header and end lines
    with open(output, "w", encoding="utf-8") as out, click.progressbar(length=total, label="Exporting",
                                                                         file=sys.stderr) as bar:
        for line in lines:
            out.write(line)
            bar.update(1)
    click.echo(json.dumps({"account_id": account_id, "file": output}))


@click.command("import")
@click.argument("path", metavar="FILE", type=click.Path(exists=True, dir_okay=False))
def accounts_import(path: str) -> None:
    """Restore an account from an archive of `envoi accounts export` into this region's database (where
    the account must not exist). Secrets are not in the archive: keys, SMTP passwords and invitations
    come back unusable, users must reset their password, DKIM keys must be rotated."""

    services = region.services(pool_size=1)
    with open(path, encoding="utf-8") as file:
        result = _restore(services, file)
    click.echo(json.dumps({"account_id": result["account_id"], "restored": result["restored"]}))


def _restore(services, file) -> dict:
    from envoi.privacy import archive

    total = sum(1 for _ in file)  # a first pass for the bar's length (the archive is a file, not a pipe)
    file.seek(0)
    with click.progressbar(length=max(total - 2, 1), label="Importing", file=sys.stderr) as bar:
        return archive.import_archive(services.db, file, services.settings.region, services.suppressions.vault,
                                      progress=bar.update)


@click.command("restrict")
@click.argument("account_id", type=int)
@click.option("--reason", required=True, help="The customer's request (shown to the account's users).")
def accounts_restrict(account_id: int, reason: str) -> None:
    """Restrict processing of ACCOUNT_ID at its owner's request (GDPR Art. 18): nothing sent, accepted or
    tracked (API 403, SMTP 550 5.7.1); data kept and exportable. An operator lifts it."""
    row = region.services(pool_size=1).accounts.restrict(account_id, reason, actor=region.actor())
    click.echo(json.dumps({"id": row["id"], "state": row["state"], "reason": row["state_reason"]}))


@click.command("lift-restriction")
@click.argument("account_id", type=int)
def accounts_lift_restriction(account_id: int) -> None:
    """Lift ACCOUNT_ID's restriction of processing: it is active again."""
    row = region.services(pool_size=1).accounts.lift_restriction(account_id, actor=region.actor())
    click.echo(json.dumps({"id": row["id"], "state": row["state"]}))


@click.command("purge")
@click.option("--account-id", type=int, default=None,
              help="Purge this closed account now, whatever the delay (default: every account due).")
def accounts_purge(account_id: int | None) -> None:
    """Purge closed accounts past ENVOI_ACCOUNT_PURGE_DELAY (what the scheduler does hourly), or one
    closed account now. Resumable: a rerun finishes an interrupted purge."""
    services = region.services(pool_size=1)
    if account_id is None:
        purged = services.purge.run()
    else:
        if services.accounts.get_account(account_id)["state"] != "closed":
            raise click.ClickException(f"account {account_id} is not closed: close it first")
        services.purge.purge_account(account_id, actor=region.actor())
        purged = [account_id]
    click.echo(json.dumps({"purged": purged}))


ACCOUNT_COMMANDS = [accounts_export, accounts_import, accounts_restrict, accounts_lift_restriction, accounts_purge]
