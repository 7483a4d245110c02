"""Infotext writing and parsing against A1111's format (A1111.md §7.2); expected dicts derived by hand."""

from __future__ import annotations

import json

import pytest
from PIL import Image, PngImagePlugin

from modules.outputs.infotext import (
    GenerationInfo,
    create_infotext,
    decode_user_comment,
    exif_with_user_comment,
    format_parameters,
    generation_parameters,
    parse_generation_parameters,
    parse_infotext_version,
    quote,
    read_info_from_image,
    read_parameters_from_image,
    unquote,
)

UI_PARAMS_LINE = (
    "Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 123, Size: 512x512, "
    "Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Version: v1.10.1"
)

# Every default A1111's parser adds, with A1111's types, in A1111's order.
DEFAULTS = {
    "Clip skip": "1",
    "Hires resize-1": 0,
    "Hires resize-2": 0,
    "Hires sampler": "Use same sampler",
    "Hires checkpoint": "Use same checkpoint",
    "Hires prompt": "",
    "Hires negative prompt": "",
    "Mask mode": "Inpaint masked",
    "Masked content": "original",
    "Inpaint area": "Whole picture",
    "Masked area padding": 32,
    "RNG": "GPU",
    "Schedule type": "Automatic",
    "Schedule max sigma": 0,
    "Schedule min sigma": 0,
    "Schedule rho": 0,
    "VAE Encoder": "Full",
    "VAE Decoder": "Full",
    "FP8 weight": "Disable",
}


def ui_info(**overrides) -> GenerationInfo:
    values = {
        "steps": 20,
        "sampler": "DPM++ 2M",
        "cfg_scale": 7,
        "seed": 123,
        "width": 512,
        "height": 512,
        "model_hash": "6ce0161689",
        "model": "v1-5-pruned-emaonly",
        "extra": {"Schedule type": "Karras"},
        "version": "v1.10.1",
    }
    values.update(overrides)
    return GenerationInfo(**values)


# ------------------------------------------------------------------------------------------ writing


def test_ui_example_is_written_exactly():
    params = generation_parameters(ui_info())
    assert format_parameters(params) == UI_PARAMS_LINE
    text = create_infotext("a cat", "blurry", params)
    assert text == f"a cat\nNegative prompt: blurry\n{UI_PARAMS_LINE}"


def test_negative_line_is_omitted_when_empty_and_text_is_stripped():
    params = {"Steps": 20, "Sampler": "Euler", "Seed": 1}
    assert create_infotext("a cat", "", params) == "a cat\nSteps: 20, Sampler: Euler, Seed: 1"
    assert create_infotext("", "", params) == "Steps: 20, Sampler: Euler, Seed: 1"
    assert create_infotext("  a cat  ", "", {}) == "a cat"


def test_int_and_float_are_written_differently():
    api = generation_parameters(GenerationInfo(steps=50, sampler="Euler", cfg_scale=7.0, seed=5, width=512, height=512))
    ui = generation_parameters(GenerationInfo(steps=20, sampler="Euler", cfg_scale=7, seed=5, width=512, height=512))
    assert format_parameters(api) == "Steps: 50, Sampler: Euler, Schedule type: Automatic, CFG scale: 7.0, Seed: 5, Size: 512x512"
    assert "CFG scale: 7," in format_parameters(ui)


def test_key_order_conditions_and_extras_updated_in_place():
    info = ui_info(
        face_restoration="CodeFormer",
        vae="vae-ft-mse",
        variation_seed=99,
        variation_seed_strength=0.3,
        seed_resize_from=(640, 0),  # one side 0: not written
        clip_skip=2,
        eta_noise_seed_delta=31337,
        sampler_uses_ensd=True,
        rng="CPU",
        tiling=True,
        extra={
            "Hires upscale": 2,
            "Denoising strength": 0.7,  # a fixed key: keeps its fixed place
            "Schedule type": "Karras",
            "Lora hashes": "add_detail: 7c6bad76eb54",
            "Flag": "Flag",  # a value equal to its key is written bare
        },
        user="alice",
    )
    params = generation_parameters(info)
    assert format_parameters(params) == (
        "Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 123, "
        "Face restoration: CodeFormer, Size: 512x512, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, "
        "VAE: vae-ft-mse, Variation seed: 99, Variation seed strength: 0.3, Denoising strength: 0.7, "
        "Clip skip: 2, ENSD: 31337, RNG: CPU, Tiling: True, Hires upscale: 2, "
        'Lora hashes: "add_detail: 7c6bad76eb54", Flag, Version: v1.10.1, User: alice'
    )


