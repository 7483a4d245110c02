"""After "Merge and load" the top bar says what is loaded: the checkpoint dropdown holds the trial merge
as a choice labelled as such and shows it, in the merger's own answer (the same page) and in what a
newly opened page gets; the status line names it with its hash once. The same with Ray workers,
where the server keeps the trial every worker's next job uses (WorkerPool.trial_info)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import gradio as gr
import pytest
import torch

from modules.cluster.pool import WorkerPool
from modules.cluster.specs import LOAD, MERGE, WorkOutcome
from modules.common.job_control import NullControl
from modules.library.synthetic_checkpoints import write_checkpoint
from modules.merging.merger import MergeRequest
from modules.merging.service import merge_trial_dir, merge_work, submit_merge
from modules.serving.app_context import AppContext
from modules.serving.cmd_args import parse_args
from modules.ui import top_bar
from modules.ui.merger_tab import MergeForm, MergerHandlers
from modules.ui.shared import UiShared

WAIT = 120.0


def write_models(data_dir) -> None:
    folder = data_dir / "models" / "Stable-diffusion"
    folder.mkdir(parents=True, exist_ok=True)
    for seed, name in enumerate(("a", "b")):
        write_checkpoint(folder / f"{name}.safetensors", "sd1", size="tiny", dtype=torch.float32, seed=seed)


def new_context(data_dir) -> AppContext:
    context = AppContext.from_args(parse_args(["--data-dir", str(data_dir), "--no-demo-checkpoint"]))
    context.refresh()
    return context


def widget_values(**changes) -> list:
    form = MergeForm(primary="a.safetensors", secondary="b.safetensors", tertiary=None, method="Weighted sum",
                     multiplier=0.4, multiplier2=0.0, custom_name="", checkpoint_format="safetensors",
                     save_as_half=False, config_source=0, bake_in_vae="None", discard_weights="",
                     save_metadata=True, add_merge_recipe=True, copy_metadata_fields=True, metadata_json="{}",
                     block_weights="", seed=0, ties_density=0.2, dare_drop_rate=0.9)
    form = dataclasses.replace(form, **changes)
    return [getattr(form, f.name) for f in dataclasses.fields(MergeForm)]


def fresh_page_checkpoint(context) -> dict:
    """What a newly opened page's checkpoint dropdown gets: the top bar's page-load update."""
    with gr.Blocks():
        shared = UiShared()
        top_bar.build(context, shared)
    [(on_load, outputs)] = shared.page_loads
    updates = on_load()
    return updates[outputs.index(shared.checkpoint_dropdown)]


def values(update: dict) -> list[str]:
    return [value for _label, value in update["choices"]]


def assert_shows_the_trial(context, dropdown: dict, status: str) -> str:
    """The dropdown shows the loaded trial, among its choices, labelled as a trial that is not saved;
    the status line names it with its hash once. Returns the trial's title."""
    info = context.current_checkpoint_info()
    assert info is not None and info.filename.parent == merge_trial_dir(context.paths)
    assert dropdown["value"] == info.title  # not the checkpoint loaded before the merge, not blank
    assert info.title in values(dropdown)  # no "value not among the choices" on the page
    label = dict((value, label) for label, value in dropdown["choices"])[info.title]
    assert "merge trial" in label and top_bar.TRIAL_NOTE in label and label != info.title
    assert info.title not in context.checkpoints.titles()  # listed in the dropdown only: it is not saved
    assert info.title in status and status.count(info.sha256[:10]) == 1, status
    return info.title


# --- embedded (no Ray) ------------------------------------------------------------------------------


@pytest.fixture
def context(tmp_path) -> Iterator[AppContext]:
    write_models(tmp_path)
    context = new_context(tmp_path)
    context.jobs.start()
    context.load_startup_model()
    assert context.models.current_info().name == "a.safetensors"
    yield context
    context.jobs.shutdown()


