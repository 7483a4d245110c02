"""The Extras core (modules.postprocessing): step order, the Upscale step's A1111 semantics (scale
by / to / crop / max side, Upscaler 2 blend, cache, pixel limit), the text it writes into saved PNG
and JPEG files, file names, Batch from Directory's folder rules, and an extension's step loaded from
its scripts/ folder running in its place. Upscaling goes through the real `Upscalers` service with
the built-in Lanczos and Nearest; expected pixels come from Pillow directly."""

from __future__ import annotations

import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from modules.extension_host.extensions import ExtensionFolders, load_extensions
from modules.outputs.infotext import read_info_from_image
from modules.postprocessing.extras import ExtrasRequest, load_upload, plan_extras, run_extras_plan, submit_extras
from modules.postprocessing.runner import Postprocessing, postprocessing_scripts
from modules.postprocessing.scripts import PostprocessedImage, ScriptPostprocessing
from modules.serving.cmd_args import parse_args
from modules.serving.jobs import JobQueue
from modules.serving.paths import Paths
from modules.serving.settings import SettingsStore
from modules.upscaling.registry import UpscalerRegistry
from modules.upscaling.service import UpscaleTooLargeError, Upscalers

LANCZOS, NEAREST = Image.Resampling.LANCZOS, Image.Resampling.NEAREST


