"""A person imports a suppression list in Chromium: the CSV goes up through suppressions.js (XHR, a
<progress> bar), the server's count is shown, the new rows appear in the list without a reload."""

from __future__ import annotations

from tests.support.dashboard import sign_in, user_of


def test_importing_a_csv_shows_progress_then_the_rows(page, live_url, services, account, domain, tmp_path, db):
    email, password = user_of(services, account, "support")
    addresses = [f"imported{n:02}@dest.test" for n in range(12)]
    csv_file = tmp_path / "bounces.csv"
    csv_file.write_text("address,code,error\n" + "".join(f"{a},550,gone\n" for a in addresses))
    errors = []
    page.on("pageerror", lambda ex: errors.append(str(ex)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)

    sign_in(page, live_url, email, password, then="/dashboard/suppressions")
    page.wait_for_url("**/dashboard/suppressions")
    assert page.locator("#entries tr[data-entry]").count() == 0

    page.set_input_files("#import-file", str(csv_file))
    page.click("#import-form button[type=submit]")
    page.wait_for_selector("#import-progress[data-done=true]")
    assert page.locator("#import-progress").get_attribute("value") == "100"
    page.wait_for_function("document.getElementById('import-result').textContent.includes('Imported 12')")
    page.wait_for_selector(f'#entries tr[data-entry="{addresses[-1]}"]')
    assert page.locator("#entries tr[data-entry]").count() == 12
    assert page.url.endswith("/dashboard/suppressions")  # no navigation: the script did the upload
    assert sorted(i["address"] for i in services.suppressions.export(domain, "bounces")) == sorted(addresses)
    assert errors == []  # nothing refused by the CSP, no script error
