"""Chromium starts under Playwright (the one browser test that runs, and says why, when the rest cannot)."""

from __future__ import annotations


def test_chromium_starts_under_playwright(browser):
    page = browser.new_page()
    try:
        page.set_content("<p id='probe'>ready</p>")
        assert page.inner_text("#probe") == "ready"
    finally:
        page.close()
    assert browser.version
