"""tests/support/browser.py itself: a failing browser test leaves a screenshot, a missing Chromium fails.

Each case runs pytest in a subprocess over a small test file using the real fixtures and Chromium.
"""

from __future__ import annotations

import os

import pytest

from tests.support.paths import ROOT

pytest_plugins = ("pytester",)

CONFTEST = """
import pytest

pytest_plugins = ["tests.support.browser"]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report
"""

TESTS = """
def test_fails_on_purpose(page):
    page.set_content("<h1>Harness</h1>")
    assert page.locator("h1").inner_text() == "Something else"


def test_passes(page):
    page.set_content("<main><h1>Harness</h1></main>")
    assert page.locator("h1").inner_text() == "Harness"
"""


@pytest.fixture
def inner(pytester, monkeypatch, tmp_path):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("ENVOI_TEST_SCREENSHOTS", str(tmp_path / "shots"))
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_inner=TESTS)
    return pytester


def test_a_failing_browser_test_leaves_a_full_page_screenshot(inner, tmp_path):
    result = inner.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1, passed=1)
    shot = tmp_path / "shots" / "test_fails_on_purpose.png"
    assert shot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert [p.name for p in (tmp_path / "shots").iterdir()] == [shot.name]  # none for the passing test
    result.stdout.fnmatch_lines([f"*{shot}*"])  # named in the failure report


def test_a_missing_chromium_fails_the_browser_tests(inner, monkeypatch):
    monkeypatch.setenv("ENVOI_TEST_CHROMIUM", "/nonexistent/chromium")
    result = inner.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(errors=2)  # failed, not skipped
    result.stdout.fnmatch_lines(["*Chromium not found at /nonexistent/chromium*./dev test*"])
