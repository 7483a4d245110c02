"""Users of a `--multi-user` server kept out of each other's images, tried as the other user would:
file routes answer 404 for another user's image (existing or not), a Gradio event naming one as an
input is refused, gallery images are written as their user's files, Extras and img2img Batch save into
and read from the submitting user's folders only. Without `--multi-user` nothing changes."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.testclient import TestClient
from PIL import Image

from modules.api.auth import install_auth
from modules.extension_host.extensions import ExtensionFolders, load_extensions
from modules.generation.img2img_batch import BatchRefused, BatchSpec, owner_folders, plan_batch
from modules.serving.accounts import SHARED_USER, Accounts, User
from modules.serving.cmd_args import parse_args
from modules.serving.jobs import JobQueue
from modules.serving.paths import Paths
from modules.serving.settings import SettingsStore
from modules.ui.file_route import install_file_route
from modules.ui.user_file_guard import file_data_paths, install_user_file_guard
from modules.ui.user_files import USERS_FOLDER, FileOwners, gallery_files

USERS = {"alice": "pa", "bob": "pb", "carol": "pc"}  # carol is the operator
MULTI = ["--multi-user", "--gradio-auth", ",".join(f"{u}:{p}" for u, p in USERS.items()), "--admin-users", "carol"]


def basic(user: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{USERS[user]}".encode()).decode()}


def _context(data: Path, *flags: str):
    args = parse_args(["--data-dir", str(data), *flags])
    settings = SettingsStore(data / "config.json")
    folders = ExtensionFolders(user=data / "extensions", builtin=data / "builtin")
    names = tuple(USERS) if "--multi-user" in flags else ()
    accounts = Accounts(True, names, frozenset({"carol"})) if names else Accounts()
    return SimpleNamespace(args=args, paths=Paths.from_args(args), settings=settings, accounts=accounts,
                           extensions=load_extensions(settings, args, folders))


def _png(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG " + text.encode())
    return path


@pytest.fixture
def site(tmp_path):
    """A data folder with alice's and bob's images, an old single-user image, an extension file, and
    alice's gallery file in a Gradio cache; served with --multi-user."""
    data = tmp_path / "data"
    (data / "builtin").mkdir(parents=True)
    ext_js = _png(data / "extensions" / "sample" / "javascript" / "s.js", "js")
    cache = tmp_path / "gradio-cache"
    files = SimpleNamespace(
        alice=_png(data / "outputs" / "alice" / "txt2img-images" / "2026-01-01" / "00001.png", "alice"),
        alice_extras=_png(data / "outputs" / "alice" / "extras-images" / "00001.png", "alice extras"),
        bob=_png(data / "outputs" / "bob" / "txt2img-images" / "2026-01-01" / "00001.png", "bob"),
        bob_missing=data / "outputs" / "bob" / "txt2img-images" / "2026-01-01" / "00002.png",
        shared=_png(data / "outputs" / "txt2img-images" / "2026-01-01" / "00001.png", "old shared"),
        alice_gallery=_png(cache / USERS_FOLDER / "alice" / "h1" / "image.png", "alice gallery"),
        bob_gallery=_png(cache / USERS_FOLDER / "bob" / "h2" / "image.png", "bob gallery"),
        upload=_png(cache / "h3" / "upload.png", "an upload"),
        ext_js=ext_js)
    context = _context(data, *MULTI)
    return SimpleNamespace(data=data, cache=cache, files=files, context=context)


def _served(context, cache: Path) -> TestClient:
    """Our /file= route, stand-ins for Gradio's file route and event route, the guard, then the auth
    middleware outside (the order webui.build_app gives them)."""
    app = FastAPI()
    install_user_file_guard(app, context, cache)
    install_file_route(app, context)

    @app.get("/gradio_api/file={path:path}")
    def gradio_file(path: str):  # Gradio's route serves its cache; the stand-in serves anything
        return FileResponse(path)

    @app.post("/gradio_api/queue/join")
    async def join(request: Request):
        return JSONResponse({"received": await request.json()})

    install_auth(app, context.args)
    return TestClient(app)