def test_the_dropdown_shows_the_trial_after_merge_and_load(context):
    handlers = MergerHandlers(context, top_bar_dropdown=True, poll_seconds=0.05)
    message, _job, _overwrite, _a, _b, _c, dropdown, status = list(handlers.merge_and_load(*widget_values()))[-1]
    assert "Loaded" in message, message
    # The same page: the merger's answer moves the top bar to the trial.
    title = assert_shows_the_trial(context, dropdown, status)
    # A page opened now: the same value and choices.
    fresh = fresh_page_checkpoint(context)
    assert fresh["value"] == title and values(fresh) == values(dropdown)
    assert top_bar.model_status(context)[0] == status

    # Choosing a saved checkpoint replaces the trial, which leaves the list.
    a_title = context.checkpoints.find("a.safetensors").title
    *_, done = top_bar.switch_checkpoint(context, a_title, poll_seconds=0.01)
    assert done.title == a_title and context.current_checkpoint_info().title == a_title
    assert fresh_page_checkpoint(context)["value"] == a_title
    assert title not in values(fresh_page_checkpoint(context))
    assert values(fresh_page_checkpoint(context)) == [title for _label, title in context.checkpoints.choices()]


def test_a_plain_merge_leaves_the_top_bars_selection_alone(context):
    handlers = MergerHandlers(context, top_bar_dropdown=True, poll_seconds=0.05)
    *_, dropdown, status = list(handlers.merge(*widget_values(custom_name="saved")))[-1]
    assert "value" not in dropdown
    assert context.checkpoints.find("saved.safetensors").title in values(dropdown)
    assert context.current_checkpoint_info().name == "a.safetensors" and "a.safetensors" in status


def test_a_failed_merge_and_load_keeps_the_dropdown(context):
    handlers = MergerHandlers(context, top_bar_dropdown=True, poll_seconds=0.05)
    before = context.current_checkpoint_info().title
    *_, dropdown, _status = list(handlers.merge_and_load(*widget_values(discard_weights="model([")))[-1]
    assert dropdown.get("value", before) == before and context.current_checkpoint_info().title == before


# --- Ray workers: the server holds the trial the workers use ---------------------------------------


class LocalWorker:
    """Stands in for WorkerPool._run_spec: the spec's merge or load run by an embedded context on the
    same data folder, as a Ray worker runs it (the pool's own bookkeeping is the code under test)."""

    def __init__(self, data_dir):
        self.context = new_context(data_dir)

    def __call__(self, spec, control, progress, index) -> WorkOutcome:
        if spec.kind == MERGE:
            work = merge_work(self.context, spec.merge, load_without_saving=spec.load_without_saving)
            return WorkOutcome(result=work(NullControl()))
        assert spec.kind == LOAD
        self.context.switch_checkpoint(spec.checkpoint)
        info = self.context.models.current_info()
        return WorkOutcome(current_checkpoint=(info.title, info.sha256))


@pytest.fixture
def ray_context(tmp_path) -> Iterator[AppContext]:
    write_models(tmp_path)
    context = new_context(tmp_path)
    pool = WorkerPool(None, context)  # never started: no Ray, no slots
    pool._run_spec = LocalWorker(tmp_path)
    context.cluster = pool
    context.jobs.start()
    context.switch_checkpoint(context.checkpoints.find("a").title)
    yield context
    context.jobs.shutdown()


def test_with_ray_workers_the_dropdown_shows_the_trial_too(ray_context):
    context = ray_context
    assert context.models.current() is None  # the server loads nothing: the workers do
    handlers = MergerHandlers(context, top_bar_dropdown=True, poll_seconds=0.05)
    message, _job, _overwrite, _a, _b, _c, dropdown, status = list(handlers.merge_and_load(*widget_values()))[-1]
    assert "Loaded" in message, message
    assert context.cluster.trial_info() is not None
    title = assert_shows_the_trial(context, dropdown, status)
    fresh = fresh_page_checkpoint(context)
    assert fresh["value"] == title and title in values(fresh)

    a_title = context.checkpoints.find("a").title
    *_, done = top_bar.switch_checkpoint(context, a_title, poll_seconds=0.01)
    assert done.title == a_title and context.cluster.trial_info() is None
    assert title not in values(fresh_page_checkpoint(context))


def test_with_ray_workers_a_trial_from_the_api_is_shown_as_well(ray_context):
    # The API's merge-and-load (submit_merge) and the tab share the trial: a page opened afterwards
    # shows it whichever started it.
    request = MergeRequest(primary_model_name="a", secondary_model_name="b", multiplier=0.25)
    job = submit_merge(ray_context, request, load_without_saving=True)
    job.wait(WAIT)
    assert job.error is None, job.error
    fresh = fresh_page_checkpoint(ray_context)
    assert_shows_the_trial(ray_context, fresh, top_bar.model_status(ray_context)[0])
