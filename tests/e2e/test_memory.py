"""Large requests against a real `envoi api` (gunicorn): the worker's memory stays bounded and shrinks back.

Measured on this 2-core machine, one worker with 16 threads, starting at ~74 MB RSS
(`./dev test tests/e2e/test_memory.py -s` prints MEASURED lines):
- 8 concurrent 50 MB requests (refused: the message cannot fit in 25 MB): peak +2,066 MB and
  +1,127 MB kept before this change; now peak +21 MB, +7 MB kept.
- 8 concurrent largest accepted messages (18 MB attachment, 24.6 MB message): before, none was
  answered within 120 s (one transaction carried all eight); now peak +218 MB, +47 MB kept (two
  pooled Postgres connections keep a send buffer the size of the largest message they sent).
- 8 concurrent 50 MB urlencoded requests (refused): +502 MB peak with the urlencoded body parsed by
  parse_qs, and ~150 MB kept by the threads' last tracebacks; now peak +205 MB, +7 MB kept.
"""

from __future__ import annotations

import base64
import http.client
import os
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.support.api import multipart
from tests.support.processes import Proc, envoi, free_port, http_ok, process_env

pytestmark = pytest.mark.e2e

MB = 1024 * 1024
# Growth of the worker's RSS over its baseline while serving 8 concurrent requests, and what may stay
# after them (README "Limits"), with room over the figures above.
MAX_PEAK_GROWTH_REFUSED = 100 * MB  # 8 x 50 MB requests whose message cannot fit (413)
MAX_PEAK_GROWTH_ACCEPTED = 400 * MB  # 8 x the largest message that is accepted (25 MB)
OCTETS = "application/octet-stream"
MAX_PEAK_GROWTH_URLENCODED = 400 * MB  # 8 x 50 MB urlencoded text (413): read in memory
MAX_KEPT = 80 * MB  # RSS over baseline once the requests are done


@pytest.fixture
def api(tmp_path, settings, services, domain, api_key):
    port = free_port()
    proc = Proc("api", envoi("api", "--bind", f"127.0.0.1:{port}", "--workers", "1"),
                process_env(settings, TMPDIR=str(tmp_path)), tmp_path)
    try:
        proc.wait_ready(lambda: http_ok(f"http://127.0.0.1:{port}/healthz"))
        yield {"port": port, "proc": proc, "domain": domain["name"], "key": api_key}
    finally:
        proc.stop()
        with services.db.transaction() as conn:  # the big messages it queued are not for later tests
            conn.execute("DELETE FROM recipients WHERE domain_id = %s", (domain["id"],))


def worker_pid(master: int) -> int:
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    assert len(children) == 1, children
    return int(children[0])


def rss(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(field)


def reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets VmHWM to the current RSS


def post(api, body: bytes, content_type: str, chunked: bool = False) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", api["port"], timeout=120)
    auth = base64.b64encode(f"api:{api['key']}".encode()).decode()
    headers = {"Authorization": f"Basic {auth}", "Content-Type": content_type}
    try:
        if chunked:
            chunks = (body[i:i + MB] for i in range(0, len(body), MB))
            conn.request("POST", f"/v3/{api['domain']}/messages", body=chunks, headers=headers, encode_chunked=True)
        else:
            conn.request("POST", f"/v3/{api['domain']}/messages", body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


def fields(api) -> dict[str, str]:
    return {"from": f"a@{api['domain']}", "to": "b@one.test", "subject": "big", "text": "see attached"}


def load(api, body: bytes, content_type: str, n: int = 8) -> tuple[list, int, int, int]:
    """Send n copies at once; return (statuses, baseline, peak, after) RSS of the worker."""
    pid = worker_pid(api["proc"].popen.pid)
    post(api, *multipart(fields(api).items(), [("attachment", "warm.bin", OCTETS, b"x" * 2 * MB)]))  # warm the code paths
    time.sleep(0.5)
    baseline = rss(pid)
    reset_peak(pid)
    with ThreadPoolExecutor(n) as pool:
        try:
            results = list(pool.map(lambda _: post(api, body, content_type), range(n)))
        except TimeoutError as ex:
            raise AssertionError(api["proc"].output()) from ex
    peak = rss(pid, "VmHWM")
    time.sleep(1.0)
    return results, baseline, peak, rss(pid)


def test_eight_concurrent_50mb_requests_keep_the_worker_small(api):
    body, content_type = multipart(fields(api).items(), [("attachment", "big.bin", OCTETS, os.urandom(50 * MB))])
    results, baseline, peak, after = load(api, body, content_type)
    measured = f"MEASURED baseline {baseline / MB:.0f} MB, peak +{(peak - baseline) / MB:.0f} MB, " \
               f"after +{(after - baseline) / MB:.0f} MB"
    print(measured)
    assert all(status == 413 and "exceeds the limit" in text for status, text in results), results
    assert peak - baseline < MAX_PEAK_GROWTH_REFUSED, measured
    assert after - baseline < MAX_KEPT, measured


def test_eight_concurrent_largest_accepted_messages_then_memory_goes_back(api):
    data = secrets.token_bytes(18 * MB)  # base64 makes it ~24.6 MB: just under the 25 MB limit
    body, content_type = multipart(fields(api).items(), [("attachment", "big.bin", OCTETS, data)])
    results, baseline, peak, after = load(api, body, content_type)
    measured = f"MEASURED baseline {baseline / MB:.0f} MB, peak +{(peak - baseline) / MB:.0f} MB, " \
               f"after +{(after - baseline) / MB:.0f} MB"
    print(measured)
    assert all(status == 200 for status, _ in results), results
    assert peak - baseline < MAX_PEAK_GROWTH_ACCEPTED, measured
    assert after - baseline < MAX_KEPT, measured


def test_a_chunked_multipart_request_is_read_not_a_500(api):
    body, content_type = multipart(fields(api).items(), [("attachment", "a.txt", OCTETS, b"hello")])
    status, text = post(api, body, content_type, chunked=True)
    assert status == 200, text + api["proc"].output()
    status, text = post(api, b"--x\r\ngarbage", "multipart/form-data; boundary=x", chunked=True)
    assert status == 400 and '"message"' in text, text


def test_eight_concurrent_50mb_urlencoded_requests_keep_the_worker_small(api):
    body = ("from=a%40" + api["domain"] + "&to=b%40one.test&subject=big&text=" + "x" * (50 * MB)).encode()
    results, baseline, peak, after = load(api, body, "application/x-www-form-urlencoded")
    measured = f"MEASURED baseline {baseline / MB:.0f} MB, peak +{(peak - baseline) / MB:.0f} MB, " \
               f"after +{(after - baseline) / MB:.0f} MB"
    print(measured)
    assert all(status == 413 and "exceeds the limit" in text for status, text in results), \
        (results[:1], api["proc"].output())
    assert peak - baseline < MAX_PEAK_GROWTH_URLENCODED, measured
    assert after - baseline < MAX_KEPT, measured
