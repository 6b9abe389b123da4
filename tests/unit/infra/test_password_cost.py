"""The test process hashes passwords at a low argon2 cost (tests/support/passwords.py); Envoi itself must
not: a fresh process hashes at argon2-cffi's full default cost, and what it makes checks in either."""

from __future__ import annotations

import subprocess
import sys

from argon2 import PasswordHasher, extract_parameters

from envoi.infra import crypto
from tests.support.passwords import TEST_COST
from tests.support.paths import ROOT


def test_envoi_hashes_at_the_full_cost_and_the_tests_at_theirs():
    made = subprocess.run([sys.executable, "-c", "from envoi.infra import crypto; print(crypto.hash_password('pw-1'))"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, check=True).stdout.strip()
    full = PasswordHasher()
    params = extract_parameters(made)
    assert (params.type, params.time_cost, params.memory_cost, params.parallelism) == (
        full.type, full.time_cost, full.memory_cost, full.parallelism)
    assert crypto.verify_password(made, "pw-1") and not crypto.verify_password(made, "pw-2")

    here = extract_parameters(crypto.hash_password("pw-1"))
    assert (here.time_cost, here.memory_cost, here.parallelism) == tuple(TEST_COST.values())
