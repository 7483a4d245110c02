"""A1111's page for extensions: the element ids extensions look up, every tab's content in the page,
the component hooks fired around the txt2img tab's components (modules.ui.component_hooks), the
script and style order in the page, and `opts` for the browser."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from modules.extension_host.environment import app_scope
from modules.extension_host.extensions import ExtensionFolders, load_extensions
from tests.extension_samples import NAME, SQUARE, WIDE, write_sample
from tests.ui_support import make_context

# A1111's ids (A1111.md §15.7) that extensions' scripts and CSS look up.
A1111_IDS = ("txt2img_toprow", "txt2img_actions_column", "txt2img_prompt", "txt2img_neg_prompt", "txt2img_generate",
             "txt2img_interrupt", "txt2img_skip", "txt2img_settings", "txt2img_script_container", "txt2img_gallery",
             "tab_txt2img", "tab_pnginfo", "tab_modelmerger", "tab_settings", "tab_extensions", "tabs",
             "quicksettings", "setting_sd_model_checkpoint")
# The txt2img components the hooks must see (A1111 fires them for every component of the tab).
HOOKED_IDS = ("txt2img_prompt", "txt2img_neg_prompt", "txt2img_sampling", "txt2img_scheduler", "txt2img_steps",
              "txt2img_width", "txt2img_height", "txt2img_batch_count", "txt2img_batch_size", "txt2img_cfg_scale",
              "txt2img_seed", "txt2img_subseed", "txt2img_generate", "txt2img_interrupt", "txt2img_skip",
              "txt2img_gallery", "script_list", "txt2img_hr", "txt2img_hr_upscaler", "txt2img_hires_steps",
              "txt2img_denoising_strength", "txt2img_hr_scale", "txt2img_hr_resize_x", "txt2img_hr_resize_y",
              "txt2img_generation_info_button", "txt2img_styles")
# Some of the img2img tab's: its scripts' instances (A1111's scripts_img2img) get the hooks there.
IMG2IMG_HOOKED_IDS = ("img2img_prompt", "img2img_neg_prompt", "img2img_generate", "img2img_denoising_strength",
                      "img2img_width", "img2img_mask_blur", "img2img_gallery")


def _build(data_dir: Path, *, broken: bool = False):
    from modules.ui.app import build_ui

    (data_dir / "builtin").mkdir(exist_ok=True)
    write_sample(data_dir / "extensions")
    if broken:
        write_sample(data_dir / "extensions", "broken-hook", broken=True)
    context = make_context(data_dir, load=False)
    runtime = load_extensions(context.settings, context.args,
                              ExtensionFolders(user=data_dir / "extensions", builtin=data_dir / "builtin"))
    runtime.scripts.bind_app(context)
    context.extensions = runtime
    with app_scope(context):
        demo = build_ui(context)
    return context, demo


def _seen(context) -> list[tuple[str, str]]:
    script = next(s for s in context.extensions.scripts.scripts if s.extension == NAME)
    return sys.modules[type(script).__module__].SEEN


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    context, demo = _build(tmp_path_factory.mktemp("hooks"))
    yield context, demo, demo.get_config_file()
    context.jobs.shutdown()


def _ids(config) -> dict[str, int]:
    """elem_id -> block id, for every block of the page (layout blocks included)."""
    return {c["props"]["elem_id"]: c["id"] for c in config["components"] if c.get("props", {}).get("elem_id")}


def _children_of(layout: dict, block_id: int) -> list[int] | None:
    """The ids of the children of the layout node holding `block_id`, in order."""
    children = layout.get("children") or []
    if any(child["id"] == block_id for child in children):
        return [child["id"] for child in children]
    for child in children:
        found = _children_of(child, block_id)
        if found is not None:
            return found
    return None


def test_a1111_element_ids_are_on_the_page(page):
    _, _, config = page
    missing = [elem_id for elem_id in A1111_IDS if elem_id not in _ids(config)]
    assert not missing


def test_every_main_tab_is_rendered_while_hidden(page):
    """Every main tab asks Gradio to render its content while hidden, as A1111's page had every tab
    in the DOM. (Gradio 6.31's front end does not read the option yet; javascript/atelier.js opens
    each tab once at load instead, which tests/browser/test_extension_page.py checks.)"""
    _, _, config = page
    by_id = {c["id"]: c for c in config["components"]}
    tabs_id = _ids(config)["tabs"]
    tab_ids = [child for child in _children_of(config["layout"], _ids(config)["tab_txt2img"])]
    assert by_id[tabs_id]["type"] == "tabs"
    assert len(tab_ids) >= 5
    assert all(by_id[tab]["props"].get("render_children") is True for tab in tab_ids)


def test_component_hooks_run_in_a1111_order_around_each_core_component(page):
    context, _, _ = page
    seen = _seen(context)
    for elem_id in (*HOOKED_IDS, *IMG2IMG_HOOKED_IDS):
        calls = [who for who, seen_id in seen if seen_id == elem_id]
        expected = ["script.before", "callback.before", "callback.after", "script.after"]
        if elem_id == "txt2img_generate":  # the script's on_after_component(elem_id=...) runs before after_component
            expected = ["script.before", "callback.before", "callback.after", "on_after_component", "script.after"]
        if elem_id == "script_list":  # A1111's id of both tabs' Script dropdown: hooked in each tab
            expected = expected * 2
        assert calls == expected, elem_id


def test_components_from_after_component_follow_the_component(page):
    _, _, config = page
    ids = _ids(config)
    siblings = _children_of(config["layout"], ids["txt2img_width"])
    position = siblings.index(ids["txt2img_width"])
    assert siblings[position + 1:position + 4] == [ids["sample_aspect_square"], ids["sample_aspect_wide"],
                                                   ids["txt2img_height"]]


def test_the_extensions_tool_buttons_set_width_and_height(page):
    _, demo, config = page
    ids = _ids(config)
    for button, expected in (("sample_aspect_square", SQUARE), ("sample_aspect_wide", WIDE)):
        dependency = next(d for d in config["dependencies"] if [ids[button], "click"] in
                          [list(target) for target in d["targets"]])
        assert dependency["outputs"] == [ids["txt2img_width"], ids["txt2img_height"]]
        assert tuple(demo.fns[dependency["id"]].fn()) == expected


def test_components_of_an_extension_ui_get_the_after_hooks(page):
    """A1111 fires the hooks while a script's ui() builds; Atelier fires the after hooks once ui()
    has returned (the before hooks cannot run for components it did not create)."""
    context, _, _ = page
    calls = [who for who, seen_id in _seen(context) if seen_id == "sample_aspect_enabled"]
    assert calls == ["callback.after", "script.after"] * 2  # always-on in both tabs: its ui() runs in each


def test_a_hook_that_raises_is_logged_with_its_extension_and_the_page_builds(tmp_path, caplog):
    with caplog.at_level(logging.ERROR):
        context, demo = _build(tmp_path, broken=True)
    try:
        messages = [record.getMessage() for record in caplog.records]
        assert any("broken-hook" in m and "after_component" in m and "txt2img_width" in m for m in messages)
        assert any("broken-hook" in m and "on_before_component" in m for m in messages)
        ids = _ids(demo.get_config_file())
        assert {"txt2img_width", "txt2img_height", "sample_aspect_square", "txt2img_generate"} <= set(ids)
    finally:
        context.jobs.shutdown()


def test_page_head_puts_atelier_globals_first_then_js_then_modules(tmp_path):
    from types import SimpleNamespace

    from modules.serving.settings import SettingsStore
    from modules.ui.extensions_tab import extension_css
    from modules.ui.page_script import page_head

    (tmp_path / "builtin").mkdir()
    for name, files in (("a-ext", ("z.mjs", "b.js")), ("b-ext", ("a.js",))):
        folder = tmp_path / "extensions" / name / "javascript"
        folder.mkdir(parents=True)
        for file in files:
            (folder / file).write_text("1;")
        (folder.parent / "style.css").write_text(f"/* style of {name} */")
    (tmp_path / "user.css").write_text("/* the user's css */")
    settings = SettingsStore(tmp_path / "config.json")
    from modules.serving.cmd_args import parse_args
    from modules.serving.paths import Paths

    args = parse_args(["--data-dir", str(tmp_path)])
    runtime = load_extensions(settings, args, ExtensionFolders(user=tmp_path / "extensions",
                                                               builtin=tmp_path / "builtin"))
    context = SimpleNamespace(extensions=runtime, paths=Paths.from_args(args), settings=settings, args=args)
    head = page_head(context)
    order = [head.index(marker) for marker in ("function gradioApp()", "a-ext/javascript/b.js?",
                                                "b-ext/javascript/a.js?", "a-ext/javascript/z.mjs?")]
    assert order == sorted(order)
    assert 'type="module" src="file=' in head
    css = extension_css(context)
    assert css.index("style of a-ext") < css.index("style of b-ext") < css.index("the user's css")


def test_opts_for_the_browser_are_the_settings_in_effect(page):
    from modules.ui.page_script import install_options_route

    context, _, _ = page
    app = FastAPI()
    install_options_route(app, context)
    client = TestClient(app)
    answer = client.get("/atelier/opts.json")
    assert answer.status_code == 200
    assert answer.json()["samples_format"] == context.settings.current()["samples_format"]
    context.settings.apply({"samples_format": "jpg"})
    try:
        assert client.get("/atelier/opts.json").json()["samples_format"] == "jpg"
    finally:
        context.settings.apply({"samples_format": "png"})
