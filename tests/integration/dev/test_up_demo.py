"""`envoi up`'s demo: an API key, an SMTP login and dashboard sign-ins that work, and survive a restart."""

from __future__ import annotations

from envoi.dev import up


def test_the_printed_dashboard_sign_ins_work_and_are_kept_across_restarts(settings, services, tmp_path):
    first = up._demo(settings, tmp_path)
    (tmp_path / "demo.env").write_text("".join(f"{k}={v}\n" for k, v in first.items()))
    user, _ = services.users.login(first["ENVOI_DASHBOARD_EMAIL"], first["ENVOI_DASHBOARD_PASSWORD"])
    assert user["role"] == "admin" and user["account_id"] == int(first["ENVOI_ACCOUNT_ID"])
    operator, _ = services.users.login(first["ENVOI_OPERATOR_EMAIL"], first["ENVOI_OPERATOR_PASSWORD"])
    assert operator["account_id"] is None

    again = up._demo(settings, tmp_path)
    assert again == first  # same account, key and passwords

    lost = {k: v for k, v in first.items() if k != "ENVOI_DASHBOARD_PASSWORD"}
    (tmp_path / "demo.env").write_text("".join(f"{k}={v}\n" for k, v in lost.items()))
    renewed = up._demo(settings, tmp_path)
    assert renewed["ENVOI_DASHBOARD_PASSWORD"] != first["ENVOI_DASHBOARD_PASSWORD"]
    user, _ = services.users.login(renewed["ENVOI_DASHBOARD_EMAIL"], renewed["ENVOI_DASHBOARD_PASSWORD"])
    assert user["account_id"] == int(first["ENVOI_ACCOUNT_ID"])


def test_the_banner_shows_the_dashboard_and_its_sign_in():
    values = {"ENVOI_API_URL": "http://127.0.0.1:8025", "ENVOI_API_KEY": "k", "ENVOI_DOMAIN": up.DEMO_DOMAIN,
              "ENVOI_SINK_URL": "http://127.0.0.1:8026", "ENVOI_SMTP_HOST": "127.0.0.1", "ENVOI_SMTP_PORT": "2587",
              "ENVOI_SMTP_USER": "postmaster@x", "ENVOI_SMTP_PASSWORD": "p",
              "ENVOI_DASHBOARD_EMAIL": up.DEMO_ADMIN, "ENVOI_DASHBOARD_PASSWORD": "secret-one",
              "ENVOI_OPERATOR_EMAIL": up.DEMO_OPERATOR, "ENVOI_OPERATOR_PASSWORD": "secret-two"}
    banner = up._banner(values)
    assert "http://127.0.0.1:8025/dashboard" in banner
    assert up.DEMO_ADMIN in banner and "secret-one" in banner and "secret-two" in banner
