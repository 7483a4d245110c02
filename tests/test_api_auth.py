"""Auth on every route: the flags, the fall-backs between UI and API credentials, and an enumeration
of every route the app serves (FastAPI's and a mounted Gradio app's), each refusing a request
without credentials. No route may echo a password."""

from __future__ import annotations

import argparse
import dataclasses
import re

import pytest
from fastapi.routing import iter_route_contexts
from fastapi.testclient import TestClient
from starlette.routing import Mount, WebSocketRoute
from starlette.websockets import WebSocketDisconnect

from modules.api.auth import AuthPolicy, Credentials, parse_credentials
from modules.api.server import create_app
from modules.serving.app_context import AppContext
from modules.serving.cmd_args import build_parser, parse_args
from tests.test_api_support import basic_auth

UI_PASSWORD = "s3cret-ui-pw"
API_PASSWORD = "s3cret-api-pw"
FILE_PASSWORD = "pw-from-file"


def args_for(*flags: str, data_dir="/nonexistent") -> argparse.Namespace:
    """The flags as argparse reads them, without parse_args' own checks (tested on their own)."""
    return build_parser().parse_args(["--data-dir", str(data_dir), *flags])


def test_credentials_split_on_commas_newlines_and_the_first_colon():
    assert parse_credentials('"alice:pa:ss, bob:x\ncarol:"', "--gradio-auth") == [
        ("alice", "pa:ss"), ("bob", "x"), ("carol", "")]
    with pytest.raises(ValueError, match="credential 2 has no ':'") as error:
        parse_credentials("alice:x,hunter2", "--api-auth")
    assert "hunter2" not in str(error.value)  # a malformed entry may be a password: never echoed
    with pytest.raises(SystemExit):
        parse_args(["--api-auth", "nocolon"])


def test_credentials_accept_only_exact_pairs():
    credentials = Credentials([("alice", "pw"), ("bob", "other")])
    assert credentials.accepts(b"alice", b"pw") and credentials.accepts(b"bob", b"other")
    assert not credentials.accepts(b"alice", b"other") and not credentials.accepts(b"alice", b"pw ")
    assert not credentials.accepts(b"", b"")


def test_each_side_falls_back_to_the_others_credentials(tmp_path):
    secrets = tmp_path / "auth.txt"
    secrets.write_text(f"filed:{FILE_PASSWORD}\nsecond:two, third:three\n", encoding="utf-8")
    only_ui = AuthPolicy.from_args(args_for("--gradio-auth", f"ui:{UI_PASSWORD}", "--gradio-auth-path", str(secrets)))
    assert only_ui.api is only_ui.ui and len(only_ui.ui) == 4
    assert only_ui.for_path("/sdapi/v1/txt2img").accepts(b"filed", FILE_PASSWORD.encode())
    only_api = AuthPolicy.from_args(args_for("--api-auth", f"api:{API_PASSWORD}"))
    assert only_api.ui is only_api.api  # the UI is not left open when only the API was given credentials
    both = AuthPolicy.from_args(args_for("--gradio-auth", f"ui:{UI_PASSWORD}", "--api-auth", f"api:{API_PASSWORD}"))
    assert both.for_path("/sdapi/v1/options").accepts(b"api", API_PASSWORD.encode())
    assert not both.for_path("/sdapi/v1/options").accepts(b"ui", UI_PASSWORD.encode())
    assert both.for_path("/openapi.json") is both.api and both.for_path("/") is both.ui
    assert both.for_path("/internal/ping") is both.ui and both.for_path("/file=outputs/x.png") is both.ui
    assert not AuthPolicy.from_args(args_for()).enabled
    with pytest.raises(ValueError, match="cannot read"):
        AuthPolicy.from_args(args_for("--gradio-auth-path", str(tmp_path / "missing.txt")))


def test_an_auth_flag_without_credentials_stops_the_start(tmp_path, capsys):
    """A flag meant to close the server must never leave it open: empty values and files are refused."""
    empty = tmp_path / "empty.txt"
    empty.write_text(" \n", encoding="utf-8")
    with pytest.raises(ValueError, match="no user:password pairs"):
        AuthPolicy.from_args(args_for("--gradio-auth-path", str(empty)))
    for argv in (["--gradio-auth-path", str(empty)], ["--gradio-auth-path", str(tmp_path / "missing.txt")],
                 ["--gradio-auth", ""], ["--api-auth", " , "]):
        with pytest.raises(SystemExit):
            parse_args(argv)
        assert argv[0] in capsys.readouterr().err


@pytest.fixture(scope="module")
def context(tmp_path_factory):
    return AppContext.from_args(parse_args(["--data-dir", str(tmp_path_factory.mktemp("api-auth"))]))


EXTENSION_WITH_A_ROUTE = """
from modules import script_callbacks


def add_route(demo, app):
    @app.get("/my-ext/hello")
    def hello():
        return {"hello": "world"}


script_callbacks.on_app_started(add_route)
"""


@pytest.fixture(scope="module")
def guarded_app(context):
    """The served app exactly as webui.py builds it: the real web UI at "/", the API, an extension
    that adds a route of its own in on_app_started, and both credential flags."""
    import webui

    scripts = context.paths.data_dir / "extensions" / "route-ext" / "scripts"
    scripts.mkdir(parents=True, exist_ok=True)
    (scripts / "route.py").write_text(EXTENSION_WITH_A_ROUTE, encoding="utf-8")
    args = parse_args(["--data-dir", str(context.paths.data_dir), "--api", "--gradio-auth", f"ui:{UI_PASSWORD}",
                       "--api-auth", f"api:{API_PASSWORD}"])
    served = dataclasses.replace(context, args=args)
    webui.load_extensions(served, args)
    return webui.build_app(args, served)


