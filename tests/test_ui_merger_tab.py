"""The Checkpoint Merger tab: its ids, merges from widget values through the job queue, the refreshed
dropdowns, merge and load, and errors shown as messages."""

from __future__ import annotations

import dataclasses
import html
import json
import pickle
from types import SimpleNamespace

import gradio as gr
import pytest
import torch

from modules.serving.app_context import AppContext
from modules.serving.cmd_args import parse_args
from modules.merging.blocks import SD_PRESETS, block_names
from modules.library.safetensors_io import read_header
from modules.merging.merger import MergeOutputExists, MergeRequest
from modules.serving.jobs import JobState
from modules.merging.methods import MERGE_METHODS, MergeOptions
from modules.merging.service import merge_trial_dir
from modules.library.synthetic_checkpoints import write_checkpoint
from modules.ui import merger_tab
from modules.ui.merger_tab import (METHOD_OPTION_FIELDS, MergeForm, MergeFormError, MergerHandlers,
                                   parse_block_weights)
from modules.ui.shared import UiShared

CONTRACT_IDS = {
    "modelmerger_primary_model_name", "modelmerger_secondary_model_name", "modelmerger_tertiary_model_name",
    "modelmerger_interp_method", "modelmerger_interp_amount", "modelmerger_custom_name",
    "modelmerger_checkpoint_format", "modelmerger_save_as_half", "modelmerger_config_method",
    "modelmerger_bake_in_vae", "modelmerger_discard_weights", "modelmerger_save_metadata",
    "modelmerger_block_weights", "modelmerger_merge", "modelmerger_merge_and_load", "modelmerger_result",
}


@pytest.fixture
def context(tmp_path):
    folder = tmp_path / "models" / "Stable-diffusion"
    folder.mkdir(parents=True)
    for seed, name in enumerate(("a", "b", "c")):
        write_checkpoint(folder / f"{name}.safetensors", "sd1", size="tiny", dtype=torch.float32, seed=seed,
                         metadata={"author": name})
    context = AppContext.from_args(parse_args(["--data-dir", str(tmp_path)]))
    context.refresh()
    context.jobs.start()
    yield context
    context.jobs.shutdown()


@pytest.fixture
def handlers(context):
    return MergerHandlers(context, top_bar_dropdown=True, poll_seconds=0.05)


def form(**changes) -> MergeForm:
    defaults = MergeForm(
        primary="a.safetensors", secondary="b.safetensors", tertiary=None, method="Weighted sum", multiplier=0.3,
        multiplier2=0.0, custom_name="", checkpoint_format="safetensors", save_as_half=False, config_source=0,
        bake_in_vae="None", discard_weights="", save_metadata=True, add_merge_recipe=True,
        copy_metadata_fields=True, metadata_json="{}", block_weights="", seed=0, ties_density=0.2,
        dare_drop_rate=0.9)
    return dataclasses.replace(defaults, **changes)


def widget_values(**changes) -> list:
    """The values the tab's widgets pass, in MergeForm's field order."""
    filled = form(**changes)
    return [getattr(filled, f.name) for f in dataclasses.fields(MergeForm)]


def test_build_uses_the_contract_ids(context):
    with gr.Blocks() as demo:
        shared = UiShared(checkpoint_dropdown=gr.Dropdown(context.checkpoints.titles(),
                                                          elem_id="setting_sd_model_checkpoint"),
                          model_status=gr.HTML(elem_id="model_status"))
        with gr.Tab("Checkpoint Merger"):
            merger_tab.build(context, shared)
    ids = {block.elem_id for block in demo.blocks.values() if getattr(block, "elem_id", None)}
    assert CONTRACT_IDS <= ids
    [(load, outputs)] = shared.page_loads  # the shell runs it when a page opens: lists as they are now
    updates = load()
    assert len(updates) == len(outputs) and updates[0]["choices"] == context.checkpoints.choices()
    with gr.Blocks():  # no top bar in a unit test
        merger_tab.build(context, UiShared())


