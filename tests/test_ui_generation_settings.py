"""The generation tabs honour A1111's live-preview settings (`live_preview_refresh_period`,
`show_progressbar`) and carry the hires sampler (`hires_fix_show_sampler`)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from types import SimpleNamespace

import pytest

from modules.generation.requests import HIRES_SAME_SAMPLER
from modules.ui.generation import MAX_POLL_SECONDS, MIN_POLL_SECONDS, follow_job_async, follow_options, render_progress
from modules.ui.request_fields import TXT2IMG_FIELDS, build_request
from tests.ui_support import SMALL_REQUEST


def _run_coroutine(coroutine):
    """Run on a fresh event loop in its own thread: the browser tests' Playwright keeps a loop running
    in this one when the whole suite runs."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result(timeout=60)


@pytest.mark.parametrize(("period", "seconds"), [(1000, 1.0), (250, 0.25), (0, MIN_POLL_SECONDS), (-5, MIN_POLL_SECONDS),
                                                 (1e308, MAX_POLL_SECONDS), (float("nan"), 1.0), ("junk", 1.0)])
def test_refresh_period_sets_how_often_the_page_polls(period, seconds):
    assert follow_options({"live_preview_refresh_period": period})["poll_seconds"] == pytest.approx(seconds)


def test_hidden_progress_bar_still_carries_the_progress():
    job = SimpleNamespace(state=None, finished=False, total_steps=10, step=4, progress=0.4, eta_seconds=None,
                          queue_position=None)
    shown, hidden = render_progress(job), render_progress(job, show_bar=False)
    assert "progress-hidden" not in shown and "class='progress-bar progress-hidden'" in hidden
    assert "data-short='40%'" in shown and "data-short='40%'" in hidden


def test_follow_job_async_sends_the_bar_hidden_when_asked(queue):
    release = threading.Event()
    job = queue.submit(lambda control: (control.report(1, 2, None), release.wait(10)), kind="test")

    async def follow():
        seen = []
        async for update in follow_job_async(job, poll_seconds=0.05, show_bar=False):
            seen.append(update.progress_html)
            if len(seen) == 3:
                release.set()
            assert len(seen) < 400, "the job should have ended"
        return seen

    try:
        seen = _run_coroutine(follow())
    finally:
        release.set()
    assert len(seen) >= 3 and all("progress-hidden" in html for html in seen if html)
    assert any(html for html in seen)


def test_a_long_refresh_period_does_not_hold_back_the_result(queue):
    release = threading.Event()
    job = queue.submit(lambda control: (control.report(1, 2, None), release.wait(10)), kind="test")

    async def follow():
        updates = 0
        async for _ in follow_job_async(job, poll_seconds=3600):
            updates += 1
            release.set()  # the job ends right after the first update; the next poll is an hour away
        return updates

    # asyncio.wait_for fails the test if the follower sleeps through the job's end.
    assert _run_coroutine(asyncio.wait_for(follow(), timeout=30)) == 1
    assert job.finished


def test_hires_sampler_field_reaches_the_request():
    values = {name: None for name in TXT2IMG_FIELDS} | {"prompt": "x", "negative_prompt": "", "styles": [],
                                                         "override_settings": [], "enable_hr": True,
                                                         "hr_upscaler": "Latent", **SMALL_REQUEST}
    assert build_request(values | {"hr_sampler_name": HIRES_SAME_SAMPLER}).hr_sampler_name is None
    assert build_request(values | {"hr_sampler_name": "DPM++ 2M"}).hr_sampler_name == "DPM++ 2M"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    from modules.ui.app import build_ui
    from tests.ui_support import make_context

    context = make_context(tmp_path_factory.mktemp("hires-sampler-ui"), load=False)
    try:
        blocks = build_ui(context)
        yield context, blocks
    finally:
        context.jobs.shutdown()


def test_hires_sampler_dropdown_shows_with_its_setting(built):
    context, blocks = built
    dropdown = next(block for block in blocks.blocks.values() if getattr(block, "elem_id", None) == "hr_sampler")
    assert dropdown.visible is False  # A1111's default: hires_fix_show_sampler off
    assert dropdown.value == HIRES_SAME_SAMPLER
    choices = [choice[1] if isinstance(choice, tuple) else choice for choice in dropdown.choices]
    assert choices[0] == HIRES_SAME_SAMPLER and "Euler" in choices
    # The page load that applies the setting, called as the page does, with the setting off and on.
    (load,) = [fn for fn in blocks.fns.values()
               if any(event == "load" for _, event in fn.targets) and dropdown in fn.outputs]
    assert load.fn()["visible"] is False
    context.settings.apply({"hires_fix_show_sampler": True})
    assert load.fn()["visible"] is True


def test_live_preview_defaults_are_a1111s(built):
    context, _ = built
    assert follow_options(context.settings.current()) == {"poll_seconds": 1.0, "show_bar": True}