def served_routes(routes, prefix: str = "") -> list[tuple[str, str]]:
    """(method, path) for every route, recursing into included routers and mounted apps (FastAPI
    keeps included routers lazily: `iter_route_contexts` resolves them); path parameters filled in."""
    found = []
    for route_context in iter_route_contexts(routes):
        route = route_context.original_route
        if isinstance(route, Mount):
            if route.routes:
                found += served_routes(route.routes, prefix + route.path)
            else:  # a mounted app without routes of its own (static files)
                found.append(("GET", prefix + route.path + "/x"))
            continue
        path = re.sub(r"{[^}]+}", "x", prefix + route_context.path)
        if isinstance(route, WebSocketRoute):
            found.append(("WEBSOCKET", path))
        else:
            found += [(method, path) for method in sorted(route_context.methods or {"GET"})]
    return found


def test_every_route_refuses_a_request_without_credentials(guarded_app):
    client = TestClient(guarded_app)
    routes = served_routes(guarded_app.routes)
    paths = {path for _, path in routes}
    assert "/sdapi/v1/txt2img" in paths and "/docs" in paths and "/my-ext/hello" in paths
    assert any(path.startswith("/gradio_api") for path in paths), "the Gradio routes were not enumerated"
    assert len(routes) > 40
    for method, path in routes + [("GET", "/no/such/route"), ("GET", "/file=/etc/passwd")]:
        if method == "WEBSOCKET":
            with pytest.raises(WebSocketDisconnect) as closed, client.websocket_connect(path):
                pass
            assert closed.value.code == 1008, path
            continue
        response = client.request(method, path)
        assert response.status_code == 401, (method, path, response.status_code)
        assert response.headers["www-authenticate"].startswith("Basic")
        if method != "HEAD":
            assert response.json()["detail"] == "Incorrect username or password"
        wrong = client.request(method, path, headers=basic_auth("api" if "sdapi" in path else "ui", "wrong"))
        assert wrong.status_code == 401, (method, path)


def test_credentials_open_their_own_side_only(guarded_app):
    client = TestClient(guarded_app)
    api, ui = basic_auth("api", API_PASSWORD), basic_auth("ui", UI_PASSWORD)
    assert client.get("/sdapi/v1/samplers", headers=api).status_code == 200
    assert client.get("/openapi.json", headers=api).status_code == 200
    assert client.get("/sdapi/v1/samplers", headers=ui).status_code == 401
    assert client.get("/", headers=ui).status_code == 200
    assert client.get("/", headers=api).status_code == 401
    assert client.get("/my-ext/hello", headers=ui).json() == {"hello": "world"}
    # Atelier's API takes the API's credentials; the page's own opts route the browser's (the UI's).
    assert client.get("/atelier/v1/models/downloads", headers=api).status_code == 200
    assert client.get("/atelier/v1/models/downloads", headers=ui).status_code == 401
    assert client.get("/atelier/opts.json", headers=ui).status_code == 200
    assert client.get("/atelier/opts.json", headers=api).status_code == 401
    for header in ({"Authorization": "Bearer abc"}, {"Authorization": "Basic %%%"},
                   {"Authorization": "Basic " + "YXBp"}):  # "api" without a colon
        assert client.get("/sdapi/v1/samplers", headers=header).status_code == 401


def test_no_route_echoes_a_password_or_the_auth_file(context, tmp_path):
    from modules.api.auth import install_auth

    secrets = tmp_path / "auth.txt"
    secrets.write_text(f"filed:{FILE_PASSWORD}", encoding="utf-8")
    args = parse_args(["--data-dir", str(context.paths.data_dir), "--nowebui", "--api-auth", f"api:{API_PASSWORD}",
                       "--gradio-auth", f"ui:{UI_PASSWORD}", "--gradio-auth-path", str(secrets)])
    app = create_app(dataclasses.replace(context, args=args), api=True)
    install_auth(app, args)
    client = TestClient(app)
    flags = client.get("/sdapi/v1/cmd-flags", headers=basic_auth("api", API_PASSWORD)).json()
    assert flags["api_auth"] == flags["gradio_auth"] == flags["gradio_auth_path"] == "<redacted>"
    assert flags["nowebui"] is True and flags["data_dir"] == str(context.paths.data_dir)
    checked = 0
    for method, path in served_routes(app.routes):
        if method != "GET" or "x" in path.split("/"):
            continue
        response = client.get(path, headers=basic_auth("api", API_PASSWORD) if path != "/"
                              else basic_auth("ui", UI_PASSWORD))
        assert response.status_code == 200, (path, response.text)
        for secret in (API_PASSWORD, UI_PASSWORD, FILE_PASSWORD, str(secrets)):
            assert secret not in response.text, (path, secret)
        checked += 1
    assert checked >= 15


def test_webui_composes_the_api_only_server_with_the_ui_credentials_guarding_the_api(context):
    """`webui.build_app` with --nowebui and only --gradio-auth: the API is not left open (A1111's hole)."""
    import webui

    args = parse_args(["--data-dir", str(context.paths.data_dir), "--nowebui", "--gradio-auth", f"ui:{UI_PASSWORD}"])
    client = TestClient(webui.build_app(args, dataclasses.replace(context, args=args)))
    assert client.get("/sdapi/v1/samplers").status_code == 401
    assert client.get("/sdapi/v1/samplers", headers=basic_auth("ui", UI_PASSWORD)).status_code == 200
    page = client.get("/", headers=basic_auth("ui", UI_PASSWORD))
    assert page.status_code == 200 and "without the web UI" in page.text
