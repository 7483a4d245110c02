"""The API over raw HTTP, for what `webuiapi` does not exercise: A1111's API defaults, saving, the
error shape and status codes, `infotext` and `styles`, per-job status, progress of a merge, the
SSRF guard on image URLs, and the OpenAPI docs."""

from __future__ import annotations

import dataclasses
import json
import threading

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from modules.api.images import fetch_url, is_public_address
from modules.api.server import create_app
from tests.http_support import serving_image
from tests.test_api_support import WAIT, assert_error, make_context, png_base64

SMALL = {"width": 64, "height": 64, "steps": 2}


@pytest.fixture(scope="module")
def context(tmp_path_factory):
    context = make_context(tmp_path_factory.mktemp("api-routes"), names=("a", "b"))
    yield context
    context.jobs.shutdown(timeout=WAIT)


@pytest.fixture(scope="module")
def client(context):
    return TestClient(create_app(context, api=True))


def txt2img(client, **fields):
    return client.post("/sdapi/v1/txt2img", json=fields)


def info_of(response) -> dict:
    assert response.status_code == 200, response.text
    return json.loads(response.json()["info"])


def test_a1111_api_defaults_euler_50_steps_nothing_saved(client, context):
    response = txt2img(client, prompt="a lighthouse", width=64, height=64, seed=3)
    info = info_of(response)
    assert info["steps"] == 50 and info["sampler_name"] == "Euler" and info["cfg_scale"] == 7.0
    assert info["infotexts"][0].startswith("a lighthouse\nSteps: 50, Sampler: Euler, ")
    assert "CFG scale: 7.0," in info["infotexts"][0]  # the API's float default, written as A1111 writes it
    parameters = response.json()["parameters"]
    assert parameters["sampler_index"] == "Euler" and parameters["save_images"] is False
    assert parameters["send_images"] is True and parameters["denoising_strength"] == 0.75
    assert len(response.json()["images"]) == 1
    assert not (context.paths.data_dir / "outputs").exists()
    assert response.headers["x-process-time"]


def test_save_images_writes_files_and_returns_the_grid_first(client, context):
    info = info_of(txt2img(client, prompt="x", seed=40, batch_size=2, save_images=True, **SMALL))
    images_dir = context.paths.data_dir / "outputs" / "txt2img-images"
    saved = sorted(p.name for p in images_dir.glob("*/*.png"))
    assert saved == ["00000-40.png", "00001-41.png"]
    assert len(list((context.paths.data_dir / "outputs" / "txt2img-grids").glob("*/grid-*.png"))) == 1
    assert info["index_of_first_image"] == 1 and len(info["infotexts"]) == 3


def test_send_images_false_returns_no_images(client):
    response = txt2img(client, prompt="x", send_images=False, **SMALL)
    assert response.status_code == 200 and response.json()["images"] == []


@pytest.mark.parametrize(("fields", "status", "fragment"), [
    ({"sampler_name": "Eulr"}, 422, "Did you mean 'Euler'"),
    ({"width": 65}, 422, "width: width must be a multiple of 8, got 65; use 64 or 72"),
    ({"steps": 500}, 422, "steps: Input should be less than or equal to 150"),
    ({"steps": "many"}, 422, "steps: Input should be a valid integer"),
    ({"restore_faces": True}, 422, "restore_faces: face restoration is not available"),
    ({"alwayson_scripts": {"ControlNet": {"args": []}}}, 422, "always-on script 'ControlNet' not found"),
    ({"script_name": "X/Y/Z plot"}, 422, "script 'X/Y/Z plot' not found"),
    ({"hr_sampler_name": "Eulr", "enable_hr": True}, 422, "hr_sampler_name: unknown sampler 'Eulr'. Did you mean 'Euler'"),
    ({"override_settings": {"CLIP_stop_at_last_layers": 99}}, 422, "'CLIP_stop_at_last_layers' must be between"),
    ({"override_settings": {"sd_model_checkpoint": "nope"}}, 404, "Checkpoint 'nope' not found"),
    ({"styles": ["nope"]}, 422, "unknown style 'nope'"),
])
def test_bad_input_is_refused_with_a1111s_error_shape(client, fields, status, fragment):
    assert_error(txt2img(client, prompt="x", **{**SMALL, **fields}), status, fragment)


