"""Browser tests: Playwright driving Debian's Chromium (/usr/bin/chromium, installed by `./dev test`).

Fixtures (registered in tests/conftest.py):

* ``browser``: a headless Chromium, one per test module (see below why not per session); tests/browser/
  conftest.py makes it one for that whole package, whose modules all run with it.
* ``page``: a fresh browser context and page per test; when the test fails, a full-page screenshot is
  saved to ``test-screenshots/<test name>.png`` (or $ENVOI_TEST_SCREENSHOTS) and its path is shown
  with the failure.

Helper: ``axe_violations(page, impact=("critical",))`` runs axe-core in the page and returns the
violations of those impacts (each a dict with "id", "impact", "help", "nodes").

Playwright's sync API keeps an asyncio loop marked as running in the main thread while it is started,
so ``asyncio.run()`` (aiosmtplib clients in many tests) fails until it is stopped. Stopping it at the
end of each module (of the package, for tests/browser) keeps the rest of the suite unaffected; inside a browser test module, send mail
with smtplib rather than asyncio.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.paths import ROOT

CHROMIUM = os.environ.get("ENVOI_TEST_CHROMIUM", "/usr/bin/chromium")
SCREENSHOTS = Path(os.environ.get("ENVOI_TEST_SCREENSHOTS", ROOT / "test-screenshots"))


def launched_chromium() -> Iterator[Any]:
    """Playwright and a headless Chromium, closed when the generator is."""
    if not os.access(CHROMIUM, os.X_OK):
        # Fail, not skip: a CI run without a browser must not pass silently. `./dev test` installs it.
        pytest.fail(f"Chromium not found at {CHROMIUM}: run ./dev test (installs it) or "
                    "`apt-get install chromium`", pytrace=False)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"], headless=True)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def browser():
    yield from launched_chromium()


@pytest.fixture
def page(browser, request):
    context = browser.new_context()
    page = context.new_page()
    try:
        yield page
        report = getattr(request.node, "rep_call", None)  # set by tests/conftest.py's makereport hook
        if report is not None and report.failed:
            path = screenshot_path(request.node.name)
            path.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(path), full_page=True)
            print(f"screenshot: {path}")
            # The call's report is the one shown under FAILURES: name the file there too.
            report.sections.append(("screenshot", str(path)))
    finally:
        context.close()


def screenshot_path(test_name: str) -> Path:
    return SCREENSHOTS / (re.sub(r"[^A-Za-z0-9_.-]+", "_", test_name) + ".png")


def axe_violations(page, impact: tuple[str, ...] = ("critical",)) -> list[dict[str, Any]]:
    """axe-core's violations on the page as it is now, keeping those of the given impacts."""
    from axe_playwright_python.sync_playwright import Axe

    results = Axe().run(page)
    return [v for v in results.response["violations"] if v.get("impact") in impact]


def critical_violations(page) -> list[str]:
    """The ids of axe-core's critical violations on the page (what every page test asserts is empty)."""
    return [v["id"] for v in axe_violations(page)]
