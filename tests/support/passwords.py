"""argon2 at the lowest cost in the test process.

Envoi hashes the passwords people choose (dashboard users, SMTP logins) with argon2-cffi's default cost:
~150 ms of CPU per hash or check on this machine, on purpose. Hundreds of tests make users or SMTP logins
and sign in with them, which came to minutes of a CI run. In the test process the hashes are argon2id at
the lowest cost instead: the same library and the same code path (envoi.infra.crypto), a wrong password
still fails; only the cost parameters differ, and a hash carries its own, so a hash made at either cost
checks under the other. Envoi's processes that tests start keep the full cost, and
tests/unit/infra/test_password_cost.py checks that Envoi (a fresh process) hashes at the full cost.
"""

from __future__ import annotations

from argon2 import PasswordHasher

from envoi.infra import crypto

TEST_COST = {"time_cost": 1, "memory_cost": 1024, "parallelism": 1}


def use_test_cost() -> None:
    crypto._password_hasher = PasswordHasher(**TEST_COST)