@pytest.mark.parametrize(
    "overrides, absent",
    [
        ({"clip_skip": 1}, "Clip skip"),
        ({"eta_noise_seed_delta": 31337, "sampler_uses_ensd": False}, "ENSD"),
        ({"eta_noise_seed_delta": 31337, "sampler_uses_ensd": True, "eta": 0}, "ENSD"),
        ({"rng": "GPU"}, "RNG"),
        ({"variation_seed": 5, "variation_seed_strength": 0}, "Variation seed"),
        ({"token_merging_ratio_hr": 0.5, "enable_hr": False}, "Token merging ratio hr"),
    ],
)
def test_conditional_keys_are_left_out(overrides, absent):
    assert generation_parameters(ui_info(**overrides))[absent] is None
    assert f"{absent}:" not in format_parameters(generation_parameters(ui_info(**overrides)))


def test_seed_resize_from_is_written_as_size():
    assert generation_parameters(ui_info(seed_resize_from=(640, 448)))["Seed resize from"] == "640x448"


@pytest.mark.parametrize(
    "value, written",
    [
        ("plain", "plain"),
        ("a, b", '"a, b"'),
        ("k: v", '"k: v"'),
        ("one\ntwo", '"one\\ntwo"'),
        ('say "hi", ok', '"say \\"hi\\", ok"'),
        ("ünïcode, ok", '"ünïcode, ok"'),  # ensure_ascii=False
        (7, 7),
        (["a", "b"], '["a", "b"]'),  # str() has a comma: the list is JSON-dumped as A1111 does
    ],
)
def test_quote(value, written):
    assert quote(value) == written


def test_quote_refuses_values_json_cannot_write():
    with pytest.raises(ValueError, match="cannot be JSON-quoted"):
        format_parameters({"Thing": object.__new__(type("Odd", (), {"__str__": lambda self: "a:b"}))})


def test_unquote():
    assert unquote('"a, b"') == "a, b"
    assert unquote('"broken') == '"broken'
    assert unquote('"not json\\x"') == '"not json\\x"'
    assert unquote("") == ""


# ------------------------------------------------------------------------------------------ parsing


def test_ui_example_parses_to_a1111_dict():
    text = f"a photo of a cat, masterpiece\nNegative prompt: blurry, lowres\n{UI_PARAMS_LINE}"
    expected = {
        "Prompt": "a photo of a cat, masterpiece",
        "Negative prompt": "blurry, lowres",
        "Steps": "20",
        "Sampler": "DPM++ 2M",
        "Schedule type": "Karras",
        "CFG scale": "7",
        "Seed": "123",
        "Size-1": "512",
        "Size-2": "512",
        "Model hash": "6ce0161689",
        "Model": "v1-5-pruned-emaonly",
        "Version": "v1.10.1",
        **{k: v for k, v in DEFAULTS.items() if k != "Schedule type"},
    }
    result = parse_generation_parameters(text)
    assert result == expected
    assert list(result) == list(expected)  # A1111's insertion order too


def test_defaults_are_filled_when_absent():
    result = parse_generation_parameters("cat\nSteps: 20, Sampler: Euler, Seed: 1")
    for key, value in DEFAULTS.items():
        assert result[key] == value
    assert "Cache FP16 weight for LoRA" not in result


def test_fp8_on_adds_cache_fp16_default():
    result = parse_generation_parameters("cat\nSteps: 20, Sampler: Euler, FP8 weight: Enable for SDXL")
    assert result["Cache FP16 weight for LoRA"] is False


def test_round_trip_api_style():
    info = GenerationInfo(
        steps=50, sampler="Euler", cfg_scale=7.0, seed=4242, width=768, height=512,
        clip_skip=2, extra={"Hires upscale": 2.0, "Hires steps": 10, "Hires upscaler": "Latent"},
        version="v1.10.1",
    )
    text = create_infotext("a cat, (fluffy:1.2)\nsecond line", "bad, ugly", generation_parameters(info))
    res = parse_generation_parameters(text)
    assert res["Prompt"] == "a cat, (fluffy:1.2)\nsecond line"
    assert res["Negative prompt"] == "bad, ugly"
    assert (res["Steps"], res["CFG scale"], res["Seed"]) == ("50", "7.0", "4242")
    assert (res["Size-1"], res["Size-2"]) == ("768", "512")
    assert res["Clip skip"] == "2"
    assert res["Schedule type"] == "Automatic"
    assert (res["Hires upscale"], res["Hires steps"], res["Hires upscaler"]) == ("2.0", "10", "Latent")