def test_merge_from_widget_values_saves_and_lists_the_result(context, handlers, tmp_path):
    updates = list(handlers.merge(*widget_values()))
    message, job_id, overwrite, primary, secondary, tertiary, top_bar, _status = updates[-1]
    assert overwrite is False  # a choice for one merge
    path = tmp_path / "models" / "Stable-diffusion" / "0.7(a) + 0.3(b).safetensors"
    assert "Checkpoint saved to" in message and path.exists()
    assert job_id is None and all(update[1] is not None for update in updates[:-1])
    title = context.checkpoints.find(path.name).title
    assert title.startswith("0.7(a) + 0.3(b).safetensors [")  # hashed while written
    for update in (primary, secondary, tertiary, top_bar):
        assert (title, title) in update["choices"]  # (label, value): a good file is labelled by its title
    # The selections follow their checkpoints, whose titles gained a hash during the merge.
    assert primary["value"] == context.checkpoints.find("a").title and "[" in primary["value"]
    assert tertiary["value"] is None
    assert "value" not in top_bar  # the top bar's selection is not changed by the merger


def test_merge_options_reach_the_file(context, handlers, tmp_path):
    values = widget_values(method="Add difference", tertiary="c.safetensors", custom_name="mix",
                           save_as_half=True, metadata_json='{"note": "hi"}', block_weights="ALL_B")
    message = list(handlers.merge(*values))[-1][0]
    assert "Checkpoint saved to" in message, message
    from modules.library.safetensors_io import read_header

    header = read_header(tmp_path / "models" / "Stable-diffusion" / "mix.safetensors")
    assert header.metadata["note"] == "hi" and header.metadata["author"] == "c"  # A, then B, then C
    recipe = json.loads(header.metadata["sd_merge_recipe"])
    assert recipe["interp_method"] == "Add difference" and recipe["block_weights"] == list(SD_PRESETS["ALL_B"])
    unet = {spec.dtype for name, spec in header.tensors.items() if name.startswith("model.diffusion_model.")}
    assert unet == {torch.float16}  # Save as float16 (merged keys; A1111 leaves buffers as they are)


def test_merge_and_load_makes_the_result_current_without_listing_it(context, handlers):
    titles_before = context.checkpoints.titles()
    last = list(handlers.merge_and_load(*widget_values(multiplier=0.5)))[-1]
    message, status = last[0], last[-1]
    assert "Loaded" in message and "without saving" in message, message
    assert "(merge trial) 0.5(a) + 0.5(b)" in status  # the top bar's status line names what is loaded now
    info = context.models.current_info()
    assert info is not None and info.filename.parent == merge_trial_dir(context.paths)
    assert len(context.checkpoints.titles()) == len(titles_before)
    assert not any("0.5(a)" in title for title in context.checkpoints.titles())


@pytest.mark.parametrize("changes, expected", [
    ({"method": "Add difference"}, "Interpolation method (Add difference) requires a tertiary model"),
    ({"secondary": None}, "requires a secondary model"),
    ({"primary": None}, "primary model (A)"),
    ({"block_weights": "1,2,x"}, "'x' (item 3) is not a number"),
    ({"block_weights": ",".join(["0.5"] * 25)}, "got 25 numbers"),
    ({"discard_weights": "model(["}, "Discard weights with matching name"),
    ({"metadata_json": "[1]"}, "must be a JSON object"),
])
def test_form_errors_are_messages_and_submit_nothing(context, handlers, changes, expected):
    updates = list(handlers.merge(*widget_values(**changes)))
    assert len(updates) == 1
    message = updates[0][0]
    assert "Failed" in message and "Traceback" not in message
    assert expected.replace("'", "&#x27;") in message or expected in message, message
    assert context.jobs.jobs() == []


