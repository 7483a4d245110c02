"""`--gradio-auth user:pass`: the page and every route answer 401 with an HTTP Basic challenge without
credentials; with them, the page loads and generates."""

from __future__ import annotations

import json
import re
import urllib.request

import pytest
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import Page

from tests.browser.harness import (
    CHECKPOINTS,
    basic_auth_header,
    http_status,
    open_page,
    start_server,
    write_tiny_checkpoints,
)
from tests.browser.ui import CHECKPOINT_DROPDOWN, choose, generate, open_ui, small_job, unique_prompt

CREDENTIALS = ("user", "pass")

# Routes that are not in /openapi.json: Gradio's own (config, queue, uploads, files, static assets)
# and A1111-style file routes. Each must refuse an anonymous request too.
NON_API_ROUTES = [
    ("GET", "/"),
    ("GET", "/config"),
    ("GET", "/gradio_api/info"),
    ("GET", "/gradio_api/config"),
    ("POST", "/gradio_api/queue/join"),
    ("GET", "/gradio_api/queue/data?session_hash=x"),
    ("POST", "/gradio_api/upload"),
    ("GET", "/gradio_api/file=README.md"),
    ("GET", "/file=README.md"),
    ("GET", "/theme.css"),
    ("GET", "/favicon.ico"),
    ("GET", "/docs"),
    ("GET", "/openapi.json"),
    ("GET", "/no-such-route"),
]


@pytest.fixture(scope="module")
def auth_server(browser, tmp_path_factory, artifacts_dir):
    data_dir = tmp_path_factory.mktemp("atelier-auth-data")
    write_tiny_checkpoints(data_dir, CHECKPOINTS)
    server = start_server(data_dir, artifacts_dir / "server-auth.log",
                          ["--gradio-auth", ":".join(CREDENTIALS)], credentials=CREDENTIALS)
    yield server
    server.stop()


@pytest.fixture
def anonymous_page(browser, request, artifacts_dir, auth_server):
    yield from open_page(browser, request, artifacts_dir, auth_server)


@pytest.fixture
def logged_in_page(browser, request, artifacts_dir, auth_server):
    credentials = {"username": CREDENTIALS[0], "password": CREDENTIALS[1]}
    yield from open_page(browser, request, artifacts_dir, auth_server, http_credentials=credentials)


def api_routes(server) -> list[tuple[str, str]]:
    """Every (method, path) the server's OpenAPI schema lists, path parameters filled with `x`."""
    request = urllib.request.Request(server.url + "/openapi.json", headers=basic_auth_header(CREDENTIALS))
    with urllib.request.urlopen(request, timeout=10) as response:
        schema = json.load(response)
    return [(method.upper(), re.sub(r"\{[^}]+\}", "x", path))
            for path, operations in schema["paths"].items() for method in operations
            if method.upper() in ("GET", "POST", "PUT", "PATCH", "DELETE")]


def test_page_without_credentials_is_refused(anonymous_page: Page, auth_server):
    url = auth_server.url + "/"
    # Chromium answers an HTTP Basic challenge it has no credentials for by failing the navigation
    # (net::ERR_INVALID_AUTH_CREDENTIALS); a person would see the login prompt. The 401 itself is
    # caught as the response event.
    with anonymous_page.expect_response(url) as answer:
        try:
            anonymous_page.goto(url)
        except PlaywrightError as error:
            assert "ERR_INVALID_AUTH_CREDENTIALS" in str(error), error
    response = answer.value
    assert response.status == 401
    assert response.headers.get("www-authenticate", "").lower().startswith("basic"), response.headers
    assert anonymous_page.locator("#txt2img_prompt").count() == 0


def test_every_route_asks_for_login(auth_server):
    routes = api_routes(auth_server)
    assert ("GET", "/sdapi/v1/sd-models") in routes and ("POST", "/sdapi/v1/txt2img") in routes, routes
    wrong = basic_auth_header(("user", "wrong"))
    open_routes = []
    for method, path in NON_API_ROUTES + routes:
        body = b"{}" if method in ("POST", "PUT", "PATCH") else None
        for headers in ({}, wrong):
            status, response_headers = http_status(auth_server.url + path, method, headers, body)
            challenge = {k.lower(): v for k, v in response_headers.items()}.get("www-authenticate", "")
            if status != 401 or not challenge.lower().startswith("basic"):
                open_routes.append(f"{method} {path} {'(wrong password)' if headers else ''}-> {status}")
    assert not open_routes, "routes answering without valid credentials:\n" + "\n".join(open_routes)
    # The right credentials open a route (so the 401s above are about credentials, not a broken server).
    assert http_status(auth_server.url + "/sdapi/v1/sd-models", headers=basic_auth_header(CREDENTIALS))[0] == 200


def test_with_credentials_the_page_loads_and_generates(logged_in_page: Page, auth_server):
    open_ui(logged_in_page, auth_server.url)
    choose(logged_in_page, CHECKPOINT_DROPDOWN, "beta")
    small_job(logged_in_page)
    info = generate(logged_in_page, unique_prompt("a locked door"))
    assert "Model: beta" in info, info
