"""The Models tab over a stand-in service (tests/fake_model_service.py): the look-up card (escaped,
description through the allow-list, preview only from checked bytes), the download form, the
downloads panel (progress, what a timer tick sends, a reload), cancel, cards, inspect, the tools, and
the tab in the whole UI."""

from __future__ import annotations

import base64
import dataclasses
import io
from html.parser import HTMLParser

import gradio as gr
import pytest
from PIL import Image

from modules.ui.models_render import downloads_html, image_mime, preview_data_uri
from modules.ui.models_tab import ALL_FILES, LookedUp, ModelsTabHandlers
from tests.fake_model_service import FakeModelSources, civitai_model, url_model
from tests.ui_support import make_context, run_event

CIVITAI = "https://civitai.com/models/1?modelVersionId=11"
URL = "https://example.com/model.safetensors"


def png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), (200, 10, 10)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def context(tmp_path_factory):
    context = make_context(tmp_path_factory.mktemp("models-tab"), load=False)
    yield context
    context.jobs.shutdown()


@pytest.fixture
def service(context):
    service = FakeModelSources(models={CIVITAI: civitai_model(), URL: url_model(),
                                       "controlnet": civitai_model(model_type="Controlnet")},
                               local={"checkpoint": ["tiny.safetensors"], "lora": ["known-lora.pt"], "embedding": [],
                                      "hypernetwork": [], "vae": []})
    context.model_sources = service
    return service


@pytest.fixture
def handlers(context, service):
    return ModelsTabHandlers(context, list_updates=1)


def value(update):
    return update["value"] if isinstance(update, dict) else update


# -- what reaches the page from the network ---------------------------------------------------------------


ATTACKS = [
    "<script>alert(1)</script>", "<img src=x onerror=alert(1)>", "<a href='javascript:alert(1)'>x</a>",
    "<p onclick='alert(1)'>x</p>", "<svg><script>alert(1)</script></svg>", "<iframe src='https://evil'></iframe>",
    "<style>body{display:none}</style>", "&lt;script&gt;", "<scr<script>ipt>alert(1)</script>",
    "<b>unclosed <i>nest", "<p style='background:url(https://evil/)'>x</p>", "'><script>alert(1)</script>",
]


def elements(markup: str) -> list[tuple[str, dict[str, str | None]]]:
    """Every element of `markup` with its attributes, as a browser's tokenizer reads them."""
    found = []

    class Collector(HTMLParser):
        def handle_starttag(self, tag, attrs):
            found.append((tag, dict(attrs)))

    Collector().feed(markup)
    return found


@pytest.mark.parametrize("attack", ATTACKS)
def test_nothing_on_the_card_runs_or_loads(handlers, service, attack):
    """Every field a model's author writes, with markup that would run or load something: the card
    holds only our own elements and attributes."""
    service.models[CIVITAI] = dataclasses.replace(
        civitai_model(name=f"Name {attack}", description=f"<p>before</p>{attack}<p>after</p>"),
        trigger_words=(attack,), license=attack, base_model=attack, version_name=attack,
        page_url=f"javascript:alert(1)//{attack}")
    card, files = handlers.lookup(CIVITAI)[:2]
    for tag, attributes in elements(card + files):
        assert tag in {"div", "h3", "table", "tr", "th", "td", "code", "p", "b", "i", "span"}, (attack, tag)
        assert set(attributes) <= {"class"}, (attack, tag, attributes)
    assert "<p>before</p>" in card and "<p>after</p>" in card
    assert card.count("<b>") == card.count("</b>") and card.count("<i>") == card.count("</i>")


def test_the_description_keeps_formatting_and_http_links(handlers, service):
    service.models[CIVITAI] = civitai_model(description="<h2>Usage</h2><p>Use <strong>weight</strong> 0.8 "
                                                        "<a href='https://civitai.com/x' class='c'>page</a></p>")
    card = handlers.lookup(CIVITAI)[0]
    assert "<h2>Usage</h2>" in card and "<strong>weight</strong>" in card
    assert '<a href="https://civitai.com/x" target="_blank" rel="noopener noreferrer nofollow">page</a>' in card
    assert "href='https://civitai.com/models/1'" in card  # the model's own page


