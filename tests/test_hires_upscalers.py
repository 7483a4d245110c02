"""Hires fix with the upscaler library (A1111.md §14.4) on a tiny SD1 checkpoint and a tiny RRDBNet
(ESRGAN) file in models/ESRGAN: decode → upscale → encode → exactly `hires steps` more steps; the
built-ins None/Lanczos/Nearest; a name the library does not list refused at submit (422 over the
API); "Hires upscaler: <model>" read back from an infotext; the image saved before the hires pass;
an interrupt while the upscaler runs; and the setting `upscaler_for_img2img` for img2img's resize."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from modules.api.server import create_app
from modules.extension_host.xyz.axes import find_axis
from modules.extension_host.xyz.services import GridServices
from modules.generation.engine import GenerationRequest, NullControl, _crop_to, generate
from modules.generation.requests import hires_upscale_size
from modules.upscaling.service import UpscaleTooLargeError
from modules.generation.infotext_fields import read_infotext
from modules.generation.requests import (
    LATENT_UPSCALE_MODES,
    Img2ImgRequest,
    UnknownHiresUpscalerError,
    hires_upscaler_choices,
)
from modules.outputs.infotext import parse_generation_parameters
from modules.serving.generation_service import GenerationSubmission, submit_generation
from modules.ui.generation_form import SHOWN_ERRORS
from modules.upscaling.synthetic import rrdbnet_state_dict, write_state_dict
from tests.test_api_support import WAIT, assert_error, make_context

MODEL = "tiny4x"  # models/ESRGAN/tiny4x.safetensors: listed by its stem
BASE = dict(prompt="a lighthouse", width=64, height=64, steps=2, sampler_name="Euler", seed=11)
# 3 hires steps at strength 0.5: A1111's fixed-steps branch runs exactly 3; the old rule
# (t_enc = int(0.5 · 3) = 1, so t_enc + 1 = 2 steps) would run 2, so the count tells them apart.
HIRES = dict(enable_hr=True, hr_scale=2.0, hr_second_pass_steps=3, denoising_strength=0.5)


@pytest.fixture(scope="module")
def context(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("hires-upscalers")
    write_state_dict(data_dir / "models" / "ESRGAN" / f"{MODEL}.safetensors", rrdbnet_state_dict(seed=3))
    context = make_context(data_dir)
    yield context
    context.jobs.shutdown(timeout=WAIT)


@pytest.fixture(scope="module")
def client(context):
    return TestClient(create_app(context, api=True))


class Recorder(NullControl):
    """A control that records progress reports and info lines; `interrupt()` stops the job."""

    def __init__(self):
        self.reports: list[tuple[int, int]] = []
        self.lines: list[str] = []
        self.stopped = False

    @property
    def interrupted(self) -> bool:
        return self.stopped

    def interrupt(self) -> None:
        self.stopped = True

    def report(self, step, total, preview_factory=None) -> None:
        self.reports.append((step, total))

    def add_info(self, line: str) -> None:
        self.lines.append(line)


class UnetSpy:
    """Records the latent size of every UNet call (one call per sampler step for Euler)."""

    def __init__(self, model):
        self.sizes: list[tuple[int, int]] = []
        self._handle = model.unet.register_forward_pre_hook(
            lambda module, args: self.sizes.append(tuple(args[0].shape[-2:])))

    def close(self) -> None:
        self._handle.remove()


@pytest.fixture()
def unet_calls(context):
    spy = UnetSpy(context.models.current())
    yield spy
    spy.close()


@pytest.fixture()
def upscaler_calls(context):
    """The tiny RRDBNet's forward calls (input sizes), the model loaded into the owner's cache first."""
    descriptor = context.upscalers.load(context.upscalers.registry.get(MODEL))
    calls: list[tuple[int, ...]] = []
    handle = descriptor.model.register_forward_pre_hook(lambda module, args: calls.append(tuple(args[0].shape)))
    yield calls
    handle.remove()


def run(context, control=None, save: bool = False, **fields):
    return context.engine.generate(GenerationRequest(**{**BASE, **fields}), control or NullControl(), save=save)


def test_hires_fix_through_a_model_upscaler_runs_the_model_and_exactly_the_hires_steps(context, unet_calls,
                                                                                       upscaler_calls):
    control = Recorder()
    result = run(context, control, hr_upscaler=MODEL, **HIRES)
    assert [image.size for image in result.images] == [(128, 128)]
    params = parse_generation_parameters(result.infotexts[0])
    assert params["Hires upscaler"] == MODEL and params["Hires steps"] == "3"
    # The model upscaled the decoded 64×64 first pass once (its 4× output is then Lanczos-resized to 128),
    # as one tile of ESRGAN_tile (192): A1111 pads an image smaller than a tile with black to the tile.
    assert upscaler_calls == [(1, 3, 192, 192)]
    # Euler: one UNet call per step; 2 first-pass steps at 8×8 latents, then exactly 3 at 16×16.
    assert unet_calls.sizes == [(8, 8)] * 2 + [(16, 16)] * 3
    assert control.reports[-1] == (5, 5)  # progress counts the 3 hires steps it runs
    assert any(MODEL in line and "128x128" in line for line in control.lines)  # the upscale is reported


def test_the_upscaler_changes_the_result(context):
    with_model = run(context, hr_upscaler=MODEL, **HIRES).images[0]
    with_lanczos = run(context, hr_upscaler="Lanczos", **HIRES).images[0]
    assert not np.array_equal(np.asarray(with_model), np.asarray(with_lanczos))


@pytest.mark.parametrize("upscaler", ["None", "Lanczos", "Nearest", "Latent", "Latent (bicubic antialiased)"])
def test_builtin_and_latent_upscalers_run_exactly_the_hires_steps(context, unet_calls, upscaler):
    result = run(context, hr_upscaler=upscaler, **HIRES)
    assert result.images[0].size == (128, 128)
    assert parse_generation_parameters(result.infotexts[0])["Hires upscaler"] == upscaler
    assert unet_calls.sizes == [(8, 8)] * 2 + [(16, 16)] * 3


def test_none_is_lanczos_and_nearest_differs(context):
    """A1111's `resize_image` treats "None" as a plain LANCZOS resize; "Lanczos" upscales by 2 with
    LANCZOS to 128×128 (already the target): the same pixels. "Nearest" resamples differently."""
    images = {name: np.asarray(run(context, hr_upscaler=name, **HIRES).images[0])
              for name in ("None", "Lanczos", "Nearest")}
    assert np.array_equal(images["None"], images["Lanczos"])
    assert not np.array_equal(images["Nearest"], images["Lanczos"])


def test_resize_to_another_aspect_crops_the_centre(context, unet_calls):
    """64×64 to "Resize width/height to" 128×96: scaled to cover (128×128), then the latent is cropped
    to 16×12 around its centre (A1111's truncate_y), not stretched."""
    result = run(context, hr_upscaler="Lanczos", **{**HIRES, "hr_scale": 1.0, "hr_resize_x": 128, "hr_resize_y": 96})
    assert result.images[0].size == (128, 96)
    assert unet_calls.sizes[2:] == [(12, 16)] * 3
    params = parse_generation_parameters(result.infotexts[0])
    assert (params["Hires resize-1"], params["Hires resize-2"]) == ("128", "96")
    # The crop itself: a 16-row latent loses 2 rows at the top and 2 at the bottom; 17 rows lose the
    # odd one at the bottom (A1111: [t // 2 : h − (t + 1) // 2]).
    assert hires_upscale_size(GenerationRequest(**BASE, **{**HIRES, "hr_resize_x": 128, "hr_resize_y": 96})) \
        == (128, 128)
    rows = torch.arange(16.0).view(1, 1, 16, 1).expand(1, 4, 16, 16)
    assert _crop_to(rows, 128, 96)[0, 0, :, 0].tolist() == list(range(2, 14))
    rows = torch.arange(17.0).view(1, 1, 17, 1).expand(1, 4, 17, 16)
    assert _crop_to(rows, 128, 96)[0, 0, :, 0].tolist() == list(range(2, 14))


@pytest.mark.parametrize("sampler", ["DDIM", "PLMS"])
def test_timestep_samplers_run_a_hires_pass(context, unet_calls, sampler):
    """They noise the upscaled latent as img2img does; A1111's timestep samplers evaluate the model
    len(timesteps) − 1 times, so `hires steps` S run on timesteps[:S − 1]: DDIM S − 2 calls."""
    result = run(context, hr_upscaler="Latent", **{**HIRES, "sampler_name": sampler, "steps": 4,
                                                   "hr_second_pass_steps": 5})
    assert result.images[0].size == (128, 128)
    hires_calls = [size for size in unet_calls.sizes if size == (16, 16)]
    assert hires_calls and (sampler != "DDIM" or len(hires_calls) == 5 - 2)


def test_an_unknown_upscaler_is_refused_at_submit(context):
    request = GenerationRequest(**BASE, **HIRES, hr_upscaler="4x-Nowhere")
    # Its own ValueError, which the txt2img tab shows as a message (SHOWN_ERRORS), the API as a 422.
    with pytest.raises(UnknownHiresUpscalerError, match="4x-Nowhere") as error:
        submit_generation(context, GenerationSubmission(request))
    assert UnknownHiresUpscalerError in SHOWN_ERRORS and issubclass(UnknownHiresUpscalerError, ValueError)
    assert MODEL in str(error.value) and "Latent (nearest-exact)" in str(error.value)
    # Without hires fix the upscaler is not used, and not checked (as A1111).
    job = submit_generation(context, GenerationSubmission(GenerationRequest(**BASE, hr_upscaler="4x-Nowhere")))
    job.wait(WAIT)
    assert job.error is None


def test_the_api_refuses_an_unknown_upscaler_with_422_and_takes_a_model_name(client):
    response = client.post("/sdapi/v1/txt2img", json={**BASE, **HIRES, "hr_upscaler": "4x-Nowhere"})
    assert_error(response, 422, "4x-Nowhere", MODEL)
    response = client.post("/sdapi/v1/txt2img", json={**BASE, **HIRES, "hr_upscaler": MODEL})
    assert response.status_code == 200, response.text
    info = json.loads(response.json()["info"])
    assert f"Hires upscaler: {MODEL}" in info["infotexts"][0]
    image = Image.open(io.BytesIO(base64.b64decode(response.json()["images"][0])))
    assert image.size == (128, 128)


def test_api_null_upscaler_is_latent(client):
    response = client.post("/sdapi/v1/txt2img", json={**BASE, **HIRES, "hr_upscaler": None})
    assert response.status_code == 200, response.text
    infotext = json.loads(response.json()["info"])["infotexts"][0]
    assert parse_generation_parameters(infotext)["Hires upscaler"] == "Latent"


def test_a_model_name_is_read_back_from_an_infotext(context, client):
    infotext = run(context, hr_upscaler=MODEL, **HIRES).infotexts[0]
    names = context.upscalers.registry.names()
    reading = read_infotext(infotext, context.settings.current(), upscaler_names=names)
    assert reading.problems == [] and reading.values["hr_upscaler"] == MODEL and reading.values["enable_hr"]
    # Without the library's names (or with a name it does not list) it is a problem naming it.
    assert any(MODEL in problem for problem in read_infotext(infotext, context.settings.current()).problems)
    # img2img has no hires pass: the key is neither read nor a problem there.
    assert read_infotext(infotext, context.settings.current(), img2img=True).problems == []
    # The paste button (txt2img) and the API's `infotext` field take it.
    from modules.ui.generation_form import paste_values

    assert paste_values(context, infotext).values["hr_upscaler"] == MODEL
    response = client.post("/sdapi/v1/txt2img", json={"infotext": infotext})
    assert response.status_code == 200, response.text
    assert f"Hires upscaler: {MODEL}" in json.loads(response.json()["info"])["infotexts"][0]


def test_the_choices_are_latent_modes_then_the_librarys_names(context):
    choices = hires_upscaler_choices(context.upscalers)
    assert choices[:len(LATENT_UPSCALE_MODES)] == list(LATENT_UPSCALE_MODES)
    assert choices[len(LATENT_UPSCALE_MODES):] == context.upscalers.registry.names()
    assert {"None", "Lanczos", "Nearest", MODEL} <= set(choices)
    assert find_axis("Hires upscaler", is_img2img=False).choices(GridServices.of(context)) == choices


@pytest.mark.parametrize("upscaler", [MODEL, "Latent"])
def test_save_images_before_highres_fix_writes_the_first_pass(context, upscaler):
    context.settings.apply({"save_images_before_highres_fix": True})
    try:
        result = run(context, save=True, hr_upscaler=upscaler, **HIRES)
    finally:
        context.settings.apply({"save_images_before_highres_fix": False})
    folder = context.paths.data_dir / "outputs" / "txt2img-images"
    before = [path for path in folder.rglob(f"*-{BASE['seed']}-before-highres-fix.png")]
    assert before, sorted(folder.rglob("*"))
    newest = max(before, key=lambda path: path.stat().st_mtime_ns)
    with Image.open(newest) as image:
        assert image.size == (64, 64)
        assert image.info["parameters"] == result.infotexts[0]
    assert all("before-highres-fix" not in path for path in result.saved_paths)
    # Not saved when the results are not.
    count = len(before)
    context.settings.apply({"save_images_before_highres_fix": True})
    try:
        run(context, save=False, hr_upscaler=upscaler, **HIRES)
    finally:
        context.settings.apply({"save_images_before_highres_fix": False})
    assert len(list(folder.rglob("*-before-highres-fix.png"))) == count


def test_an_interrupt_while_upscaling_keeps_the_first_pass(context, unet_calls, upscaler_calls):
    control = Recorder()
    descriptor = context.upscalers.load(context.upscalers.registry.get(MODEL))
    handle = descriptor.model.register_forward_hook(lambda *_: control.interrupt())
    try:
        result = run(context, control, hr_upscaler=MODEL, **HIRES)
    finally:
        handle.remove()
    assert upscaler_calls  # the upscaler ran, and the interrupt came while it did
    assert result.interrupted and [image.size for image in result.images] == [(64, 64)]
    assert unet_calls.sizes == [(8, 8)] * 2  # no hires step ran
    plain = run(context, **{key: value for key, value in HIRES.items() if key != "enable_hr"})
    assert np.array_equal(np.asarray(result.images[0]), np.asarray(plain.images[0]))


def test_a_direct_engine_call_without_the_library_runs_lanczos_and_refuses_a_model(context):
    model = context.models.current()
    request = GenerationRequest(**BASE, **HIRES, hr_upscaler="Lanczos")
    assert generate(model, request).images[0].size == (128, 128)
    with pytest.raises(ValueError, match=MODEL):
        generate(model, request.model_copy(update={"hr_upscaler": MODEL}))


def gradient(size: int) -> Image.Image:
    y, x = np.mgrid[0:size, 0:size]
    return Image.fromarray(np.stack([x * 255 // size, y * 255 // size, (x + y) * 127 // size], -1).astype(np.uint8))


def test_upscaler_for_img2img_enlarges_init_images_with_the_model(context, upscaler_calls):
    request = Img2ImgRequest(**{**BASE, "width": 64, "height": 64}, init_images=[gradient(32)],
                             denoising_strength=0.5)
    plain = context.engine.generate(request, NullControl(), save=False)
    assert upscaler_calls == []  # "None" (the default): LANCZOS
    upscaled = context.engine.generate(
        request.model_copy(update={"override_settings": {"upscaler_for_img2img": MODEL}}), NullControl(), save=False)
    assert upscaler_calls == [(1, 3, 192, 192)]  # the 32×32 init image (in one black-padded tile), enlarged to 64×64
    assert not np.array_equal(np.asarray(plain.images[0]), np.asarray(upscaled.images[0]))
    # An image that is not enlarged does not run it (A1111's resize only upscales when scale > 1).
    context.engine.generate(request.model_copy(update={"init_images": [gradient(96)], "override_settings": {
        "upscaler_for_img2img": MODEL}}), NullControl(), save=False)
    assert len(upscaler_calls) == 1


def test_upscaler_for_img2img_naming_a_missing_model_falls_back_with_a_note(context):
    request = Img2ImgRequest(**BASE, init_images=[gradient(32)], denoising_strength=0.5,
                             override_settings={"upscaler_for_img2img": "Gone-4x"})
    result = context.engine.generate(request, NullControl(), save=False)
    assert result.images[0].size == (64, 64)
    assert any("Gone-4x" in warning for warning in result.warnings)


def test_strength_0_runs_no_hires_step(context, unet_calls):
    """A1111's fixed-steps branch at strength 0 has an empty schedule: the upscaled first pass is the
    image, and no hires step runs."""
    result = run(context, hr_upscaler="Lanczos", **{**HIRES, "denoising_strength": 0.0})
    assert result.images[0].size == (128, 128) and unet_calls.sizes == [(8, 8)] * 2


@pytest.fixture(scope="module")
def inpainting_model(tmp_path_factory):
    from modules.library.model_loader import load_checkpoint
    from modules.library.synthetic_checkpoints import write_checkpoint

    path = tmp_path_factory.mktemp("inpaint") / "inpaint.safetensors"
    return load_checkpoint(write_checkpoint(path, "sd1-inpaint", dtype=torch.float32))


@pytest.mark.parametrize("upscaler", ["Latent", "Lanczos"])
def test_an_inpainting_checkpoint_gets_a1111s_hires_conditioning(inpainting_model, upscaler):
    """An all-ones mask and the encoded `image · (1 − weight)`: at weight 1 that is a black (0 in
    [−1, 1], mid-grey) picture, txt2img's conditioning, at the cropped hires size (128×96 here)."""
    from modules.generation.engine import EngineSettings
    from modules.generation.img2img import encode_pixels

    seen = []
    handle = inpainting_model.unet.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    try:
        request = GenerationRequest(**{**BASE, **HIRES, "hr_upscaler": upscaler, "hr_resize_x": 128,
                                       "hr_resize_y": 96})
        result = generate(inpainting_model, request, EngineSettings(inpainting_mask_weight=1.0))
        half = [*seen]
        seen.clear()
        generate(inpainting_model, request, EngineSettings(inpainting_mask_weight=0.5))
    finally:
        handle.remove()
    assert result.images[0].size == (128, 96)
    hires = half[-1]
    assert hires.shape[1:] == (9, 12, 16)
    grey = encode_pixels(inpainting_model, torch.zeros(1, 3, 96, 128))
    assert torch.equal(hires[:1, 4:5], torch.ones(1, 1, 12, 16))
    assert torch.allclose(hires[:1, 5:], grey, atol=1e-5)
    assert not torch.allclose(seen[-1][:1, 5:], grey, atol=1e-3)  # weight 0.5 keeps half the picture


def test_upscaler_for_img2img_pastes_an_only_masked_result_back_through_the_model(context, upscaler_calls):
    """"Only masked": the 96×96 masked area is cropped and shrunk to 64×64 (no upscaler), then the
    64×64 result is enlarged back into the 96×96 box: there the model runs (A1111's paste-back resizes
    with its img2img upscaler too)."""
    mask = Image.new("L", (128, 128), 0)
    mask.paste(255, (16, 16, 112, 112))
    request = Img2ImgRequest(**BASE, init_images=[gradient(128)], mask=mask, inpaint_full_res=True,
                             inpaint_full_res_padding=0, mask_blur_x=0, mask_blur_y=0, denoising_strength=0.5,
                             override_settings={"upscaler_for_img2img": MODEL})
    result = context.engine.generate(request, NullControl(), save=False)
    assert result.images[0].size == (128, 128)
    assert upscaler_calls == [(1, 3, 192, 192)]  # the 64×64 crop, in one black-padded tile


def test_one_resize_side_is_written_as_given(context):
    """Only "Resize width to" set: the height follows the first pass's aspect, and the infotext states
    the fields as A1111 writes them (0 for the unset side), which reads back as the same request."""
    result = run(context, hr_upscaler="Lanczos", **{**HIRES, "hr_scale": 1.0, "hr_resize_x": 128})
    assert result.images[0].size == (128, 128)
    params = parse_generation_parameters(result.infotexts[0])
    assert (params["Hires resize-1"], params["Hires resize-2"]) == ("128", "0")


def test_a_hires_upscale_over_the_pixel_limit_is_refused_before_the_first_pass(client, context):
    """64×2048 resized to the 2048×64 box: covering it means upscaling the first pass to 2048×65536
    (134 megapixels) before the crop, over upscale_max_pixels (8192², 67 megapixels). With a model
    upscaler that is refused before anything runs (422 naming the limit); the latent path only
    interpolates the small latent, so it is not limited."""
    request = {**BASE, "width": 64, "height": 2048, **HIRES, "hr_resize_x": 2048, "hr_resize_y": 64}
    assert hires_upscale_size(GenerationRequest(**request)) == (2048, 65536)
    before = len(context.jobs.jobs())
    response = client.post("/sdapi/v1/txt2img", json={**request, "hr_upscaler": MODEL})
    assert_error(response, 422, "2048×65536", "upscale_max_pixels")
    assert len(context.jobs.jobs()) == before  # nothing was queued
    with pytest.raises(UpscaleTooLargeError):
        submit_generation(context, GenerationSubmission(GenerationRequest(**request, hr_upscaler="Lanczos")))
    assert UpscaleTooLargeError in SHOWN_ERRORS
