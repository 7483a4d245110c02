"""`/file=<path>` (modules.ui.file_route) as an attacker would use it: only the extensions' files and
the output folders in effect are served; hidden parts, traversal, links out, folders, private files,
odd characters are refused with 403, a missing allowed file is 404, and auth guards the route."""

from __future__ import annotations

import base64
from pathlib import Path
from types import SimpleNamespace

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from modules.api.auth import install_auth
from modules.extension_host.extensions import ExtensionFolders, load_extensions
from modules.serving.cmd_args import parse_args
from modules.serving.paths import REPO_ROOT, Paths
from modules.serving.settings import SettingsStore
from modules.ui.file_route import (
    FileMissing,
    FileRefused,
    file_url,
    install_file_route,
    private_files,
    resolve_file,
    served_roots,
)


def _context(data_dir: Path, *flags: str):
    args = parse_args(["--data-dir", str(data_dir), *flags])
    settings = SettingsStore(data_dir / "config.json")
    folders = ExtensionFolders(user=data_dir / "extensions", builtin=data_dir / "builtin")
    runtime = load_extensions(settings, args, folders)
    return SimpleNamespace(args=args, paths=Paths.from_args(args), settings=settings, extensions=runtime)


@pytest.fixture
def site(tmp_path):
    """A data folder with one extension, an output image, private files and things around them."""
    data = tmp_path / "data"
    (data / "builtin").mkdir(parents=True)
    ext = data / "extensions" / "sample"
    (ext / "javascript").mkdir(parents=True)
    (ext / "javascript" / "sample.js").write_text("console.log('sample');")
    (ext / "images").mkdir()
    (ext / "images" / "icon.png").write_bytes(b"\x89PNG fake")
    (ext / ".git").mkdir()
    (ext / ".git" / "config").write_text("[remote] secret")
    (ext / ".env").write_text("TOKEN=secret")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("secret outside")
    (ext / "escape.txt").symlink_to(outside / "secret.txt")  # a link leading out of the extension
    (ext / "escape-dir").symlink_to(outside)
    images = data / "outputs" / "txt2img-images" / "2026-01-01"
    images.mkdir(parents=True)
    (images / "00001-5.png").write_bytes(b"\x89PNG image")
    (data / "config.json").write_text("{}")
    (data / "cache.json").write_text("{}")
    (data / "models").mkdir()
    (data / "models" / "model.safetensors").write_bytes(b"weights")
    linked = tmp_path / "linked-extension"  # an extension linked into extensions/ from elsewhere
    (linked / "javascript").mkdir(parents=True)
    (linked / "javascript" / "linked.js").write_text("1;")
    (data / "extensions" / "linked").symlink_to(linked)
    context = _context(data)
    app = FastAPI()
    install_file_route(app, context)
    return SimpleNamespace(data=data, ext=ext, outside=outside, images=images, context=context,
                           client=TestClient(app))


def _status(client, url: str) -> int:
    return client.get(url).status_code


def test_serves_extension_files_and_outputs_with_or_without_the_mtime_query(site):
    client = site.client
    answer = client.get(f"/file={site.ext / 'javascript' / 'sample.js'}")
    assert answer.status_code == 200 and answer.text == "console.log('sample');"
    assert client.get(f"/file={site.ext / 'images' / 'icon.png'}?1700000000").content == b"\x89PNG fake"
    assert client.get(f"/file={site.images / '00001-5.png'}").content == b"\x89PNG image"
    assert client.get(f"/file={site.data / 'extensions' / 'linked' / 'javascript' / 'linked.js'}").text == "1;"
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert client.head(f"/file={site.ext / 'javascript' / 'sample.js'}").status_code == 200


def test_relative_paths_are_relative_to_the_install_folder(site):
    """A1111 writes `file=extensions/<name>/...` relative to its working folder, the install folder
    (`base`; a test's data folder stands in for it here)."""
    roots, private = served_roots(site.context), private_files(site.context)
    found = resolve_file("extensions/sample/javascript/sample.js", roots, private, base=site.data)
    assert found == (site.ext / "javascript" / "sample.js").resolve()
    with pytest.raises(FileRefused):
        resolve_file("extensions/sample/../../config.json", roots, private, base=site.data)
    with pytest.raises(FileMissing):
        resolve_file("extensions/sample/javascript/gone.js", roots, private, base=site.data)


