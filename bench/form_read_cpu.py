"""CPU of read_form() per request for the send benchmark's bodies (no server, no database, no compose).

    .venv/bin/python bench/form_read_cpu.py [--kinds urlencoded,multipart,attachment] [--n 2000] [--rounds 7]
    PYTHONPATH=/tmp/envoi-base .venv/bin/python bench/form_read_cpu.py    # another checkout's reader

envoi.api.forms.read_form on a falcon Request (built as the app builds it, with the app's multipart
options) of bench/api_accept_cpu.py's bodies (bench/wrk_messages.lua's: ~5 KB text, a new recipient
each; `attachment` adds the ~2 KB PDF part), each upload's bytes read as compose reads them.
Printed: the best round per kind, in microseconds of process CPU per request.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import falcon
import falcon.testing

sys.path.insert(0, str(Path(__file__).resolve().parent))
from api_accept_cpu import body  # noqa: E402

from envoi.api import forms  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kinds", default="urlencoded,multipart,attachment")
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    app = falcon.App()
    forms.configure(app)
    for kind in args.kinds.split(","):
        best = float("inf")
        for r in range(args.rounds):
            environs = []
            for i in range(r * args.n, (r + 1) * args.n):
                path, ctype, data = body(kind, "bench.example.test", "run", i)
                environs.append(falcon.testing.create_environ(path=path, method="POST", body=data,
                                                              headers={"Content-Type": ctype}))
            start = time.process_time()
            for env in environs:
                _, files = forms.read_form(falcon.Request(env, options=app.req_options))
                for uploads in files.values():
                    for upload in uploads:
                        upload.data  # noqa: B018 - compose reads it
            best = min(best, (time.process_time() - start) / args.n * 1e6)
        print(f"{kind}: {best:.1f} us per request (best of {args.rounds})", flush=True)


if __name__ == "__main__":
    main()