class CountingUpscalers(Upscalers):
    """The real service, counting the upscales it was asked for (the cache test)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls: list[tuple[str, float]] = []

    def upscale(self, image, name, scale, *, control=None):
        self.calls.append((name, scale))
        return super().upscale(image, name, scale, control=control)


def make_context(data_dir: Path, *flags: str, extensions=None):
    args = parse_args(["--data-dir", str(data_dir), *flags])
    settings = SettingsStore(data_dir / "config.json")
    paths = Paths.from_args(args)
    registry = UpscalerRegistry(paths.upscaler_dirs, settings.current)
    context = SimpleNamespace(args=args, paths=paths, settings=settings, extensions=extensions,
                              upscalers=CountingUpscalers(registry, settings.current), jobs=JobQueue("test-extras"))
    context.postprocessing = Postprocessing(context)  # AppContext makes it at first use
    return context


@pytest.fixture
def context(tmp_path):
    context = make_context(tmp_path)
    context.jobs.start()
    yield context
    context.jobs.shutdown(timeout=30)


def picture(width: int, height: int, seed: int = 0, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, len(mode)), dtype=np.uint8), mode)


def upscale_args(**kwargs):
    args = {"upscale_enabled": True, "upscale_mode": 0, "upscale_by": 4, "max_side_length": 0,
            "upscale_to_width": 512, "upscale_to_height": 512, "upscale_crop": True,
            "upscaler_1_name": "Lanczos", "upscaler_2_name": "None", "upscaler_2_visibility": 0}
    args.update(kwargs)
    return args


def run_one(context, image: Image.Image, save: bool = False, **kwargs):
    request = ExtrasRequest(images=[("", image)], script_args={"Upscale": upscale_args(**kwargs)}, save=save)
    job = submit_extras(context, request).wait(60)
    assert job.exception is None, job.error
    return job.result


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


# ------------------------------------------------------------------------------------------- order

class Step(ScriptPostprocessing):
    def __init__(self, name: str, order: int):
        self.name, self.order, self.extension = name, order, "test"


def test_preferred_order_setting_then_order_then_name(context):
    runner = SimpleNamespace(postprocessing_scripts=[Step("Zeta", 4000), Step("Alpha", 4000), Step("Early", 10)])
    context.extensions = SimpleNamespace(scripts=runner)
    names = [script.name for script in postprocessing_scripts(context)]
    assert names == ["Early", "Upscale", "Alpha", "Zeta"]  # Simple Upscale (900) is never in Extras
    assert [s.name for s in postprocessing_scripts(context, extras=False)][:2] == ["Early", "Simple Upscale"]
    context.settings.apply({"postprocessing_operation_order": ["Zeta", "Upscale"],
                            "postprocessing_disable_in_extras": ["Early"]})
    assert [script.name for script in postprocessing_scripts(context)] == ["Zeta", "Upscale", "Alpha"]
    assert "Early" in [script.name for script in postprocessing_scripts(context, extras=False)]


# ----------------------------------------------------------------------------------------- upscale

def test_scale_by_uses_the_upscaler_and_writes_its_text(context):
    source = picture(30, 20)
    result = run_one(context, source, upscale_by=4)
    (image,) = result.images
    assert image.size == (120, 80)
    assert np.array_equal(pixels(image), pixels(source.resize((120, 80), LANCZOS)))
    assert result.infotexts == ["Postprocess upscale by: 4, Postprocess upscaler: Lanczos"]
    assert result.html_info == "<p>Postprocess upscale by: 4, Postprocess upscaler: Lanczos</p>"


def test_scale_by_rounds_down_to_multiples_of_8(context):
    (image,) = run_one(context, picture(30, 21), upscale_by=1.5, upscaler_1_name="Nearest").images
    assert image.size == (int(30 * 1.5) // 8 * 8, int(21 * 1.5) // 8 * 8)


def test_scale_to_covers_the_box_and_crops_it_centred(context):
    source = picture(40, 20)
    result = run_one(context, source, upscale_mode=1, upscale_to_width=64, upscale_to_height=64, upscale_crop=True)
    (image,) = result.images
    factor = max(64 / 40, 64 / 20)
    covered = source.resize((int(40 * factor), int(20 * factor)), LANCZOS)  # 128x64: the box covered
    left = (covered.width - 64) // 2
    assert image.size == (64, 64)
    assert np.array_equal(pixels(image), pixels(covered.crop((left, 0, left + 64, 64))))
    assert result.infotexts == ["Postprocess upscale to: 64x64, Postprocess crop to: 64x64, "
                                "Postprocess upscaler: Lanczos"]


def test_scale_to_without_crop_stays_larger_on_one_side(context):
    result = run_one(context, picture(40, 20), upscale_mode=1, upscale_to_width=64, upscale_to_height=64,
                     upscale_crop=False)
    assert result.images[0].size == (128, 64)
    assert "crop" not in result.infotexts[0]


def test_max_side_length_switches_to_scale_to_without_crop(context):
    result = run_one(context, picture(40, 20), upscale_by=4, max_side_length=100)
    factor = 100 / 40
    assert result.images[0].size == (int(40 * factor) // 8 * 8, int(20 * factor) // 8 * 8)
    assert result.infotexts == ["Postprocess upscale by: 4, Max side length: 100, Postprocess upscaler: Lanczos"]
    small = run_one(context, picture(10, 10), upscale_by=4, max_side_length=100)
    assert small.images[0].size == (40, 40) and "Max side length" not in small.infotexts[0]


def test_upscaler_1_none_skips_the_step(context):
    source = picture(30, 20)
    result = run_one(context, source, upscaler_1_name="None", upscaler_2_name="Lanczos", upscaler_2_visibility=1)
    assert result.images[0].size == (30, 20)
    assert np.array_equal(pixels(result.images[0]), pixels(source))
    assert result.infotexts == [""] and context.upscalers.calls == []


def test_upscaler_2_is_blended_by_visibility(context):
    source = picture(16, 16)
    result = run_one(context, source, upscale_by=2, upscaler_2_name="Nearest", upscaler_2_visibility=0.3)
    expected = Image.blend(source.resize((32, 32), LANCZOS), source.resize((32, 32), NEAREST), 0.3)
    assert np.array_equal(pixels(result.images[0]), pixels(expected))
    assert result.infotexts[0].endswith("Postprocess upscaler: Lanczos, Postprocess upscaler 2: Nearest")


def test_results_are_cached_by_pixels_and_arguments(context):
    source = picture(16, 16)
    run_one(context, source, upscale_by=2)
    run_one(context, source.copy(), upscale_by=2)
    assert context.upscalers.calls == [("Lanczos", 2.0)]
    run_one(context, source, upscale_by=3)
    run_one(context, picture(16, 16, seed=1), upscale_by=2)
    assert len(context.upscalers.calls) == 3
    context.settings.apply({"upscaling_max_images_in_cache": 1})
    run_one(context, source, upscale_by=2)  # kept in the cache, but now the only one left
    assert len(context.upscalers.calls) == 3
    run_one(context, picture(16, 16, seed=1), upscale_by=2)  # evicted by the limit of 1
    assert len(context.upscalers.calls) == 4
    context.postprocessing.image_changed()
    run_one(context, picture(16, 16, seed=1), upscale_by=2)
    assert len(context.upscalers.calls) == 5


def test_unknown_upscaler_is_refused_before_queueing(context):
    request = ExtrasRequest(images=[("", picture(8, 8))], script_args={"Upscale": upscale_args(upscaler_1_name="X4")})
    with pytest.raises(ValueError, match="could not find upscaler named 'X4'"):
        submit_extras(context, request)
    assert context.jobs.jobs() == []


def test_a_result_over_the_pixel_limit_is_refused_before_any_work(context):
    context.settings.apply({"upscale_max_pixels": 64 * 64})
    request = ExtrasRequest(images=[("big.png", picture(40, 20))], mode=1,
                            script_args={"Upscale": upscale_args(upscale_by=8)})
    with pytest.raises(ValueError, match="big.png: .*upscale_max_pixels"):
        submit_extras(context, request)
    assert context.jobs.jobs() == [] and context.upscalers.calls == []
    # A crop box within the limit does not hide an upscale beyond it.
    request = ExtrasRequest(images=[("", picture(40, 8))], script_args={"Upscale": upscale_args(
        upscale_mode=1, upscale_to_width=64, upscale_to_height=64)})
    with pytest.raises(UpscaleTooLargeError):
        submit_extras(context, request)


def test_unknown_step_and_bad_requests_are_refused(context):
    with pytest.raises(ValueError, match="no postprocessing step named \\['Upscal'\\]"):
        submit_extras(context, ExtrasRequest(images=[("", picture(8, 8))], script_args={"Upscal": {}}))
    with pytest.raises(ValueError, match="Single Image takes one image"):
        ExtrasRequest(images=[("", picture(8, 8)), ("", picture(8, 8))])
    with pytest.raises(ValueError, match="Input directory"):
        ExtrasRequest(mode=2)


# ---------------------------------------------------------------------------------- saving, text

def _png_with_text(path: Path, image: Image.Image, **chunks: str) -> Path:
    info = PngImagePlugin.PngInfo()
    for key, value in chunks.items():
        info.add_text(key, value)
    image.save(path, pnginfo=info)
    return path


def test_png_keeps_the_source_text_and_adds_postprocessing_and_extras(context, tmp_path):
    source = _png_with_text(tmp_path / "src.png", picture(16, 16), parameters="a cat\nSteps: 20, Seed: 1",
                            comment_by="someone")
    name, image = load_upload(source)
    result = run_one(context, image, save=True, upscale_by=2)
    (path,) = result.saved_paths
    assert Path(path) == tmp_path / "outputs" / "extras-images" / "00000.png"
    with Image.open(path) as saved:
        text = saved.text
        assert saved.size == (32, 32)
    expected = "Postprocess upscale by: 2, Postprocess upscaler: Lanczos"
    assert text["parameters"] == "a cat\nSteps: 20, Seed: 1" and text["comment_by"] == "someone"
    assert text["postprocessing"] == expected and text["extras"] == expected
    # The next single image is numbered on.
    again = run_one(context, image, save=True, upscale_by=2)
    assert Path(again.saved_paths[0]).name == "00001.png"


def test_jpeg_gets_the_postprocessing_text_as_its_user_comment(context, tmp_path):
    context.settings.apply({"samples_format": "jpg"})
    image = picture(16, 16)
    image.info["parameters"] = "a dog\nSteps: 5"
    result = run_one(context, image, save=True, upscale_by=2)
    (path,) = result.saved_paths
    assert path.endswith("00000.jpg")
    with Image.open(path) as saved:
        geninfo, _ = read_info_from_image(saved)
    assert geninfo == "Postprocess upscale by: 2, Postprocess upscaler: Lanczos"


def test_outdir_samples_wins_over_the_extras_folder(context, tmp_path):
    context.settings.apply({"outdir_samples": "outputs/everything"})
    result = run_one(context, picture(8, 8), save=True, upscale_by=1)
    assert Path(result.saved_paths[0]).parent == tmp_path / "outputs" / "everything"


# ------------------------------------------------------------------ an extension's step, in place

EXTENSION_STEP = '''
from PIL import ImageOps

from modules import scripts_postprocessing
from modules.scripts_postprocessing import PostprocessedImage


class FlipCopies(scripts_postprocessing.ScriptPostprocessing):
    name = "Create flipped copies"
    order = 1500  # after Upscale (1000)

    def ui(self):
        return {"enable": None}

    def process(self, pp, enable=False):
        if not enable:
            return
        pp.info["Flipped"] = "yes"
        copy = PostprocessedImage(ImageOps.mirror(pp.image))
        copy.nametags.append("flipped")
        pp.extra_images.append(copy)


class SizeNote(scripts_postprocessing.ScriptPostprocessing):
    name = "Size note"
    order = 5000

    def process(self, pp, **args):
        pp.info["Seen"] = f"{pp.image.width}x{pp.image.height}"
'''


@pytest.fixture
def extension_context(tmp_path):
    folder = tmp_path / "extensions" / "flipper" / "scripts"
    folder.mkdir(parents=True)
    (folder / "flip.py").write_text(textwrap.dedent(EXTENSION_STEP), encoding="utf-8")
    context = make_context(tmp_path)
    folders = ExtensionFolders(user=tmp_path / "extensions", builtin=tmp_path / "builtin")
    context.extensions = load_extensions(context.settings, context.args, folders)
    context.jobs.start()
    yield context
    context.jobs.shutdown(timeout=30)


def test_an_extensions_step_is_loaded_and_runs_in_its_place(extension_context, tmp_path):
    context = extension_context
    assert [s.name for s in postprocessing_scripts(context)] == ["Upscale", "Create flipped copies", "Size note"]
    step = postprocessing_scripts(context)[1]
    assert step.extension == "flipper" and step.filename.endswith("flip.py")
    source = picture(10, 10)
    request = ExtrasRequest(mode=1, images=[("photo.png", source)], save=True, script_args={
        "Upscale": upscale_args(upscale_by=2), "Create flipped copies": {"enable": True}})
    result = submit_extras(context, request).wait(60).result
    first, flipped = result.images
    # The copy was made from the upscaled image, and the later step saw both at the upscaled size.
    assert np.array_equal(pixels(flipped), pixels(first.transpose(Image.Transpose.FLIP_LEFT_RIGHT)))
    assert result.infotexts[0] == ("Postprocess upscale by: 2, Postprocess upscaler: Lanczos, Flipped: yes, "
                                   "Seen: 16x16")
    assert result.infotexts[1] == "Seen: 16x16"
    assert [Path(p).name for p in result.saved_paths] == ["photo.png", "photo-flipped.png"]


def test_a_failing_extension_step_is_a_warning(context):
    class Broken(ScriptPostprocessing):
        name, order, extension = "Broken", 2000, "bad-ext"

        def process(self, pp, **args):
            raise RuntimeError("boom")

    context.extensions = SimpleNamespace(scripts=SimpleNamespace(postprocessing_scripts=[Broken()]))
    result = run_one(context, picture(8, 8), upscale_by=2)
    assert result.images[0].size == (16, 16)
    assert any("Broken" in w and "boom" in w for w in result.warnings)


def test_suffixes_of_several_extra_images():
    pp = PostprocessedImage(picture(4, 4))
    used: dict[str, int] = {}
    tagged = PostprocessedImage(picture(4, 4))
    tagged.nametags = ["a", "b"]
    assert [pp.get_suffix(used), tagged.get_suffix(used), tagged.get_suffix(used), pp.get_suffix(used)] == \
        ["", "-a-b", "-a-b-1", "-1"]


# -------------------------------------------------------------------------------- uploads, folders

def test_a_non_image_upload_names_the_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    with pytest.raises(ValueError, match="notes.txt: not an image"):
        load_upload(path)


def test_batch_from_directory(tmp_path):
    context = make_context(tmp_path)
    inputs = tmp_path / "in"
    (inputs / "sub").mkdir(parents=True)
    picture(8, 8).save(inputs / "b.png")
    picture(8, 8, seed=2).save(inputs / "a10.png")
    picture(8, 8, seed=3).save(inputs / "a2.png")
    picture(8, 8).save(inputs / ".hidden.png")
    picture(8, 8).save(inputs / "sub" / "deeper.png")
    (inputs / "readme.txt").write_text("not an image")
    request = ExtrasRequest(mode=2, input_dir=str(inputs), output_dir="outputs/folder-out", show_results=False,
                            script_args={"Upscale": upscale_args(upscale_by=2)})
    plan = plan_extras(context, request)
    assert [s.name for s in plan.sources] == ["a2.png", "a10.png", "b.png", "readme.txt"]
    result = run_extras_plan(context, plan)
    assert result.images == []  # "Show result images" off
    assert sorted(Path(p).name for p in result.saved_paths) == ["a10.png", "a2.png", "b.png"]
    assert all(Path(p).parent == tmp_path / "outputs" / "folder-out" for p in result.saved_paths)
    assert any("readme.txt" in warning for warning in result.warnings)
    # An output folder where outputs may not go is refused.
    with pytest.raises(ValueError, match="Output directory"):
        plan_extras(context, request.model_copy(update={"output_dir": str(tmp_path)}))


def test_batch_from_directory_is_refused_where_folders_are_locked(tmp_path):
    (tmp_path / "in").mkdir()
    for flags in (("--hide-ui-dir-config",), ("--listen",)):
        context = make_context(tmp_path, *flags)
        with pytest.raises(ValueError, match="batch folders are off"):
            plan_extras(context, ExtrasRequest(mode=2, input_dir=str(tmp_path / "in")))


# ------------------------------------------------------------------------- A1111's functions, main UI

def test_a1111_run_extras_and_run_postprocessing(context, tmp_path):
    import modules.postprocessing as postprocessing
    from modules.extension_host.environment import app_scope

    source = picture(16, 8)
    with app_scope(context):
        images, html, empty = postprocessing.run_extras(0, 0, source, None, "", "", True, 0, 0, 0, 2, 512, 512, True,
                                                        "Nearest", "None", 0, False, save_output=False)
        assert [image.size for image in images] == [(32, 16)] and empty == ""
        assert html == "<p>Postprocess upscale by: 2.0, Postprocess upscaler: Nearest</p>"
        with pytest.raises(ValueError, match="no face restoration"):
            postprocessing.run_extras(0, 0, source, None, "", "", True, 0.5, 0, 0, 2, 512, 512, True, "Nearest",
                                      "None", 0, False)
        images, _, _ = postprocessing.run_postprocessing(
            0, source, None, "", "", True, {"Upscale": upscale_args(upscale_by=3, upscaler_1_name="Nearest")},
            save_output=True)
        assert images[0].size == (48, 24)
    assert (tmp_path / "outputs" / "extras-images" / "00000.png").is_file()


def test_simple_upscale_runs_outside_extras_only(context):
    owner = context.postprocessing
    pp = PostprocessedImage(picture(8, 8))
    owner.run(pp, {"Upscale": {"upscale_enabled": False},
                   "Simple Upscale": {"upscale_by": 2, "upscaler_name": "Nearest"}}, extras=False)
    assert pp.image.size == (16, 16)
    assert pp.info == {"Postprocess upscale by": 2, "Postprocess upscaler": "Nearest"}
    with pytest.raises(ValueError, match="Simple Upscale"):
        owner.check_args({"Simple Upscale": {}})


def test_interrupt_stops_between_images(context):
    class Interrupting(ScriptPostprocessing):
        name, order, extension = "Interrupting", 2000, "test"

        def process(self, pp, **args):
            context.jobs.interrupt()

    context.extensions = SimpleNamespace(scripts=SimpleNamespace(postprocessing_scripts=[Interrupting()]))
    request = ExtrasRequest(mode=1, images=[("a.png", picture(8, 8)), ("b.png", picture(8, 8, 1))],
                            script_args={"Upscale": upscale_args(upscale_by=2)}, save=False)
    result = submit_extras(context, request).wait(60).result
    assert result.interrupted and len(result.images) == 1


def test_a_folder_file_too_large_to_upscale_is_skipped_and_names_are_checked_first(tmp_path):
    context = make_context(tmp_path)
    context.settings.apply({"upscale_max_pixels": 64 * 64})
    inputs = tmp_path / "in"
    inputs.mkdir()
    picture(8, 8).save(inputs / "small.png")
    picture(40, 40).save(inputs / "large.png")
    request = ExtrasRequest(mode=2, input_dir=str(inputs), script_args={"Upscale": upscale_args(upscale_by=2)})
    result = run_extras_plan(context, plan_extras(context, request))
    assert [Path(p).name for p in result.saved_paths] == ["small.png"]
    assert any(w.startswith("large.png: ") and "upscale_max_pixels" in w for w in result.warnings)
    with pytest.raises(ValueError, match="could not find upscaler named 'Zzz'"):
        plan_extras(context, request.model_copy(update={"script_args": {"Upscale": upscale_args(
            upscaler_1_name="Zzz")}}))


# ------------------------------------------------------------------ review fixes: A1111's None, ranges

def test_upscaler_1_none_never_looks_at_upscaler_2_and_both_names_are_checked_at_submit(context):
    # A1111 returns before resolving Upscaler 2 when Upscaler 1 is None: a bogus second name is harmless.
    source = picture(16, 8)
    result = run_one(context, source, upscaler_1_name="None", upscaler_2_name="Bogus 4x", upscaler_2_visibility=0.5)
    assert np.array_equal(pixels(result.images[0]), pixels(source))
    # With Upscaler 1 set, a bogus Upscaler 2 is refused at submit (A1111 asserts it), even at visibility 0.
    request = ExtrasRequest(images=[("", source)], script_args={"Upscale": upscale_args(
        upscaler_2_name="Bogus 4x", upscaler_2_visibility=0)})
    with pytest.raises(ValueError, match="could not find upscaler named 'Bogus 4x'"):
        submit_extras(context, request)
    assert [job.result.images[0].size for job in context.jobs.jobs()] == [(16, 8)]  # only the first ran


@pytest.mark.parametrize("changes, field", [
    ({"max_side_length": -8}, "max_side_length"),
    ({"upscale_by": 0}, "upscale_by"),
    ({"upscale_by": -2}, "upscale_by"),
    ({"upscale_by": float("nan")}, "upscale_by"),
    ({"upscale_mode": 3}, "upscale_mode"),
    ({"upscale_mode": 1, "upscale_to_width": 32, "upscale_to_height": 512}, "upscale_to_width"),
    ({"upscale_mode": 1, "upscale_to_width": 512, "upscale_to_height": 8200}, "upscale_to_height"),
    ({"upscaler_2_visibility": 1.5}, "upscaler_2_visibility"),
])
def test_out_of_range_numbers_are_refused_at_plan_time_naming_the_field(context, tmp_path, changes, field):
    args = {"Upscale": upscale_args(**changes)}
    with pytest.raises(ValueError, match=f"^{field}: "):
        submit_extras(context, ExtrasRequest(images=[("", picture(16, 16))], script_args=args))
    with pytest.raises(ValueError, match=f"^a.png: {field}: "):
        submit_extras(context, ExtrasRequest(mode=1, images=[("a.png", picture(16, 16))], script_args=args))
    (tmp_path / "in").mkdir()
    picture(8, 8).save(tmp_path / "in" / "a.png")
    with pytest.raises(ValueError, match=f"^{field}: "):  # a folder: its files are read later, the numbers now
        plan_extras(context, ExtrasRequest(mode=2, input_dir=str(tmp_path / "in"), script_args=args))
    assert context.jobs.jobs() == [] and context.upscalers.calls == []


def test_a_cached_result_is_a_copy_so_a_later_job_does_not_rewrite_an_earlier_result(context):
    first_source = picture(16, 16)
    first_source.info["parameters"] = "the first"
    second_source = first_source.copy()
    second_source.info["parameters"] = "the second"
    first = run_one(context, first_source, upscale_by=2)
    second = run_one(context, second_source, upscale_by=2)
    assert context.upscalers.calls == [("Lanczos", 2.0)]  # the second job hit the cache
    assert first.images[0].info["parameters"] == "the first"
    assert second.images[0].info["parameters"] == "the second"
    assert np.array_equal(pixels(first.images[0]), pixels(second.images[0]))


def test_the_steps_get_the_jobs_control_for_the_run_only(context):
    seen = []

    class Recording(ScriptPostprocessing):
        name, order, extension = "Recording", 2000, "test"

        def process(self, pp, **args):
            seen.append(self.job_control)

    step = Recording()
    context.extensions = SimpleNamespace(scripts=SimpleNamespace(postprocessing_scripts=[step]))
    job = submit_extras(context, ExtrasRequest(images=[("", picture(8, 8))], save=False,
                                               script_args={"Upscale": upscale_args(upscale_by=2)})).wait(60)
    assert job.exception is None, job.error
    [control] = seen
    assert control is not None and control.job_id == job.id
    assert step.job_control is None and context.postprocessing.builtins[0].job_control is None


# ----------------------------------------------------------------- review fixes: one request's output

def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header says `width` x `height` but which holds almost no pixel data: decoding it
    fails, so an answer that names its size came from the header alone."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\0" * 10)) + chunk(b"IEND", b""))
    return path


def test_too_many_images_in_one_request_are_refused(context):
    from modules.postprocessing.extras import MAX_EXTRAS_IMAGES

    image = picture(8, 8)
    with pytest.raises(ValueError, match=f"at most {MAX_EXTRAS_IMAGES}"):
        ExtrasRequest(mode=1, images=[("a.png", image)] * (MAX_EXTRAS_IMAGES + 1))
    with pytest.raises(ValueError, match=f"at most {MAX_EXTRAS_IMAGES}"):
        ExtrasRequest(mode=1, files=[("a.png", "/nonexistent/a.png")] * (MAX_EXTRAS_IMAGES + 1))


def test_the_planned_results_together_are_bounded_by_the_output_budget(context):
    limit = 64 * 64
    context.settings.apply({"upscale_max_pixels": limit})
    per_image = (16 * 4) * (16 * 4)  # 16x16 by 4: exactly the per-image limit
    fits = 2 * limit // per_image
    images = [(f"{seed}.png", picture(16, 16, seed)) for seed in range(fits + 1)]
    args = {"Upscale": upscale_args(upscale_by=4)}
    with pytest.raises(ValueError, match=f"{(fits + 1) * per_image:,} pixels.*upscale_max_pixels"):
        submit_extras(context, ExtrasRequest(mode=1, images=images, script_args=args))
    assert context.jobs.jobs() == []
    result = submit_extras(context, ExtrasRequest(mode=1, images=images[:fits], script_args=args,
                                                  save=False)).wait(60).result
    assert [image.size for image in result.images] == [(64, 64)] * fits
    # Without an upscale the results are the sources' sizes, and they count too.
    small = [(f"{seed}.png", picture(8, 8, seed)) for seed in range(2 * limit // (8 * 8) + 1)]
    with pytest.raises(ValueError, match="upscale_max_pixels"):
        submit_extras(context, ExtrasRequest(mode=1, images=small, script_args={"Upscale": upscale_args(
            upscaler_1_name="None")}))


def test_uploaded_files_are_measured_from_their_headers_and_read_on_the_worker(context, tmp_path):
    huge = _png_header_only(tmp_path / "huge.png", 9000, 9000)
    assert huge.stat().st_size < 100
    request = ExtrasRequest(mode=1, files=[("huge.png", str(huge))], script_args={"Upscale": upscale_args(
        upscaler_1_name="None")})
    with pytest.raises(ValueError, match="huge.png: the image is 9000x9000"):
        submit_extras(context, request)
    # Within the per-image limit but over the request's budget, together: refused from the headers too.
    context.settings.apply({"upscale_max_pixels": 4096 * 4096})
    wide = [(f"w{index}.png", str(_png_header_only(tmp_path / f"w{index}.png", 4096, 4096))) for index in range(3)]
    with pytest.raises(ValueError, match="the 3 results would come to .*upscale_max_pixels"):
        submit_extras(context, ExtrasRequest(mode=1, files=wide, script_args={"Upscale": upscale_args(
            upscaler_1_name="None")}))
    assert context.jobs.jobs() == []
    # Real files: decoded on the worker, in order, named after the uploads; a file that breaks only
    # when decoded is skipped with a warning naming it.
    paths = []
    for seed in range(2):
        paths.append(tmp_path / f"in-{seed}.png")
        picture(16, 8, seed).save(paths[-1])
    broken = _png_header_only(tmp_path / "broken.png", 16, 8)
    files = [("in-0.png", str(paths[0])), ("broken.png", str(broken)), ("in-1.png", str(paths[1]))]
    result = submit_extras(context, ExtrasRequest(mode=1, files=files, save=False, script_args={
        "Upscale": upscale_args(upscale_by=2, upscaler_1_name="Nearest")})).wait(60).result
    assert len(result.images) == 2
    for image, seed in zip(result.images, range(2)):
        assert np.array_equal(pixels(image), pixels(picture(16, 8, seed).resize((32, 16), NEAREST)))
    assert [warning.split(":")[0] for warning in result.warnings] == ["broken.png"]


def test_a_folders_results_beyond_the_budget_are_saved_not_kept_or_stop_the_run_unsaved(tmp_path):
    context = make_context(tmp_path)
    limit = 64 * 64
    context.settings.apply({"upscale_max_pixels": limit})
    inputs = tmp_path / "in"
    inputs.mkdir()
    count = 4
    for seed in range(count):
        picture(32, 32, seed).save(inputs / f"{seed}.png")
    picture(8, 8).save(inputs / "9-small.png")  # would fit, yet comes after the gallery was closed
    per_image = 64 * 64  # 32x32 by 2
    fits = 2 * limit // per_image
    request = ExtrasRequest(mode=2, input_dir=str(inputs), script_args={"Upscale": upscale_args(upscale_by=2)})
    saved = run_extras_plan(context, plan_extras(context, request))
    assert len(saved.saved_paths) == count + 1 and len(saved.images) == fits
    assert all(image.size == (64, 64) for image in saved.images)
    assert [w for w in saved.warnings if "upscale_max_pixels" in w and f"the first {fits} are shown" in w]
    unsaved = run_extras_plan(context, plan_extras(context, request.model_copy(update={"save": False})))
    assert unsaved.saved_paths == [] and len(unsaved.images) == fits
    assert [w for w in unsaved.warnings if "upscale_max_pixels" in w and f"stopped after {fits}" in w]


def test_a_delivered_result_is_released_from_the_jobs_history(context):
    from modules.postprocessing.extras import take_extras_result

    job = submit_extras(context, ExtrasRequest(images=[("", picture(8, 8))], save=False, script_args={
        "Upscale": upscale_args(upscale_by=2)})).wait(60)
    taken = take_extras_result(job)
    assert [image.size for image in taken.images] == [(16, 16)] and taken.infotexts == job.result.infotexts
    assert job.result.images == []
