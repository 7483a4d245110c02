"""The img2img tab's logic without a browser: the brush and sketch masks, "Resize by", the Outpaint
preset's geometry, the request built with the UI's defaults (not the API's), paste into the img2img
fields, and an inpainting run through the job queue on a tiny model that leaves the unmasked
pixels alone."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from modules.serving.settings import Settings
from modules.ui.img2img_inputs import (
    InputError,
    brush_mask,
    fitted_box,
    is_blank,
    mode_inputs,
    outpaint_canvas,
    resize_by_size,
    sketch_image,
    sketch_mask,
)
from modules.ui.request_fields import (
    IMG2IMG_FIELDS,
    INPAINT_AREA_LABELS,
    MASK_MODE_LABELS,
    MASKED_CONTENT_LABELS,
    RESIZE_MODE_LABELS,
    RequestError,
    build_img2img_request,
    paste_parameters,
)


def _layer(size, box, alpha, colour=(255, 255, 255)):
    """A transparent RGBA layer with `box` painted at `alpha`."""
    layer = Image.new("RGBA", size, (0, 0, 0, 0))
    layer.paste((*colour, alpha), box)
    return layer


def _noise_image(size=(64, 64), seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


# --- masks -----------------------------------------------------------------------------------------


def test_brush_mask_is_the_layers_alpha_thresholded_above_128():
    size = (16, 12)
    strong = _layer(size, (2, 2, 6, 6), 255, colour=(255, 0, 0))  # any colour paints
    edge = _layer(size, (8, 2, 10, 4), 129)
    faint = _layer(size, (12, 8, 14, 10), 128)
    mask = np.asarray(brush_mask([strong, edge, faint], size))
    expected = np.zeros((12, 16), dtype=np.uint8)
    expected[2:6, 2:6] = 255
    expected[2:4, 8:10] = 255  # 129 > 128; 128 is not
    assert (mask == expected).all()
    raw = np.asarray(brush_mask([strong, edge, faint], size, round=False))
    assert raw[3, 3] == 255 and raw[3, 9] == 129 and raw[9, 13] == 128 and raw[0, 0] == 0


def test_brush_layers_of_another_size_are_scaled_to_the_image_and_none_is_blank():
    layer = _layer((8, 8), (0, 0, 4, 8), 255)  # the left half
    mask = brush_mask([layer], (16, 16))
    assert mask.size == (16, 16) and mask.getbbox() == (0, 0, 8, 16)
    assert is_blank(brush_mask([], (16, 16))) and is_blank(brush_mask([None], (4, 4)))


def test_sketch_mask_marks_changed_pixels_dimmed_by_transparency():
    original = _noise_image((8, 8))
    sketched = original.copy()
    sketched.putpixel((3, 4), (0, 0, 1) if original.getpixel((3, 4)) != (0, 0, 1) else (0, 0, 2))
    r, g, b = original.getpixel((5, 5))
    sketched.putpixel((5, 5), (r, g, (b + 1) % 256))  # one channel by one level counts
    mask = np.asarray(sketch_mask(original, sketched, 0))
    assert set(zip(*np.nonzero(mask))) == {(4, 3), (5, 5)} and mask[4, 3] == 255
    # 20 % transparency: 255 × 0.8 = 204 exactly.
    assert np.asarray(sketch_mask(original, sketched, 20))[4, 3] == 204
    assert is_blank(sketch_mask(original, sketched, 100))
    with pytest.raises(ValueError, match="draw on the image as uploaded"):
        sketch_mask(original, sketched.resize((4, 4)), 0)


def test_sketch_image_is_the_drawing_through_the_mask():
    original = Image.new("RGB", (32, 32), (10, 20, 30))
    sketched = original.copy()
    sketched.paste((200, 0, 0), (12, 12, 20, 20))
    mask = sketch_mask(original, sketched, 0)
    sharp = sketch_image(original, sketched, mask, 0)
    assert sharp.getpixel((15, 15)) == (200, 0, 0) and sharp.getpixel((2, 2)) == (10, 20, 30)
    soft = sketch_image(original, sketched, mask, 2)
    assert soft.getpixel((2, 2)) == (10, 20, 30)  # far from the strokes: the original
    edge = soft.getpixel((20, 15))  # just outside the stroke: partly red
    assert 10 < edge[0] < 200


# --- the mode sub-tabs -----------------------------------------------------------------------------


def test_each_mode_gives_its_image_and_mask():
    image = _noise_image((32, 32))
    assert mode_inputs(0, image=image).mask is None
    layer = _layer((32, 32), (4, 4, 12, 12), 255)
    editor = {"background": image, "layers": [layer], "composite": image}
    picked = mode_inputs(2, inpaint=editor)
    assert picked.image.size == (32, 32) and picked.mask.getbbox() == (4, 4, 12, 12)
    drawn = image.copy()
    drawn.paste((255, 0, 255), (20, 20, 24, 24))
    picked = mode_inputs(3, inpaint_sketch={"background": image, "layers": [], "composite": drawn}, mask_blur=0)
    assert picked.mask.getbbox() == (20, 20, 24, 24) and picked.image.getpixel((21, 21)) == (255, 0, 255)
    mask = Image.new("L", (32, 32), 0)
    mask.paste(255, (0, 0, 8, 8))
    assert mode_inputs(4, upload_base=image, upload_mask=mask).mask.tobytes() == mask.tobytes()


@pytest.mark.parametrize("mode, kwargs, message", [
    (0, {}, "img2img: no image"),
    (2, {"inpaint": None}, "Inpaint: no image"),
    (4, {"upload_base": Image.new("RGB", (8, 8))}, "no mask"),
])
def test_a_missing_image_is_named(mode, kwargs, message):
    with pytest.raises(InputError, match=message):
        mode_inputs(mode, **kwargs)


def test_an_empty_mask_is_refused_unless_inverted():
    image = _noise_image((16, 16))
    editor = {"background": image, "layers": [Image.new("RGBA", (16, 16))], "composite": image}
    with pytest.raises(InputError, match="the mask is empty"):
        mode_inputs(2, inpaint=editor)
    # "Inpaint not masked" with nothing painted repaints everything (A1111).
    assert is_blank(mode_inputs(2, inpaint=editor, invert=True).mask)
    with pytest.raises(InputError, match="black everywhere"):
        mode_inputs(4, upload_base=image, upload_mask=Image.new("L", (16, 16), 0))


# --- sizes -----------------------------------------------------------------------------------------


def test_resize_by_is_int_of_the_scaled_size_rounded_down_to_the_cores_multiple_of_8():
    scaled = resize_by_size((300, 200), 1.5)
    assert scaled.exact == (450, 300)
    assert scaled.size == (450 - 450 % 8, 300 - 300 % 8) == (448, 296)
    assert "450x300" in scaled.note and "448x296" in scaled.note
    same = resize_by_size((64, 96), 2)
    assert same.exact == same.size == (128, 192) and same.note is None
    assert resize_by_size((100, 100), 0.05).size == (64, 64)  # 5x5 is below the core's minimum
    with pytest.raises(ValueError, match="above 0"):
        resize_by_size((64, 64), 0)


def test_outpaint_geometry_fits_centres_and_masks_the_new_border():
    # 512² into 768×512: fitted at 512×512, centred 128 px from each side.
    assert fitted_box((512, 512), 768, 512) == (128, 0, 640, 512)
    canvas = outpaint_canvas((512, 512), 768, 512, overlap=8)
    mask = np.asarray(canvas.mask)
    assert canvas.has_border and mask.shape == (512, 768)
    assert (mask[:, :128 + 8] == 255).all() and (mask[:, 640 - 8:] == 255).all()
    assert (mask[:, 128 + 8:640 - 8] == 0).all()  # top and bottom touch the canvas: no overlap there
    # A tall image into a square: bands above and below.
    assert fitted_box((100, 200), 256, 256) == (64, 0, 192, 256)
    assert not outpaint_canvas((64, 64), 128, 128).has_border


def test_outpaint_preset_gives_the_filled_canvas_and_its_mask():
    from modules.generation.img2img_images import resize_image
    from modules.ui.img2img import outpaint_preset

    image = _noise_image((64, 64))
    canvas, mask = outpaint_preset(image, 128, 64)
    assert canvas.size == mask.size == (128, 64)
    assert canvas.tobytes() == resize_image(2, image, 128, 64).tobytes()  # "Resize and fill"
    assert np.asarray(canvas)[:, 32:96].tobytes() == np.asarray(image).tobytes()
    with pytest.raises(InputError, match="no border"):
        outpaint_preset(image, 64, 64)
    with pytest.raises(InputError, match="no image"):
        outpaint_preset(None, 64, 64)


# --- the request -----------------------------------------------------------------------------------


def test_img2img_fields_are_listed_once():
    # (The radio labels are the engine's own tuples, RESIZE_MODES and MASKED_CONTENT.)
    assert len(IMG2IMG_FIELDS) == len(set(IMG2IMG_FIELDS))


def test_the_request_takes_the_uis_defaults_not_the_apis():
    from modules.generation.requests import Img2ImgRequest

    image, mask = _noise_image((64, 64)), Image.new("L", (64, 64), 255)
    request = build_img2img_request({"prompt": "a cat"}, [image], mask)
    api = Img2ImgRequest(init_images=[image])
    # The API's: fill, Only masked, padding 0; the UI sends original, Whole picture, 32 (A1111.md §13.2).
    assert (api.inpainting_fill, api.inpaint_full_res, api.inpaint_full_res_padding) == (0, True, 0)
    assert (request.inpainting_fill, request.inpaint_full_res, request.inpaint_full_res_padding) == (
        MASKED_CONTENT_LABELS.index("original"), False, 32)
    assert request.denoising_strength == 0.75 and (request.mask_blur_x, request.mask_blur_y) == (4, 4)
    assert request.resize_mode == 0 and request.inpainting_mask_invert == 0 and request.mask is mask
    assert request.image_cfg_scale is None  # only instruct-pix2pix checkpoints get it
    assert build_img2img_request({}, [image], edit_model=True).image_cfg_scale == 1.5


def test_widget_values_become_the_requests_numbers():
    image = _noise_image((64, 64))
    request = build_img2img_request({"resize_mode": RESIZE_MODE_LABELS[2], "mask_blur": 9,
                                     "inpainting_mask_invert": MASK_MODE_LABELS[1],
                                     "inpainting_fill": MASKED_CONTENT_LABELS[3],
                                     "inpaint_full_res": INPAINT_AREA_LABELS[1], "inpaint_full_res_padding": 48,
                                     "denoising_strength": 0.3, "width": 128, "height": 96}, [image])
    assert (request.resize_mode, request.mask_blur_x, request.mask_blur_y, request.inpainting_mask_invert,
            request.inpainting_fill, request.inpaint_full_res, request.inpaint_full_res_padding) == (
        2, 9, 9, 1, 3, True, 48)
    assert (request.denoising_strength, request.width, request.height) == (0.3, 128, 96)


@pytest.mark.parametrize("values, images, named", [
    ({"denoising_strength": 1.5}, 1, "Denoising strength"),
    ({"inpainting_fill": "blur"}, 1, "Masked content"),
    ({"mask_blur": 65}, 1, "Mask blur"),
    ({"width": 100}, 1, "Width"),
    ({}, 0, "Image: no image"),
])
def test_bad_values_name_the_widget(values, images, named):
    with pytest.raises(RequestError, match=named):
        build_img2img_request(values, [_noise_image((8, 8))] * images)


def test_paste_reads_the_img2img_keys_into_the_widgets():
    text = ("a cat\nSteps: 5, Sampler: Euler, CFG scale: 7, Seed: 3, Size: 64x64, Denoising strength: 0.5, "
            "Mask blur: 8, Mask mode: Inpaint not masked, Inpaint area: Only masked, Masked area padding: 16, "
            "Masked content: latent noise")
    values = paste_parameters(text, Settings({}), img2img=True).values
    assert values["denoising_strength"] == 0.5 and values["mask_blur"] == 8
    assert (values["inpainting_mask_invert"], values["inpaint_full_res"], values["inpainting_fill"],
            values["inpaint_full_res_padding"]) == ("Inpaint not masked", "Only masked", "latent noise", 16)
    assert "enable_hr" not in values and set(values) <= {*IMG2IMG_FIELDS}
    # Without the mask keys, A1111's paste defaults (§13.8).
    plain = paste_parameters("a dog\nSteps: 5, Seed: 1, Denoising strength: 0.4", Settings({}), img2img=True).values
    assert (plain["inpainting_mask_invert"], plain["inpainting_fill"], plain["inpaint_full_res"],
            plain["inpaint_full_res_padding"]) == ("Inpaint masked", "original", "Whole picture", 32)
    # The pasted values build a request.
    assert build_img2img_request(values, [_noise_image((64, 64))]).inpainting_fill == 2


def test_the_send_buttons_pick_the_selected_gallery_image():
    from modules.ui.generation_form import selected_image

    gallery = [("first.png", None), ("second.png", "caption")]
    assert selected_image(gallery, {"index": 1}) == "second.png"
    assert selected_image(gallery, {}) == "first.png" and selected_image(gallery, {"index": 7}) == "first.png"
    assert selected_image([], {}) is None


# --- on a tiny model -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def context(tmp_path_factory):
    from tests.ui_support import make_context

    context = make_context(tmp_path_factory.mktemp("img2img-ui"))
    yield context
    context.jobs.shutdown()


def test_inpainting_from_the_brush_leaves_pixels_far_from_the_mask_unchanged(context):
    from modules.serving.generation_service import GenerationSubmission
    from modules.ui.generation import follow_until_done
    from modules.ui.img2img import request_from_widgets

    image = _noise_image((64, 64), seed=3)
    layer = _layer((64, 64), (24, 24, 40, 40), 255)
    values = {"prompt": "a stone", "steps": 2, "sampler_name": "Euler", "seed": 5, "width": 64, "height": 64,
              "denoising_strength": 1.0}
    request, notes = request_from_widgets(context, values, {"mode": 2, "inpaint": {
        "background": image, "layers": [layer], "composite": image}})
    assert notes == [] and request.inpaint_full_res is False and request.inpainting_fill == 1
    outcome = follow_until_done(context, GenerationSubmission(request))
    assert outcome.error is None, outcome.error
    [result] = outcome.images
    out, original = np.asarray(result.convert("RGB")), np.asarray(image)
    # Mask blur 4: the kernel reaches 2·int(2.5·4+0.5)+1 = 21 taps, 10 px; beyond 12 px the overlay
    # is the original's pixels exactly.
    far = np.ones((64, 64), dtype=bool)
    far[24 - 12:40 + 12, 24 - 12:40 + 12] = False
    assert (out[far] == original[far]).all()
    assert not (out[28:36, 28:36] == original[28:36, 28:36]).all()  # the masked area was repainted
    assert "Denoising strength: 1.0" in outcome.infotexts[0] and "Mask blur: 4" in outcome.infotexts[0]


def test_resize_by_sets_the_size_from_the_image(context):
    from modules.ui.img2img import request_from_widgets

    image = _noise_image((64, 48))
    request, notes = request_from_widgets(context, {}, {"mode": 0, "image": image, "resize_by": True, "scale": 2})
    assert (request.width, request.height) == (128, 96) and notes == [] and request.mask is None
    request, notes = request_from_widgets(context, {}, {"mode": 0, "image": _noise_image((100, 80)),
                                                        "resize_by": True, "scale": 1.1})
    # int(100·1.1) = 110, int(80·1.1) = 88: the width is rounded down to 104, a multiple of 8.
    assert (request.width, request.height) == (104, 88) and "110x88" in notes[0]


def test_the_ui_builds_with_img2imgs_ids(context):
    from modules.ui.app import build_ui

    config = build_ui(context).get_config_file()
    ids = {c.get("props", {}).get("elem_id") for c in config["components"]}
    expected = {"tab_img2img", "img2img_prompt", "img2img_neg_prompt", "img2img_generate", "img2img_interrupt",
                "img2img_skip", "img2img_gallery", "html_info_img2img", "img2img_seed", "mode_img2img",
                "img2img_img2img_tab", "img2img_image", "img2img_img2img_sketch_tab", "img2img_sketch",
                "img2img_inpaint_tab", "img2maskimg", "img2img_inpaint_sketch_tab", "inpaint_sketch",
                "img2img_inpaint_upload_tab", "img_inpaint_base", "img_inpaint_mask", "img2img_batch_tab", "resize_mode",
                "img2img_copy_to_img2img", "img2img_copy_to_sketch", "img2img_copy_to_inpaint",
                "img2img_copy_to_inpaint_sketch",
                "img2img_denoising_strength", "img2img_image_cfg_scale", "img2img_mask_blur", "img2img_outpaint",
                "txt2img_send_to_img2img", "txt2img_send_to_inpaint", "img2img_send_to_img2img",
                "img2img_send_to_inpaint", "pnginfo_send_to_img2img", "pnginfo_send_to_inpaint", "img2img_paste"}
    assert not expected - ids, sorted(expected - ids)
    by_id = {c["props"]["elem_id"]: c["props"] for c in config["components"] if c.get("props", {}).get("elem_id")}
    assert by_id["img2img_denoising_strength"]["value"] == 0.75
    assert by_id["img2img_inpainting_fill"]["value"] == "original"
    assert by_id["img2img_inpaint_full_res"]["value"] == "Whole picture"
    assert by_id["img2img_inpaint_full_res_padding"]["value"] == 32
    assert by_id["img2img_image_cfg_scale"]["visible"] is False  # a plain SD1 checkpoint


# --- events on the built page ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def page(context):
    from modules.ui.app import build_ui

    blocks = build_ui(context)
    return blocks, {block.elem_id: block for block in blocks.blocks.values() if getattr(block, "elem_id", None)}


def _click(page, context, elem_id: str, inputs: list) -> list:
    """The click handler of `elem_id` called with Python values (what Gradio passes after its
    preprocessing); returns its outputs as the handler gives them."""
    blocks, by_id = page
    [fn] = [fn for fn in blocks.fns.values() if fn.targets and fn.targets[0] == (by_id[elem_id]._id, "click")]
    return list(fn.fn(*inputs))


def _selected(update) -> str:
    return update.selected if hasattr(update, "selected") else update["selected"]


def test_png_info_sends_the_infotext_and_image_to_inpaint(page, context, tmp_path):
    from PIL.PngImagePlugin import PngInfo

    text = ("a lighthouse\nNegative prompt: fog\nSteps: 7, Sampler: Euler, CFG scale: 5, Seed: 42, Size: 64x64, "
            "Denoising strength: 0.35, Mask blur: 8, Inpaint area: Only masked, Masked area padding: 24, "
            "Masked content: fill")
    info = PngInfo()
    info.add_text("parameters", text)
    path = tmp_path / "sent.png"
    _noise_image((64, 64)).save(path, pnginfo=info)
    data = _click(page, context, "pnginfo_send_to_inpaint", [text, str(path)])
    values = dict(zip(IMG2IMG_FIELDS, data))
    assert values["prompt"] == "a lighthouse" and values["negative_prompt"] == "fog" and values["steps"] == 7
    assert values["denoising_strength"] == 0.35 and values["mask_blur"] == 8
    assert (values["inpaint_full_res"], values["inpaint_full_res_padding"], values["inpainting_fill"]) == (
        "Only masked", 24, "fill")
    image, main_tab, mode_tab, mode, note = data[-5:]
    assert np.asarray(image).tobytes() == np.asarray(_noise_image((64, 64))).tobytes()  # the picture, decoded
    assert _selected(main_tab) == "img2img" and _selected(mode_tab) == "mode_inpaint" and mode == 2
    assert "Pasted" in note


def test_the_paste_button_reads_an_infotext_into_the_img2img_fields(page, context):
    text = "a boat\nSteps: 9, Seed: 3, Size: 64x64, Denoising strength: 0.2, Mask mode: Inpaint not masked"
    data = _click(page, context, "img2img_paste", [text, {}])
    values = dict(zip(IMG2IMG_FIELDS, data))
    assert values["steps"] == 9 and values["denoising_strength"] == 0.2
    assert values["inpainting_mask_invert"] == "Inpaint not masked" and values["inpainting_fill"] == "original"


def test_the_outpaint_button_opens_inpaint_upload_with_the_border_mask(page, context):
    image = _noise_image((64, 64))
    data = _click(page, context, "img2img_outpaint", [0, image, None, None, 128, 64])
    canvas, mask, resize_mode, fill, mode_tab, mode, note = data
    assert resize_mode == "Resize and fill" and fill == "fill" and mode == 4
    assert _selected(mode_tab) == "mode_inpaint_upload" and "Outpaint" in note
    assert canvas.size == mask.size == (128, 64) and np.asarray(mask)[:, 0].min() == 255
    error = _click(page, context, "img2img_outpaint", [0, image, None, None, 64, 64])[-1]
    assert "no border" in error


def test_generate_on_the_batch_tab_queues_one_job_over_the_files(context, tmp_path):
    from types import SimpleNamespace

    from modules.ui.generation_form import QueuedWork
    from modules.ui.img2img import batch_work
    from modules.ui.img2img_batch_tab import spec_from_values

    paths = []
    for seed in range(2):
        paths.append(str(tmp_path / f"in-{seed}.png"))
        _noise_image((64, 64), seed).save(paths[-1])
    batch = SimpleNamespace(spec=lambda *values: spec_from_values({"source": "upload", "upload": list(values)}))
    values = {"prompt": "a batch", "steps": 2, "sampler_name": "Euler", "seed": 7, "width": 64, "height": 64}
    work = batch_work(context, values, {"mode": 5}, batch, paths)
    assert isinstance(work, QueuedWork)
    job = work.submit(None)
    job.wait(60)
    outcome = work.outcome(job)
    assert outcome.error is None, outcome.error
    assert len(outcome.images) == 2 and outcome.seeds == [7, 7]  # one seed for every file (A1111)
    assert all(text.startswith("a batch\n") for text in outcome.infotexts)
    with pytest.raises(RequestError, match="no files uploaded"):
        batch_work(context, values, {"mode": 5}, batch, [])


def test_a_mask_of_another_size_is_resized_and_the_note_shown(context):
    from modules.serving.generation_service import GenerationSubmission
    from modules.ui.generation import follow_until_done
    from modules.ui.img2img import request_from_widgets

    mask = Image.new("L", (32, 32), 0)
    mask.paste(255, (8, 8, 24, 24))
    values = {"prompt": "x", "steps": 2, "sampler_name": "Euler", "seed": 5, "width": 64, "height": 64}
    request, _ = request_from_widgets(context, values, {"mode": 4, "upload_base": _noise_image((64, 64)),
                                                        "upload_mask": mask})
    outcome = follow_until_done(context, GenerationSubmission(request))
    assert outcome.error is None and len(outcome.images) == 1
    assert any("32×32" in note and "64×64" in note for note in outcome.notes), outcome.notes
    assert "32×32" in outcome.info_html(0)


def test_interrupt_on_a_page_without_its_own_job_stops_only_an_img2img_job(queue):
    import threading
    from types import SimpleNamespace

    from modules.ui.generation_form import stop_job

    page = SimpleNamespace(jobs=queue)
    started, release = threading.Event(), threading.Event()

    def work(control):
        started.set()
        assert release.wait(30)
        control.check()

    txt2img_job = queue.submit(work, kind="txt2img")
    assert started.wait(30)
    assert not stop_job(page, None, kind="img2img")  # img2img's button leaves a txt2img job alone
    release.set()
    assert txt2img_job.wait(30).state == "done"
    started.clear(), release.clear()
    img2img_job = queue.submit(work, kind="img2img")
    assert started.wait(30)
    assert stop_job(page, None, kind="img2img")
    release.set()
    assert img2img_job.wait(30).state == "interrupted"


def test_a_send_to_button_never_opens_a_typed_path():
    """An extension's send-to binding whose image source is a text box would hand a user's text to
    Image.open: it is refused (the infotext path drops it and sends only the text)."""
    import gradio as gr

    from modules.ui.img2img import wire_send_image
    from modules.ui.shared import UiShared

    with gr.Blocks():
        with pytest.raises(TypeError, match="Textbox"):
            wire_send_image(None, UiShared(), gr.Button(), gr.Textbox(), None, 0)


def test_image_cfg_shows_for_instruct_pix2pix_checkpoints_only():
    from types import SimpleNamespace

    from modules.library.model_detection import Architectures
    from modules.ui.img2img import is_edit_model

    def context_with(architecture):
        return SimpleNamespace(current_architecture=lambda: architecture)

    assert is_edit_model(context_with(Architectures.SD1_PIX2PIX))
    assert not is_edit_model(context_with(Architectures.SD1_INPAINT))
    assert not is_edit_model(context_with(Architectures.SD1)) and not is_edit_model(context_with(None))


def test_copy_image_to_copies_the_picture_with_its_strokes():
    from modules.ui.img2img import copied_image

    background, composite = _noise_image((8, 8), 1), _noise_image((8, 8), 2)
    assert copied_image({"background": background, "layers": [], "composite": composite}) is composite
    assert copied_image({"background": background, "layers": [], "composite": None}) is background
    assert copied_image(background) is background and copied_image(None) is None


def test_resize_by_previews_the_size_it_gives():
    from modules.ui.img2img import resize_by_preview

    assert "Resize from 300x200 to 448x296" in resize_by_preview(_noise_image((300, 200)), 1.5)
    assert "450x300 rounded" in resize_by_preview(_noise_image((300, 200)), 1.5)
    assert "rounded" not in resize_by_preview(_noise_image((64, 64)), 2)
    assert "upload one" in resize_by_preview(None, 2)