# -- whose a file is ---------------------------------------------------------------------------------

def test_each_user_reads_their_own_files_and_operators_read_all(site):
    owners = FileOwners.of(site.context, site.cache)
    alice, bob, carol = (site.context.accounts.user(name) for name in USERS)
    f = site.files
    assert owners.may_read(alice, f.alice) and owners.may_read(alice, f.alice_extras)
    assert owners.may_read(alice, f.alice_gallery)
    for other in (f.bob, f.bob_missing, f.bob_gallery, f.shared):
        assert not owners.may_read(alice, other), other
        assert owners.may_read(carol, other), other
    assert owners.may_read(bob, f.bob) and not owners.may_read(bob, f.alice_gallery)
    # Files that are no user's keep their routes' own rules.
    assert owners.may_read(alice, f.ext_js) and owners.may_read(alice, f.upload)


def test_a_link_in_ones_own_folder_to_anothers_image_is_theirs(site):
    link = site.data / "outputs" / "alice" / "look.png"
    link.symlink_to(site.files.bob)
    owners = FileOwners.of(site.context, site.cache)
    assert not owners.may_read(site.context.accounts.user("alice"), link)


def test_an_output_setting_moved_elsewhere_gives_each_user_a_folder_there(site, tmp_path):
    elsewhere = tmp_path / "nas"
    site.context.settings.apply({"outdir_txt2img_samples": str(elsewhere)})
    owners = FileOwners.of(site.context, site.cache)
    alice = site.context.accounts.user("alice")
    assert owners.may_read(alice, elsewhere / "alice" / "2026" / "1.png")
    assert not owners.may_read(alice, elsewhere / "bob" / "2026" / "1.png")
    assert not owners.may_read(alice, elsewhere / "1.png")  # the operator's folder itself


# -- the routes ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("prefix", ["/file=", "/gradio_api/file="])
def test_another_users_image_is_404_on_both_routes(site, prefix):
    client = _served(site.context, site.cache)
    f = site.files
    assert client.get(f"{prefix}{f.alice}", headers=basic("alice")).content == b"\x89PNG alice"
    for other in (f.bob, f.bob_missing, f.shared, f.bob_gallery):
        answer = client.get(f"{prefix}{other}", headers=basic("alice"))
        assert answer.status_code == 404 and b"bob" not in answer.content and b"old" not in answer.content, other
        assert client.head(f"{prefix}{other}", headers=basic("alice")).status_code == 404
    assert client.get(f"{prefix}{f.bob}", headers=basic("bob")).content == b"\x89PNG bob"
    assert client.get(f"{prefix}{f.bob}", headers=basic("carol")).content == b"\x89PNG bob"  # the operator
    assert client.get(f"{prefix}{f.bob}").status_code == 401


def test_a1111_file_route_serves_a_user_all_their_folders_and_extensions_as_before(site):
    client = _served(site.context, site.cache)
    f = site.files
    assert client.get(f"/file={f.alice_extras}", headers=basic("alice")).status_code == 200  # not only txt2img's
    assert client.get(f"/file={f.ext_js}", headers=basic("bob")).status_code == 200
    assert client.get(f"/file={f.shared}", headers=basic("carol")).status_code == 200
    missing_own = f.alice.parent / "gone.png"
    assert client.get(f"/file={missing_own}", headers=basic("alice")).status_code == 404
    assert client.get("/file=/etc/passwd", headers=basic("alice")).status_code == 403  # the old rules stay


def test_a_traversal_into_another_users_folder_is_404(site):
    client = _served(site.context, site.cache)
    sneaky = f"{site.data}/outputs/alice/../bob/txt2img-images/2026-01-01/00001.png"
    for prefix in ("/file=", "/gradio_api/file="):
        assert client.get(prefix + sneaky, headers=basic("alice")).status_code in (403, 404)
        assert b"bob" not in client.get(prefix + sneaky, headers=basic("alice")).content


def _event(path: str) -> dict:
    return {"data": [{"path": path, "orig_name": "x.png", "meta": {"_type": "gradio.FileData"}}, "text"],
            "fn_index": 3, "session_hash": "abc"}


