"""The txt2img tab's logic on a tiny real-layout model: a generation through the job queue ends in
gallery images that carry their infotext, paste-back reproduces the request, progress and errors
are shown in words; and the whole UI builds with every element id the browser tests use."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

from modules.serving.generation_service import GenerationSubmission, submit_generation
from modules.serving.settings import Settings
from modules.ui.generation import (
    follow_job,
    follow_job_async,
    follow_until_done,
    outcome_of,
    render_progress,
)
from modules.ui.request_fields import TXT2IMG_FIELDS, build_request
from modules.ui.txt2img import output_folder, paste_source, paste_values, reused_seed, sampler_choices
from tests.ui_support import SMALL_REQUEST, make_context

WAIT = 30.0


@pytest.fixture(scope="module")
def context(tmp_path_factory):
    context = make_context(tmp_path_factory.mktemp("txt2img"))
    yield context
    context.jobs.shutdown()


def test_generation_gives_gallery_images_with_their_infotext(context):
    request = build_request({"prompt": "a red fox", "negative_prompt": "blurry", "n_iter": 1, "batch_size": 2,
                             **SMALL_REQUEST})
    submission = GenerationSubmission(request)
    job = submit_generation(context, submission)
    job.wait(WAIT)
    outcome = outcome_of(Settings({"return_grid": False}), submission, job)
    assert outcome.error is None
    assert len(outcome.images) == 2 and outcome.seeds == [5, 6]
    assert job.result.images == []  # released: the gallery holds them, the job history must not
    for image, infotext in zip(outcome.images, outcome.infotexts):
        assert image.info["parameters"] == infotext  # gradio writes it into the PNG it serves
        assert infotext.startswith("a red fox\nNegative prompt: blurry\nSteps: 2, Sampler: Euler")
    assert "Seed: 6" in outcome.infotexts[1]
    assert any(note.startswith("Time taken:") for note in outcome.notes)
    html = outcome.info_html(1)
    assert "Seed: 6" in html and "Negative prompt: blurry" in html
    # Saved as A1111 does (samples_save is on), with the infotext in the file.
    saved = [path for path in job.result.saved_paths if Path(path).parent == output_folder(context)]
    assert [Image.open(path).info["parameters"] for path in saved] == outcome.infotexts
    assert len(job.result.saved_paths) == 3 and "grid" in job.result.saved_paths[2]  # grid_save is on, as A1111


def test_the_gallery_starts_with_the_grid_as_a1111s_return_grid(context):
    request = build_request({"prompt": "a red fox", "n_iter": 1, "batch_size": 2, **SMALL_REQUEST})
    submission = GenerationSubmission(request)
    job = submit_generation(context, submission)
    job.wait(WAIT)
    outcome = outcome_of(Settings({}), submission, job)
    grid, first, second = outcome.images
    assert grid.size == (first.width * 2, first.height)  # one row: the batch
    assert outcome.infotexts[0] == outcome.infotexts[1] == grid.info["parameters"]
    assert outcome.seeds == [5, 5, 6] and reused_seed(outcome.to_state()) == 5
    # The grid setting n_rows lays it out (2 rows: the images one above the other).
    job = submit_generation(context, submission)
    job.wait(WAIT)
    grid = outcome_of(Settings({"n_rows": 2}), submission, job).images[0]
    assert grid.size == (first.width, first.height * 2)


def test_paste_back_reproduces_the_request(context):
    request = build_request({**SMALL_REQUEST, "prompt": "a (blue:1.1) house", "negative_prompt": "lowres",
                             "cfg_scale": 5.5, "sampler_name": "Euler a", "scheduler": "Karras", "subseed": 77,
                             "subseed_strength": 0.3})
    outcome = follow_until_done(context, GenerationSubmission(request))
    pasted = paste_values(context, outcome.infotexts[0])
    assert not pasted.notes
    again = build_request(pasted.values)
    for name in ("prompt", "negative_prompt", "steps", "sampler_name", "cfg_scale", "width", "height", "seed",
                 "subseed", "subseed_strength"):
        assert getattr(again, name) == getattr(request, name), name
    assert again.scheduler == "Karras" and not again.enable_hr and again.override_settings == {}
    # The paste button reads the last generation when the prompt box is empty.
    state = outcome.to_state()
    assert paste_source("", state) == outcome.infotexts[0] and paste_source("typed", state) == "typed"
    assert reused_seed(state) == outcome.seeds[0] and reused_seed({}) is None


def test_a_failed_job_shows_its_error(context):
    request = build_request({**SMALL_REQUEST, "prompt": "x"}).model_copy(
        update={"override_settings": {"sd_model_checkpoint": "nowhere.safetensors"}})
    outcome = follow_until_done(context, GenerationSubmission(request))
    assert outcome.images == [] and "nowhere.safetensors" in outcome.error
    assert "class='error'" in outcome.info_html()


@pytest.mark.parametrize("follow", ["thread", "event loop"])
def test_progress_and_preview_while_running(queue, follow):
    reported, release, seen_blue = threading.Event(), threading.Event(), threading.Event()

    def work(control):
        control.report(2, 4, lambda: Image.new("RGB", (8, 8), "red"))
        reported.set()
        assert release.wait(WAIT)
        control.report(3, 4, lambda: Image.new("RGB", (8, 8), "blue"))  # the preview asked for by the poll
        assert seen_blue.wait(WAIT)  # the job ends only once the follower has shown it

    blocker_started, blocker_release = threading.Event(), threading.Event()
    queue.submit(lambda control: (blocker_started.set(), blocker_release.wait(WAIT)), kind="test")
    assert blocker_started.wait(WAIT)
    job = queue.submit(work, kind="txt2img")
    assert "Waiting in the queue (next)" in render_progress(job)
    blocker_release.set()
    assert reported.wait(WAIT)
    html = render_progress(job)
    assert "50%" in html and "step 2/4" in html and "ETA" in html

    updates = []

    def seen(update) -> None:
        updates.append(update)
        release.set()  # after the first poll, which asked the worker for a preview
        if update.preview is not None:
            seen_blue.set()

    if follow == "thread":
        for update in follow_job(job, poll_seconds=0.01):
            seen(update)
    else:
        async def follow_on_the_loop():
            async for update in follow_job_async(job, poll_seconds=0.01):
                seen(update)

        # A loop of its own, in a thread: this one may already run one (Playwright's sync API does).
        loop_thread = threading.Thread(target=lambda: asyncio.run(follow_on_the_loop()))
        loop_thread.start()
        loop_thread.join(WAIT)
        assert not loop_thread.is_alive()
    assert updates[0].preview is None and "step 2/4" in updates[0].progress_html
    previews = [update.preview for update in updates if update.preview is not None]
    assert [p.getpixel((0, 0)) for p in previews] == [(0, 0, 255)]  # shown once, though polled again
    assert job.finished and render_progress(job) == ""


def blocking_work(started: threading.Event, release: threading.Event):
    """Work that says it started, then waits for `release` and honours an interrupt."""
    def work(control):
        started.set()
        assert release.wait(WAIT)
        control.check()

    return work


def test_loading_and_interrupted_jobs_say_so(queue):
    started, release = threading.Event(), threading.Event()
    job = queue.submit(blocking_work(started, release), kind="txt2img")
    assert started.wait(WAIT)
    assert "Waiting for the checkpoint to load" in render_progress(job, loading_checkpoint=True)
    queue.interrupt(job.id)
    release.set()
    job.wait(WAIT)
    outcome = outcome_of(Settings({}), GenerationSubmission(build_request({})), job)
    assert outcome.error is None and "Interrupted before an image was finished." in outcome.notes


def test_interrupt_reaches_only_this_pages_job_or_a_running_txt2img_job(queue):
    from modules.ui.txt2img import stop_job

    page = SimpleNamespace(jobs=queue)
    started, release = threading.Event(), threading.Event()
    blocking = blocking_work(started, release)
    merge = queue.submit(blocking, kind="merge")
    assert started.wait(WAIT)
    assert not stop_job(page, None) and not stop_job(page, None, skip=True)  # a page without a job: not a merge
    mine = queue.submit(lambda control: "done", kind="txt2img")
    release.set()
    merge.wait(WAIT), mine.wait(WAIT)
    assert merge.state == "done"
    started.clear(), release.clear()
    someone_elses = queue.submit(blocking, kind="txt2img")
    assert started.wait(WAIT)
    assert not stop_job(page, mine.id)  # this page's job has finished: the next one is left alone
    assert stop_job(page, None)  # a reloaded page: the running txt2img job, as A1111's button
    release.set()
    assert someone_elses.wait(WAIT).state == "interrupted"


def test_no_checkpoint_is_a_clear_error(tmp_path):
    context = make_context(tmp_path, checkpoints=(), load=False)
    try:
        outcome = follow_until_done(context, GenerationSubmission(build_request({"prompt": "x"})))
    finally:
        context.jobs.shutdown()
    assert "No checkpoints are listed. Put .safetensors or .ckpt files in" in outcome.error
    assert str(tmp_path / "models" / "Stable-diffusion") in outcome.error


def test_a_generation_loads_the_checkpoint_when_none_is(tmp_path):
    context = make_context(tmp_path, load=False)  # as with --skip-load-model-at-start
    try:
        outcome = follow_until_done(context, GenerationSubmission(build_request({"prompt": "x", **SMALL_REQUEST})))
        assert outcome.error is None and len(outcome.images) == 1
        assert context.models.current_info().name == "tiny.safetensors"
    finally:
        context.jobs.shutdown()


def test_overlong_prompts_are_refused_before_the_queue(context):
    """The tab's path refuses what the API refuses (setting `prompt_max_length`), and its token
    counter does not tokenize such a prompt."""
    from modules.generation.engine import PromptTooLongError
    from modules.ui.token_counter import TokenCounter
    from modules.ui.txt2img import count_tokens

    limit = context.settings.current()["prompt_max_length"]
    queued = len(context.jobs.jobs())
    for fields in ({"prompt": "a" * (limit + 1)}, {"prompt": "x", "negative_prompt": "b" * (limit + 1)}):
        with pytest.raises(PromptTooLongError, match="setting prompt_max_length"):
            submit_generation(context, GenerationSubmission(build_request({**SMALL_REQUEST, **fields})))
    assert len(context.jobs.jobs()) == queued

    class NoTokenizer:
        def __call__(self, *args, **kwargs):
            raise AssertionError("an over-long prompt was tokenized")

    counter = TokenCounter(tokenizer_factory=NoTokenizer)
    html = count_tokens(context, counter, "a" * (limit + 1), 20, is_positive=True)
    assert f"{limit + 1:,}/{limit:,} characters" in html and "over" in html


def test_sampler_list_leaves_out_unimplemented_samplers():
    names = sampler_choices()
    assert names[0] == "DPM++ 2M" and "Euler a" in names and "DPM fast" not in names


# --- the Blocks -----------------------------------------------------------------------------------

# Every element id of modules/ui/shared.py that the top bar, txt2img and PNG Info own.
CONTRACT_IDS = (
    "setting_sd_model_checkpoint", "refresh_sd_model_checkpoint", "setting_sd_vae", "refresh_sd_vae",
    "setting_CLIP_stop_at_last_layers", "model_status", "txt2img_prompt", "txt2img_neg_prompt",
    "txt2img_token_counter", "txt2img_negative_token_counter", "txt2img_generate", "txt2img_interrupt",
    "txt2img_skip", "txt2img_sampling", "txt2img_scheduler", "txt2img_steps", "txt2img_width", "txt2img_height",
    "txt2img_batch_count", "txt2img_batch_size", "txt2img_cfg_scale", "txt2img_seed", "txt2img_random_seed",
    "txt2img_reuse_seed", "txt2img_subseed", "txt2img_subseed_strength", "txt2img_hr", "txt2img_gallery",
    "html_info_txt2img", "txt2img_progress", "paste", "open_folder_txt2img", "txt2img_extra_networks",
    "pnginfo_image", "pnginfo_generation_info", "pnginfo_send_to_txt2img",
)


def test_ui_builds_with_the_contract_ids_and_tab_order(context):
    from modules.ui.app import build_ui

    blocks = build_ui(context)
    config = blocks.get_config_file()
    ids = {c.get("props", {}).get("elem_id") for c in config["components"]}
    assert not [name for name in CONTRACT_IDS if name not in ids]
    tabs = [c["props"]["label"] for c in config["components"]
            if c.get("type") == "tabitem" and str(c["props"].get("elem_id")).startswith("tab_")]
    assert tabs == ["txt2img", "img2img", "Extras", "PNG Info", "Checkpoint Merger", "Models", "Settings", "Extensions"]
    gallery = next(c for c in config["components"] if c.get("props", {}).get("elem_id") == "txt2img_gallery")
    assert gallery["props"]["format"] == "png"


def test_mounted_ui_serves_its_page(context):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from modules.ui.app import mount_ui

    app = FastAPI()
    mount_ui(app, context)
    with TestClient(app) as client:
        page = client.get("/")
        assert page.status_code == 200 and "Atelier" in page.text and "txt2img_generate" in page.text
        config = client.get("/config").json()
        assert any(c.get("props", {}).get("elem_id") == "txt2img_generate" for c in config["components"])


def test_fields_cover_every_widget():
    assert len(TXT2IMG_FIELDS) == len(set(TXT2IMG_FIELDS))


def test_an_interrupted_batch_counts_its_images_not_the_grid(queue):
    from modules.generation.engine import GenerationResult

    started, release = threading.Event(), threading.Event()

    def work(control):
        started.set()
        assert release.wait(WAIT)
        images = [Image.new("RGB", (8, 8)) for _ in range(2)]
        return GenerationResult(images=images, seeds=[1, 2], subseeds=[1, 2], infotexts=["a", "b"], interrupted=True)

    job = queue.submit(work, kind="txt2img")
    assert started.wait(WAIT)
    queue.interrupt(job.id)
    release.set()
    outcome = outcome_of(Settings({}), GenerationSubmission(build_request({"batch_size": 2})), job.wait(WAIT))
    assert len(outcome.images) == 3 and "Interrupted; 2 images finished." in outcome.notes
