"""One Chromium for the whole browser package rather than one per module.

Each launch (Playwright's driver and Chromium) took 1.2-2.4 s of setup per module on the loaded 2-core
machine; every test still gets a fresh browser context and page (tests/support/browser.py's `page`), so
no cookie, storage or page state passes between tests. Every module here already runs with Playwright's
loop started (no asyncio.run in the main thread: tests/support/browser.py); pytest tears the fixture down
before the first test outside this package, so the rest of the suite is unaffected, in any order.
"""

from __future__ import annotations

import pytest

from tests.support.browser import launched_chromium


@pytest.fixture(scope="package")
def browser():
    yield from launched_chromium()
