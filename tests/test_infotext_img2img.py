"""An img2img image's infotext read back (`read_infotext(..., img2img=True)`, what the img2img paste
button, PNG Info's "Send to img2img" and the API's `infotext` field share) makes the request that
made it: the denoising strength, image CFG scale and every mask key. The infotexts are written by
real inpainting runs on a tiny real-layout SD1 model, not typed here."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from modules.generation.infotext_fields import read_infotext
from modules.generation.requests import Img2ImgRequest
from modules.serving.generation_service import GenerationSubmission
from modules.ui.generation import follow_until_done
from tests.ui_support import make_context

SIZE = 64


def _picture() -> Image.Image:
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    return Image.fromarray(np.stack([x * 4, y * 4, (x + y) * 2], axis=-1).astype(np.uint8))


def _mask() -> Image.Image:
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[16:40, 20:48] = 255
    return Image.fromarray(mask)


BASE = {"width": SIZE, "height": SIZE, "steps": 3, "seed": 99, "prompt": "a cat", "sampler_name": "Euler"}
REQUESTS = {
    "only masked, inverted, latent noise": dict(
        mask_blur_x=3, mask_blur_y=3, inpainting_mask_invert=1, inpainting_fill=2, inpaint_full_res=True,
        inpaint_full_res_padding=8, denoising_strength=0.55),
    "whole picture, original, no blur": dict(
        mask_blur_x=0, mask_blur_y=0, inpainting_fill=1, inpaint_full_res=False, inpaint_full_res_padding=32,
        denoising_strength=0.4),
    "fill, latent nothing": dict(mask_blur_x=5, mask_blur_y=5, inpainting_fill=3, inpaint_full_res=False,
                                 inpaint_full_res_padding=32, denoising_strength=0.9),
}
MASK_FIELDS = ("denoising_strength", "mask_blur_x", "mask_blur_y", "inpainting_mask_invert", "inpainting_fill",
               "inpaint_full_res", "inpaint_full_res_padding", "steps", "seed", "prompt", "sampler_name")


@pytest.fixture(scope="module")
def context(tmp_path_factory):
    context = make_context(tmp_path_factory.mktemp("i2i-infotext"))
    yield context
    context.jobs.shutdown()


@pytest.mark.parametrize("name", REQUESTS)
def test_an_inpainting_infotext_reads_back_as_its_request(context, name):
    request = Img2ImgRequest(init_images=[_picture()], mask=_mask(), **BASE, **REQUESTS[name])
    outcome = follow_until_done(context, GenerationSubmission(request))
    assert outcome.error is None, outcome.error
    reading = read_infotext(outcome.infotexts[0], context.settings.current(), img2img=True)
    assert not reading.problems, reading.problems
    again = Img2ImgRequest(init_images=[_picture()], mask=_mask(), **reading.values)
    # A blur of 0 is not written (A1111 writes `Mask blur` only when it is > 0), so it cannot come back.
    fields = [f for f in MASK_FIELDS if request.mask_blur_x or not f.startswith("mask_blur")]
    assert {f: getattr(again, f) for f in fields} == {f: getattr(request, f) for f in fields}
    assert ("Mask blur" in reading.parameters) == bool(request.mask_blur_x)


def test_img2img_reading_has_no_hires_fields_and_keeps_denoising():
    text = "a cat\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 64x64, Denoising strength: 0.3"
    img2img = read_infotext(text, {}, img2img=True)
    assert not {"enable_hr", "hr_scale", "hr_resize_x", "hr_upscaler"} & set(img2img.values)
    assert "enable_hr" not in img2img.values and img2img.values["denoising_strength"] == 0.3
    # A1111's paste defaults for the mask keys the text lacks (§13.8): the UI's, not the API's.
    assert (img2img.values["inpainting_mask_invert"], img2img.values["inpainting_fill"],
            img2img.values["inpaint_full_res"], img2img.values["inpaint_full_res_padding"]) == (0, 1, False, 32)


def test_image_cfg_scale_and_setting_backed_keys():
    text = ("a cat\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 64x64, Denoising strength: 0.3, "
            "Image CFG scale: 1.25, Noise multiplier: 0.9, Conditional mask weight: 0.5")
    from modules.serving.settings import SCHEMA_BY_KEY

    current = {key: spec.default for key, spec in SCHEMA_BY_KEY.items()}
    reading = read_infotext(text, {**current, "initial_noise_multiplier": 1.0, "inpainting_mask_weight": 0.5},
                            img2img=True)
    assert reading.values["image_cfg_scale"] == 1.25
    # Only the setting that differs from the current value becomes an override.
    assert reading.overrides == {"initial_noise_multiplier": 0.9}


@pytest.mark.parametrize("key,value", [("Masked content", "blur"), ("Inpaint area", "Everything"),
                                       ("Mask mode", "Inpaint maybe"), ("Mask blur", "x")])
def test_an_unknown_mask_value_is_a_problem_naming_the_key(key, value):
    text = f"a cat\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 64x64, {key}: {value}"
    reading = read_infotext(text, {}, img2img=True)
    assert any(problem.startswith(f"{key}:") for problem in reading.problems), reading.problems


def test_without_mask_defaults_only_the_stated_mask_keys_are_read():
    """The API's `infotext` (mask_defaults=False) leaves unstated mask keys to the request's own
    (API) defaults instead of the paste button's."""
    text = "a cat\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 64x64, Masked content: latent noise"
    reading = read_infotext(text, {}, img2img=True, mask_defaults=False)
    assert reading.values["inpainting_fill"] == 2
    assert not {"inpainting_mask_invert", "inpaint_full_res", "inpaint_full_res_padding"} & set(reading.values)
