"""SQL for the MTA-STS policy cache and the TLS-RPT result counts (0120_mta_sts_tls_reports.sql)."""

from __future__ import annotations

from datetime import date


def load_policy(conn, domain: str) -> dict | None:
    return conn.execute(
        "SELECT domain, policy_id, mode, mx, max_age, policy_text, extract(epoch FROM expires_at) AS expires"
        " FROM mta_sts_policies WHERE domain = %s", (domain,)).fetchone()


def save_policy(conn, domain: str, policy_id: str, mode: str, mx: list[str], max_age: int, text: str) -> None:
    conn.execute(
        "INSERT INTO mta_sts_policies (domain, policy_id, mode, mx, max_age, policy_text, fetched_at, expires_at)"
        " VALUES (%s, %s, %s, %s, %s, %s, now(), now() + make_interval(secs => %s))"
        " ON CONFLICT (domain) DO UPDATE SET policy_id = EXCLUDED.policy_id, mode = EXCLUDED.mode,"
        " mx = EXCLUDED.mx, max_age = EXCLUDED.max_age, policy_text = EXCLUDED.policy_text,"
        " fetched_at = EXCLUDED.fetched_at, expires_at = EXCLUDED.expires_at",
        (domain, policy_id, mode, mx, max_age, text, max_age))


def add_results(conn, rows: list[tuple]) -> None:
    """rows: (day, policy_domain, policy_type, policy_id, result_type, receiving_mx, receiving_ip,
    sending_ip, detail, sessions); counts are added to what the day already has."""
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO tls_report_results (day, policy_domain, policy_type, policy_id, result_type,"
            " receiving_mx, receiving_ip, sending_ip, detail, sessions)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (policy_domain, day, policy_type, policy_id, result_type, receiving_mx, receiving_ip,"
            " sending_ip) DO UPDATE SET sessions = tls_report_results.sessions + EXCLUDED.sessions,"
            " detail = CASE WHEN EXCLUDED.detail = '' THEN tls_report_results.detail ELSE EXCLUDED.detail END",
            rows)


def results(conn, domain: str, day: date) -> list[dict]:
    return conn.execute(
        "SELECT r.*, p.policy_text, p.mx FROM tls_report_results r"
        " LEFT JOIN mta_sts_policies p ON p.domain = r.policy_domain AND p.policy_id = r.policy_id"
        " WHERE r.policy_domain = %s AND r.day = %s"
        " ORDER BY r.policy_type, r.policy_id, r.result_type, r.receiving_mx, r.receiving_ip, r.sending_ip",
        (domain, day)).fetchall()


def domains(conn, day: date) -> list[str]:
    return [r["policy_domain"] for r in conn.execute(
        "SELECT DISTINCT policy_domain FROM tls_report_results WHERE day = %s ORDER BY 1", (day,)).fetchall()]