def test_overlong_prompts_are_422_naming_the_setting(client, context):
    """A1111 has no limit; Atelier refuses, before queueing, a prompt or negative prompt longer than
    the `prompt_max_length` setting (20,000 characters by default), and the API cannot raise it."""
    limit = context.settings.current()["prompt_max_length"]
    assert limit == 20_000
    jobs_before = len(context.jobs.jobs())
    assert_error(txt2img(client, prompt="a" * (limit + 1), **SMALL), 422,
                 "prompt is 20,001 characters long; the limit is 20,000 (setting prompt_max_length")
    assert_error(txt2img(client, prompt="x", negative_prompt="b" * (limit + 5), **SMALL), 422,
                 "negative_prompt is 20,005 characters long")
    assert_error(txt2img(client, prompt="a" * (limit + 1), override_settings={"prompt_max_length": 0}, **SMALL),
                 422, "prompt is 20,001 characters long")
    assert_error(client.post("/sdapi/v1/options", json={"prompt_max_length": 0}), 422,
                 "'prompt_max_length' cannot be changed through the API")
    assert len(context.jobs.jobs()) == jobs_before
    info_of(txt2img(client, prompt="a" * limit, **SMALL))  # exactly at the limit is fine


def test_a_real_fault_is_500(context):
    class BrokenEngine:
        def generate(self, request, control=None, *, save=None):
            raise RuntimeError("the GPU caught fire")

    client = TestClient(create_app(dataclasses.replace(context, engine=BrokenEngine()), api=True))
    body = assert_error(txt2img(client, prompt="x", **SMALL), 500, "RuntimeError: the GPU caught fire")
    assert body["error"] == "RuntimeError"


def test_options_are_validated_before_anything_changes(client, context):
    assert_error(client.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 2, "randn_source": "XYZ"}),
                 422, "'randn_source' must be one of")
    assert client.get("/sdapi/v1/options").json()["CLIP_stop_at_last_layers"] == 1
    assert_error(client.post("/sdapi/v1/options", json={"sd_vae": "missing.pt"}), 422, "'sd_vae' must be one of")
    assert_error(client.post("/sdapi/v1/options", json={"api_enable_requests": "yes"}), 422,
                 "'api_enable_requests' must be true or false")
    assert_error(client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "zzz"}), 404, "zzz")
    assert context.models.current_info().name == "a.safetensors"


def test_unload_then_generate_loads_again_and_reload(client, context):
    assert client.post("/sdapi/v1/unload-checkpoint").status_code == 200
    assert context.models.current() is None
    info_of(txt2img(client, prompt="x", **SMALL))  # loads the start-up checkpoint, as A1111 does
    assert context.models.current_info().name == "a.safetensors"
    assert client.post("/sdapi/v1/reload-checkpoint").status_code == 200
    assert context.models.current_info().name == "a.safetensors"


def test_infotext_fills_the_fields_the_request_did_not_set(client):
    infotext = "a cat\nNegative prompt: a dog\nSteps: 4, Sampler: Euler a, CFG scale: 5, Seed: 99, Size: 64x64, Clip skip: 2"
    info = info_of(txt2img(client, infotext=infotext, steps=2))
    assert (info["prompt"], info["negative_prompt"], info["seed"], info["steps"]) == ("a cat", "a dog", 99, 2)
    assert info["sampler_name"] == "Euler a" and info["clip_skip"] == 2 and info["cfg_scale"] == 5


def test_prompt_styles_are_listed_and_applied(client, context):
    (context.paths.data_dir / "styles.csv").write_text(
        'name,prompt,negative_prompt\nnoir,"{prompt}, black and white",blurry\nsoft,pastel,\n', encoding="utf-8")
    try:
        assert client.get("/sdapi/v1/prompt-styles").json() == [
            {"name": "noir", "prompt": "{prompt}, black and white", "negative_prompt": "blurry"},
            {"name": "soft", "prompt": "pastel", "negative_prompt": ""}]
        info = info_of(txt2img(client, prompt="a street", styles=["noir", "soft"], **SMALL))
        assert info["prompt"] == "a street, black and white, pastel" and info["negative_prompt"] == "blurry"
        assert info["styles"] == ["noir", "soft"]
    finally:
        (context.paths.data_dir / "styles.csv").unlink()


def test_jobs_by_id_and_by_the_clients_task_id(client):
    info = info_of(txt2img(client, prompt="x", seed=7, force_task_id="my-task-1", **SMALL))
    by_client = client.get("/sdapi/v1/jobs/my-task-1").json()
    by_id = client.get(f"/sdapi/v1/jobs/{info['job_id']}").json()
    assert by_client == by_id
    assert by_id["state"] == "done" and by_id["kind"] == "txt2img" and by_id["client_task_id"] == "my-task-1"
    assert by_id["result"]["seeds"] == [7] and by_id["progress"] == 1.0 and by_id["queue_position"] is None
    assert info["job_id"] in [job["id"] for job in client.get("/sdapi/v1/jobs").json()]
    assert_error(client.get("/sdapi/v1/jobs/task-999999"), 404, "job 'task-999999' not found")


