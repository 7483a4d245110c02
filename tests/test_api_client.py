"""The API driven by `webuiapi` (PyPI), a real A1111 client nobody here wrote, against a live server
on tiny checkpoints: what works against A1111 must work against Atelier unchanged."""

from __future__ import annotations

import dataclasses
import json
import threading

import numpy as np
import pytest
import torch
import webuiapi  # the real A1111 client from PyPI (requirements-test.txt); never skipped

from PIL import Image

from modules.api.server import create_app
from modules.library.synthetic_checkpoints import write_checkpoint
from tests.test_api_support import WAIT, GatedEngine, decode_png, make_context, serving

SMALL = {"width": 64, "height": 64, "steps": 3, "cfg_scale": 5}


@pytest.fixture(scope="module")
def server_and_context(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("api-client")
    base = make_context(data_dir, names=("a", "b"))
    context = dataclasses.replace(base, engine=GatedEngine(base.engine))
    try:
        with serving(create_app(context, api=True)) as server:
            yield server, context
    finally:
        context.jobs.interrupt()
        context.jobs.shutdown(timeout=WAIT)


@pytest.fixture
def api(server_and_context):
    server, _ = server_and_context
    return webuiapi.WebUIApi(host="127.0.0.1", port=server.port, sampler="Euler a", steps=3)


@pytest.fixture
def context(server_and_context):
    return server_and_context[1]


def title_of(api, name: str) -> str:
    return next(m["title"] for m in api.get_sd_models() if m["model_name"] == name)


@pytest.mark.parametrize("sampler", ["Euler", "Euler a", "DPM++ 2M", "DPM++ SDE", "DDIM", "UniPC"])
def test_txt2img_with_several_samplers(api, sampler):
    result = api.txt2img(prompt="a red cube", sampler_name=sampler, seed=1234, **SMALL)
    assert len(result.images) == 1 and result.image.size == (64, 64)
    assert result.info["sampler_name"] == sampler
    assert result.info["all_seeds"] == [1234] and result.info["steps"] == 3
    infotext = result.info["infotexts"][0]
    assert f"Sampler: {sampler}," in infotext and "Seed: 1234," in infotext and "Size: 64x64" in infotext
    assert result.image.info["parameters"] == infotext  # the PNG carries its infotext
    assert result.parameters["prompt"] == "a red cube"


def test_batches_get_consecutive_seeds_and_a_seed_reproduces_its_image(api):
    first = api.txt2img(prompt="x", seed=77, batch_size=2, n_iter=2, sampler_name="Euler", **SMALL)
    assert first.info["all_seeds"] == [77, 78, 79, 80] and len(first.images) == 4
    batches = api.txt2img(prompt="x", seed=77, n_iter=3, sampler_name="Euler", **SMALL)
    again = api.txt2img(prompt="x", seed=79, sampler_name="Euler", **SMALL)
    assert again.image.tobytes() == batches.images[2].tobytes()
    assert again.image.tobytes() != batches.images[0].tobytes()


def test_options_round_trip_and_model_switch_persist(api, context):
    options = api.get_options()
    assert options["CLIP_stop_at_last_layers"] == 1 and options["api_forbid_local_requests"] is True
    assert api.util_get_current_model() == title_of(api, "a")
    api.set_options({"CLIP_stop_at_last_layers": 2})
    try:
        assert api.get_options()["CLIP_stop_at_last_layers"] == 2
        stored = json.loads(context.paths.config_file.read_text())
        assert stored["CLIP_stop_at_last_layers"] == 2
        assert "Clip skip: 2" in api.txt2img(prompt="x", **SMALL).info["infotexts"][0]
    finally:
        api.set_options({"CLIP_stop_at_last_layers": 1})

    api.util_set_model(title_of(api, "b"))
    try:
        title_b = title_of(api, "b")
        assert api.util_get_current_model() == title_b
        assert json.loads(context.paths.config_file.read_text())["sd_model_checkpoint"] == title_b
        info = api.txt2img(prompt="x", **SMALL).info
        assert info["sd_model_name"] == "b" and "Model: b" in info["infotexts"][0]
    finally:
        api.util_set_model(title_of(api, "a"))
    assert context.models.current_info().name == "a.safetensors"


def test_override_settings_apply_to_one_request_and_restore(api, context):
    result = api.txt2img(prompt="x", override_settings={"sd_model_checkpoint": "b", "CLIP_stop_at_last_layers": 2},
                         **SMALL)
    assert result.info["sd_model_name"] == "b" and "Clip skip: 2" in result.info["infotexts"][0]
    assert context.models.current_info().name == "a.safetensors"
    assert api.get_options()["CLIP_stop_at_last_layers"] == 1

    kept = api.txt2img(prompt="x", override_settings={"sd_model_checkpoint": "b"},
                       override_settings_restore_afterwards=False, **SMALL)
    try:
        assert kept.info["sd_model_name"] == "b"
        assert api.util_get_current_model() == title_of(api, "b")
    finally:
        api.util_set_model(title_of(api, "a"))


def test_sd_models_and_refresh(api, context):
    models = api.get_sd_models()
    assert [m["model_name"] for m in models] == ["a", "b"]
    assert all(m["filename"].endswith(f"{m['model_name']}.safetensors") for m in models)
    folder = context.paths.checkpoints_dir
    write_checkpoint(folder / "c.safetensors", "sd1", size="tiny", dtype=torch.float32, seed=5)
    assert "c" not in [m["model_name"] for m in api.get_sd_models()]
    api.refresh_checkpoints()
    assert [m["model_name"] for m in api.get_sd_models()] == ["a", "b", "c"]
    assert api.get_sd_vae() == []


def test_progress_with_preview_then_interrupt(api, context):
    gate: GatedEngine = context.engine
    gate.arm({2, 3})
    outcome = {}
    # A preview at every step asked (A1111's default period is 10 steps: none in a 6-step job).
    worker = threading.Thread(target=lambda: outcome.setdefault("result", api.txt2img(
        prompt="x", seed=5, sampler_name="Euler", override_settings={"show_progress_every_n_steps": 0},
        **{**SMALL, "steps": 6})))
    worker.start()
    try:
        assert gate.wait_until_paused() == 2
        progress = api.get_progress()
        state = progress["state"]
        assert (state["sampling_step"], state["sampling_steps"], state["job_count"]) == (2, 6, 1)
        assert progress["progress"] == pytest.approx(0.01 + 2 / 6)
        assert progress["current_task"] == context.jobs.current().id and state["job"] == "txt2img"
        assert progress["current_image"] is None  # this poll asked the worker for a preview
        gate.go_on()
        assert gate.wait_until_paused() == 3
        preview = api.get_progress()["current_image"]
        assert preview is not None and decode_png(preview).size == (8, 8)  # latent-sized approximation
        assert api.custom_get("progress?skip_current_image=true", baseurl=True)["current_image"] is None
        api.interrupt()
        assert api.get_progress()["state"]["interrupted"] is True
    finally:
        gate.go_on()
        worker.join(WAIT)
    result = outcome["result"]
    assert result.info["interrupted"] is True and len(result.images) == 1  # the partial image comes back
    job = api.custom_get(f"jobs/{result.info['job_id']}", baseurl=True)
    assert job["state"] == "interrupted" and job["result"]["interrupted"] is True
    idle = api.get_progress()
    assert idle["progress"] == 0 and idle["state"]["job_count"] == 0 and idle["current_image"] is None


def test_skip_goes_on_with_the_next_image(api, context):
    gate: GatedEngine = context.engine
    gate.arm({2})
    outcome = {}
    worker = threading.Thread(target=lambda: outcome.setdefault("result", api.txt2img(
        prompt="x", seed=9, n_iter=2, sampler_name="Euler", **{**SMALL, "steps": 4})))
    worker.start()
    try:
        assert gate.wait_until_paused() == 2
        state = api.get_progress()["state"]
        assert (state["job"], state["job_no"], state["job_count"]) == ("Batch 1 out of 2", 0, 2)
        api.skip()
        assert api.get_progress()["state"]["skipped"] is True
    finally:
        gate.go_on()
        worker.join(WAIT)
    result = outcome["result"]
    assert result.info["all_seeds"] == [9, 10] and len(result.images) == 2
    assert result.info["interrupted"] is False


def test_png_info_reads_back_the_parameters(api):
    made = api.txt2img(prompt="a castle", negative_prompt="fog", seed=42, sampler_name="Euler", **SMALL)
    info = api.png_info(made.image)
    assert info.info == made.info["infotexts"][0]
    assert info.parameters["Prompt"] == "a castle" and info.parameters["Negative prompt"] == "fog"
    assert info.parameters["Seed"] == "42" and info.parameters["Size-1"] == "64"


def test_embeddings_loaded_and_skipped(api, context):
    from modules.networks.activation import embedding_widths
    from modules.networks.textual_inversion import save_embedding

    width = embedding_widths(context.models.current())["default"]
    save_embedding(context.paths.embeddings_dir / "fits.pt", torch.randn(2, width), step=10)
    save_embedding(context.paths.embeddings_dir / "too-wide.pt", torch.randn(1, width + 8))
    api.session.post(f"{api.baseurl}/refresh-embeddings").raise_for_status()
    embeddings = api.get_embeddings()
    assert embeddings["loaded"]["fits"] == {"step": 10, "sd_checkpoint": None, "sd_checkpoint_name": None,
                                            "shape": width, "vectors": 2}
    assert embeddings["skipped"]["too-wide"]["shape"] == width + 8
    assert "too-wide" not in embeddings["loaded"]
    # An embedding in the prompt is used, and its hash lands in the infotext.
    assert "TI hashes" in api.txt2img(prompt="a fits cat", **SMALL).info["infotexts"][0]


def test_hypernetworks_and_loras_are_listed(api, context):
    from safetensors.torch import save_file

    from tests.test_hypernetworks import relu_hypernetwork_file

    width = 32
    relu_hypernetwork_file(context.paths.hypernetwork_dir / "sketchy.pt", [width])
    assert api.get_hypernetworks() == [{"name": "sketchy",
                                        "path": str(context.paths.hypernetwork_dir / "sketchy.pt")}]
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(1, 1)}, str(context.paths.lora_dir / "ink.safetensors"),
              metadata={"ss_output_name": "ink-v2"})
    api.session.post(f"{api.baseurl}/refresh-loras").raise_for_status()
    loras = api.get_loras()
    assert [(lora["name"], lora["alias"]) for lora in loras] == [("ink", "ink-v2")]
    assert loras[0]["metadata"]["ss_output_name"] == "ink-v2"


