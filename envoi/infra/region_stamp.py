"""Each region's Postgres and Redis carry the region's name, written on first use; a process of another
region refuses to start against them (one misplaced URL must not mix two regions' data).

The Postgres stamp is a row of `region_stamp` (migration 0100); the Redis one is the key `envoi:region`.
A flushed Redis loses its stamp and is stamped again by the next process to start.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from envoi.infra.settings import SettingsError

REDIS_KEY = "envoi:region"


class RegionMismatch(SettingsError):
    """A store belongs to another region."""


def _refuse(store: str, where: str, stamped: str, region: str) -> RegionMismatch:
    return RegionMismatch(
        f"the {store} at {where} belongs to the {stamped.upper()} region, but this process serves the "
        f"{region.upper()} region (ENVOI_REGION={region}): point it at the {region.upper()} region's {store}")


def where(url: str) -> str:
    """host:port/path of a store's URL, without its credentials (for the error)."""
    parts = urlsplit(url)  # netloc, not hostname/port: a Sentinel URL names several hosts
    return f"{parts.netloc.rpartition('@')[2] or 'localhost'}{parts.path}"


def claim_database(conn, region: str, where: str = "this URL") -> None:
    """Stamp the database with `region` if it has no stamp yet; raise RegionMismatch if it has another."""
    conn.execute("INSERT INTO region_stamp (region) VALUES (%s) ON CONFLICT (singleton) DO NOTHING", (region,))
    row = conn.execute("SELECT region FROM region_stamp").fetchone()
    stamped = row["region"] if isinstance(row, dict) else row[0]
    if stamped != region:
        raise _refuse("Postgres database", where, stamped, region)


def claim_redis(client, region: str, where: str = "this URL") -> None:
    """The same for Redis: SET NX, then compare."""
    client.set(REDIS_KEY, region, nx=True)
    stamped = client.get(REDIS_KEY)
    stamped = stamped.decode() if isinstance(stamped, bytes) else stamped
    if stamped != region:
        raise _refuse("Redis", where, stamped, region)