def test_progress_follows_any_job_kind_and_queue_positions(client, context):
    reported, release = threading.Event(), threading.Event()

    def fake_merge(control):
        control.report(3, 10)
        reported.set()
        assert release.wait(WAIT)

    merge = context.jobs.submit(fake_merge, kind="merge", description="Weighted sum")
    waiting = context.jobs.submit(lambda control: None, kind="merge")
    try:
        assert reported.wait(WAIT)
        progress = client.get("/sdapi/v1/progress").json()
        assert progress["progress"] == pytest.approx(0.31) and progress["current_task"] == merge.id
        assert progress["state"]["job"] == "merge"
        assert (progress["state"]["sampling_step"], progress["state"]["sampling_steps"]) == (3, 10)
        status = client.get(f"/sdapi/v1/jobs/{waiting.id}").json()
        assert status["state"] == "queued" and status["queue_position"] == 0
        assert client.get(f"/sdapi/v1/jobs/{merge.id}").json()["state"] == "running"
    finally:
        release.set()
    waiting.wait(WAIT)
    assert merge.state == "done"


def test_png_info_from_base64_and_bad_data(client):
    image = png_base64(Image.new("RGB", (8, 8)), "a fox\nSteps: 5, Sampler: Euler, Seed: 1, Size: 8x8")
    body = client.post("/sdapi/v1/png-info", json={"image": "data:image/png;base64," + image}).json()
    assert body["info"].startswith("a fox") and body["parameters"]["Steps"] == "5"
    assert client.post("/sdapi/v1/png-info", json={"image": ""}).json() == {"info": "", "items": {},
                                                                            "parameters": {}}
    assert_error(client.post("/sdapi/v1/png-info", json={"image": "%%%"}), 422, "not valid base64")


@pytest.mark.parametrize(("address", "public"), [
    ("127.0.0.1", False), ("10.1.2.3", False), ("192.168.1.1", False), ("169.254.169.254", False),
    ("0.0.0.0", False), ("::1", False), ("::ffff:127.0.0.1", False), ("fd00::1", False), ("fe80::1%eth0", False),
    ("224.0.0.1", False), ("8.8.8.8", True), ("2606:4700:4700::1111", True),
    # IPv6 forms that carry a private IPv4 address: IPv4-compatible, NAT64, 6to4, Teredo.
    ("::127.0.0.1", False), ("64:ff9b::a9fe:a9fe", False), ("2002:a9fe:a9fe::1", False),
    ("2001:0:4136:e378:8000:63bf:f5ff:fffe", False), ("64:ff9b::808:808", True),
])
def test_ssrf_guard_classifies_addresses(address, public):
    assert is_public_address(address) is public


def test_ssrf_guard_refuses_a_host_with_any_private_address():
    from modules.api.errors import ApiError

    with pytest.raises(ApiError, match="non-public address"):
        fetch_url("http://example.test/x.png", resolver=lambda host, port: ["8.8.8.8", "10.0.0.5"])


@pytest.fixture
def image_server():
    """A local HTTP server with one PNG (and a redirect to it)."""
    png = png_base64(Image.new("RGB", (4, 4)), "from a url\nSteps: 1, Sampler: Euler, Seed: 2, Size: 4x4")

    import base64

    with serving_image(base64.b64decode(png), redirects={"/redirect": "/image.png"}) as url:
        yield url


def test_image_urls_follow_the_settings_and_never_reach_local_hosts_by_default(client, context, image_server):
    url = image_server + "/image.png"
    assert_error(client.post("/sdapi/v1/png-info", json={"image": url}), 422, "non-public address (127.0.0.1)")
    # The guard's own settings cannot be changed by an API client (A1111's restrict_api), in any way.
    assert_error(client.post("/sdapi/v1/options", json={"api_forbid_local_requests": False}), 422,
                 "cannot be changed through the API")
    assert_error(txt2img(client, prompt="x", steps=1, width=64, height=64, override_settings_restore_afterwards=False,
                         override_settings={"api_forbid_local_requests": False}), 422,
                 "cannot be changed through the API")
    assert context.settings.current()["api_forbid_local_requests"] is True
    try:
        context.settings.apply({"api_forbid_local_requests": False})  # as the Settings tab does
        assert client.post("/sdapi/v1/png-info", json={"image": url}).json()["info"].startswith("from a url")
        assert_error(client.post("/sdapi/v1/png-info", json={"image": image_server + "/redirect"}), 422,
                     "redirects are not followed")
        context.settings.apply({"api_enable_requests": False})
        assert_error(client.post("/sdapi/v1/png-info", json={"image": url}), 422, "image URLs are turned off")
    finally:
        context.settings.apply({"api_forbid_local_requests": True, "api_enable_requests": True})


