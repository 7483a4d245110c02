"""PNG Info: an image's A1111 parameters read, parsed and shown, and sent to txt2img's fields."""

from __future__ import annotations

from types import SimpleNamespace

from PIL import Image, PngImagePlugin

from modules.serving.settings import Settings
from modules.ui.pnginfo import read_png_info, render_png_info
from modules.ui.request_fields import TXT2IMG_FIELDS

INFOTEXT = ("a lighthouse at dusk\nNegative prompt: text, watermark\n"
            "Steps: 24, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6, Seed: 42, Size: 512x640, "
            "Model hash: abcdef0123, Model: dreamy, Version: v1.10.1")


def write_png(path, text=None, **extra):
    info = PngImagePlugin.PngInfo()
    if text is not None:
        info.add_text("parameters", text)
    for key, value in extra.items():
        info.add_text(key, value)
    Image.new("RGB", (16, 16), "gray").save(path, pnginfo=info)
    return str(path)


def test_parameters_are_read_and_shown(tmp_path):
    info = read_png_info(write_png(tmp_path / "a.png", INFOTEXT, Software="x"))
    assert info.infotext == INFOTEXT and info.error is None
    assert info.parameters["Prompt"] == "a lighthouse at dusk" and info.parameters["Steps"] == "24"
    assert info.parameters["Size-1"] == "512" and info.items == {"Software": "x"}
    page = render_png_info(info)
    assert "a lighthouse at dusk" in page and "text, watermark" in page
    assert "<th>Sampler</th><td>DPM++ 2M</td>" in page and "<th>Model</th><td>dreamy</td>" in page
    assert "Masked area padding" not in page  # the parser's filled-in defaults are not the image's
    assert "<th>Clip skip</th>" not in page and "<th>RNG</th>" not in page
    assert "<th>Size</th><td>512x640</td>" in page and "Size-1" not in page


def test_images_without_parameters_and_non_images(tmp_path):
    plain = read_png_info(write_png(tmp_path / "plain.png"))
    assert plain.infotext is None and "carries no generation parameters" in render_png_info(plain)
    (tmp_path / "notes.txt").write_text("hello")
    broken = read_png_info(str(tmp_path / "notes.txt"))
    assert broken.error.startswith("Cannot read the image") and "class='error'" in render_png_info(broken)
    assert read_png_info(None).infotext is None


def test_send_to_txt2img_fills_the_fields(tmp_path):
    from modules.generation.styles import StyleDatabase
    from modules.ui.txt2img import paste_updates

    context = SimpleNamespace(current_checkpoint_info=lambda: None,
                              settings=SimpleNamespace(current=lambda: Settings({})),
                              prompt_styles=StyleDatabase(tmp_path / "styles.csv"))
    updates, note = paste_updates(context, INFOTEXT)
    values = dict(zip(TXT2IMG_FIELDS, updates))
    assert values["prompt"] == "a lighthouse at dusk" and values["negative_prompt"] == "text, watermark"
    assert values["steps"] == 24 and values["seed"] == 42 and (values["width"], values["height"]) == (512, 640)
    assert values["sampler_name"] == "DPM++ 2M" and values["scheduler"] == "Karras"
    assert values["batch_size"] == {"__type__": "update"}  # not in the infotext: left as it is (gr.skip())
    assert "Pasted" in note
    empty_updates, empty_note = paste_updates(context, "")
    assert all(u == {"__type__": "update"} for u in empty_updates) and "Nothing to paste" in empty_note