def test_round_trip_of_quoted_values():
    extra = {
        "Hires prompt": "a, b: c\nd",
        "Lora hashes": "add_detail: 7c6bad76eb54, lcm: 1a2b3c4d5e6f",
        "TI hashes": 'bad_hands: "deadbeef", easy: 0123',
        "Script": "X/Y/Z plot",
    }
    text = create_infotext("p", "", generation_parameters(ui_info(extra=extra)))
    res = parse_generation_parameters(text)
    for key, value in extra.items():
        assert res[key] == value
        assert isinstance(res[key], str)


def test_quotes_without_special_characters_are_not_preserved():
    # A1111 quotes only for , : and newlines, so a value that is itself "quoted" comes back unquoted.
    text = create_infotext("p", "", {"Steps": 1, "Sampler": "Euler", "Note": '"hi"'})
    assert text.endswith('Note: "hi"')
    assert parse_generation_parameters(text)["Note"] == "hi"


def test_multi_line_prompt_and_negative():
    text = (
        "line one\n  line two  \nNegative prompt: neg one\nneg two\n"
        "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 512x768"
    )
    res = parse_generation_parameters(text)
    assert res["Prompt"] == "line one\nline two"  # each line is stripped, as in A1111
    assert res["Negative prompt"] == "neg one\nneg two"
    assert (res["Size-1"], res["Size-2"]) == ("512", "768")


def test_last_line_with_fewer_than_three_pairs_is_prompt():
    res = parse_generation_parameters("a prompt\nSteps: 20, Seed: 1")
    assert res["Prompt"] == "a prompt\nSteps: 20, Seed: 1"
    assert "Steps" not in res


def test_parameters_only_text():
    res = parse_generation_parameters("Steps: 20, Sampler: Euler, CFG scale: 7")
    assert res["Prompt"] == "" and res["Negative prompt"] == ""
    assert res["Steps"] == "20"


def test_empty_value_is_dropped_like_a1111():
    res = parse_generation_parameters("p\nSteps: 20, Foo: , Sampler: Euler, Seed: 3")
    assert "Foo" not in res
    assert res["Sampler"] == "Euler" and res["Seed"] == "3"


def test_any_wxh_value_is_split():
    res = parse_generation_parameters("p\nSteps: 20, Sampler: Euler, Seed resize from: 640x448, Hires resize: 1024x1024")
    assert (res["Seed resize from-1"], res["Seed resize from-2"]) == ("640", "448")
    assert (res["Hires resize-1"], res["Hires resize-2"]) == ("1024", "1024")


def test_legacy_hypernet_is_appended_to_prompt():
    res = parse_generation_parameters("a cat\nSteps: 20, Sampler: Euler a, Hypernet: anime, Hypernet strength: 0.5")
    assert res["Prompt"] == "a cat<hypernet:anime:0.5>"
    res = parse_generation_parameters("a cat\nSteps: 20, Sampler: Euler a, Hypernet: anime")
    assert res["Prompt"] == "a cat<hypernet:anime:1.0>"


def test_old_first_pass_size_becomes_hires_resize():
    res = parse_generation_parameters("p\nSteps: 20, Sampler: Euler, Size: 1024x768, First pass size: 0x0")
    # sqrt(512*512 / (1024*768)) scales to 591x443; each side rounded up to a multiple of 64.
    assert (res["Size-1"], res["Size-2"]) == (640, 448)
    assert (res["Hires resize-1"], res["Hires resize-2"]) == (1024, 768)
    res = parse_generation_parameters("p\nSteps: 20, Sampler: Euler, Size: 1024x768, First pass size: 512x384")
    assert (res["Size-1"], res["Size-2"], res["Hires resize-1"]) == (512, 384, 1024)


def test_version_backcompat_flags():
    res = parse_generation_parameters("[a:b:5]\nSteps: 20, Sampler: DDIM, Seed: 1, Version: v1.5.1")
    assert res["Old prompt editing timelines"] is True
    assert res["Pad conds v0"] is True
    assert res["Downcast alphas_cumprod"] is True
    res = parse_generation_parameters("p\nSteps: 20, Sampler: Euler, Refiner: sdxl_refiner, Version: v1.7.0")
    assert res["Refiner switch by sampling steps"] is True
    assert "Old prompt editing timelines" not in res
    res = parse_generation_parameters("[a:b:5]\nSteps: 20, Sampler: DDIM, Seed: 1, Version: v1.10.1")
    assert not {"Old prompt editing timelines", "Pad conds v0", "Downcast alphas_cumprod"} & set(res)
    res = parse_generation_parameters("[a:b:5]\nSteps: 20, Sampler: DDIM, Version: v1.5.1", auto_backcompat=False)
    assert "Pad conds v0" not in res