def test_a_preview_is_shown_only_from_bytes_of_an_image_type():
    png = png_bytes()
    assert image_mime(png) == "image/png"
    assert preview_data_uri(png) == "data:image/png;base64," + base64.b64encode(png).decode()
    for not_an_image in (b"<svg xmlns='http://www.w3.org/2000/svg'><script>alert(1)</script></svg>",
                         b"<html>login</html>", b"", None):
        assert preview_data_uri(not_an_image) is None


def test_the_card_escapes_what_the_source_says_and_never_links_the_remote_preview(handlers, service):
    service.models[CIVITAI] = civitai_model(name="<img src=x onerror=alert(1)>Evil",
                                            description="<p>Nice <script>alert(2)</script>model</p>")
    service.preview = png_bytes()
    card, files, file, kind, message, looked_up = handlers.lookup(f"  {CIVITAI} ")
    assert "<img src=x" not in card and "&lt;img src=x onerror=alert(1)&gt;Evil" in card
    assert "<script" not in card and "<p>Nice model</p>" in card
    assert "&lt;i&gt;x&lt;/i&gt;" in card and "tiny style" in card  # trigger words, escaped
    assert "SD 1.5" in card and "/data/checkpoint" in card and "CreativeML" in card
    remote_preview = service.models[CIVITAI].previews[0].url
    assert remote_preview not in card and "data:image/png;base64," in card
    assert ("preview_bytes", remote_preview) in service.calls  # fetched by the server, through the service
    assert "tiny-full.ckpt" in files and "PickleTensor" in files and "pruned" in files and "fp16" in files
    assert file["choices"] == [("tiny-full.ckpt", "tiny-full.ckpt"), ("tiny.safetensors", "tiny.safetensors")] \
        or [c if isinstance(c, str) else c[1] for c in file["choices"]] == ["tiny-full.ckpt", "tiny.safetensors"]
    assert file["value"] == "tiny.safetensors"  # the primary SafeTensor
    assert kind["visible"] is False and message == "" and looked_up == LookedUp(CIVITAI, False)


def test_a_preview_that_cannot_be_fetched_leaves_the_card_without_one(handlers, service):
    card = handlers.lookup(CIVITAI)[0]  # the fake has no preview bytes: ModelSourceError
    assert "no preview" in card and "<img" not in card


def test_lookup_of_a_url_asks_for_the_type_and_says_what_is_already_here(handlers, service):
    service.existing = {"model.safetensors": "/data/lora/same-bytes.safetensors"}
    card, files, file, kind, message, looked_up = handlers.lookup(URL)
    assert kind["visible"] is True and kind["value"] is None and looked_up.choose_type
    assert "choose its type" in card
    assert "/data/lora/same-bytes.safetensors" in message and "/data/lora/same-bytes.safetensors" in files


def test_lookup_errors_and_refusals_are_shown(handlers):
    outputs = handlers.lookup("no such thing")
    assert "class='error'" in outputs[4] and "no such thing" in outputs[4] and outputs[5] is None
    assert "Paste a model" in handlers.lookup("   ")[4]
    card = handlers.lookup("controlnet")[0]
    assert "Cannot be downloaded: Controlnet models cannot be downloaded here" in card


# -- downloading ---------------------------------------------------------------------------------------------


def test_download_takes_the_file_chosen_on_the_card(handlers, service):
    looked_up = handlers.lookup(CIVITAI)[5]
    message, html, cancel, view = handlers.download(looked_up, CIVITAI, "tiny-full.ckpt", "LORA", None)
    # The type is the source's own for a Civitai model: the hidden dropdown's value is not sent.
    assert ("start_download", CIVITAI, "tiny-full.ckpt", None) in service.calls
    assert "Downloading tiny-full.ckpt" in message
    [status] = service.downloads()
    assert f"data-id='{status.id}'" in html and "Queued" in html
    assert cancel["value"] == status.id and view.active == (status.id,)


def test_download_of_a_url_sends_the_chosen_type_and_an_edited_source_its_default(handlers, service):
    looked_up = handlers.lookup(URL)[5]
    handlers.download(looked_up, URL, "model.safetensors", "LORA", None)
    assert ("start_download", URL, "model.safetensors", "LORA") in service.calls
    # The address was changed after the look-up: the old card's choices do not apply to it.
    handlers.download(looked_up, CIVITAI, "model.safetensors", "LORA", None)
    assert ("start_download", CIVITAI, None, None) in service.calls