def _raw_get(app, raw_path: bytes) -> int:
    """The status for a request line sent as is: HTTP clients (and browsers) remove `..` segments
    before sending, an attacker's own client does not."""
    import asyncio
    import threading
    from urllib.parse import unquote_to_bytes

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
             "path": unquote_to_bytes(raw_path).decode("utf-8", "surrogateescape"), "raw_path": raw_path,
             "root_path": "", "query_string": b"", "headers": [(b"host", b"testserver")],
             "server": ("testserver", 80), "client": ("127.0.0.1", 1234)}
    statuses: list[int] = []

    async def call():
        sent = []

        async def receive():
            if sent:  # the body was read; the client stays connected until the answer is sent
                await asyncio.Event().wait()
            sent.append(True)
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message):
            if message["type"] == "http.response.start":
                statuses.append(message["status"])

        await app(scope, receive, send)

    # A new event loop in its own thread: the test may itself run inside a loop.
    thread = threading.Thread(target=lambda: asyncio.run(call()))
    thread.start()
    thread.join()
    return statuses[0]


@pytest.mark.parametrize("raw", [
    b"/file={ext}/javascript/../../../config.json",
    b"/file={ext}/%2e%2e/%2e%2e/config.json",
    b"/file={ext}/javascript/..%2f..%2f..%2fcache.json",
    b"/file=../../../../../../etc/passwd",
    b"/file={ext}/images/../.git/config",
])
def test_raw_traversal_is_refused(site, raw):
    app = FastAPI()
    install_file_route(app, site.context)
    assert _raw_get(app, raw.replace(b"{ext}", str(site.ext).encode())) == 403
    assert _raw_get(app, f"/file={site.ext}/javascript/sample.js".encode()) == 200  # the helper works


def test_missing_file_in_an_allowed_folder_is_404(site):
    assert _status(site.client, f"/file={site.ext / 'javascript' / 'nope.js'}") == 404
    assert _status(site.client, f"/file={site.images / 'nope.png'}") == 404


@pytest.mark.parametrize("build", [
    lambda s: f"/file={s.ext / '.git' / 'config'}",  # hidden folder
    lambda s: f"/file={s.ext / '.env'}",  # hidden file
    lambda s: f"/file={s.ext}/javascript/../../../config.json",  # traversal
    lambda s: f"/file={s.ext}/%2e%2e/%2e%2e/config.json",  # encoded traversal
    lambda s: f"/file={s.ext}/javascript/%2E%2E/%2E%2E/%2E%2E/cache.json",
    lambda s: f"/file={s.ext}/..%2f..%2fconfig.json",
    lambda s: f"/file={s.data / 'config.json'}",  # private and outside
    lambda s: f"/file={s.data / 'cache.json'}",
    lambda s: f"/file={s.data / 'models' / 'model.safetensors'}",  # the data folder is not served
    lambda s: f"/file={s.outside / 'secret.txt'}",  # outside
    lambda s: f"/file={s.outside / 'missing.txt'}",  # outside and missing: still 403, not 404
    lambda s: "/file=/etc/passwd",
    lambda s: "/file=webui.py",  # the install folder is not served
    lambda s: f"/file={s.ext / 'escape.txt'}",  # a link leading out
    lambda s: f"/file={s.ext / 'escape-dir' / 'secret.txt'}",
    lambda s: f"/file={s.ext / 'javascript'}",  # a folder
    lambda s: f"/file={s.ext}",
    lambda s: f"/file={s.images.parent}/",
    lambda s: f"/file={s.ext}/javascript/sample.js%00.png",  # NUL byte
    lambda s: f"/file={s.ext}\\javascript\\sample.js",  # backslashes
    lambda s: f"/file={s.ext}/javascript%5csample.js",
    lambda s: "/file=",
], ids=["hidden-dir", "hidden-file", "dotdot", "encoded-dotdot", "encoded-upper-dotdot", "encoded-slash",
        "config", "cache", "models", "outside", "outside-missing", "etc-passwd", "install-folder",
        "symlink-out", "symlink-dir-out", "folder", "extension-folder", "outputs-folder", "nul", "backslash",
        "encoded-backslash", "empty"])
def test_refused_with_403(site, build):
    assert _status(site.client, build(site)) == 403


def test_private_file_inside_a_served_folder_is_refused(tmp_path):
    """An operator may point the output folder at the data folder; config.json stays private."""
    data = tmp_path / "data"
    (data / "builtin").mkdir(parents=True)
    (data / "config.json").write_text('{"outdir_txt2img_samples": "."}')
    (data / "cache.json").write_text("{}")
    (data / "picture.png").write_bytes(b"png")
    app = FastAPI()
    install_file_route(app, _context(data))
    client = TestClient(app)
    assert client.get(f"/file={data / 'picture.png'}").status_code == 200  # the folder is served...
    assert client.get(f"/file={data / 'config.json'}").status_code == 403  # ...but not its private files
    assert client.get(f"/file={data / 'cache.json'}").status_code == 403