def test_version_with_commit_suffix():
    assert parse_infotext_version("v1.7.0-225-gabcdef") == parse_infotext_version("v1.7.0-225")
    assert parse_infotext_version("v1.7.0-224-gabcdef") < parse_infotext_version("v1.7.0-225")
    assert parse_infotext_version("not a version") is None
    res = parse_generation_parameters("p\nSteps: 20, Sampler: Euler, Version: v1.7.0-300-g1234567")
    assert "Downcast alphas_cumprod" not in res


def test_skip_keys_and_style_extraction():
    res = parse_generation_parameters("p\nSteps: 20, Sampler: Euler, Seed: 9", skip_keys=["Seed"])
    assert "Seed" not in res

    def extract(prompt, negative):
        return (["Cinematic"], prompt.replace(", cinematic", ""), negative) if "cinematic" in prompt else ([], prompt, negative)

    res = parse_generation_parameters("cat, cinematic\nSteps: 20, Sampler: Euler, Seed: 9", extract_styles=extract)
    assert res["Prompt"] == "cat" and res["Styles array"] == ["Cinematic"]
    res = parse_generation_parameters("cat\nSteps: 20, Sampler: Euler, Seed: 9", extract_styles=extract)
    assert "Styles array" not in res


# ------------------------------------------------------------------------------------ image metadata

TEXT = "ünïcode 世界, cat\nNegative prompt: blurry\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 8x8"


def test_png_parameters_chunk(tmp_path):
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", TEXT)
    path = tmp_path / "a.png"
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    with Image.open(path) as image:
        geninfo, items = read_info_from_image(image)
        assert geninfo == TEXT
        assert "parameters" not in items
        assert read_parameters_from_image(image)["Prompt"] == "ünïcode 世界, cat"


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP"])
def test_exif_user_comment(tmp_path, fmt):
    path = tmp_path / f"a.{fmt.lower()}"
    Image.new("RGB", (8, 8)).save(path, format=fmt, exif=exif_with_user_comment(TEXT))
    with Image.open(path) as image:
        geninfo, items = read_info_from_image(image)
        assert geninfo == TEXT
        assert "exif" not in items
        assert read_parameters_from_image(image)["Negative prompt"] == "blurry"


def test_exif_block_layout_matches_piexif():
    data = exif_with_user_comment("hi")
    # big-endian TIFF; IFD0 points to the Exif IFD; UserComment (0x9286) has type UNDEFINED (7).
    assert data.startswith(b"Exif\x00\x00MM\x00\x2a\x00\x00\x00\x08")
    assert b"\x92\x86\x00\x07\x00\x00\x00\x0c" in data
    assert data.endswith(b"UNICODE\x00\x00h\x00i")


def test_decode_user_comment_prefixes():
    assert decode_user_comment(b"UNICODE\x00" + "é".encode("utf_16_be")) == "é"
    assert decode_user_comment(b"ASCII\x00\x00\x00abc") == "abc"
    assert decode_user_comment(b"no prefix \xff text") == "no prefix  text"


def test_image_without_infotext(tmp_path):
    path = tmp_path / "plain.png"
    Image.new("RGB", (8, 8)).save(path)
    with Image.open(path) as image:
        assert read_info_from_image(image) == (None, {})
        assert read_parameters_from_image(image) is None


def test_novelai_png_is_converted(tmp_path):
    info = PngImagePlugin.PngInfo()
    info.add_text("Software", "NovelAI")
    info.add_text("Description", "masterpiece, 1girl")
    info.add_text("Comment", json.dumps({"uc": "lowres", "steps": 28, "sampler": "k_euler_ancestral", "scale": 11, "seed": 42}))
    path = tmp_path / "nai.png"
    Image.new("RGB", (64, 32)).save(path, pnginfo=info)
    with Image.open(path) as image:
        geninfo, _ = read_info_from_image(image)
    assert geninfo == (
        "masterpiece, 1girl\nNegative prompt: lowres\n"
        "Steps: 28, Sampler: Euler a, CFG scale: 11, Seed: 42, Size: 64x32, Clip skip: 2, ENSD: 31337"
    )
    res = parse_generation_parameters(geninfo)
    assert (res["Sampler"], res["Clip skip"], res["ENSD"]) == ("Euler a", "2", "31337")


def test_novelai_unknown_sampler_falls_back_to_euler_a():
    image = Image.new("RGB", (8, 8))
    image.info.update(Software="NovelAI", Description="p", Comment=json.dumps(
        {"uc": "", "steps": 1, "sampler": "k_dpm_2_ancestral", "scale": 5, "seed": 1}))
    assert "Sampler: Euler a," in read_info_from_image(image)[0]
    image.info.update(Comment=json.dumps({"uc": "", "steps": 1, "sampler": "ddim", "scale": 5, "seed": 1}))
    assert "Sampler: DDIM," in read_info_from_image(image)[0]
