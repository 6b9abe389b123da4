"""`envoi encryption status|rotate`: which keys seal the region's data at rest, and re-sealing it all
under the current key while the region runs (key rotation, docs/operations.md)."""

from __future__ import annotations

import sys

import click

from envoi.commands import region
from envoi.infra import sealed_columns
from envoi.infra.sealed_columns import SEALED, UNIDENTIFIED


@click.group("encryption", short_help="Keys sealing data at rest: status, rotation to the current key.")
def encryption() -> None:
    """Encryption at rest: what each key id still seals, and re-sealing everything under the current
    key (ENVOI_SECRET_KEY) so a previous key (ENVOI_PREVIOUS_SECRET_KEYS) can be retired."""


@encryption.command("status")
def encryption_status() -> None:
    """How many values each key id still seals, per column and in all. Exits 1 if some are sealed under
    a key this process does not have (it must not be retired: those values cannot be opened)."""
    services = region.services(pool_size=1)
    sealer = services.sealer
    counts = sealed_columns.counts(services.db)
    click.echo(f"current key: {sealer.current_id}")
    click.echo(f"previous keys: {', '.join(sealer.key_ids[1:]) or '-'}")
    click.echo("")
    click.echo("column\tkey id\tvalues")
    totals: dict[str, int] = {kid: 0 for kid in sealer.key_ids}
    for name, per_key in counts.items():
        for kid, n in per_key.items():
            click.echo(f"{name}\t{kid}\t{n}")
            totals[kid] = totals.get(kid, 0) + n
    click.echo("")
    click.echo("key id\tvalues\tstate")
    unknown = False
    for kid, n in totals.items():
        if kid == sealer.current_id:
            state = "current"
        elif kid == UNIDENTIFIED:
            state = "sealed before key ids: `envoi encryption rotate` re-seals them"
        elif kid not in sealer.key_ids:
            unknown, state = True, "UNKNOWN: this process does not have this key; these values cannot be opened"
        elif n:
            state = "previous: still needed (`envoi encryption rotate`)"
        else:
            state = "previous: seals nothing any more; remove it from ENVOI_PREVIOUS_SECRET_KEYS"
        click.echo(f"{kid}\t{n}\t{state}")
    if unknown:
        raise click.ClickException("values are sealed under a key this process does not have: give it in "
                                   "ENVOI_PREVIOUS_SECRET_KEYS")


@encryption.command("rotate")
@click.option("--batch", default=200, show_default=True, type=click.IntRange(1, 10_000),
              help="Values re-sealed per short transaction.")
def encryption_rotate(batch: int) -> None:
    """Re-seal every value not under the current key (ENVOI_SECRET_KEY), online: batches in short
    transactions, writers keep working. Start it once every process of the region runs with the new
    current key; interrupted, just run it again. Exits 1 if a value could not be opened."""
    services = region.services(pool_size=2)
    sealer, db = services.sealer, services.db
    todo = {col: sealed_columns.stale(db, sealer, col) for col in SEALED}
    total = sum(todo.values())
    click.echo(f"re-sealing {total} values under key {sealer.current_id}")
    outcomes = {}
    with click.progressbar(length=total, label="re-sealing", show_pos=True, file=sys.stderr) as bar:
        # Every column, even one with nothing stale at the start: a column copied from another in SQL
        # (webhook_deliveries from webhooks) gains old-key values until the one it copies is re-sealed.
        for col in todo:
            outcomes[col.name] = sealed_columns.rotate(db, sealer, col, batch=batch, progress=bar.update)
    failed = 0
    for name, outcome in outcomes.items():
        failed += outcome.failed
        click.echo(f"{name}\tre-sealed {outcome.resealed}\tchanged meanwhile {outcome.skipped}"
                   f"\tcould not open {outcome.failed}")
    left = sum(sealed_columns.stale(db, sealer, col) for col in SEALED)
    click.echo(f"values not under key {sealer.current_id}: {left}")
    if not left and not failed:
        retired = sealed_columns.retire_others(db, sealer)
        if retired:
            click.echo(f"retired key id(s) {', '.join(retired)}: processes may now start without them")
    if failed:
        raise click.ClickException(f"{failed} values could not be opened with this process's keys: see "
                                   "`envoi encryption status`")
    if left:
        click.echo("some were written meanwhile under another key (a process still on the old key?): run "
                   "`envoi encryption rotate` again once every process has the new one")


COMMANDS = [encryption]
