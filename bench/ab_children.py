"""A/B of an in-process measurement: one child process per checkout and round, importing that checkout's
envoi (PYTHONPATH), the checkouts taking turns going first (a shared machine drifts); each child prints one
JSON row of figures as its last line. Used by bench/api_accept_cpu.py and bench/batch_intake.py."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent


def checkouts(baseline: str | None) -> dict[str, Path]:
    """This checkout as "new", and the baseline checkout, if any, as "old"."""
    return {"new": HERE} | ({"old": Path(baseline).resolve()} if baseline else {})


def run_rounds(script: str, trees: dict[str, Path], rounds: int,
               child_args: Callable[[str, int], list[str]]) -> dict[str, list[dict]]:
    """`script --child *child_args(label, round)` in each checkout, `rounds` times; the rows by label."""
    results: dict[str, list[dict]] = {label: [] for label in trees}
    for r in range(rounds):
        order = list(trees.items()) if r % 2 == 0 else list(reversed(trees.items()))
        for label, tree in order:
            env = {**os.environ, "PYTHONPATH": str(tree)}
            out = subprocess.run([sys.executable, script, "--child", *child_args(label, r)], env=env, cwd=tree,
                                 check=True, capture_output=True, text=True)
            row = json.loads(out.stdout.strip().splitlines()[-1])
            results[label].append(row)
            print(f"round {r + 1} {label}: " + ", ".join(f"{k} {v:,.1f}" for k, v in row.items()), flush=True)
    return results


def print_medians(results: dict[str, list[dict]], heading: str) -> None:
    print(f"\n{heading} (load average {os.getloadavg()[0]:.1f}):")
    for label, rows in results.items():
        print(f"  {label}: " + ", ".join(f"{k} {statistics.median(r[k] for r in rows):,.1f}" for k in rows[0]))
