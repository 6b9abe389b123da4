"""The relay's second stage: open each claimed message's sealed body and DKIM-sign it, once.

A signature made here is kept while the relay holds recipients of its message, so a retry or a
recipient claimed later reuses it; the recorder stores it with the outcomes when the message will
be sent again.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor

from envoi.infra.crypto import Sealer
from envoi.mta.delivery.claim import DomainKeys
from envoi.mta.delivery.session import wire_message
from envoi.mta.signing import DkimSigner, finish, normalize_crlf, raw_signature

#: Messages a signer thread takes through each step before the next (see _prepare_chunk): enough to
#: keep the RSA calls together, few enough that their bodies stay in the CPU's cache between the steps.
CHUNK = 16


class Preparer:
    def __init__(self, sealer: Sealer, keys: Callable[[int], DomainKeys], *, signers: int,
                 signer: DkimSigner | None = None, metrics=None):
        self.sealer = sealer
        self.keys = keys  # domain id -> DomainKeys (the claimer's cache)
        self.signer = signer or DkimSigner()
        self.metrics = metrics
        # Signing off the event loop: OpenSSL's RSA releases the GIL, so threads sign in parallel with
        # the loop (a process pool cost more in pickling than it saved). None: sign inline.
        self.signers = signers
        self.pool = ThreadPoolExecutor(signers, thread_name_prefix="dkim") if signers > 0 else None
        # Signatures made here and not yet stored, kept while this relay holds recipients of their
        # message (_holding counts them).
        self.signatures: dict[int, str] = {}
        self._holding: Counter[int] = Counter()

    def hold(self, message_pks: Iterable[int]) -> None:
        """Recipients of these messages (one pk each) were claimed."""
        self._holding.update(message_pks)

    def release(self, message_pks: Iterable[int]) -> None:
        """Outcomes of recipients of these messages (one pk each) were recorded."""
        for pk in message_pks:
            self._holding[pk] -= 1
            if self._holding[pk] <= 0:  # nothing of this message left here: its signature is not needed
                del self._holding[pk]
                self.signatures.pop(pk, None)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)

    async def prepare(self, messages: list[dict]) -> None:
        """Open and sign the claimed messages off the event loop: a thread hop per claim and signer
        rather than one per message (those hops were ~8% of the relay's CPU). OpenSSL's RSA releases
        the GIL, so the signers run beside the loop. A message that cannot be prepared carries the
        error to its delivery, which fails (and is retried) like any other crash."""
        todo = [m for m in messages if "data" not in m and not (m["options"] or {}).get("testmode")]
        if not todo:
            return
        if self.pool is None:
            signed = self._prepare(todo)
        else:
            loop = asyncio.get_running_loop()
            n = self.signers
            parts = await asyncio.gather(*(loop.run_in_executor(self.pool, self._prepare, todo[i::n])
                                           for i in range(min(n, len(todo)))))
            signed = {pk: sig for part in parts for pk, sig in part.items()}
        # Signed once per message: kept with the outcome (for retries) and for deliveries in flight.
        self.signatures.update(signed)

    def _prepare(self, messages: list[dict]) -> dict[int, str]:
        signed: dict[int, str] = {}
        for i in range(0, len(messages), CHUNK):
            self._prepare_chunk(messages[i : i + CHUNK], signed)
        return signed

    def _prepare_chunk(self, messages: list[dict], signed: dict[int, str]) -> None:
        """Open, hash, sign and make ready for the wire a few messages, each step over all of them before
        the next: the RSA signatures back to back, not between the Python steps of each message. An RSA
        call between them left each message's Python to run with cold caches and, with two signers, to
        wait for the GIL in pieces: ~0.12 ms per message more (bench/prepare_cpu.py)."""
        timed = self.metrics is not None
        to_sign = []  # (message, body, pending signatures, seconds so far)
        for message in messages:
            try:
                # Line ends made CRLF once, here: the signature covers these bytes and they are sent.
                body = normalize_crlf(self.sealer.open(message["body"], message["storage_key"].encode()))
                message["body"] = None  # the sealed copy is not needed any more
                if (message["options"] or {}).get("dkim") is False:
                    message["data"] = wire_message(body, crlf=True)
                    continue
                signature = message["dkim_signature"] or self.signatures.get(message["id"])
                if signature is not None:
                    message["data"] = wire_message(signature.encode() + body, crlf=True)
                    continue
                started = time.perf_counter() if timed else 0.0
                keys = self.keys(message["domain_id"])
                pending = self.signer.begin(body, domain=keys.signing_domain, selector=keys.selector,
                                            private_key_pem=keys.rsa_pem, ed25519=keys.ed25519, crlf=True)
                to_sign.append((message, body, pending, time.perf_counter() - started if timed else 0.0))
            except Exception as ex:
                message["data"] = ex
        made: list[tuple[list[bytes] | Exception, float]] = []  # (signatures or what went wrong, seconds)
        for _, _, pending, _ in to_sign:
            started = time.perf_counter() if timed else 0.0
            try:
                signatures = [raw_signature(p) for p in pending]
            except Exception as ex:
                signatures = ex
            made.append((signatures, time.perf_counter() - started if timed else 0.0))
        for (message, body, pending, seconds), (signatures, rsa_seconds) in zip(to_sign, made, strict=True):
            try:
                if isinstance(signatures, Exception):
                    raise signatures
                started = time.perf_counter() if timed else 0.0
                signature = signed[message["id"]] = finish(pending, signatures).decode()
                message["dkim_signature"] = signature
                if timed:
                    self.metrics.dkim_seconds.observe(seconds + rsa_seconds + time.perf_counter() - started)
                # As it goes on the wire (dot-stuffed), made here rather than on the event loop.
                message["data"] = wire_message(signature.encode() + body, crlf=True)
            except Exception as ex:
                message["data"] = ex


def prepared(message: dict) -> bytes:
    """The bytes to send for a prepared message (a WireMessage); raises what went wrong preparing it."""
    data = message["data"]
    if isinstance(data, Exception):
        raise data
    return data