def test_samplers_schedulers_and_the_rest_of_the_read_routes(api):
    samplers = {s["name"]: s for s in api.get_samplers()}
    assert list(samplers)[:2] == ["DPM++ 2M", "DPM++ SDE"]
    assert samplers["DPM++ 2M"]["options"] == {"scheduler": "karras"} and "k_euler_a" in samplers["Euler a"]["aliases"]
    assert "DPM fast" not in samplers  # not implemented: not offered
    schedulers = {s["name"]: s for s in api.get_schedulers()}
    assert schedulers["karras"]["label"] == "Karras" and schedulers["karras"]["default_rho"] == 7.0
    assert api.get_scripts() == {"txt2img": [], "img2img": []}
    assert api.get_prompt_styles() == []
    memory = api.get_memory()
    assert memory["ram"]["used"] > 0
    assert ("system" in memory["cuda"]) == torch.cuda.is_available()
    assert api.get_cmd_flags()["nowebui"] is False


def _picture(width: int, height: int) -> Image.Image:
    """Gradients plus noise: a repainted area differs visibly from it."""
    rng = np.random.default_rng(1)
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x / width * 255, y / height * 255, (x + y) / (width + height) * 255], axis=-1)
    return Image.fromarray(np.clip(rgb + rng.normal(0, 8, rgb.shape), 0, 255).astype(np.uint8))