def test_an_event_naming_another_users_file_is_refused(site):
    client = _served(site.context, site.cache)
    f = site.files
    for other in (f.bob_gallery, f.bob, f.shared):
        answer = client.post("/gradio_api/queue/join", json=_event(str(other)), headers=basic("alice"))
        assert answer.status_code == 403, other
        assert str(other) in answer.json()["detail"] and "not one of your files" in answer.json()["detail"]
    # A url of the form .../file=<path> is the same file.
    url = {"data": [{"url": f"http://x/gradio_api/file={f.bob_gallery}", "path": "x"}], "session_hash": "s"}
    assert client.post("/gradio_api/queue/join", json=url, headers=basic("alice")).status_code == 403
    # A body without a JSON content type is read all the same (FastAPI takes it as JSON too).
    raw = json.dumps(_event(str(f.bob_gallery))).encode()
    assert client.post("/gradio_api/queue/join", content=raw, headers={**basic("alice"),
                       "content-type": "text/plain"}).status_code == 403


def test_an_event_naming_ones_own_files_passes_whole(site):
    client = _served(site.context, site.cache)
    f = site.files
    for mine in (f.alice_gallery, f.alice, f.upload):
        body = _event(str(mine))
        answer = client.post("/gradio_api/queue/join", json=body, headers=basic("alice"))
        assert answer.status_code == 200 and answer.json() == {"received": body}
    body = _event(str(f.bob_gallery))
    assert client.post("/gradio_api/queue/join", json=body, headers=basic("carol")).json() == {"received": body}


def test_file_data_paths_finds_nested_inputs():
    body = {"data": [[{"image": {"path": "/a.png"}, "caption": None}], {"background": {"path": "/b.png"},
                                                                       "layers": [{"path": "/c.png"}]}]}
    assert sorted(file_data_paths(body)) == ["/a.png", "/b.png", "/c.png"]


def test_without_multi_user_nothing_changes(tmp_path):
    data = tmp_path / "data"
    (data / "builtin").mkdir(parents=True)
    shared = _png(data / "outputs" / "txt2img-images" / "2026-01-01" / "1.png", "shared")
    context = _context(data, "--gradio-auth", "alice:pa,bob:pb")
    app = FastAPI()
    assert install_user_file_guard(app, context, tmp_path / "cache") is False
    install_file_route(app, context)
    install_auth(app, context.args)
    client = TestClient(app)
    for user in ("alice", "bob"):
        assert client.get(f"/file={shared}", headers=basic(user)).content == b"\x89PNG shared"
    image = Image.new("RGB", (4, 4))
    assert gallery_files([image, (image, "caption")], SHARED_USER) == [image, (image, "caption")]


# -- gallery files -------------------------------------------------------------------------------------

def test_gallery_images_become_png_files_of_their_user_with_their_infotext(tmp_path):
    red, blue = Image.new("RGB", (8, 8), "red"), Image.new("RGB", (8, 4), "blue")
    red.info["parameters"] = "a red square\nSteps: 3, Seed: 1"
    blue.info["parameters"] = "a blue strip\nSteps: 3, Seed: 2"
    files = gallery_files([red, (blue, "grid"), "http://elsewhere/x.png"], User("alice", False), cache_dir=tmp_path)
    first, (second, caption), untouched = files
    assert caption == "grid" and untouched == "http://elsewhere/x.png"
    folder = (tmp_path / USERS_FOLDER / "alice").resolve()
    for path, image in ((first, red), (second, blue)):
        assert Path(path).resolve().is_relative_to(folder)
        with Image.open(path) as written:
            assert written.format == "PNG" and written.size == image.size
            assert written.info["parameters"] == image.info["parameters"]
            assert written.convert("RGB").getpixel((0, 0)) == image.getpixel((0, 0))


# -- Extras and img2img Batch -------------------------------------------------------------------------

