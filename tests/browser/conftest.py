"""Browser tests: Debian's Chromium driven by Playwright against the real server on tiny checkpoints.

Chromium is $ATELIER_CHROMIUM, else `chromium` / `chromium-browser` on PATH; Playwright's own browser
downloads are never used. Without Chromium (or the playwright package) the tests skip with the
reason, except in CI (CI=true), where either one missing is a failure. Every test leaves a
screenshot in $ATELIER_TEST_ARTIFACTS/browser/ (default test-artifacts/browser/); a failing one also
leaves the page's HTML, its console messages and the server log.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.browser.harness import (
    ARTIFACTS_DIR,
    CHECKPOINTS,
    find_chromium,
    in_ci,
    open_page,
    start_server,
    write_extra_networks,
    write_tiny_checkpoints,
)

BROWSER_DIR = Path(__file__).resolve().parent
try:
    import playwright  # noqa: F401  (the package only; the API is imported where it is used)

    HAVE_PLAYWRIGHT = True
except ImportError:
    HAVE_PLAYWRIGHT = False

if not HAVE_PLAYWRIGHT:
    # The test modules import playwright; test_browser_available.py alone reports why (skip or fail).
    collect_ignore_glob = ["test_[!b]*.py"]


def pytest_configure(config):
    config.addinivalue_line("markers", "browser: drives Chromium against a running server (tests/browser)")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if BROWSER_DIR in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.browser)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    # Keep each phase's report on the item, so a fixture can tell at teardown whether the test failed.
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


def _unavailable(reason: str) -> None:
    if in_ci():
        pytest.fail(f"{reason}. CI=true: the browser tests must run in CI (.ci/run installs Debian's chromium).",
                    pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def chromium_path() -> str:
    path = find_chromium()
    if path is None:
        where = (f"ATELIER_CHROMIUM={os.environ['ATELIER_CHROMIUM']!r} is not an executable"
                 if os.environ.get("ATELIER_CHROMIUM") else "no `chromium` on PATH")
        _unavailable(f"browser tests need Debian's chromium: {where} (apt-get install chromium, or set "
                     "ATELIER_CHROMIUM to a Chromium binary)")
    return path


@pytest.fixture(scope="session")
def browser(chromium_path):
    if not HAVE_PLAYWRIGHT:
        _unavailable("browser tests need the playwright package (requirements-test.txt)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        # --no-sandbox: CI containers run as root, where Chromium's sandbox refuses to start.
        browser = playwright.chromium.launch(executable_path=chromium_path, headless=True,
                                             args=["--no-sandbox", "--disable-dev-shm-usage"])
        yield browser
        browser.close()


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """Emptied at the start of a session, so every file in it is from this run."""
    shutil.rmtree(ARTIFACTS_DIR, ignore_errors=True)
    ARTIFACTS_DIR.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS_DIR


@pytest.fixture(scope="session")
def atelier_server(browser, tmp_path_factory, artifacts_dir):
    """One server for the session (its start-up is the slow part): two tiny checkpoints, `--api`."""
    data_dir = tmp_path_factory.mktemp("atelier-data")
    write_tiny_checkpoints(data_dir, CHECKPOINTS)
    write_extra_networks(data_dir)
    server = start_server(data_dir, artifacts_dir / "server.log")
    yield server
    server.stop()


@pytest.fixture
def page(browser, request, artifacts_dir, atelier_server):
    yield from open_page(browser, request, artifacts_dir, atelier_server)