def test_an_existing_name_offers_the_overwrite_checkbox(context, handlers, tmp_path, caplog):
    path = tmp_path / "models" / "Stable-diffusion" / "same.safetensors"
    assert "Checkpoint saved to" in list(handlers.merge(*widget_values(custom_name="same")))[-1][0]
    before = path.read_bytes()
    jobs_before = len(context.jobs.jobs())
    with caplog.at_level("INFO"):
        updates = list(handlers.merge(*widget_values(custom_name="same", multiplier=0.9)))
    message = updates[-1][0]
    # The tab's own choice, not the API's or the script's flag; refused before any job, so nothing is
    # logged as a failed job.
    assert "same.safetensors already exists" in message and "&quot;Overwrite&quot;" in message, message
    assert "--overwrite" not in message and "API" not in message and "MergeError" not in message
    assert len(updates) == 1 and len(context.jobs.jobs()) == jobs_before and path.read_bytes() == before
    assert updates[-1][2] == gr.skip()  # the checkbox is left to the user
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL") or r.exc_info]
    # Ticking the checkbox replaces the file with the new merge.
    message, _job, overwrite, *_ = list(handlers.merge(*widget_values(custom_name="same", multiplier=0.9,
                                                                     overwrite=True)))[-1]
    assert "Checkpoint saved to" in message and path.read_bytes() != before
    assert overwrite is False  # unticked again: the next merge does not replace a file unasked
    recipe = json.loads(read_header(path).metadata["sd_merge_recipe"])
    assert recipe["multiplier"] == 0.9


def test_an_output_written_meanwhile_is_the_same_message_from_the_job(tmp_path):
    # Another merge may write the name between the tab's check and this job's plan (here: a Ray
    # worker's error, which crosses a process boundary as a pickle).
    error = pickle.loads(pickle.dumps(MergeOutputExists(tmp_path / "x.safetensors")))
    job = SimpleNamespace(state=JobState.FAILED, result=None, interrupt_requested=False, exception=error,
                          error=f"MergeOutputExists: {error}")
    text, failed = merger_tab.result_text(job, load=False)
    assert failed and "x.safetensors already exists" in text and '"Overwrite"' in text and "--overwrite" not in text


def test_overwriting_the_loaded_checkpoint_loads_the_new_weights(context, handlers):
    list(handlers.merge(*widget_values(custom_name="kept")))
    context.switch_checkpoint(context.checkpoints.find("kept.safetensors").title)
    old_sha = context.models.current_info().sha256
    message = list(handlers.merge(*widget_values(custom_name="kept", multiplier=0.8, overwrite=True)))[-1][0]
    assert "Checkpoint saved to" in message, message
    new = context.checkpoints.find("kept.safetensors")
    assert new.sha256 != old_sha
    # The model in use is the file as it is now, not the cached weights of the file it replaced.
    assert context.models.current_info().sha256 == new.sha256


@pytest.mark.parametrize("changes", [
    {"discard_weights": "model(["},
    {"metadata_json": "[1]"},
    {"metadata_json": "{not json"},
    {"custom_name": "../outside"},
    {"bake_in_vae": "no-such-vae.safetensors"},
    {"method": "Add difference (TIES)", "tertiary": "c.safetensors", "ties_density": 0.0},
])
def test_messages_name_fields_by_their_labels(context, handlers, changes):
    message = list(handlers.merge(*widget_values(**changes)))[-1][0]
    assert "Failed" in message, message
    keys = [name for name in MergeRequest.model_fields if "_" in name] + ["ties_density", "method_options"]
    assert not [key for key in keys if key in message], message
    labels = [label for label in merger_tab.FIELD_LABELS.values() if html.escape(label) in message]
    assert labels, message  # the field is named as the form shows it


