"""Webhook URL passwords (https://user:pass@host/hook) leave the clear: `url` keeps the URL with the
password masked (user:***@), `url_sealed` the full URL sealed with the region key, in the webhooks and
in the outbox (whose pending rows must still dial with the password).

The masking rule and the sealing context are envoi.webhooks.secret_url's as of this migration, copied
here so the migration keeps meaning what it did when that module changes.
"""

import re

_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://[^/?#:]*):([^/?#]*)@")
_CANDIDATES = r"^[A-Za-z][A-Za-z0-9+.-]*://[^/?#:]*:[^/?#]+@"  # the same, in Postgres: rows to look at
_BATCH = 1000


def _split(url):
    m = _USERINFO.match(url)
    if m is None or not m[2]:
        return url, None
    return f"{m[1]}:***@{url[m.end():]}", m[2]


def _sealed(sealer, row):
    shown, password = _split(row["url"])
    if password is None:
        return None
    if sealer is None:
        raise RuntimeError("migration 0065 seals stored webhook URL passwords: run it with the region key "
                           "(`envoi migrate` with ENVOI_SECRET_KEY set)")
    return shown, sealer.seal(row["url"].encode(), f"webhook-url:{row['domain_id']}".encode())


def apply(conn, sealer):
    conn.execute("ALTER TABLE webhooks ADD COLUMN IF NOT EXISTS url_sealed bytea")
    conn.execute("ALTER TABLE webhook_deliveries ADD COLUMN IF NOT EXISTS url_sealed bytea")
    rows = conn.execute("SELECT id, domain_id, event_type, url FROM webhooks WHERE url ~ %s ORDER BY id",
                        (_CANDIDATES,)).fetchall()
    for row in rows:
        sealed = _sealed(sealer, row)
        if sealed is None:
            continue
        # The masked URL is unique per (domain, event type): of URLs differing only in password, the
        # latest set wins.
        conn.execute("DELETE FROM webhooks WHERE domain_id = %s AND event_type = %s AND url = %s AND id <> %s",
                     (row["domain_id"], row["event_type"], sealed[0], row["id"]))
        conn.execute("UPDATE webhooks SET url = %s, url_sealed = %s WHERE id = %s", (*sealed, row["id"]))
    last = 0
    while True:
        rows = conn.execute("SELECT id, domain_id, url FROM webhook_deliveries WHERE url ~ %s AND id > %s"
                            " ORDER BY id LIMIT %s", (_CANDIDATES, last, _BATCH)).fetchall()
        if not rows:
            return
        last = rows[-1]["id"]
        updates = [(*sealed, row["id"]) for row in rows if (sealed := _sealed(sealer, row)) is not None]
        with conn.cursor() as cur:
            cur.executemany("UPDATE webhook_deliveries SET url = %s, url_sealed = %s WHERE id = %s", updates)
