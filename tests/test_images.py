"""Image saving, file naming and grids against A1111's rules (A1111.md §7.3)."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from pathlib import Path

import pytest
from PIL import Image

from modules.outputs import images
from modules.outputs.images import (
    FilenameContext,
    FilenameGenerator,
    SaveOptions,
    get_next_sequence_number,
    grid_rows,
    image_grid,
    sanitize_filename_part,
    save_image,
    truncate_filename,
    txt2img_output_dirs,
)
from modules.outputs.infotext import parse_generation_parameters, read_info_from_image

NOW = dt.datetime(2024, 7, 27, 13, 45, 6)
INFOTEXT = "a cat, 世界\nNegative prompt: blurry\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 123456, Size: 16x16"


def context(**overrides) -> FilenameContext:
    values = {"seed": 123456, "prompt": "a cat, 世界", "negative_prompt": "blurry", "now": NOW}
    values.update(overrides)
    return FilenameContext(**values)


def red(size=(16, 16)) -> Image.Image:
    return Image.new("RGB", size, "red")


# ----------------------------------------------------------------------------------------- naming


def test_default_layout(tmp_path):
    samples, grids = txt2img_output_dirs(tmp_path, SaveOptions())
    assert samples == tmp_path / "outputs" / "txt2img-images"
    assert grids == tmp_path / "outputs" / "txt2img-grids"
    saved = save_image(red(), samples, context=context(), infotext=INFOTEXT)
    assert saved.path == str(samples / "2024-07-27" / "00000-123456.png")
    assert saved.txt_path is None
    assert save_image(red(), samples, context=context()).path.endswith("00001-123456.png")


def test_outdir_samples_overrides_txt2img_folder(tmp_path):
    samples, _ = txt2img_output_dirs(tmp_path, SaveOptions(outdir_samples="everything"))
    assert samples == tmp_path / "everything"


def test_numbering_follows_largest_leading_number(tmp_path):
    for name in ("00005-1.png", "00012-abc.png", "7.png", "notes.txt", "x-99.png", "grid-0003.png"):
        (tmp_path / name).write_bytes(b"")
    assert get_next_sequence_number(tmp_path, "") == 13
    assert get_next_sequence_number(tmp_path, "grid") == 4
    assert get_next_sequence_number(tmp_path / ".." / tmp_path.name, "none") == 0
    saved = save_image(red(), tmp_path, context=context(), save_to_dirs=False)
    assert os.path.basename(saved.path) == "00013-123456.png"


def test_numbering_retries_past_existing_names(tmp_path, monkeypatch):
    # Another process saved 00000 and 00001 after the folder was listed.
    monkeypatch.setattr(images, "get_next_sequence_number", lambda path, basename: 0)
    (tmp_path / "00000-123456.png").write_bytes(b"")
    (tmp_path / "00001-123456.png").write_bytes(b"")
    saved = save_image(red(), tmp_path, context=context(), save_to_dirs=False)
    assert os.path.basename(saved.path) == "00002-123456.png"


def test_pattern_without_save_to_dirs_adds_prompt(tmp_path):
    options = SaveOptions(save_to_dirs=False)
    saved = save_image(red(), tmp_path, context=context(prompt="a cat: <big>"), options=options)
    assert os.path.basename(saved.path) == "00000-123456-a cat_ _big_.png"


def test_custom_patterns_and_no_number(tmp_path):
    options = SaveOptions(samples_filename_pattern="[model_name]-[steps]", directories_filename_pattern="[prompt_words]")
    ctx = context(model_name="v1-5-pruned", steps=20, prompt="A cat, sitting; on (the) mat!")
    saved = save_image(red(), tmp_path, context=ctx, options=options)
    assert saved.path == str(tmp_path / "A cat sitting on the mat" / "00000-v1-5-pruned-20.png")

    options = SaveOptions(samples_filename_pattern="[seed]", save_images_add_number=False, save_to_dirs=False)
    assert os.path.basename(save_image(red(), tmp_path, context=context(), options=options).path) == "123456.png"
    # "123456.png" now counts as number 123456. [none] leaves the number and A1111's "-" separator.
    options = SaveOptions(samples_filename_pattern="[none]", save_to_dirs=False)
    assert os.path.basename(save_image(red(), tmp_path, context=context(), options=options).path) == "123457-.png"


def test_grid_naming(tmp_path):
    ctx = context()
    first = save_image(red(), tmp_path, "grid", context=ctx, grid=True, short_filename=True)
    second = save_image(red(), tmp_path, "grid", context=ctx, grid=True, short_filename=True)
    assert first.path == str(tmp_path / "2024-07-27" / "grid-0000.png")
    assert os.path.basename(second.path) == "grid-0001.png"


def test_add_number_suffix_instead_of_replacing(tmp_path):
    options = SaveOptions(save_images_replace_action="Add number suffix", save_to_dirs=False)
    first = save_image(red(), tmp_path, context=context(), options=options, forced_filename="fixed")
    second = save_image(red(), tmp_path, context=context(), options=options, forced_filename="fixed")
    assert [os.path.basename(first.path), os.path.basename(second.path)] == ["fixed.png", "fixed-1.png"]
    replaced = save_image(red(), tmp_path, context=context(), options=SaveOptions(save_to_dirs=False), forced_filename="fixed")
    assert replaced.path == first.path
    with pytest.raises(ValueError, match="save_images_replace_action"):
        SaveOptions(save_images_replace_action="Overwrite")


def test_options_from_settings():
    options = SaveOptions.from_settings({"samples_format": "jpg", "jpeg_quality": 95, "unrelated": 1})
    assert (options.samples_format, options.jpeg_quality, options.save_to_dirs) == ("jpg", 95, True)


def gen(pattern: str, image: Image.Image | None = None, **ctx) -> str:
    return FilenameGenerator(context(**ctx), image).apply(pattern)


def test_pattern_tags():
    ctx = {
        "seed": 11, "all_seeds": (11, 12, 13, 14), "batch_size": 2, "n_iter": 2, "batch_index": 1, "iteration": 1,
        "steps": 30, "cfg_scale": 7.5, "sampler_name": "DPM++ 2M", "scheduler": "Automatic", "sampler_default_scheduler": "karras",
        "model_hash": "6ce0161689", "model_name": "v1-5/pruned", "job_timestamp": "20240727134506",
        "clip_skip": 2, "denoising_strength": 0.7, "user": "bob", "styles": ("Cinematic", "None"),
        "vae_filename": "/models/VAE/vae-ft-mse.safetensors",
    }
    assert gen("[seed]", **ctx) == "11"
    assert gen("[seed_first]-[seed_last]", **ctx) == "11-14"
    assert gen("[steps]_[cfg]_[width]x[height]", red((64, 32)), **ctx) == "30_7.5_64x32"
    assert gen("[width]x[height]", **{**ctx, "width": 8, "height": 4}) == "8x4"
    assert gen("[sampler]", **ctx) == "DPM++ 2M"
    assert gen("[scheduler]", **ctx) == "Karras"
    assert gen("[sampler_scheduler]", **ctx) == "DPM++ 2M Karras"
    assert gen("[scheduler]", **{**ctx, "scheduler": "SGM Uniform"}) == "Sgm uniform"  # A1111 capitalize()
    assert gen("[scheduler]", **{**ctx, "sampler_default_scheduler": None}) == "Automatic"
    assert gen("[model_hash] [model_name]", **ctx) == "6ce0161689 v1-5_pruned"
    assert gen("[date]", **ctx) == "2024-07-27"
    assert gen("[datetime]", **ctx) == "20240727134506"
    assert gen("[datetime<%Y_%m_%d %H-%M>]", **ctx) == "2024_07_27 13-45"
    assert gen("[DateTime<%H><UTC>]", **{**ctx, "now": NOW.replace(tzinfo=dt.timezone(dt.timedelta(hours=2)))}) == "11"
    assert gen("[job_timestamp]", **ctx) == "20240727134506"
    assert gen("[batch_number]-[generation_number]", **ctx) == "2-4"
    assert gen("[batch_size]", **ctx) == "2"
    assert gen("[clip_skip]-[denoising]", **ctx) == "2-0.7"
    assert gen("[user]", **ctx) == "bob"
    assert gen("[styles]", **ctx) == "Cinematic"
    assert gen("[vae_filename]", **ctx) == "vae-ft-mse"
    assert gen("[vae_filename]") == "NoneType"
    assert gen("x[none]y") == "xy"


def test_prompt_tags():
    prompt = "A cat, sitting: on the <mat> with a hat and a bat today"
    assert gen("[prompt]", prompt=prompt) == "A_cat,_sitting__on_the__mat__with_a_hat_and_a_bat_today"
    assert gen("[prompt_spaces]", prompt=prompt) == "A cat, sitting_ on the _mat_ with a hat and a bat today"
    assert gen("[prompt_words]", prompt=prompt) == "A cat sitting on the mat with a"  # 8 words
    assert gen("[prompt_words]", prompt=prompt, max_prompt_words=2) == "A cat"
    assert gen("[prompt_words]", prompt=" ,, ") == "empty"
    assert gen("[prompt_no_styles]", prompt="a cat, cinematic, film grain", style_prompts=("{prompt}, cinematic, film grain",)) == "a cat"
    assert gen("[hasprompt<cat><dog|nodog>]", prompt=prompt) == "catnodog"


def test_hash_tags():
    sha = lambda s: hashlib.sha256(s.encode()).hexdigest()
    assert gen("[prompt_hash]", prompt="p") == sha("p")[:8]
    assert gen("[prompt_hash<12>]", prompt="p") == sha("p")[:12]
    assert gen("[negative_prompt_hash]", negative_prompt="n") == sha("n")[:8]
    assert gen("[full_prompt_hash]", prompt="p", negative_prompt="n") == sha("p n")[:8]
    assert gen("[full_prompt_hash]", prompt="p, style", request_prompt="p", negative_prompt="n") == sha("p n")[:8]
    image = red((4, 4))
    assert gen("[image_hash<6>]", image) == hashlib.sha256(image.tobytes()).hexdigest()[:6]


def test_single_image_tags_drop_their_separator():
    assert gen("[seed]-[seed_last]") == "123456"
    assert gen("[seed_first]") == "123456"
    assert gen("a-[batch_number]-[generation_number]") == ""
    assert gen("x-[denoising]") == ""


def test_unknown_tags_and_bad_arguments_are_left_as_written():
    assert gen("[nonsense]-[seed]") == "[nonsense]-123456"
    assert gen("[prompt_hash<abc>]") == "[prompt_hash<abc>]"
    assert gen("[steps]") == "[steps]"  # steps unknown in this context


@pytest.mark.parametrize(
    "text, replace_spaces, expected",
    [
        ("a b", True, "a_b"),
        ("a b", False, "a b"),
        ('<>:"/\\|?*#x', False, "__________x"),
        ("line\nbreak\ttab\r", False, "line_break_tab_"),
        ("   lead", False, "lead"),
        ("trail . . ", False, "trail"),
        ("x" * 300, False, "x" * 128),
        (None, True, None),
    ],
)
def test_sanitize_filename_part(text, replace_spaces, expected):
    assert sanitize_filename_part(text, replace_spaces) == expected


def test_truncate_filename_counts_bytes_and_keeps_characters_whole():
    assert truncate_filename("abc", ".png", 255) == "abc"
    assert truncate_filename("a" * 300, ".png", 255) == "a" * 251
    cut = truncate_filename("世" * 100, ".png", 255)  # 3 bytes each
    assert cut == "世" * 83 and len(cut.encode()) <= 251
    assert len(truncate_filename("a" * 300, ".jpeg", 255).encode()) == 250


# Patterns and tag values an attacker controls (the prompt, the user name, a pattern read from an
# old config.json), each trying to leave the output folder.
ESCAPES = [
    ({"directories_filename_pattern": ".."}, {}),
    ({"directories_filename_pattern": "[user]"}, {"user": "../../escaped"}),
    ({"directories_filename_pattern": "[user]"}, {"user": ".."}),
    ({"directories_filename_pattern": "[job_timestamp]"}, {"job_timestamp": "/tmp/escaped"}),
    ({"directories_filename_pattern": "[model_hash]/../.."}, {"model_hash": ".."}),
    ({"samples_filename_pattern": "../../escaped", "save_images_add_number": False}, {}),
    ({"samples_filename_pattern": "[user]", "save_images_add_number": False}, {"user": "../../../escaped"}),
    ({"samples_filename_pattern": "x\\..\\..\\escaped"}, {}),
    ({"samples_filename_pattern": "[prompt_spaces]", "save_to_dirs": False}, {"prompt": "../../escaped"}),
]


@pytest.mark.parametrize("options, tags", ESCAPES)
def test_patterns_and_tags_never_leave_the_output_folder(tmp_path, options, tags):
    out = tmp_path / "a" / "b" / "out"
    saved = save_image(red(), out, context=context(**tags), options=SaveOptions(**options), infotext=INFOTEXT,
                       extension="png")
    written = {p for p in tmp_path.rglob("*") if p.is_file()}
    assert written and all(p.is_relative_to(out) for p in written), written
    assert Path(saved.path).parent in (out, *out.iterdir())  # at most one folder level below it
    assert ".." not in Path(saved.path).relative_to(out).parts


def test_forced_file_names_stay_in_the_folder(tmp_path):
    out = tmp_path / "out"
    saved = save_image(red(), out, context=context(), forced_filename="../../escaped", save_to_dirs=False)
    assert Path(saved.path).parent == out and list(tmp_path.iterdir()) == [out]


@pytest.mark.parametrize("pattern, ok", [
    ("[seed]-[prompt_words]", True), ("[datetime<%Y/%m/%d>]", True), ("", True), ("a.b", True),
    ("a/b", False), ("[seed]\\x", False), ("..", False), (".", False), ("x\ny", False),
])
def test_pattern_problem_looks_at_the_literal_text(pattern, ok):
    assert (images.pattern_problem(pattern) is None) == ok


def test_long_name_is_truncated_to_the_file_system_limit(tmp_path):
    saved = save_image(red(), tmp_path, context=context(), forced_filename="é" * 300, save_to_dirs=False)
    name = os.path.basename(saved.path)
    assert name.endswith(".png")
    assert len(name.encode()) <= os.statvfs(tmp_path).f_namemax


# ----------------------------------------------------------------------------------------- writing


def test_png_carries_parseable_parameters_chunk(tmp_path):
    saved = save_image(red(), tmp_path, context=context(), infotext=INFOTEXT, existing_pnginfo={"extra": "x"})
    with Image.open(saved.path) as image:
        assert image.text["parameters"] == INFOTEXT
        assert image.text["extra"] == "x"
        res = parse_generation_parameters(read_info_from_image(image)[0])
    assert res["Prompt"] == "a cat, 世界" and res["Seed"] == "123456"


@pytest.mark.parametrize("extension", ["jpg", "webp"])
def test_jpeg_and_webp_carry_exif_user_comment(tmp_path, extension):
    options = SaveOptions(samples_format=extension)
    saved = save_image(Image.new("RGBA", (16, 16)), tmp_path, context=context(), infotext=INFOTEXT, options=options)
    assert saved.path.endswith(f".{extension}")
    with Image.open(saved.path) as image:
        assert image.mode == "RGB"
        assert read_info_from_image(image)[0] == INFOTEXT


def test_enable_pnginfo_off_writes_no_infotext(tmp_path):
    options = SaveOptions(enable_pnginfo=False)
    for extension in ("png", "jpg"):
        saved = save_image(red(), tmp_path, context=context(), infotext=INFOTEXT, options=options, extension=extension)
        with Image.open(saved.path) as image:
            assert read_info_from_image(image)[0] is None


def test_save_txt(tmp_path):
    saved = save_image(red(), tmp_path, context=context(), infotext=INFOTEXT, options=SaveOptions(save_txt=True))
    assert saved.txt_path == saved.path[:-4] + ".txt"
    with open(saved.txt_path, encoding="utf8") as file:
        assert file.read() == INFOTEXT + "\n"


def test_export_for_4chan_writes_downscaled_jpeg(tmp_path):
    options = SaveOptions(target_side_length=32, save_to_dirs=False)
    saved = save_image(red((64, 48)), tmp_path, context=context(), infotext=INFOTEXT, options=options)
    assert saved.jpg_copy_path == saved.path[:-4] + ".jpg"
    with Image.open(saved.jpg_copy_path) as copy:
        assert copy.size == (32, 24)
        assert read_info_from_image(copy)[0] == INFOTEXT
    assert save_image(red(), tmp_path, context=context(), options=SaveOptions(save_to_dirs=False)).jpg_copy_path is None


def test_unknown_extension_is_refused_before_writing(tmp_path):
    with pytest.raises(ValueError, match="xyz"):
        save_image(red(), tmp_path, context=context(), extension="xyz")
    assert list(tmp_path.iterdir()) == []


class FailingImage:
    """Writes part of an image, then fails (an encoder that breaks half-way; a real full disk is
    tested in tests/test_crash_safety.py)."""

    mode = "RGB"
    width = height = 16
    size = (16, 16)

    def save(self, destination, format=None, **kwargs):
        destination.write(b"\x89PNG partial")
        raise OSError("No space left on device")


def test_failed_write_leaves_no_file_and_no_temp(tmp_path):
    with pytest.raises(OSError, match="No space left"):
        save_image(FailingImage(), tmp_path, context=context(), infotext=INFOTEXT, save_to_dirs=False)
    assert list(tmp_path.iterdir()) == []


def test_failed_write_does_not_touch_existing_file(tmp_path):
    options = SaveOptions(save_to_dirs=False)
    first = save_image(red(), tmp_path, context=context(), options=options, forced_filename="keep")
    before = Path(first.path).read_bytes()
    with pytest.raises(OSError):
        save_image(FailingImage(), tmp_path, context=context(), options=options, forced_filename="keep")
    assert Path(first.path).read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.png"]


# ------------------------------------------------------------------------------------------ grids


@pytest.mark.parametrize(
    "count, rows",
    [(1, 1), (2, 1), (3, 2), (4, 2), (5, 2), (6, 2), (7, 3), (8, 3), (9, 3), (10, 3), (16, 4)],
)
def test_grid_rows_round_sqrt(count, rows):
    assert grid_rows(count) == rows


@pytest.mark.parametrize("count, rows", [(1, 1), (2, 1), (3, 1), (4, 2), (5, 1), (6, 2), (7, 1), (8, 2), (9, 3), (12, 3)])
def test_grid_rows_prevent_empty_spots(count, rows):
    assert grid_rows(count, prevent_empty_spots=True) == rows


def test_grid_rows_settings():
    assert grid_rows(6, n_rows=3) == 3
    assert grid_rows(6, n_rows=0, batch_size=2) == 2
    with pytest.raises(ValueError, match="got 0"):
        grid_rows(0)


def test_image_grid_size_and_placement():
    colours = ["red", "green", "blue", "white", "yellow"]
    grid = image_grid([Image.new("RGB", (10, 8), c) for c in colours])
    assert grid.size == (30, 16)  # 5 images: 2 rows, 3 columns
    assert grid.getpixel((0, 0)) == (255, 0, 0)
    assert grid.getpixel((25, 0)) == (0, 0, 255)
    assert grid.getpixel((5, 12)) == (255, 255, 255)
    assert grid.getpixel((25, 12)) == (0, 0, 0)  # the empty spot is black
    assert image_grid([red()] * 4, rows=1).size == (64, 16)
    assert image_grid([red()] * 5, prevent_empty_spots=True).size == (80, 16)
    with pytest.raises(ValueError):
        image_grid([])