def test_download_errors_and_refused_writes_are_shown(handlers, service):
    message = handlers.download(None, URL, None, None, None)[0]
    assert "class='error'" in message and "choose its type" in message
    service.write_refusal = "this server listens on the network: downloads need --enable-insecure-extension-access"
    message = handlers.download(None, CIVITAI, None, None, None)[0]
    assert "--enable-insecure-extension-access" in message and not service.downloads()


def test_progress_bytes_speed_and_eta_and_a_tick_sends_only_changes(handlers, service):
    status = handlers.service.start_download(CIVITAI)
    html, cancel, view, *lists = handlers.poll(None)
    assert f"data-id='{status.id}'" in html and "0%" in html
    service.advance(status.id, 1024, speed=512.0)
    html, cancel, view2, *lists = handlers.poll(view)
    assert "50%" in html and "1.0 KB of 2.0 KB" in html and "512 B/s" in html and "2 s left" in html
    assert "<progress class='models-progress' max='100' value='50.0'>" in html
    assert cancel == gr.skip()  # the running set did not change: the dropdown is left alone
    html, cancel, view3, *lists = handlers.poll(view2)
    assert html == gr.skip() and cancel == gr.skip() and lists == [gr.skip()] * 3


def test_a_finished_download_refreshes_the_file_lists(handlers, service, context):
    status = handlers.service.start_download(CIVITAI)
    view = handlers.on_page_load()[2]
    service.local["checkpoint"].append("tiny-downloaded.safetensors")
    service.finish(status.id, destination="/data/checkpoint/tiny-downloaded.safetensors")
    html, cancel, view, cards_file, tools, top_bar = handlers.poll(view)
    assert "Done: /data/checkpoint/tiny-downloaded.safetensors" in html
    assert cancel["choices"] == [] and cancel["value"] is None
    assert "tiny-downloaded.safetensors" in tools["choices"] or \
        ("tiny-downloaded.safetensors", "tiny-downloaded.safetensors") in tools["choices"]
    assert top_bar["choices"] == context.checkpoints.choices()
    assert handlers.poll(view)[3:] == [gr.skip()] * 3  # once


def test_the_panel_is_the_services_state_so_it_survives_a_reload(context, service):
    status = service.start_download(CIVITAI)
    service.advance(status.id, 512)
    failed = service.start_download(URL, model_type="VAE")
    service.finish(failed.id, state="failed", error="the server sent an HTML page instead of the model")
    # A new page (a reload, or another browser) has no state of its own: it reads the service.
    outputs = ModelsTabHandlers(context).on_page_load()
    html, cancel = outputs[0], outputs[1]
    assert html.index(f"data-id='{failed.id}'") < html.index(f"data-id='{status.id}'")  # newest first
    assert "Failed: the server sent an HTML page instead of the model" in html and "25%" in html
    assert [c[1] if isinstance(c, tuple) else c for c in cancel["choices"]] == [status.id]


def test_cancel_a_running_download(handlers, service):
    status = service.start_download(CIVITAI)
    message, html, cancel, view = handlers.cancel(status.id, None)
    assert "cancelled" in message and "Cancelled" in html and cancel["choices"] == []
    assert "Choose the download" in handlers.cancel(None, None)[0]
    assert "No download with id" in handlers.cancel("gone", None)[0]


def test_refused_writes_disable_the_buttons_with_the_reason(handlers, service):
    allowed = handlers.on_page_load()
    assert allowed[3] == "" and all(u["interactive"] is True for u in allowed[4:9])
    service.write_refusal = "downloads are refused beyond localhost unless auth is on"
    refused = handlers.on_page_load()
    assert "downloads are refused beyond localhost" in refused[3]
    assert all(u["interactive"] is False for u in refused[4:9])


def test_downloads_html_escapes_names_and_shows_unknown_totals():
    service = FakeModelSources(models={URL: url_model()})
    status = service.start_download(URL, model_type="LORA")
    service._downloads[status.id] = status.__class__(**{**status.to_json(), "model_name": "<b>x</b>", "total": None,
                                                        "state": "running", "bytes_done": 3000})
    html = downloads_html(service.downloads())
    assert "<b>x</b>" not in html and "&lt;b&gt;x&lt;/b&gt;" in html and "2.9 KB" in html and " of " not in html


