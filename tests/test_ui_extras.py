"""The Extras tab without a browser: A1111's ids and defaults, the request the Generate button builds
(Scale by / Scale to / crop / Upscaler 2 / the three modes), a Lanczos upscale through the job queue,
the folder sub-tab on a locked server, and "Send to Extras" from txt2img and PNG Info."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from modules.ui.extras_tab import (
    BATCH,
    DIRECTORY,
    SINGLE,
    ExtrasInputError,
    ScriptControls,
    extras_request,
    script_args,
    upload_files,
)
from modules.ui.extras_upscale_ui import DEFAULTS, SCALE_BY, SCALE_TO, scale_in_name

UPSCALE = "Upscale"


def _noise_image(size=(64, 48), seed=0, mode="RGBA"):
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels).convert(mode)  # RGBA: opaque, as #extras_image gives an upload


def _upscale_args(**changes):
    return {UPSCALE: {**DEFAULTS, **changes}}


# --- plain functions -----------------------------------------------------------------------------


def test_script_args_map_each_steps_values_back_by_argument_name():
    scripts = [ScriptControls("Upscale", {"upscale_by": object(), "upscaler_1_name": object()}),
               ScriptControls("Flip", {"enabled": object()})]
    assert script_args(scripts, [2.5, "Lanczos", True]) == {
        "Upscale": {"upscale_by": 2.5, "upscaler_1_name": "Lanczos"}, "Flip": {"enabled": True}}
    with pytest.raises(ValueError, match="3 inputs, got 2"):
        script_args(scripts, [2.5, "Lanczos"])


def test_a_digit_beside_an_x_in_the_upscalers_name_is_its_scale():
    assert scale_in_name("4x-UltraSharp") == 4 and scale_in_name("R-ESRGAN 2x+") == 2
    assert scale_in_name("SwinIR x4") == 4 and scale_in_name("DAT X3") == 3
    assert scale_in_name("Lanczos") is None and scale_in_name("ScuNET GAN") is None and scale_in_name(None) is None


def test_each_mode_gives_its_request():
    image = _noise_image()
    args = _upscale_args(upscaler_1_name="Lanczos")
    single = extras_request(SINGLE, image, None, "", "", True, args)
    [(name, sent)] = single.images
    assert sent is image and single.script_args == args and single.save is True
    folder = extras_request(DIRECTORY, None, None, " /data/in ", "", False, args)
    assert folder.input_dir == "/data/in" and folder.output_dir == "" and folder.show_results is False
    assert not folder.images


@pytest.mark.parametrize("mode, image, input_dir, message", [
    (SINGLE, None, "", "Single Image: no image"),
    (BATCH, None, "", "Batch Process: no files uploaded"),
    (DIRECTORY, None, "  ", "Input directory: empty"),
    (7, None, "", "unknown Extras mode 7"),
])
def test_missing_input_is_named(mode, image, input_dir, message):
    with pytest.raises(ExtrasInputError, match=message):
        extras_request(mode, image, [], input_dir, "", True, _upscale_args())


def test_a_locked_server_refuses_the_folder_mode_even_if_a_value_arrives():
    refusal = "Batch from Directory is off on this server"
    with pytest.raises(ExtrasInputError, match=refusal):
        extras_request(DIRECTORY, None, None, "/etc", "", True, _upscale_args(), refusal=refusal)


def test_an_image_over_the_pixel_limit_is_refused_in_one_sentence():
    from modules.postprocessing.extras import MAX_EXTRAS_IMAGE_PIXELS

    huge = Image.new("1", (8193, 8192))  # 1 bit a pixel: 8 MB, yet over 8192² pixels
    assert huge.width * huge.height > MAX_EXTRAS_IMAGE_PIXELS
    with pytest.raises(ExtrasInputError) as raised:
        extras_request(SINGLE, huge, None, "", "", True, _upscale_args())
    message = str(raised.value)
    assert message.startswith("images: ") and "8193x8192" in message and "validation error" not in message


def test_uploads_go_as_paths_in_order_and_too_many_are_refused_unread(tmp_path):
    from modules.postprocessing.extras import MAX_EXTRAS_IMAGES

    paths = [str(tmp_path / f"in-{seed}.png") for seed in range(2)]  # not even written: nothing is read here
    assert upload_files(paths) == [("in-0.png", paths[0]), ("in-1.png", paths[1])]
    request = extras_request(BATCH, None, paths, "", "", True, _upscale_args())
    assert request.files == [("in-0.png", paths[0]), ("in-1.png", paths[1])] and request.images == []
    with pytest.raises(ExtrasInputError, match=f"Batch Process: {MAX_EXTRAS_IMAGES + 1} files uploaded.*at most"):
        upload_files([paths[0]] * (MAX_EXTRAS_IMAGES + 1))


# --- the built page --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def context(tmp_path_factory):
    from tests.ui_support import make_context

    context = make_context(tmp_path_factory.mktemp("extras-ui"), load=False)
    yield context
    context.jobs.shutdown()


@pytest.fixture(scope="module")
def page(context):
    from modules.ui.app import build_ui

    blocks = build_ui(context)
    return blocks, {block.elem_id: block for block in blocks.blocks.values() if getattr(block, "elem_id", None)}


def _props(page) -> dict[str, dict]:
    blocks, _ = page
    config = blocks.get_config_file()
    return {c["props"]["elem_id"]: c["props"] for c in config["components"] if c.get("props", {}).get("elem_id")}


def test_the_tab_has_a1111s_ids_and_defaults(page, context):
    props = _props(page)
    expected = {"tab_extras", "mode_extras", "extras_single_tab", "extras_image", "extras_batch_process_tab",
                "extras_image_batch", "extras_batch_directory_tab", "extras_batch_input_dir",
                "extras_batch_output_dir", "extras_show_extras_results", "extras_generate", "extras_interrupt",
                "extras_gallery", "html_info_extras", "extras_upscale", "extras_upscaler_1", "extras_upscaler_2",
                "extras_upscaler_2_visibility", "extras_resize_mode", "extras_scale_by_tab", "extras_upscaling_resize",
                "extras_upscale_max_side_length", "extras_scale_to_tab", "extras_upscaling_resize_w",
                "extras_upscaling_resize_h", "upscaling_res_switch_btn", "extras_upscaling_crop",
                "txt2img_send_to_extras", "img2img_send_to_extras", "pnginfo_send_to_extras"}
    assert not expected - set(props), sorted(expected - set(props))
    names = context.upscalers.registry.names()
    assert names[:3] == ["None", "Lanczos", "Nearest"]
    for upscaler in ("extras_upscaler_1", "extras_upscaler_2"):
        assert props[upscaler]["value"] == "None"
        assert [choice[0] if isinstance(choice, (list, tuple)) else choice
                for choice in props[upscaler]["choices"]] == names
    resize = props["extras_upscaling_resize"]
    assert (resize["minimum"], resize["maximum"], resize["step"], resize["value"]) == (1, 8, 0.05, 4)
    for side in ("extras_upscaling_resize_w", "extras_upscaling_resize_h"):
        assert (props[side]["minimum"], props[side]["maximum"], props[side]["step"], props[side]["value"]) == (
            64, 8192, 8, 512)
    visibility = props["extras_upscaler_2_visibility"]
    assert (visibility["minimum"], visibility["maximum"], visibility["step"], visibility["value"]) == (0, 1, 0.001, 0)
    assert props["extras_upscale_max_side_length"]["value"] == 0
    assert props["extras_upscaling_crop"]["value"] is True and props["extras_show_extras_results"]["value"] is True
    assert props["extras_upscale-checkbox"]["value"] is True  # the Upscale accordion is on
    assert props["extras_image"]["image_mode"] == "RGBA"
    blocks, _ = page
    tabs = [c["props"]["label"] for c in blocks.get_config_file()["components"]
            if c.get("type") == "tabitem" and str(c["props"].get("elem_id")).startswith("tab_")]
    assert tabs[:4] == ["txt2img", "img2img", "Extras", "PNG Info"]


def _handler(page, elem_id: str, event: str = "click"):
    blocks, by_id = page
    [fn] = [fn for fn in blocks.fns.values() if fn.targets and fn.targets[0] == (by_id[elem_id]._id, event)]
    return fn


def _generate(page, context, values_by_id: dict[str, object], upscale: dict[str, object]) -> list:
    return _generate_with(page, values_by_id, upscale)


def _generate_with(page, values_by_id: dict[str, object], upscale: dict[str, object],
                   values_by_block: dict[int, object] | None = None) -> list:
    """Run the Generate handler as Gradio would after preprocessing: each input by its element id
    (the Upscale step's by argument name; blocks without one by block id), the rest at their
    defaults; returns the last update."""
    from modules.ui.extras_upscale_ui import is_upscale_controls

    fn = _handler(page, "extras_generate")
    values_by_block = values_by_block or {}
    upscale_ids = {"upscale_enabled": "extras_upscale-checkbox", "upscale_mode": "extras_upscale_mode",
                   "upscale_by": "extras_upscaling_resize", "max_side_length": "extras_upscale_max_side_length",
                   "upscale_to_width": "extras_upscaling_resize_w", "upscale_to_height": "extras_upscaling_resize_h",
                   "upscale_crop": "extras_upscaling_crop", "upscaler_1_name": "extras_upscaler_1",
                   "upscaler_2_name": "extras_upscaler_2", "upscaler_2_visibility": "extras_upscaler_2_visibility"}
    assert is_upscale_controls(upscale_ids)
    given = {**values_by_id, **{upscale_ids[name]: value for name, value in {**DEFAULTS, **upscale}.items()}}
    inputs = []
    for block in fn.inputs:
        if block._id in values_by_block:
            inputs.append(values_by_block[block._id])
        else:
            inputs.append(given[block.elem_id] if block.elem_id in given else getattr(block, "value", None))

    async def run():
        # None first: the gr.Request Gradio passes (no user to tell apart on a single-user server).
        updates = [update async for update in fn.fn(None, *inputs)]
        return list(updates[-1])

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, run()).result()


@pytest.fixture
def recorded(monkeypatch):
    """The requests the Generate button submits (then submitted for real)."""
    import modules.postprocessing.extras as postprocessing

    requests = []
    real = postprocessing.submit_extras

    def record(context, request):
        requests.append(request)
        return real(context, request)

    monkeypatch.setattr(postprocessing, "submit_extras", record)
    return requests


def test_generate_scales_by_with_lanczos(page, context, recorded):
    image = _noise_image((64, 48))
    gallery, info, progress, state, job_id = _generate(
        page, context, {"extras_selected_mode": SINGLE, "extras_image": image},
        {"upscaler_1_name": "Lanczos", "upscale_by": 2, "upscale_mode": SCALE_BY})
    [request] = recorded
    assert request.script_args[UPSCALE] == {**DEFAULTS, "upscaler_1_name": "Lanczos", "upscale_by": 2}
    assert "error" not in info, info
    [result] = gallery
    # 64×48 × 2, already multiples of 8: one Lanczos resize, as Pillow's.
    expected = image.convert("RGB").resize((128, 96), Image.LANCZOS)
    assert result.size == (128, 96)
    assert np.abs(np.asarray(result.convert("RGB"), dtype=int) - np.asarray(expected, dtype=int)).max() <= 1
    assert "Postprocess upscale by: 2" in info and "Lanczos" in info
    assert job_id and progress == ""


@pytest.mark.parametrize("crop, size", [(True, (96, 96)), (False, (128, 96))])
def test_generate_scales_to_a_box_with_and_without_crop(page, context, recorded, crop, size):
    # 64×48 into 96×96: factor max(96/64, 96/48) = 2 covers the box (128×96); crop centres it in 96×96.
    gallery, info, *_ = _generate(
        page, context, {"extras_selected_mode": SINGLE, "extras_image": _noise_image((64, 48))},
        {"upscaler_1_name": "Lanczos", "upscale_mode": SCALE_TO, "upscale_to_width": 96, "upscale_to_height": 96,
         "upscale_crop": crop})
    [request] = recorded
    args = request.script_args[UPSCALE]
    assert (args["upscale_mode"], args["upscale_to_width"], args["upscale_to_height"], args["upscale_crop"]) == (
        SCALE_TO, 96, 96, crop)
    assert [image.size for image in gallery] == [size], info
    assert "Postprocess upscale to: 96x96" in info


def test_generate_blends_upscaler_2_by_its_visibility(page, context, recorded):
    image = _noise_image((32, 32), seed=4)
    gallery, info, *_ = _generate(
        page, context, {"extras_selected_mode": SINGLE, "extras_image": image},
        {"upscaler_1_name": "Lanczos", "upscale_by": 2, "upscaler_2_name": "Nearest", "upscaler_2_visibility": 0.5})
    args = recorded[0].script_args[UPSCALE]
    assert (args["upscaler_2_name"], args["upscaler_2_visibility"]) == ("Nearest", 0.5)
    lanczos = image.resize((64, 64), Image.LANCZOS)
    nearest = image.resize((64, 64), Image.NEAREST)
    expected = np.asarray(Image.blend(lanczos, nearest, 0.5).convert("RGB"), dtype=int)
    [result] = gallery
    assert np.abs(np.asarray(result.convert("RGB"), dtype=int) - expected).max() <= 1
    assert "Postprocess upscaler 2: Nearest" in info


def test_generate_without_an_image_shows_the_error(page, context, recorded):
    gallery, info, *_ = _generate(page, context, {"extras_selected_mode": SINGLE, "extras_image": None}, {})
    assert "Single Image: no image" in info and not recorded


def test_an_unknown_upscaler_is_an_error_shown_in_the_tab(page, context):
    gallery, info, *_ = _generate(page, context, {"extras_selected_mode": SINGLE, "extras_image": _noise_image()},
                                  {"upscaler_1_name": "No Such Model 4x"})
    assert "No Such Model 4x" in info and "error" in info


def test_the_upscaler_sets_resize_from_its_name_when_the_setting_is_on(page, context):
    fn = _handler(page, "extras_upscaler_1", "change")
    context.settings.apply({"set_scale_by_when_changing_upscaler": True})
    try:
        assert fn.fn("R-ESRGAN 2x+") == 2
        assert not isinstance(fn.fn("Lanczos"), int)  # no digit: Resize is left alone
    finally:
        context.settings.apply({"set_scale_by_when_changing_upscaler": False})
    assert not isinstance(fn.fn("R-ESRGAN 2x+"), int)  # off (A1111's default): nothing changes


def _selected(update) -> str:
    return update.selected if hasattr(update, "selected") else update["selected"]


def test_send_to_extras_from_txt2img_puts_the_selected_image_and_opens_the_tab(page):
    first, second = _noise_image((16, 16), 1, "RGB"), _noise_image((16, 16), 2, "RGB")
    image, main_tab, mode_tab, mode, note = _handler(page, "txt2img_send_to_extras").fn([first, second], {"index": 1})
    assert np.asarray(image).tobytes() == np.asarray(second).tobytes()
    assert _selected(main_tab) == "extras" and _selected(mode_tab) == "single_image" and mode == SINGLE
    *_, note = _handler(page, "img2img_send_to_extras").fn([], {})
    assert "Nothing to send" in note


def test_send_to_extras_from_png_info_sends_the_file(page, tmp_path):
    path = tmp_path / "sent.png"
    _noise_image((24, 16), 3, "RGB").save(path)
    image, main_tab, *_ = _handler(page, "pnginfo_send_to_extras").fn(str(path))
    assert image.size == (24, 16) and _selected(main_tab) == "extras"


def test_a_locked_server_has_no_folder_fields(tmp_path):
    # The rule and its words are img2img Batch's (one place says why folders are off).
    from modules.ui.app import build_ui
    from tests.ui_support import make_context

    context = make_context(tmp_path, load=False, extra_args=("--hide-ui-dir-config",))
    try:
        props = _props((build_ui(context), None))
    finally:
        context.jobs.shutdown()
    assert "extras_batch_input_dir" not in props and "extras_batch_output_dir" not in props
    assert "--hide-ui-dir-config" in props["extras_batch_dirs_refused"]["value"]
    assert props["extras_show_extras_results"]["visible"] is False
    assert "extras_batch_directory_tab" in props and "extras_image_batch" in props


def test_the_results_send_to_img2img_sends_the_selected_result(page):
    first, second = _noise_image((16, 8), 5, "RGB"), _noise_image((16, 8), 6, "RGB")
    data = _handler(page, "extras_send_to_img2img").fn([first, second], {"index": 1})
    assert np.asarray(data[0]).tobytes() == np.asarray(second).tobytes()
    assert _selected(data[-4]) == "img2img" and _selected(data[-3]) == "mode_img2img"


def test_an_extension_steps_controls_map_to_its_arguments(context, monkeypatch):
    """A step's `ui()` dict comes back as `script_args[name]` by key; a step whose `ui()` raises, or
    returns no dict, is left out, and the others still show."""
    import gradio as gr

    import modules.postprocessing.runner as runner
    from modules.postprocessing.scripts import ScriptPostprocessing
    from modules.ui.extras_tab import _build_scripts

    class Flip(ScriptPostprocessing):
        name = "Flip"

        def ui(self):
            return {"enabled": gr.Checkbox(value=True, elem_id="flip_enabled"),
                    "axis": gr.Radio(["x", "y"], value="y"), "not_a_component": 3}

    class Broken(ScriptPostprocessing):
        name = "Broken"

        def ui(self):
            raise RuntimeError("an extension's bug")

    class Listy(ScriptPostprocessing):
        name = "Listy"

        def ui(self):
            return [gr.Checkbox()]

    builtins = runner.postprocessing_scripts(context)
    steps = [*builtins, Broken(), Flip(), Listy()]
    monkeypatch.setattr(runner, "postprocessing_scripts", lambda context, extras=True: steps)
    with gr.Blocks():
        built = _build_scripts(context)
    assert [script.name for script in built] == [*(s.name for s in builtins), "Flip"]
    flip = built[-1]
    assert list(flip.controls) == ["enabled", "axis"] and steps[-2].controls is flip.controls
    upscale_values = [DEFAULTS[name] for name in built[0].controls]
    args = script_args(built, [*upscale_values, False, "x"])
    assert args["Flip"] == {"enabled": False, "axis": "x"} and args[UPSCALE] == DEFAULTS


def test_generate_on_batch_process_upscales_every_upload(page, context, tmp_path):
    paths = []
    for seed in range(2):
        paths.append(str(tmp_path / f"up-{seed}.png"))
        _noise_image((16, 8), seed, "RGB").save(paths[-1])
    gallery, info, *_ = _generate(page, context, {"extras_selected_mode": BATCH, "extras_image_batch": paths},
                                  {"upscaler_1_name": "Lanczos", "upscale_by": 2})
    assert [image.size for image in gallery] == [(32, 16), (32, 16)], info
    expected = _noise_image((16, 8), 1, "RGB").resize((32, 16), Image.LANCZOS)
    assert np.abs(np.asarray(gallery[1].convert("RGB"), dtype=int) - np.asarray(expected, dtype=int)).max() <= 1


def _png_header_only(path, width: int, height: int):
    """A PNG whose header says `width` x `height` with almost no pixel data (decoding it fails)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\0" * 10)) + chunk(b"IEND", b""))
    return str(path)


def test_batch_process_refuses_uploads_from_their_headers_off_the_event_loop(page, context, tmp_path, monkeypatch):
    import modules.postprocessing.extras as postprocessing

    checked_on = []
    real_plan = postprocessing.plan_extras

    def plan(context, request, *owner):  # owner: the submitting user, passed on as given
        try:
            asyncio.get_running_loop()
            checked_on.append("the event loop")
        except RuntimeError:
            checked_on.append("a worker thread")
        return real_plan(context, request, *owner)

    monkeypatch.setattr(postprocessing, "plan_extras", plan)
    small = tmp_path / "small.png"
    _noise_image((16, 8), 1, "RGB").save(small)
    huge = _png_header_only(tmp_path / "huge.png", 9000, 9000)  # 68 bytes on disk
    before = len(context.jobs.jobs())
    gallery, info, *_ = _generate(page, context, {"extras_selected_mode": BATCH,
                                                  "extras_image_batch": [str(small), huge]},
                                  {"upscaler_1_name": "Lanczos", "upscale_by": 2})
    assert "huge.png: the image is 9000x9000" in info and "error" in info
    assert checked_on == ["a worker thread"] and len(context.jobs.jobs()) == before
    # Each within the limit, together over the request's output budget (twice upscale_max_pixels).
    stored = dict(context.settings.stored())
    context.settings.apply({"upscale_max_pixels": 4096 * 4096})
    try:
        wide = [_png_header_only(tmp_path / f"wide-{index}.png", 4096, 4096) for index in range(3)]
        gallery, info, *_ = _generate(page, context, {"extras_selected_mode": BATCH, "extras_image_batch": wide},
                                      {"upscaler_1_name": "None"})
    finally:
        context.settings.put_back(stored, dict(context.settings.stored()))
    assert "the 3 results would come to" in info and "upscale_max_pixels" in info
    assert len(context.jobs.jobs()) == before


def test_generate_from_a_directory_saves_there_and_hides_results_when_asked(page, context, tmp_path):
    source, target = tmp_path / "in", tmp_path / "out"
    source.mkdir()
    for seed in range(2):
        _noise_image((16, 8), seed, "RGB").save(source / f"dir-{seed}.png")
    gallery, info, *_ = _generate(
        page, context, {"extras_selected_mode": DIRECTORY, "extras_batch_input_dir": str(source),
                        "extras_batch_output_dir": str(target), "extras_show_extras_results": False},
        {"upscaler_1_name": "Nearest", "upscale_by": 2})
    assert gallery == [] and "error" not in info, info
    saved = sorted(target.iterdir())
    assert len(saved) == 2 and all(Image.open(path).size == (32, 16) for path in saved)


# --- an extension's postprocessing step and "Send to extras" button ---------------------------------

FLIP_EXTENSION = '''
import gradio as gr
from PIL import ImageOps

from modules import infotext_utils, script_callbacks, scripts_postprocessing
from modules.ui_components import InputAccordion


class ScriptPostprocessingFlip(scripts_postprocessing.ScriptPostprocessing):
    name = "Flip"
    order = 5000

    def ui(self):
        with InputAccordion(False, label="Flip", elem_id="flip_enabled") as enabled:
            axis = gr.Radio(["horizontal", "vertical"], value="horizontal", label="Flip axis")
        return {"enabled": enabled, "axis": axis}

    def process(self, pp, enabled=False, axis="horizontal"):
        if enabled:
            pp.image = ImageOps.mirror(pp.image) if axis == "horizontal" else ImageOps.flip(pp.image)
            pp.info["Flip"] = axis


def on_ui_tabs():
    with gr.Blocks(analytics_enabled=False) as tab:
        picture = gr.Image(type="pil", elem_id="flip_picture")
        buttons = infotext_utils.create_buttons(["extras"])
        infotext_utils.bind_buttons(buttons, picture, None)
    return [(tab, "Flip tools", "flip_tools")]


script_callbacks.on_ui_tabs(on_ui_tabs)
'''


@pytest.fixture(scope="module")
def extension_page(tmp_path_factory):
    from modules.extension_host.environment import app_scope
    from modules.extension_host.extensions import BUILTIN_DIR, ExtensionFolders, load_extensions
    from modules.ui.app import build_ui
    from tests.ui_support import make_context

    data_dir = tmp_path_factory.mktemp("extras-extension")
    context = make_context(data_dir, load=False)
    folder = data_dir / "extensions" / "flip" / "scripts"
    folder.mkdir(parents=True)
    (folder / "flip.py").write_text(FLIP_EXTENSION, encoding="utf-8")
    context.extensions = load_extensions(context.settings, context.args,
                                         ExtensionFolders(user=data_dir / "extensions", builtin=BUILTIN_DIR))
    context.extensions.scripts.bind_app(context)
    with app_scope(context):
        blocks = build_ui(context)
    yield context, (blocks, {block.elem_id: block for block in blocks.blocks.values()
                             if getattr(block, "elem_id", None)})
    context.jobs.shutdown(timeout=60)


def test_an_extension_step_shows_in_extras_and_gets_its_controls_values(extension_page):
    context, page = extension_page
    props = _props(page)
    assert "flip_enabled" in props and props["flip_enabled-checkbox"]["value"] is False
    fn = _handler(page, "extras_generate")
    assert "flip_enabled-checkbox" in [block.elem_id for block in fn.inputs]
    image = _noise_image((16, 8), 7)
    axis = next(block for block in fn.inputs if getattr(block, "label", None) == "Flip axis")
    values = {"extras_selected_mode": SINGLE, "extras_image": image, "flip_enabled-checkbox": True}
    gallery, info, *_ = _generate_with(page, values, {"upscaler_1_name": "Lanczos", "upscale_by": 2},
                                       {axis._id: "vertical"})
    [result] = gallery
    expected = image.convert("RGB").resize((32, 16), Image.LANCZOS).transpose(Image.FLIP_TOP_BOTTOM)
    assert np.abs(np.asarray(result.convert("RGB"), dtype=int) - np.asarray(expected, dtype=int)).max() <= 1
    assert "Flip: vertical" in info and "Postprocess upscale by: 2" in info


def test_an_extensions_send_to_extras_button_fills_the_extras_image(extension_page):
    _, page = extension_page
    picture = _noise_image((12, 12), 8, "RGB")
    image, main_tab, mode_tab, mode, note = _handler(page, "extras_tab").fn(picture)
    assert image is picture and _selected(main_tab) == "extras" and mode == SINGLE


def test_interrupt_stops_a_running_extras_job_and_nothing_else(page, context):
    import threading

    started, release = threading.Event(), threading.Event()

    def work(control):
        started.set()
        assert release.wait(30)
        control.check()

    interrupt = _handler(page, "extras_interrupt").fn
    other = context.jobs.submit(work, kind="txt2img")
    assert started.wait(30)
    interrupt(None)  # a page without a job of its own: only a running extras job is stopped
    release.set()
    assert other.wait(30).state == "done"
    started.clear(), release.clear()
    extras = context.jobs.submit(work, kind="extras")
    assert started.wait(30)
    interrupt(None)
    release.set()
    assert extras.wait(30).state == "interrupted"


def test_a_model_added_after_start_up_is_offered_when_a_page_opens(page, context):
    """The page loads rescan the upscaler folders: the Extras dropdowns and txt2img's hires Upscaler
    offer a file added while the server runs."""
    from modules.upscaling.synthetic import rrdbnet_state_dict, write_state_dict

    blocks, by_id = page
    loads = [fn for fn in blocks.fns.values() if fn.targets and fn.targets[0][1] == "load"]

    def offered(elem_id: str) -> list:
        block_id = by_id[elem_id]._id
        # Extras' load (which rescans) first, then whichever reads the list.
        ordered = sorted(loads, key=lambda fn: by_id["extras_upscaler_1"]._id not in [o._id for o in fn.outputs])
        choices = None
        for fn in ordered:
            updates = fn.fn()
            updates = updates if isinstance(updates, (list, tuple)) else [updates]
            for output, update in zip(fn.outputs, updates):
                if output._id == block_id:
                    choices = [c[0] if isinstance(c, (list, tuple)) else c for c in update["choices"]]
        return choices

    assert "late4x" not in offered("extras_upscaler_1")
    write_state_dict(context.paths.models_dir / "ESRGAN" / "late4x.safetensors", rrdbnet_state_dict(seed=5))
    assert "late4x" in offered("extras_upscaler_1")
    assert "late4x" in offered("extras_upscaler_2")
    assert "late4x" in offered("txt2img_hr_upscaler")


def test_the_settings_tab_offers_the_listed_upscalers_for_img2img(page, context):
    """A dropdown of the upscalers listed when the page was built (not a free text box)."""
    props = _props(page)["setting_upscaler_for_img2img"]
    choices = [c[0] if isinstance(c, (list, tuple)) else c for c in props["choices"]]
    assert choices[:3] == ["None", "Lanczos", "Nearest"] and set(choices) <= set(context.upscalers.registry.names())