def test_the_empty_name_box_shows_and_gives_a1111s_default_name(context, handlers, tmp_path):
    m = 0.35
    # A1111's rule (A1111.md §6): "{round(1-M,2)}({A}) + {round(M,2)}({B})", "{A} + {round(M,2)}({B} - {C})".
    weighted = f"{round(1 - m, 2)}(a) + {round(m, 2)}(b).safetensors"
    update = handlers.default_name("a.safetensors", "b.safetensors", None, "Weighted sum", m, "safetensors")
    assert update["placeholder"] == f"default: {weighted}"
    update = handlers.default_name("a.safetensors", "b.safetensors", "c.safetensors", "Add difference", m, "ckpt")
    assert update["placeholder"] == f"default: a + {round(m, 2)}(b - c).ckpt"
    update = handlers.default_name("a.safetensors", None, None, "Weighted sum", m, "safetensors")
    assert update["placeholder"] == merger_tab.DEFAULT_NAME_HINT  # B is not chosen yet
    message = list(handlers.merge(*widget_values(multiplier=m)))[-1][0]
    assert "Checkpoint saved to" in message and (tmp_path / "models" / "Stable-diffusion" / weighted).is_file()


def test_block_weights_text_presets_and_sliders():
    assert parse_block_weights("") is None
    assert parse_block_weights("grad_v") == SD_PRESETS["GRAD_V"]
    assert parse_block_weights(" ".join(["1"] * 20)) == (1.0,) * 20
    with pytest.raises(MergeFormError, match="finite"):
        parse_block_weights(",".join(["nan"] * 26))
    text, layout, *sliders = MergerHandlers.apply_preset("WRAP08")
    assert parse_block_weights(text) == SD_PRESETS["WRAP08"] and layout["value"] == "sd1"
    assert [s["value"] for s in sliders] == list(SD_PRESETS["WRAP08"])
    slider_values = [i / 100 for i in range(26)]
    sdxl = parse_block_weights(MergerHandlers.weights_from_sliders("sdxl", *slider_values))
    assert len(sdxl) == len(block_names("sdxl")) and sdxl[-1] == slider_values[block_names("sd1").index("OUT08")]
    message, layout, *sliders = MergerHandlers.sliders_from_text(",".join(["0.25"] * 20))
    assert message == "" and layout["value"] == "sdxl"
    assert sum(1 for s in sliders if s.get("value") == 0.25) == 20
    message, *_ = MergerHandlers.sliders_from_text("1,2")
    assert "got 2 numbers" in message


def test_method_options_follow_the_method():
    for method, names in METHOD_OPTION_FIELDS.items():
        assert method in MERGE_METHODS
        assert set(names) <= {f.name for f in dataclasses.fields(MergeOptions)}
    request = form(method="Add difference (DARE)", tertiary="c", seed=7, dare_drop_rate=0.5).to_request()
    assert request.method_options == {"dare_drop_rate": 0.5, "seed": 7}
    assert form(method="Add difference (TIES)", tertiary="c").to_request().method_options == {"ties_density": 0.2}
    assert form().to_request().method_options == {}
    request = form(method="Triple sum", tertiary="c", multiplier2=0.2).to_request()
    assert request.multiplier2 == 0.2
    assert form(multiplier2=0.2).to_request().multiplier2 == 0.0  # Weighted sum has no N
    _help, beta, group, ties, dare, seed = MergerHandlers.on_method_change("Add difference (DARE)")
    assert not beta["visible"] and group["visible"] and not ties["visible"] and dare["visible"] and seed["visible"]


def test_read_metadata_and_layout_detection(context, handlers):
    metadata = json.loads(handlers.read_metadata("a.safetensors", "b.safetensors", None))
    assert metadata["author"] == "b"
    assert merger_tab.block_layout_of(context, "a.safetensors") == "sd1"
    assert merger_tab.block_layout_of(context, "no-such-model") is None


def test_interrupt_without_a_job_touches_nothing(context, handlers):
    handlers.interrupt(None)  # must not interrupt whatever job is current
    assert context.jobs.jobs() == []
