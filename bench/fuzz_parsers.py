"""Coverage-guided fuzzing (atheris / libFuzzer) of the parsers that take outside input.

    pip install -e '.[fuzz]'
    python bench/fuzz_parsers.py --seconds 60                # every target, 60 s each
    python bench/fuzz_parsers.py --seconds 300 --target dsn

Targets: filters (events filter expressions), dsn and arf (bounce / complaint reports: the inner
parsers, so a bug is not hidden by parse()'s catch-all), address (normalize_address: raises only
InvalidRecipient, output re-normalizes to itself), compose (send fields: raises only intake errors,
never a header it was not asked for). Each target runs in its own process; the summary line gives
executions and findings, and crashing inputs are kept in var/fuzz/<target>/ (libFuzzer's crash-*).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGETS = ("filters", "dsn", "arf", "address", "compose")
BUILT = {b"from", b"to", b"cc", b"subject", b"date", b"message-id", b"x-mailgun-tag", b"x-mailgun-variables",
         b"mime-version", b"content-type", b"content-transfer-encoding", b"x-custom"}


def one_input(target: str, skip_known: bool = False):
    """The libFuzzer entry point for one target (imports instrumented for coverage)."""
    import atheris

    with atheris.instrument_imports():
        from envoi.events import filters
        from envoi.mta import compose
        from envoi.mta.bounces import arf, dsn, mime
        from envoi.mta.errors import IntakeError, InvalidRecipient

    fields = sorted(filters.FIELDS)

    def run_filters(data: bytes) -> None:
        fdp = atheris.FuzzedDataProvider(data)
        name = fields[fdp.ConsumeIntInRange(0, len(fields) - 1)]
        text = fdp.ConsumeUnicodeNoSurrogates(2000)
        try:
            node = filters.parse(name, text)
        except filters.FilterError:
            return
        sql, args = filters.to_sql(name, node)
        assert sql.count("%s") == len(args)
        filters.matches(name, node, {"event": "delivered", "tags": ["t"], "message": {"headers": {}, "size": 3}})

    def run_report(parser):
        def run(data: bytes) -> None:
            message = mime.parse_message(data)
            if message is not None:
                parser(message)
        return run

    def run_address(data: bytes) -> None:
        text = atheris.FuzzedDataProvider(data).ConsumeUnicodeNoSurrogates(400)
        compose._normalized.cache_clear()
        try:
            out = compose.normalize_address(text)
        except InvalidRecipient:
            return
        again = compose.normalize_address(out)
        assert again == out, f"not idempotent: {text!r} -> {out!r} -> {again!r}"

    def run_compose(data: bytes) -> None:
        fdp = atheris.FuzzedDataProvider(data)
        batch = fdp.ConsumeBool() and not skip_known  # structure-aware: batch variables land in headers
        # short values, the batch variable first: a long early field would starve the later ones
        values = [fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 40)) for _ in range(8)]
        values.insert(7, values.pop(0))
        mark = " %recipient.x%" if batch else ""
        send = {"from": [f"{values[0]} <s@example.test>"], "to": [f"{values[1]} <a@one.test>", "b@two.test"],
                "subject": [values[2] + mark], "text": [values[3] or "x"]}
        for name, value in (("h:X-Custom", values[4] + mark), ("v:var", values[5]), ("o:tag", values[6])):
            if fdp.ConsumeBool():  # optional, so one bad field does not hide the others
                send[name] = [value]
        if batch:
            send["recipient-variables"] = [json.dumps({"b@two.test": {"x": values[7]}})]
        try:
            draft = compose.compose("example.test", send, [], [])
        except IntakeError:
            return
        for copy in draft.copies:
            head = copy.mime.partition(b"\r\n\r\n")[0]
            assert b"\r" not in head.replace(b"\r\n", b"") and b"\n" not in head.replace(b"\r\n", b""), \
                f"bare CR or LF in the header block: {send!r}"
            names = [line.partition(b":")[0].lower() for line in head.split(b"\r\n") if line[:1] not in (b" ", b"\t")]
            assert set(names) <= BUILT, f"injected header(s) {set(names) - BUILT}: {send!r}"
            assert names.count(b"subject") == 1 and names.count(b"to") == 1, f"header block cut short: {send!r}"

    return {"filters": run_filters, "dsn": run_report(dsn._parse), "arf": run_report(arf._parse),
            "address": run_address, "compose": run_compose}[target]


def child(target: str, seconds: int, skip_known: bool) -> None:
    import atheris

    out = ROOT / "var" / "fuzz" / target
    out.mkdir(parents=True, exist_ok=True)
    argv = [sys.argv[0], f"-max_total_time={seconds}", "-timeout=5", "-rss_limit_mb=2048", "-print_final_stats=1", "-len_control=0",
            f"-artifact_prefix={out}/", "-max_len=4096"]
    atheris.Setup(argv, one_input(target, skip_known))
    atheris.Fuzz()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=60, help="per target")
    parser.add_argument("--target", choices=(*TARGETS, "all"), default="all")
    parser.add_argument("--skip-known", action="store_true",
                        help="compose: no batch sends (recipient-variables header injection, issue 11, is known)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.seconds, args.skip_known)
        return
    for target in TARGETS if args.target == "all" else (args.target,):
        started = time.monotonic()
        proc = subprocess.run([sys.executable, __file__, "--child", target, "--seconds", str(args.seconds),
                               *(["--skip-known"] if args.skip_known else [])],
                              cwd=ROOT, capture_output=True, text=True, timeout=args.seconds * 3 + 60)
        log = proc.stdout + proc.stderr
        (ROOT / "var" / "fuzz" / f"{target}.log").write_text(log)
        runs = re.findall(r"stat::number_of_executed_units:\s*(\d+)", log) or re.findall(r"Done (\d+) runs", log)
        cover = re.findall(r"cov: (\d+)", log)
        finding = "none" if proc.returncode == 0 else _finding(log)
        print(f"{target:8s} {int(runs[-1]) if runs else 0:>9,d} executions in {time.monotonic() - started:5.0f} s, "
              f"coverage {cover[-1] if cover else '?'} edges, finding: {finding}", flush=True)


def _finding(log: str) -> str:
    error = re.findall(r"^(\w*(?:Error|Exception)\b.*)$", log, re.M)
    where = re.findall(r'File "(\S*envoi/\S+)", line (\d+)', log)
    text = error[-1][:200] if error else log.strip().splitlines()[-1][:200]
    return f"{text} (at {where[-1][0].split('envoi/', 1)[1]}:{where[-1][1]})" if where else text


if __name__ == "__main__":
    main()
