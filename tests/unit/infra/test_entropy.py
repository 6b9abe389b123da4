"""envoi.infra.entropy: buffered OS random bytes are handed out once each, and never again in a forked child."""

from __future__ import annotations

import os
import threading

from envoi.infra import entropy, ids
from envoi.infra.crypto import Sealer


def test_draws_across_threads_never_repeat_a_byte_of_the_block():
    """Eight threads drawing 12-byte nonces across several refills: no two draws equal (a repeat would
    mean one slice handed out twice)."""
    drawn: list[bytes] = []
    lock = threading.Lock()

    def draw() -> None:
        mine = [entropy.random_bytes(12) for _ in range(2000)]
        with lock:
            drawn.extend(mine)

    threads = [threading.Thread(target=draw) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(drawn) == 16000 and all(len(d) == 12 for d in drawn)
    assert len(set(drawn)) == len(drawn)


def test_sizes_and_large_draws():
    assert entropy.random_bytes(0) == b""
    assert len(entropy.random_bytes(1)) == 1
    assert len(entropy.random_bytes(entropy.BLOCK)) == entropy.BLOCK  # past the pooled size: os.urandom


def test_a_forked_child_does_not_hand_out_its_parents_buffered_bytes():
    entropy.random_bytes(8)  # the parent holds a block with bytes not yet handed out
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: what it draws first
        try:
            os.write(write, entropy.random_bytes(64))
        finally:
            os._exit(0)
    os.close(write)
    child = os.read(read, 64)
    os.close(read)
    os.waitpid(pid, 0)
    assert len(child) == 64
    assert child != entropy.random_bytes(64)  # the parent's next bytes are not the child's


def test_ids_keep_their_shapes():
    key, event = ids.storage_key(), ids.event_id()
    assert len(key) == 32 and len(event) == 22  # secrets.token_urlsafe(24) and (16)
    assert set(key + event) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    stamp, _, rest = ids.message_id("example.com").partition(".")
    token, _, domain = rest.partition("@")
    assert len(stamp) == 14 and len(token) == 16 and int(token, 16) >= 0 and domain == "example.com"


def test_sealed_values_get_fresh_nonces_and_open():
    sealer = Sealer(b"k" * 32)
    sealed = [sealer.seal(b"body", b"ctx") for _ in range(2000)]
    nonces = {s[len(sealer.header):len(sealer.header) + 12] for s in sealed}
    assert len(nonces) == 2000
    assert sealer.open(sealed[-1], b"ctx") == b"body"