# -- cards and tools -----------------------------------------------------------------------------------------


def test_cards_for_one_file_or_all(handlers, service):
    update = handlers.card_file_choices("lora")
    assert update["value"] == ALL_FILES and ALL_FILES in str(update["choices"]) and "known-lora.pt" in str(update["choices"])
    every = handlers.fetch_cards("lora", ALL_FILES)
    assert ("fetch_cards", "lora", None) in service.calls and "cards written" in every
    handlers.fetch_cards("checkpoint", "tiny.safetensors")
    assert ("fetch_cards", "checkpoint", "tiny.safetensors") in service.calls
    assert "class='error'" in handlers.fetch_cards("controlnet", None)


def test_inspect_shows_the_report_and_tools_list_their_result(handlers, service, context):
    report = handlers.inspect("tiny.safetensors")
    assert "has ema" in report and "yes" in report and "float16" in report and "2.9 KB (3,000 bytes)" in report
    assert "Checkpoint &#x27;missing.ckpt&#x27; not found" in handlers.inspect("missing.ckpt")
    assert "Choose a checkpoint" in handlers.inspect(None)
    line, tools, cards_file, top_bar = handlers.run_tool("fp16", "tiny.safetensors")
    assert "Save as fp16: wrote tiny-fp16.safetensors" in line
    assert ("run_tool", "fp16", "tiny.safetensors") in service.calls and top_bar["choices"] == context.checkpoints.choices()
    service.write_refusal = "conversions are off here"
    assert "conversions are off here" in handlers.run_tool("convert", "tiny.safetensors")[0]


# -- in the whole UI -----------------------------------------------------------------------------------------


def test_the_tab_is_in_the_ui_and_its_look_up_runs_as_the_server_runs_it(context, service):
    from modules.ui.app import build_ui

    service.models["https://civitai.com/models/77"] = civitai_model(name="Through Gradio")
    blocks = build_ui(context)
    config = blocks.get_config_file()
    ids = {c.get("props", {}).get("elem_id"): c["id"] for c in config["components"]}
    for elem_id in ("tab_models", "models_source", "models_lookup", "models_card", "models_file", "models_download",
                    "models_downloads", "models_cancel", "models_cards_fetch", "models_inspect", "models_convert"):
        assert elem_id in ids, elem_id
    data = run_event(blocks, ids["models_lookup"], "click", ["https://civitai.com/models/77"], context=context)
    assert "Through Gradio" in data[0] and data[2]["value"] == "tiny.safetensors"


# -- the real service ---------------------------------------------------------------------------------------


def test_inspect_and_save_as_fp16_through_the_real_service(tmp_path):
    context = make_context(tmp_path, load=False)
    try:
        handlers = ModelsTabHandlers(context, list_updates=1)
        assert handlers.on_page_load()[-1]["choices"] == ["tiny.safetensors"]
        report = handlers.inspect("tiny.safetensors")
        assert "SD 1" in report and "float32" in report and "tensor count" in report
        line, tools, _, top_bar = handlers.run_tool("fp16", "tiny.safetensors")
        assert "class='error'" not in line, line
        [new] = [name for name in tools["choices"] if name != "tiny.safetensors"]
        assert (tmp_path / "models" / "Stable-diffusion" / new).is_file()
        assert any(title.startswith(new) for _, title in top_bar["choices"])
        assert "float16" in handlers.inspect(new)
    finally:
        context.jobs.shutdown()


def test_a_server_that_listens_without_auth_turns_the_writing_buttons_off(tmp_path):
    context = make_context(tmp_path, load=False, extra_args=("--listen",))
    try:
        handlers = ModelsTabHandlers(context)
        outputs = handlers.on_page_load()
        assert "--enable-model-downloads" in outputs[3]
        assert all(update["interactive"] is False for update in outputs[4:9])
        message = handlers.download(None, "https://civitai.com/models/1", None, None, None)[0]
        assert "class='error'" in message and "--enable-model-downloads" in message
        assert not context.model_sources.downloads()
        assert "class='error'" not in handlers.inspect("tiny.safetensors")  # reading stays allowed
    finally:
        context.jobs.shutdown()
