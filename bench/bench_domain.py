"""The bench scripts' common set-up: a new account with one verified sending domain."""

from __future__ import annotations


def verified_domain(accounts, domain: str, account: str = "bench", *, dkim_key_size: int = 1024) -> tuple[dict, dict]:
    """(account row, domain row): a new account named `account` and `domain` added to it as verified (the
    operator's `--verified`: sendable at once, no DNS), the row read back as the send path reads it
    (AccountService.sending_domain, which also warms its cache). 1024-bit DKIM keys by default: key
    generation is set-up here, and the benches that measure signing pass their own size."""
    row = accounts.create_account(account)
    accounts.add_domain(row["id"], domain, dkim_key_size=dkim_key_size, verified=True)
    return row, accounts.sending_domain(domain, row["id"])