def test_output_folder_follows_the_setting_in_effect(site):
    custom = site.data / "outputs" / "mine"
    custom.mkdir(parents=True)
    (custom / "a.png").write_bytes(b"png")
    assert _status(site.client, f"/file={custom / 'a.png'}") == 403
    site.context.settings.apply({"outdir_txt2img_samples": "outputs/mine"})
    assert _status(site.client, f"/file={custom / 'a.png'}") == 200
    assert _status(site.client, f"/file={site.images / '00001-5.png'}") == 403  # the old one is no longer served


def test_auth_guards_the_route(tmp_path):
    data = tmp_path / "data"
    ext = data / "extensions" / "sample" / "javascript"
    ext.mkdir(parents=True)
    (data / "builtin").mkdir()
    (ext / "a.js").write_text("1;")
    context = _context(data, "--gradio-auth", "alice:wonder")
    app = FastAPI()
    install_file_route(app, context)
    install_auth(app, context.args)
    client = TestClient(app)
    url = f"/file={ext / 'a.js'}"
    assert client.get(url).status_code == 401
    token = base64.b64encode(b"alice:wonder").decode()
    assert client.get(url, headers={"Authorization": f"Basic {token}"}).status_code == 200


def test_file_url_is_a1111s_form(site):
    path = site.ext / "javascript" / "sample.js"
    url = file_url(path)
    assert url == f"file={path.as_posix()}?{int(path.stat().st_mtime)}"
    inside = REPO_ROOT / "webui.py"
    assert file_url(inside).startswith("file=webui.py?")


def test_the_install_folders_tmp_serves_only_text_lists(site):
    """Extensions write lists their page reads into the working folder's tmp/ (tag autocomplete's
    tmp/tagAutocompletePath.txt); a settings file moved aside there stays private."""
    tmp = site.data / "tmp"
    tmp.mkdir()
    (tmp / "tagAutocompletePath.txt").write_text("extensions/sample/tags")
    (tmp / "tags.csv").write_text("cat,0")
    (tmp / "config.json").write_text('{"moved": "aside"}')
    (tmp / "notes.py").write_text("x = 1")
    roots, private = served_roots(site.context, base=site.data), private_files(site.context)
    assert resolve_file("tmp/tagAutocompletePath.txt", roots, private, base=site.data) == \
        (tmp / "tagAutocompletePath.txt").resolve()
    assert resolve_file("tmp/tags.csv", roots, private, base=site.data) == (tmp / "tags.csv").resolve()
    for refused in ("tmp/config.json", "tmp/notes.py", "tmp"):
        with pytest.raises(FileRefused):
            resolve_file(refused, roots, private, base=site.data)
    with pytest.raises(FileMissing):
        resolve_file("tmp/gone.txt", roots, private, base=site.data)


def test_multi_user_route_alone_serves_each_user_their_own_outputs(site):
    """Without the guard in front (modules.ui.user_file_guard), the route itself keeps users apart:
    another user's image or the shared old folder is 404 whether it exists or not; the operator
    reads every output; extension files are served to everyone as before."""
    from modules.serving.accounts import Accounts

    alice = site.data / "outputs" / "alice" / "img2img-images" / "2026-01-01" / "1.png"
    bob = site.data / "outputs" / "bob" / "txt2img-images" / "2026-01-01" / "1.png"
    for path in (alice, bob):
        path.parent.mkdir(parents=True)
        path.write_bytes(b"png of " + path.parts[-5].encode())
    context = SimpleNamespace(**vars(site.context), accounts=Accounts(True, ("alice", "bob", "carol"),
                                                                       frozenset({"carol"})))
    context.args = parse_args(["--data-dir", str(site.data), "--multi-user", "--gradio-auth",
                               "alice:pa,bob:pb,carol:pc", "--admin-users", "carol"])
    app = FastAPI()
    install_file_route(app, context)
    install_auth(app, context.args)
    client = TestClient(app)

    def get(user: str, path) -> int:
        token = base64.b64encode(f"{user}:p{user[0]}".encode()).decode()
        return client.get(f"/file={path}", headers={"Authorization": f"Basic {token}"}).status_code

    assert get("alice", alice) == 200 and get("bob", bob) == 200
    assert get("alice", bob) == 404 and get("alice", bob.parent / "missing.png") == 404
    assert get("alice", site.images / "00001-5.png") == 404  # the shared single-user folder
    assert get("carol", bob) == 200 and get("carol", site.images / "00001-5.png") == 200
    assert get("bob", site.ext / "javascript" / "sample.js") == 200
