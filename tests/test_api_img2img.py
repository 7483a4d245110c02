"""POST /sdapi/v1/img2img over HTTP on tiny checkpoints (an ordinary SD1 one, loaded, and an inpainting
one picked by override): A1111's defaults and answer, images in as base64 or data URLs, the 404 and
the 422s that name the field, masks of another size, paste-back outside a hard mask, and saving."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from modules.api.errors import ApiError
from modules.api.images import MAX_API_IMAGE_PIXELS, PixelBudget, decode_input_image
from modules.api.server import create_app
from modules.library.synthetic_checkpoints import write_checkpoint
from tests.http_support import serving_image
from tests.test_api_support import WAIT, assert_error, decode_png, make_context, png_base64

SIZE = 64
SMALL = {"width": SIZE, "height": SIZE, "steps": 3, "seed": 11}
HARD = {"mask_blur": 0, "inpainting_fill": 1}  # no blur, original content: the mask's edge is exact


@pytest.fixture(scope="module")
def context(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("api-img2img")
    folder = data_dir / "models" / "Stable-diffusion"
    folder.mkdir(parents=True)
    # Sorted after "a", so "a" is the loaded checkpoint; requests pick this one by override.
    write_checkpoint(folder / "z-inpaint.safetensors", "sd1-inpaint", size="tiny", dtype=torch.float32, seed=3)
    context = make_context(data_dir, names=("a",))
    yield context
    context.jobs.shutdown(timeout=WAIT)


@pytest.fixture(scope="module")
def client(context):
    return TestClient(create_app(context, api=True))


def picture(width: int = SIZE, height: int = SIZE, seed: int = 0) -> Image.Image:
    """Smooth gradients plus noise, so a repainted area visibly differs from the input."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x / width * 255, y / height * 255, (x + y) / (width + height) * 255], axis=-1)
    return Image.fromarray(np.clip(rgb + rng.normal(0, 8, rgb.shape), 0, 255).astype(np.uint8))


def box_mask(width: int, height: int, box: tuple[int, int, int, int]) -> Image.Image:
    mask = np.zeros((height, width), dtype=np.uint8)
    x1, y1, x2, y2 = box
    mask[y1:y2, x1:x2] = 255
    return Image.fromarray(mask, mode="L")


def img2img(client, **fields):
    return client.post("/sdapi/v1/img2img", json=fields)


def ok(response) -> tuple[dict, dict]:
    assert response.status_code == 200, response.text
    body = response.json()
    return body, json.loads(body["info"])


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def test_a1111_defaults_and_answer_with_a_plain_base64_image(client):
    """512x512 and denoising 0.75 by default whatever the image's size; the PNG carries its
    infotext; the init image is not echoed back."""
    sent = png_base64(picture())
    body, info = ok(img2img(client, init_images=[sent], prompt="a boat", steps=2, seed=5))
    (image,) = [decode_png(data) for data in body["images"]]
    assert image.format == "PNG" and image.size == (512, 512)
    assert info["width"] == 512 and info["height"] == 512 and info["denoising_strength"] == 0.75
    assert info["sampler_name"] == "Euler" and info["is_using_inpainting_conditioning"] is False
    assert image.info["parameters"] == info["infotexts"][0]
    assert "Denoising strength: 0.75" in image.info["parameters"]
    assert info["extra_generation_params"]["Denoising strength"] in ("0.75", 0.75)
    parameters = body["parameters"]
    assert parameters["init_images"] is None and parameters["mask"] is None
    assert parameters["prompt"] == "a boat" and parameters["resize_mode"] == 0 and parameters["inpainting_fill"] == 0
    assert parameters["inpaint_full_res"] is True and parameters["inpaint_full_res_padding"] == 0
    assert "enable_hr" not in parameters  # img2img has no hires fields