def test_hide_ui_dir_config_locks_folders_and_patterns_for_the_api(context):
    from modules.serving.cmd_args import parse_args

    args = parse_args(["--data-dir", str(context.paths.data_dir), "--hide-ui-dir-config"])
    locked = TestClient(create_app(dataclasses.replace(context, args=args), api=True))
    assert_error(locked.post("/sdapi/v1/options", json={"outdir_txt2img_samples": "/etc"}), 422,
                 "locked on this server (--hide-ui-dir-config)")
    assert_error(txt2img(locked, prompt="x", steps=1, width=64, height=64,
                         override_settings={"samples_filename_pattern": "../../x"}), 422, "--hide-ui-dir-config")
    assert context.settings.current()["outdir_txt2img_samples"] == "outputs/txt2img-images"
    assert locked.post("/sdapi/v1/options", json={"samples_format": "png"}).status_code == 200


def test_options_refuse_a_key_that_is_no_setting(client, context):
    response = client.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layer": 2})
    assert_error(response, 422, "there is no setting 'CLIP_stop_at_last_layer'; did you mean 'CLIP_stop_at_last_layers'")
    assert "CLIP_stop_at_last_layer" not in client.get("/sdapi/v1/options").json()
    assert_error(txt2img(client, prompt="x", steps=1, width=64, height=64, override_settings={"emphasys": "None"}),
                 422, "did you mean 'emphasis'")
    # A key config.json already holds (an A1111 install's) may be sent back as GET options returned it.
    context.settings.apply({"face_restoration_model": "CodeFormer"})
    options = client.get("/sdapi/v1/options").json()
    assert options["face_restoration_model"] == "CodeFormer"
    assert client.post("/sdapi/v1/options", json=options).status_code == 200


A1111_ROUTES = {
    ("post", "/sdapi/v1/txt2img"), ("get", "/sdapi/v1/options"), ("post", "/sdapi/v1/options"),
    ("get", "/sdapi/v1/sd-models"), ("get", "/sdapi/v1/sd-vae"), ("post", "/sdapi/v1/refresh-checkpoints"),
    ("post", "/sdapi/v1/refresh-vae"), ("post", "/sdapi/v1/reload-checkpoint"), ("post", "/sdapi/v1/unload-checkpoint"),
    ("get", "/sdapi/v1/samplers"), ("get", "/sdapi/v1/schedulers"), ("get", "/sdapi/v1/embeddings"),
    ("post", "/sdapi/v1/refresh-embeddings"), ("get", "/sdapi/v1/hypernetworks"), ("get", "/sdapi/v1/loras"),
    ("post", "/sdapi/v1/refresh-loras"), ("get", "/sdapi/v1/progress"), ("post", "/sdapi/v1/interrupt"),
    ("post", "/sdapi/v1/skip"), ("post", "/sdapi/v1/png-info"), ("get", "/sdapi/v1/cmd-flags"),
    ("get", "/sdapi/v1/memory"), ("get", "/sdapi/v1/scripts"), ("get", "/sdapi/v1/extensions"),
    ("get", "/sdapi/v1/prompt-styles"), ("post", "/sdapi/v1/merge-checkpoints"), ("get", "/sdapi/v1/jobs/{job_id}"),
}


def test_openapi_docs_describe_every_route(client):
    assert client.get("/docs").status_code == 200 and "swagger" in client.get("/docs").text.lower()
    schema = client.get("/openapi.json").json()
    served = {(method, path) for path, item in schema["paths"].items() for method in item}
    assert A1111_ROUTES <= served, A1111_ROUTES - served
    assert "steps" in schema["components"]["schemas"]["Txt2ImgApiRequest"]["properties"]


def test_extensions_and_scripts_list_what_was_loaded(client, context):
    from modules.extension_host.extensions import load_extensions

    assert client.get("/sdapi/v1/extensions").json() == []  # none loaded into this context yet
    (context.paths.data_dir / "extensions" / "my-ext" / "scripts").mkdir(parents=True)
    context.settings.apply({"disabled_extensions": ["my-ext"]})
    context.extensions = load_extensions(context.settings, context.args)
    try:
        items = {e["name"]: e for e in client.get("/sdapi/v1/extensions").json()}
        assert items["my-ext"]["enabled"] is False and items["xyz-grid"]["enabled"] is True
        assert "x/y/z plot" in client.get("/sdapi/v1/scripts").json()["txt2img"]
    finally:
        context.extensions = None


def test_without_api_flag_sdapi_says_how_to_turn_it_on(context):
    off = TestClient(create_app(context, api=False))
    for method, path in (("get", "/sdapi/v1/sd-models"), ("post", "/sdapi/v1/txt2img")):
        response = getattr(off, method)(path)
        assert response.status_code == 404 and "start Atelier with --api" in response.json()["detail"]
    assert off.get("/").status_code == 200  # the status page is still there
