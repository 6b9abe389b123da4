"""DKIM signing in worker processes, so RSA and canonicalisation do not hold the relay's event loop.

Profiles of the relay showed signing at ~60% of its event loop's time; cryptography's RSA keeps
the GIL, so threads do not help. Each worker process keeps its own DkimSigner (parsed keys cached).
"""

from __future__ import annotations

import asyncio
import functools
import multiprocessing
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor

from envoi.mta.signing import DkimSigner

_signer: DkimSigner | None = None


def _watch_parent() -> None:
    """In a worker: exit when the relay that started us is gone (even after a SIGKILL)."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


def _sign(body: bytes, domain: str, selector: str, pem: bytes, ed25519) -> tuple[bytes, float]:
    global _signer
    if _signer is None:
        _signer = DkimSigner()
    started = time.perf_counter()
    signature = _signer.sign(body, domain=domain, selector=selector, private_key_pem=pem, ed25519=ed25519)
    return signature, time.perf_counter() - started


class SignerPool:
    def __init__(self, processes: int):
        # spawn, not fork: the relay has threads (database pool, doorbell) that fork would copy mid-state.
        self.pool = ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"),
                                        initializer=_watch_parent)

    async def sign(self, body: bytes, *, domain: str, selector: str, private_key_pem: bytes,
                   ed25519=None) -> tuple[bytes, float]:
        """(DKIM-Signature header(s), seconds the signing took in the worker)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.pool, functools.partial(_sign, body, domain, selector,
                                                                       private_key_pem, ed25519))

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