@pytest.mark.parametrize(("full_res", "size"), [(False, (64, 64)), (True, (96, 80))])
def test_img2img_with_a_mask_repaints_only_the_masked_area(api, full_res, size):
    """webuiapi's img2img (a data-URL image and mask, its own defaults for the rest): pixels outside
    a hard mask come back unchanged; Whole picture returns width x height, Only masked the
    original's size (A1111.md §13.7)."""
    width, height = size
    original = _picture(width, height)
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[20:50, 24:56] = 255
    result = api.img2img(images=[original], mask_image=Image.fromarray(mask, mode="L"), inpainting_fill=1,
                         mask_blur=0, inpaint_full_res=full_res, inpaint_full_res_padding=8, denoising_strength=0.9,
                         prompt="a red cube", seed=21, sampler_name="Euler", **SMALL)
    assert len(result.images) == 1 and result.image.size == size
    out, before = np.asarray(result.image.convert("RGB"), dtype=np.int16), np.asarray(original, dtype=np.int16)
    outside = mask == 0
    assert np.array_equal(out[outside], before[outside])
    assert np.abs(out[~outside] - before[~outside]).max() > 10
    assert result.info["all_seeds"] == [21] and result.info["denoising_strength"] == 0.9
    assert "Denoising strength: 0.9" in result.image.info["parameters"]
    assert result.parameters["init_images"] is None and result.parameters["mask"] is None


def test_extra_single_image_scales_by_and_to(api):
    """webuiapi's extra_single_image with its own defaults (scale by 2, crop on, 512x512 box): the
    image upscaled by Lanczos as Pillow would, the postprocessing text in html_info and the PNG."""
    source = _picture(40, 24)
    result = api.extra_single_image(source, upscaler_1="Lanczos", upscaling_resize=2)
    expected = source.resize((80, 48), Image.Resampling.LANCZOS)
    assert np.array_equal(np.asarray(result.image.convert("RGB")), np.asarray(expected))
    assert result.info == "<p>Postprocess upscale by: 2.0, Postprocess upscaler: Lanczos</p>"
    assert result.image.info["postprocessing"] == "Postprocess upscale by: 2.0, Postprocess upscaler: Lanczos"
    boxed = api.extra_single_image(source, upscaler_1="Nearest", resize_mode=1, upscaling_resize_w=64,
                                   upscaling_resize_h=64)
    assert boxed.image.size == (64, 64) and "Postprocess crop to: 64x64" in boxed.info


def test_extra_batch_images_and_a_bad_upscaler(api):
    """webuiapi's extra_batch_images: one result per image, in order; an unknown upscaler comes back
    as the client's RuntimeError carrying the 422 and the name."""
    sources = [_picture(16, 16), _picture(24, 16)]
    result = api.extra_batch_images(sources, name_list=["a.png", "b.png"], upscaler_1="Lanczos", upscaling_resize=2)
    assert [image.size for image in result.images] == [(32, 32), (48, 32)]
    with pytest.raises(RuntimeError) as failure:
        api.extra_single_image(sources[0], upscaler_1="R-ESRGAN 9x")
    assert failure.value.args[0] == 422 and "could not find upscaler named 'R-ESRGAN 9x'" in failure.value.args[1]