def test_extras_of_a_user_saves_into_their_folder_as_their_job(tmp_path):
    from modules.postprocessing.extras import ExtrasRequest, submit_extras, take_extras_result
    from modules.postprocessing.runner import Postprocessing
    from modules.upscaling.registry import UpscalerRegistry
    from modules.upscaling.service import Upscalers

    data = tmp_path / "data"
    (data / "builtin").mkdir(parents=True)
    context = _context(data, *MULTI)
    context.extensions = None
    context.upscalers = Upscalers(UpscalerRegistry(context.paths.upscaler_dirs, context.settings.current),
                                  context.settings.current)
    context.jobs = JobQueue("test-user-extras")
    context.postprocessing = Postprocessing(context)
    context.jobs.start()
    try:
        request = ExtrasRequest(images=[("", Image.new("RGB", (8, 8), "green"))])
        job = submit_extras(context, request, owner="alice").wait(60)
        assert job.owner == "alice" and job.exception is None
        saved = take_extras_result(job).saved_paths
        assert saved and all(Path(p).resolve().is_relative_to((data / "outputs" / "alice").resolve()) for p in saved)
        assert not (data / "outputs" / "extras-images").exists()
        # A folder batch of a user who is not an operator reads only their folders.
        (data / "outputs" / "bob" / "in").mkdir(parents=True)
        with pytest.raises(ValueError, match="not one of your folders"):
            submit_extras(context, ExtrasRequest(mode=2, input_dir="outputs/bob/in"), owner="alice")
    finally:
        context.jobs.shutdown(timeout=30)


def test_a_batch_of_a_user_names_only_their_own_folders(tmp_path):
    data = tmp_path / "data"
    (data / "builtin").mkdir(parents=True)
    context = _context(data, *MULTI)
    Image.new("RGB", (8, 8)).save(_png(data / "outputs" / "alice" / "in" / "a.png", ""))
    Image.new("RGB", (8, 8)).save(_png(data / "outputs" / "bob" / "in" / "b.png", ""))
    mine = owner_folders(context, "alice")
    assert owner_folders(context, "carol") is None and owner_folders(context, None) is None
    plan = plan_batch(BatchSpec.directory("outputs/alice/in", "outputs/alice/out"), context.args, data,
                      allowed_folders=mine)
    assert [file.path.name for file in plan.files] == ["a.png"]
    for spec, field in ((BatchSpec.directory("outputs/bob/in"), "Input directory"),
                        (BatchSpec.directory("outputs/alice/in", "outputs/bob/out"), "Output directory"),
                        (BatchSpec.directory("outputs/alice/in", "outputs/txt2img-images"), "Output directory"),
                        (BatchSpec.directory("outputs/alice/in", inpaint_mask_dir="outputs/bob/in"),
                         "Inpaint batch mask directory")):
        with pytest.raises(BatchRefused, match=f"{field}: .*not one of your folders.*--multi-user"):
            plan_batch(spec, context.args, data, allowed_folders=mine)
    # The operator names any folder the server's rules allow.
    assert plan_batch(BatchSpec.directory("outputs/bob/in"), context.args, data,
                      allowed_folders=owner_folders(context, "carol")).files


def test_gradio_serves_a_gallery_file_where_it_is(tmp_path, monkeypatch):
    """Gradio keeps a gallery path that lies in its cache as it is (no copy under a hash folder), so
    the URL the page gets is the user's folder."""
    import gradio as gr
    from gradio.processing_utils import move_files_to_cache

    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(cache))  # what prepare_gradio_cache sets for the app
    image = Image.new("RGB", (8, 8), "red")
    files = gallery_files([image], User("alice", False))
    assert Path(files[0]).resolve().is_relative_to((cache / USERS_FOLDER / "alice").resolve())
    gallery = gr.Gallery(format="png")
    sent = move_files_to_cache(gallery.postprocess(files), gallery, postprocess=True)
    (item,) = sent["root"] if isinstance(sent, dict) and "root" in sent else sent
    assert f"/{USERS_FOLDER}/alice/" in item["image"]["url"] and item["image"]["path"] == files[0]