def test_a_data_url_gives_the_image_plain_base64_gives(client):
    sent = png_base64(picture(seed=2))
    plain, _ = ok(img2img(client, init_images=[sent], **SMALL))
    data_url, _ = ok(img2img(client, init_images=["data:image/png;base64," + sent], **SMALL))
    assert pixels(decode_png(plain["images"][0])).tobytes() == pixels(decode_png(data_url["images"][0])).tobytes()
    jpeg = io.BytesIO()
    picture(seed=2).save(jpeg, format="JPEG")
    as_jpeg, _ = ok(img2img(client, init_images=["data:image/jpeg;base64," + base64.b64encode(jpeg.getvalue()).decode()],
                            **SMALL))
    assert decode_png(as_jpeg["images"][0]).size == (SIZE, SIZE)


@pytest.mark.parametrize("fields", [{}, {"init_images": None}, {"init_images": []}])
def test_no_init_image_is_a1111s_404(client, fields):
    assert_error(img2img(client, prompt="x", **fields), 404, "Init image not found")


def _huge_png() -> str:
    """One bit per pixel and all zeros: a few kB of PNG that would decode into 67 million pixels."""
    side = int(MAX_API_IMAGE_PIXELS ** 0.5) + 1
    buffer = io.BytesIO()
    Image.new("1", (side, side)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.mark.parametrize(("fields", "fragments"), [
    ({"init_images": ["not base64!"]}, ["init_images[0]: not valid base64"]),
    ({"init_images": ["IMAGE", base64.b64encode(b"hello, not an image").decode()], "batch_size": 2},
     ["init_images[1]: the data is not an image Pillow can read"]),
    ({"mask": base64.b64encode(b"GIF89a?").decode()}, ["mask: the data is not an image"]),
    ({"init_images": ["HUGE"]}, ["init_images[0]: the image is 8193x8193 (67,125,249 pixels)",
                                 "at most 67,108,864 pixels (8192x8192)"]),
    ({"denoising_strength": 1.5}, ["denoising_strength: Input should be less than or equal to 1"]),
    ({"denoising_strength": -0.1}, ["denoising_strength: Input should be greater than or equal to 0"]),
    ({"latent_mask": "IMAGE"}, ["latent_mask: a separate mask for the latent blend is not supported"]),
    ({"inpainting_fill": 4}, ["inpainting_fill: Input should be less than or equal to 3"]),
    ({"mask_blur": -1}, ["mask_blur: Input should be greater than or equal to 0"]),
    ({"mask_blur_y": 65}, ["mask_blur_y: Input should be less than or equal to 64"]),
    ({"resize_mode": 7}, ["resize_mode: Input should be less than or equal to 3"]),
    ({"init_images": ["http://127.0.0.1:9/x.png"]}, ["init_images[0]: '127.0.0.1' resolves to a non-public address"]),
    ({"script_name": "SD upscale"}, ["script_name: script 'SD upscale' not found"]),
    ({"restore_faces": True}, ["restore_faces: face restoration is not available"]),
])
def test_bad_input_is_a_422_naming_the_field(client, fields, fragments):
    image = png_base64(picture())
    fields = {"init_images": [image], **fields}
    fields["init_images"] = [{"IMAGE": image, "HUGE": _huge_png()}.get(value, value) for value in fields["init_images"]]
    if fields.get("latent_mask") == "IMAGE":
        fields["latent_mask"] = image
    assert_error(img2img(client, **{**SMALL, **fields}), 422, *fragments)


def test_more_images_than_the_batch_are_refused_before_decoding(client):
    assert_error(img2img(client, init_images=["not decoded"] * 3, batch_size=2, **SMALL), 422,
                 "init_images: 3 images for a batch of 2")


def test_the_images_of_one_request_share_a_pixel_budget():
    text = png_base64(picture())  # 64x64 = 4,096 pixels
    budget = PixelBudget(3 * SIZE * SIZE - 1)
    decode_input_image(text, {}, field="init_images[0]", budget=budget)
    decode_input_image(text, {}, field="init_images[1]", budget=budget)
    with pytest.raises(ApiError, match=r"mask: with this 64x64 image the request's images come to 12,288 pixels; "
                                       r"one request's images together may have at most 12,287"):
        decode_input_image(text, {}, field="mask", budget=budget)


def test_image_urls_are_fetched_when_the_settings_allow_them(client, context):
    """The guard of modules.api.images: a local address is refused by default (api_forbid_local_requests);
    allowed by the operator, the URL's image is used; api_enable_requests off refuses every URL."""
    original = picture(seed=6)
    payload = base64.b64decode(png_base64(original))

    mask = box_mask(SIZE, SIZE, (0, 0, 32, 32))
    with serving_image(payload) as base:
        url = f"{base}/picture.png"
        try:
            assert_error(img2img(client, init_images=[url], **SMALL), 422, "init_images[0]: '127.0.0.1' resolves to "
                                                                            "a non-public address")
            context.settings.apply({"api_forbid_local_requests": False})
            body, _ = ok(img2img(client, init_images=[url], mask=png_base64(mask), **HARD, **SMALL))
            outside = np.asarray(mask) == 0
            assert np.array_equal(pixels(decode_png(body["images"][0]))[outside], pixels(original)[outside])
            context.settings.apply({"api_enable_requests": False})
            assert_error(img2img(client, init_images=[png_base64(original)], mask=url, **SMALL), 422,
                         "mask: image URLs are turned off")
        finally:
            context.settings.apply({"api_forbid_local_requests": True, "api_enable_requests": True})


def test_the_base64_text_is_limited_before_it_is_decoded():
    text = png_base64(picture())
    with pytest.raises(ApiError, match=r"mask: the base64 text is [\d,]+ characters; images of at most 300 bytes "
                                       r"\(400 base64 characters\)") as caught:
        decode_input_image(text, {}, field="mask", max_bytes=300)
    assert caught.value.status_code == 422
    assert decode_input_image(text, {}, field="mask").size == (SIZE, SIZE)


def test_exif_orientation_is_applied():
    """A photo stored sideways with EXIF orientation 6 (rotate 90° clockwise to view) arrives upright."""
    stored = picture(40, 24)
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    stored.save(buffer, format="PNG", exif=exif)
    upright = decode_input_image(base64.b64encode(buffer.getvalue()).decode(), {}, field="init_images[0]")
    assert upright.size == (24, 40)
    assert np.array_equal(np.asarray(upright), np.asarray(stored.transpose(Image.Transpose.ROTATE_270)))


@pytest.mark.parametrize("full_res", [True, False])
def test_empty_mask_is_a_422_with_the_engines_message(client, full_res):
    assert_error(img2img(client, init_images=[png_base64(picture())], mask=png_base64(Image.new("L", (SIZE, SIZE))),
                         inpaint_full_res=full_res, **SMALL), 422, "mask: the mask selects nothing")


@pytest.mark.parametrize(("full_res", "box"), [(True, (20, 16, 44, 40)), (False, (0, 0, 32, 64))])
def test_pixels_outside_a_hard_mask_are_the_inputs(client, full_res, box):
    """Only masked and Whole picture, no blur: paste-back keeps every pixel outside the mask."""
    original = picture(seed=4)
    mask = box_mask(SIZE, SIZE, box)
    body, info = ok(img2img(client, init_images=[png_base64(original)], mask=png_base64(mask),
                            inpaint_full_res=full_res, inpaint_full_res_padding=8, **HARD, **SMALL))
    out = pixels(decode_png(body["images"][0]))
    assert out.shape == (SIZE, SIZE, 3)
    outside = np.asarray(mask) == 0
    assert np.array_equal(out[outside], pixels(original)[outside])
    assert np.abs(out[~outside] - pixels(original)[~outside]).max() > 10  # the inside was repainted
    infotext = info["infotexts"][0]
    assert "Mask blur" not in infotext and "Masked content" not in infotext  # 0 blur, original content
    assert ("Inpaint area: Only masked" in infotext) is full_res
    assert info["warnings"] == []


def test_a_mask_of_another_size_is_resized_and_said(client):
    original = picture(seed=5)
    small_mask = box_mask(SIZE // 2, SIZE // 2, (0, 0, SIZE // 4, SIZE // 2))  # the left half, at half size
    body, info = ok(img2img(client, init_images=[png_base64(original)], mask=png_base64(small_mask),
                            inpaint_full_res=False, **HARD, **SMALL))
    assert any(f"The mask is {SIZE // 2}×{SIZE // 2} but the image is {SIZE}×{SIZE}" in warning
               for warning in info["warnings"]), info["warnings"]
    out = pixels(decode_png(body["images"][0]))
    # Resized as A1111 resizes it ("Just resize": LANCZOS), the mask keeps every pixel where it is 0.
    outside = np.asarray(small_mask.resize((SIZE, SIZE), Image.Resampling.LANCZOS)) == 0
    assert outside[:, SIZE // 2 + 8:].all() and not outside[:, : SIZE // 2].any()
    assert np.array_equal(out[outside], pixels(original)[outside])


def test_mask_blur_sets_both_axes_and_null_keeps_the_axes(client):
    image, mask = png_base64(picture()), png_base64(box_mask(SIZE, SIZE, (8, 8, 40, 40)))
    _, both = ok(img2img(client, init_images=[image], mask=mask, mask_blur=2, mask_blur_x=6, **SMALL))
    assert "Mask blur: 2," in both["infotexts"][0]
    _, axes = ok(img2img(client, init_images=[image], mask=mask, mask_blur=None, mask_blur_x=3, mask_blur_y=3,
                         **SMALL))
    assert "Mask blur: 3," in axes["infotexts"][0]
    _, default = ok(img2img(client, init_images=[image], mask=mask, **SMALL))
    assert "Mask blur: 4," in default["infotexts"][0]  # A1111's 4/4 when the request says nothing


def test_include_init_images_echoes_them(client):
    image, mask = png_base64(picture()), png_base64(box_mask(SIZE, SIZE, (0, 0, 16, 16)))
    body, _ = ok(img2img(client, init_images=[image], mask=mask, include_init_images=True, send_images=False,
                         **SMALL))
    assert body["parameters"]["init_images"] == [image] and body["parameters"]["mask"] == mask
    assert body["images"] == []


def test_inpainting_checkpoint_needs_a_mask_and_reports_its_conditioning(client):
    override = {"override_settings": {"sd_model_checkpoint": "z-inpaint"}}
    image = png_base64(picture())
    assert_error(img2img(client, init_images=[image], **override, **SMALL), 422,
                 "mask: this is an inpainting checkpoint (9-channel UNet); it needs a mask")
    _, info = ok(img2img(client, init_images=[image], mask=png_base64(box_mask(SIZE, SIZE, (0, 0, 32, 32))),
                         **override, **SMALL))
    assert info["is_using_inpainting_conditioning"] is True and info["sd_model_name"] == "z-inpaint"
    assert "Conditional mask weight: 1.0" in info["infotexts"][0]


def test_infotext_fills_the_img2img_fields_the_request_left_out(client):
    infotext = "a lamp\nSteps: 2, Sampler: Euler, CFG scale: 5, Seed: 9, Size: 64x64, Denoising strength: 0.3"
    body, info = ok(img2img(client, init_images=[png_base64(picture())], infotext=infotext, cfg_scale=6))
    assert info["denoising_strength"] == 0.3 and info["steps"] == 2 and info["all_seeds"] == [9]
    assert info["cfg_scale"] == 6 and info["prompt"] == "a lamp" and info["width"] == SIZE
    assert "Denoising strength: 0.3" in info["infotexts"][0]


def test_infotext_sets_only_the_mask_keys_it_states(context):
    """A1111's API takes the inpaint fields from an infotext only where it states them; the others
    keep the API's defaults (fill, Only masked, padding 0), not the paste button's."""
    from modules.api.img2img import prepare
    from modules.api.schemas import Img2ImgApiRequest

    base = "a lamp\nSteps: 2, Sampler: Euler, CFG scale: 5, Seed: 9, Size: 64x64, Denoising strength: 0.3"
    plain = prepare(Img2ImgApiRequest(init_images=[png_base64(picture())], infotext=base), context).generation
    assert (plain.inpainting_fill, plain.inpaint_full_res, plain.inpaint_full_res_padding) == (0, True, 0)
    stated = prepare(Img2ImgApiRequest(init_images=[png_base64(picture())],
                                       infotext=base + ", Masked content: original, Inpaint area: Whole picture"),
                     context).generation
    assert (stated.inpainting_fill, stated.inpaint_full_res, stated.inpaint_full_res_padding) == (1, False, 0)


def test_images_are_saved_to_img2img_images_only_with_save_images(client, context):
    folder = context.paths.data_dir / "outputs" / "img2img-images"

    def saved() -> list:
        return sorted(folder.glob("*/*.png")) if folder.exists() else []

    before = saved()
    ok(img2img(client, init_images=[png_base64(picture())], **SMALL))
    assert saved() == before
    ok(img2img(client, init_images=[png_base64(picture())], save_images=True, **SMALL))
    new = [path for path in saved() if path not in before]
    assert len(new) == 1 and new[0].name.endswith(f"-{SMALL['seed']}.png")
    assert "Denoising strength: 0.75" in Image.open(new[0]).info["parameters"]
    assert not (context.paths.data_dir / "outputs" / "txt2img-images").exists()


def test_txt2img_still_answers_as_before(client):
    """The shared code path: txt2img keeps its own fields and its false inpainting flag."""
    response = client.post("/sdapi/v1/txt2img", json={"prompt": "x", "enable_hr": False, **SMALL})
    body, info = ok(response)
    assert "enable_hr" in body["parameters"] and "init_images" not in body["parameters"]
    assert info["is_using_inpainting_conditioning"] is False and info["extra_generation_params"] == {}


STAMP_SCRIPTS = """
import gradio as gr

from modules import scripts
from modules.processing import process_images


class Stamp(scripts.Script):
    def title(self):
        return "Stamp"

    def show(self, is_img2img):
        return scripts.AlwaysVisible if is_img2img else False

    def ui(self, is_img2img):
        return [gr.Textbox(value="none", label="Word")]

    def process(self, p, word):
        p.extra_generation_params["Stamp"] = f"{word} on {type(p).__name__}"


class Halve(scripts.Script):
    def title(self):
        return "Halve strength"

    def show(self, is_img2img):
        return is_img2img

    def ui(self, is_img2img):
        return [gr.Slider(0, 1, value=0.5, label="Factor")]

    def run(self, p, factor):
        p.denoising_strength = p.denoising_strength * factor
        return process_images(p)
"""


def test_img2img_scripts_run_through_the_api(tmp_path):
    """script_name, script_args and alwayson_scripts name the img2img tab's scripts; a script the
    img2img tab does not show is refused, as is an img2img-only one in txt2img."""
    from modules.extension_host.environment import app_scope
    from modules.extension_host.extensions import ExtensionFolders, load_extensions
    from tests.test_extensions import write_extension

    write_extension(tmp_path / "extensions", "stamp", {"scripts/stamp.py": STAMP_SCRIPTS})
    (tmp_path / "builtin").mkdir()
    context = make_context(tmp_path)
    try:
        with app_scope(context):
            context.extensions = load_extensions(context.settings, context.args, ExtensionFolders(
                user=tmp_path / "extensions", builtin=tmp_path / "builtin"))
            client = TestClient(create_app(context, api=True))
            listed = client.get("/sdapi/v1/scripts").json()
            assert listed["img2img"] == ["stamp", "halve strength"] and "halve strength" not in listed["txt2img"]
            body, info = ok(img2img(client, init_images=[png_base64(picture())], denoising_strength=0.8,
                                    script_name="Halve strength", script_args=[0.25],
                                    alwayson_scripts={"Stamp": {"args": ["hello"]}}, **SMALL))
            infotext = info["infotexts"][0]
            assert "Stamp: hello on StableDiffusionProcessingImg2Img" in infotext
            assert "Denoising strength: 0.2," in infotext  # 0.8 × 0.25, set by the selected script
            assert_error(client.post("/sdapi/v1/txt2img", json={"script_name": "Halve strength", **SMALL}), 422,
                         "script_name")
    finally:
        context.jobs.shutdown(timeout=WAIT)
