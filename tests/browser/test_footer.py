"""The page footer: A1111's links (API docs with --api, Reload UI) and the versions line, in place of
Gradio's own footer (whose settings panel speaks to developers)."""

from __future__ import annotations

import platform
from importlib import metadata

from playwright.sync_api import Page, expect

from tests.browser.ui import open_ui


def test_footer_has_a1111_links_and_versions_and_no_gradio_footer(page: Page, atelier_server):
    open_ui(page, atelier_server.url)
    footer = page.locator("#footer")
    expect(footer).to_be_visible()
    api = footer.get_by_role("link", name="API", exact=True)
    expect(api).to_have_attribute("href", "docs")  # the session's server runs with --api
    assert page.request.get(atelier_server.url + "/docs").status == 200
    expect(footer.get_by_role("link", name="Reload UI", exact=True)).to_be_visible()
    versions = footer.locator(".versions")
    expect(versions).to_contain_text(f"python: {platform.python_version()}")
    for package in ("torch", "diffusers", "gradio"):
        expect(versions).to_contain_text(f"{package}: {metadata.version(package)}")
    # Gradio's footer (its API, "Built with Gradio" and Settings links) is gone.
    expect(page.locator("footer")).to_have_count(0)
    expect(page.get_by_role("button", name="Settings", exact=True)).to_have_count(0)
    expect(page.get_by_text("Built with Gradio")).to_have_count(0)


def test_reload_ui_reloads_the_page(page: Page, atelier_server):
    open_ui(page, atelier_server.url)
    page.evaluate("window.__before_reload = true")
    page.locator("#footer").get_by_role("link", name="Reload UI", exact=True).click()
    expect(page.locator("body")).to_have_attribute("data-atelier-ui-loaded", "true", timeout=60_000)
    page.wait_for_function("window.__before_reload === undefined", timeout=60_000)
    assert page.url.rstrip("/") == atelier_server.url