@pytest.fixture(scope="module")
def served_multi(tmp_path_factory):
    """webui.build_app's app with --multi-user (alice, bob; carol the operator), served on loopback."""
    import os

    import webui
    from modules.serving.app_context import AppContext
    from tests.test_api_support import LiveServer

    data_dir = tmp_path_factory.mktemp("multi-user-data")
    args = parse_args(["--data-dir", str(data_dir), *MULTI, "--skip-load-model-at-start", "--no-demo-checkpoint"])
    context = AppContext.from_args(args)
    context.refresh()
    try:
        app = webui.build_app(args, context)
        cache = Path(os.environ["GRADIO_TEMP_DIR"])  # this app's cache, set while it was built
        with LiveServer(app, lifespan="on") as server:
            yield SimpleNamespace(url=server.url, cache=cache, data=data_dir)
    finally:
        context.jobs.shutdown()


def _file_event(config: dict) -> tuple[int, int | None, int, int]:
    """(fn_index, trigger, position of an image input, input count) of the first event with one."""
    kinds = {component["id"]: component.get("type") for component in config["components"]}
    for index, dependency in enumerate(config["dependencies"]):
        for position, component_id in enumerate(dependency["inputs"]):
            if kinds.get(component_id) == "image":
                trigger = dependency["targets"][0][0] if dependency.get("targets") else None
                return dependency.get("id", index), trigger, position, len(dependency["inputs"])
    raise AssertionError("no event takes an image: the probe would test nothing")


def test_served_app_keeps_gallery_files_and_events_per_user(served_multi):
    import httpx

    image = Image.new("RGB", (8, 8), "blue")
    image.info["parameters"] = "blue\nSteps: 1, Seed: 5"
    (mine,) = gallery_files([image], User("alice", False), cache_dir=served_multi.cache)
    with httpx.Client(base_url=served_multi.url, timeout=60) as client:
        url = f"/gradio_api/file={mine}"
        answer = client.get(url, headers=basic("alice"))
        assert answer.status_code == 200 and answer.content.startswith(b"\x89PNG")
        assert client.get(url, headers=basic("bob")).status_code == 404
        assert client.get(url, headers=basic("carol")).status_code == 200
        fn_index, trigger, position, count = _file_event(client.get("/config", headers=basic("alice")).json())
        data = [None] * count
        data[position] = {"path": mine, "orig_name": "x.png", "meta": {"_type": "gradio.FileData"}}
        body = {"data": data, "event_data": None, "fn_index": fn_index, "trigger_id": trigger, "session_hash": "s1"}
        refused = client.post("/gradio_api/queue/join", json=body, headers=basic("bob"))
        assert refused.status_code == 403 and "not one of your files" in refused.json()["detail"]
        assert client.post("/gradio_api/queue/join", json=body, headers=basic("alice")).status_code == 200


def test_a_batch_of_a_user_is_their_job_and_lands_in_their_folders(tmp_path):
    """Upload batch by alice: her job, her img2img folder (not the shared one), her clip skip."""
    from modules.generation.img2img_batch import submit_batch
    from tests.test_api_support import WAIT, make_context

    data = tmp_path / "data"
    context = make_context(data, names=("a",), args=MULTI)
    try:
        context.user_choices.set("alice", {"CLIP_stop_at_last_layers": 2})
        upload = tmp_path / "upload.png"
        Image.new("RGB", (64, 64), "white").save(upload)
        template = {"prompt": "a cat", "width": 64, "height": 64, "steps": 2, "sampler_name": "Euler",
                    "denoising_strength": 0.5, "seed": 3}
        job = submit_batch(context, template, BatchSpec.upload([str(upload)]), owner="alice")
        job.wait(WAIT)
        assert job.owner == "alice" and job.exception is None, job.error
        saved = job.result.saved_paths
        mine = (data / "outputs" / "alice" / "img2img-images").resolve()
        assert saved and all(Path(path).resolve().is_relative_to(mine) for path in saved), saved
        assert not (data / "outputs" / "img2img-images").exists()
        assert all("Clip skip: 2" in infotext for infotext in job.result.infotexts), job.result.infotexts
        with pytest.raises(BatchRefused, match="not one of your folders"):
            submit_batch(context, template, BatchSpec.directory("outputs"), owner="bob")
    finally:
        context.jobs.shutdown(timeout=WAIT)
