"""The page of a server shared with --multi-user: Generate queues one job per click as the caller's,
a later click's handler waits quietly for the page's earlier one, the bar says where a waiting job
stands, "My queue" lists (and cancels) only the caller's jobs (an operator's: everyone's), Interrupt
and Skip reach only the caller's jobs, the top bar stores each user's own checkpoint/VAE/clip skip,
and the operator-only tabs refuse other users, naming --admin-users. Without the flag nothing here
applies (the single-user tests in test_ui_txt2img / test_ui_top_bar keep the old behaviour).

Handlers are run as Gradio runs them, with a stand-in `gr.Request` whose ASGI scope carries the user
the auth middleware would put there (modules.serving.accounts.USER_STATE_KEY). Expected queue places
are derived from the round-robin rule: with one user's job running, another user's waiting jobs are
next in submission order.
"""

from __future__ import annotations

import asyncio
import re
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from modules.serving.accounts import USER_STATE_KEY
from modules.serving.generation_service import GenerationSubmission, submit_generation
from modules.serving.jobs import JobQueue, JobState
from modules.ui.request_fields import build_request
from tests.test_api_support import WAIT, make_context

MULTI = ["--multi-user", "--gradio-auth", "alice:pa,bob:pb,carol:pc", "--admin-users", "carol"]


def page_request(user: str, page: str = "page-1"):
    """What Gradio hands a handler: a gr.Request-like object with the session hash and the scope."""
    return SimpleNamespace(session_hash=page, request=SimpleNamespace(scope={"state": {USER_STATE_KEY: user}}))


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    context = make_context(tmp_path_factory.mktemp("ui-multi"), names=("a", "b"), args=MULTI)
    yield context
    context.jobs.shutdown(timeout=WAIT)


@pytest.fixture(scope="module")
def blocks(shared):
    from modules.ui.app import build_ui

    return build_ui(shared)


def _hold_queue(context, owner: str = "bob"):
    """A running job of `owner` that holds the one slot until the returned event is set."""
    started, release = threading.Event(), threading.Event()

    def work(control):
        started.set()
        assert release.wait(WAIT)

    job = context.jobs.submit(work, kind="txt2img", description="holder", owner=owner)
    assert started.wait(WAIT)
    return job, release


def _request():
    return build_request({"prompt": "a fox", "width": 64, "height": 64, "steps": 1, "sampler_name": "Euler",
                          "seed": 5})


# --- the bar and the note ---------------------------------------------------------------------------


@pytest.mark.parametrize("number, text", [(1, "1st"), (2, "2nd"), (3, "3rd"), (4, "4th"), (11, "11th"),
                                          (12, "12th"), (13, "13th"), (21, "21st"), (22, "22nd"), (101, "101st")])
def test_ordinals(number, text):
    from modules.ui.generation import ordinal

    assert ordinal(number) == text


def test_a_waiting_job_says_its_place_and_once_measured_its_wait():
    from modules.ui.generation import render_progress
    from modules.ui.my_queue import queue_note_html

    queue = JobQueue("test")
    queue.start()
    try:
        gate = threading.Event()

        def stepping(control):
            for step in range(4):
                control.report(step + 1, 4)
            assert gate.wait(WAIT)

        running = queue.submit(stepping, kind="txt2img", owner="bob")
        _until(lambda: running.state is JobState.RUNNING)
        first = queue.submit(lambda control: None, kind="txt2img", owner="alice")
        second = queue.submit(lambda control: None, kind="txt2img", owner="alice")
        assert "Waiting in the queue: next" in render_progress(first)
        assert "Waiting in the queue: 2nd" in render_progress(second)  # one job waits before it
        assert "Queued: 2nd in the queue" in queue_note_html(second)
        assert f"data-atelier-notice='{second.id}'" in queue_note_html(second)
        gate.set()
        for job in (running, first, second):
            job.wait(WAIT)
        # Now the queue has measured jobs: a new waiting job's place comes with an estimate.
        gate.clear()
        running = queue.submit(stepping, kind="txt2img", owner="bob")
        _until(lambda: running.state is JobState.RUNNING)
        waiting = queue.submit(lambda control: None, kind="txt2img", owner="alice")
        assert waiting.wait_estimate is not None
        assert re.search(r"Waiting in the queue: next, ~\d+( s| min)", render_progress(waiting))
        gate.set()
        waiting.wait(WAIT)
    finally:
        gate.set()
        queue.shutdown(timeout=WAIT)


def test_page_jobs_follow_one_page_and_tab_in_click_order():
    from modules.ui.my_queue import PageJobs

    pages = PageJobs()
    one, two, other = (SimpleNamespace(id=name) for name in ("one", "two", "other"))
    pages.add("p", "txt2img", one)
    pages.add("p", "txt2img", two)
    pages.add("q", "txt2img", other)
    assert pages.earlier("p", "txt2img", one) == [] and pages.earlier("p", "txt2img", two) == [one]
    assert pages.earlier("q", "txt2img", other) == []  # another page is not waited for
    pages.remove("p", "txt2img", one)
    assert pages.earlier("p", "txt2img", two) == []


# --- Interrupt, Skip and the queue panel ------------------------------------------------------------


def test_interrupt_and_skip_reach_only_the_callers_own_jobs(shared):
    from modules.ui.generation_form import stop_job

    alice, bob, carol = (shared.accounts.user(name) for name in ("alice", "bob", "carol"))
    holder, release = _hold_queue(shared, owner="alice")
    try:
        assert not stop_job(shared, holder.id, user=bob)  # by id
        assert not stop_job(shared, holder.id, skip=True, user=bob)
        assert not stop_job(shared, None, user=bob)  # a page without a job: only a running job of bob's
        assert not holder.interrupt_requested and not holder.skip_requested
        assert stop_job(shared, holder.id, skip=True, user=alice) and holder.skip_requested
        assert stop_job(shared, None, user=carol)  # an operator reaches any user's job
        assert holder.interrupt_requested
    finally:
        release.set()
        holder.wait(WAIT)


def test_my_queue_lists_and_cancels_only_the_callers_jobs(shared):
    from modules.ui.my_queue import cancel_job, render_panel

    alice, bob, carol = (shared.accounts.user(name) for name in ("alice", "bob", "carol"))
    holder, release = _hold_queue(shared, owner="bob")
    try:
        waiting = [submit_generation(shared, GenerationSubmission(_request(), owner="alice")) for _ in range(2)]
        rows = lambda html: re.findall(r"data-job-id='([^']+)' data-state='([^']+)'", html)  # noqa: E731
        assert rows(render_panel(shared, alice)) == [(job.id, "queued") for job in waiting]
        assert rows(render_panel(shared, bob)) == [(holder.id, "running")]
        everyone = render_panel(shared, carol)
        assert rows(everyone) == [(holder.id, "running"), *((job.id, "queued") for job in waiting)]
        assert "<td class='owner'>alice</td>" in everyone and "<td class='owner'>bob</td>" in everyone
        assert "waiting: next" in render_panel(shared, alice)

        assert not cancel_job(shared, bob, waiting[0].id)  # another user's job: untouched
        assert waiting[0].state is JobState.QUEUED
        assert not cancel_job(shared, alice, holder.id) and not holder.interrupt_requested
        assert cancel_job(shared, alice, waiting[0].id)  # her own waiting job leaves the queue
        assert waiting[0].finished and waiting[0].id not in render_panel(shared, alice)
        assert cancel_job(shared, carol, waiting[1].id)  # an operator cancels anyone's
        assert cancel_job(shared, bob, holder.id) and holder.interrupt_requested  # running: interrupted
    finally:
        release.set()
        holder.wait(WAIT)


# --- Generate on the built page ---------------------------------------------------------------------


def _generate_fn(blocks, tab: str = "txt2img"):
    [button] = [b for b in blocks.blocks.values() if getattr(b, "elem_id", None) == f"{tab}_generate"]
    [fn] = [fn for fn in blocks.fns.values() if fn.targets and fn.targets[0] == (button._id, "click")
            and len(fn.inputs) > 5]
    return fn


SMALL = {"txt2img_width": 64, "txt2img_height": 64, "txt2img_steps": 1}


def _default_values(fn) -> list:
    """The page's values as it opens, with a tiny size and one step (what Gradio passes after preprocessing)."""
    values = []
    for component in fn.inputs:
        value = SMALL.get(getattr(component, "elem_id", None), component.value)
        values.append(value() if callable(value) else value)
    return values


def _until(condition) -> None:
    waiter = threading.Event()
    for _ in range(int(WAIT / 0.01)):
        if condition():
            return
        waiter.wait(0.01)
    raise AssertionError("condition not reached")


async def _drain(generator) -> list:
    return [item async for item in generator]


async def _next(generator):
    return await generator.__anext__()


async def _closed(generator) -> None:
    await generator.aclose()


class _ThreadLoop:
    """An event loop on a thread of its own, as the server runs handlers: the test's thread may
    already have a running loop (another test's), where `run_until_complete` refuses to run."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="test-handler-loop", daemon=True)
        self._thread.start()

    def run_until_complete(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(WAIT * 6)

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(WAIT)
        self._loop.close()


def _pulled(generator, loop):
    return loop.run_until_complete(_next(generator))


def test_generate_queues_each_click_and_a_later_click_waits_quietly(shared, blocks):
    from modules.ui.my_queue import cancel_job

    fn = _generate_fn(blocks)
    assert fn.trigger_mode == "multiple"  # a click while the tab's job runs is not dropped
    values = _default_values(fn)
    loop = _ThreadLoop()
    holder, release = _hold_queue(shared, owner="bob")
    try:
        first = fn.fn(page_request("alice"), *values)
        gallery, info, progress, _state, first_id, log = _pulled(first, loop)
        assert "Waiting in the queue: next" in progress and first_id
        second = fn.fn(page_request("alice"), *values)
        update = _pulled(second, loop)
        # Quiet: only the message line, saying where the second job stands; the first one keeps the bar.
        assert all(_is_skip(value) for value in update[:5])
        assert "Queued: 2nd in the queue" in update[5]
        second_job = next(job for job in shared.jobs.waiting_jobs() if job.id != first_id and job.owner == "alice")
        assert second_job.owner == "alice" and shared.jobs.get(first_id).owner == "alice"
        release.set()
        first_updates = loop.run_until_complete(_drain(first))
        images = first_updates[-1][0]
        assert images and all(_user_file(item, "alice") for item in images)  # the gallery's files are hers
        second_updates = loop.run_until_complete(_drain(second))
        assert second_updates[0][4] == second_job.id  # it follows its own job once the first is shown
        assert all(_user_file(item, "alice") for item in second_updates[-1][0])

        # A job cancelled from "My queue" before it starts leaves the shown results alone, whether
        # its handler already follows it or still waits behind the page's earlier job.
        holder, release = _hold_queue(shared, owner="bob")
        third, fourth = (fn.fn(page_request("alice"), *values) for _ in range(2))
        _pulled(third, loop)
        _pulled(fourth, loop)
        third_job, fourth_job = [job for job in shared.jobs.waiting_jobs() if job.owner == "alice"]
        alice = shared.accounts.user("alice")
        assert cancel_job(shared, alice, fourth_job.id) and cancel_job(shared, alice, third_job.id)
        for generator in (third, fourth):
            last = loop.run_until_complete(_drain(generator))[-1]
            assert all(_is_skip(last[i]) for i in (0, 1, 3, 4)) and last[2] == "" and "cancelled" in last[5]
    finally:
        release.set()
        holder.wait(WAIT)
        loop.close()


def _is_skip(value) -> bool:
    return value == {"__type__": "update"}  # gr.skip(): the component keeps what it shows


def _user_file(item, user: str) -> bool:
    from modules.ui.user_files import USERS_FOLDER

    path = item[0] if isinstance(item, (tuple, list)) else item
    return isinstance(path, str) and Path(path).parent.parent.name == user and USERS_FOLDER in Path(path).parts


def test_a_full_queue_is_shown_as_an_error(shared, blocks):
    fn = _generate_fn(blocks)
    values = _default_values(fn)
    limit = shared.settings.current()["multi_user_queue_limit"]
    loop = _ThreadLoop()
    holder, release = _hold_queue(shared, owner="bob")
    generators = []
    try:
        for page in range(limit):
            generator = fn.fn(page_request("alice", f"page-{page}"), *values)
            _pulled(generator, loop)
            generators.append(generator)
        refused = fn.fn(page_request("alice", "page-full"), *values)
        update = _pulled(refused, loop)
        assert f"{limit}" in update[5] and "class='error'" in update[5]
    finally:
        for job in shared.jobs.waiting_jobs():
            shared.jobs.interrupt(job.id)
        release.set()
        holder.wait(WAIT)
        for generator in generators:
            loop.run_until_complete(_closed(generator))
        loop.close()


# --- the top bar --------------------------------------------------------------------------------------


def test_the_top_bar_keeps_each_users_own_checkpoint_and_loads_nothing(shared):
    from modules.ui.top_bar import change_own_choice, shown_choices, switch_outputs

    alice, bob = shared.accounts.user("alice"), shared.accounts.user("bob")
    loaded = shared.models.current_info().title
    other = next(info.title for info in shared.checkpoints.list() if info.title != loaded)
    jobs_before = len(shared.jobs.jobs())
    [(status, dropdown)] = list(switch_outputs(shared, other, alice))
    assert "next job" in status and dropdown["value"] == other
    assert len(shared.jobs.jobs()) == jobs_before  # no switch job was queued
    assert shared.models.current_info().title == loaded  # and nothing loaded under anyone
    assert shown_choices(shared, alice)["sd_model_checkpoint"] == other
    assert shown_choices(shared, bob)["sd_model_checkpoint"] == loaded  # bob chose nothing
    assert shared.settings.current()["sd_model_checkpoint"] != other or loaded == other

    [(status, dropdown)] = list(switch_outputs(shared, "no such model", bob))
    assert "class='error'" in status and dropdown["value"] == loaded

    global_clip = shared.settings.current()["CLIP_stop_at_last_layers"]
    status, shown = change_own_choice(shared, bob, "CLIP_stop_at_last_layers", float(global_clip % 12 + 1))
    assert shown == global_clip % 12 + 1 and "next job" in status  # the slider sends floats
    assert shared.settings.current()["CLIP_stop_at_last_layers"] == global_clip
    assert shown_choices(shared, alice)["CLIP_stop_at_last_layers"] == global_clip
    status, shown = change_own_choice(shared, bob, "sd_vae", "no-such-vae.safetensors")
    assert "class='error'" in status and shown == shared.settings.current()["sd_vae"]


def test_top_bar_page_load_shows_the_callers_choice(shared, blocks):
    from modules.ui.top_bar import shown_choices

    [load] = [fn for fn in blocks.fns.values() if fn.fn is not None and fn.fn.__name__ == "on_page_load"
              and fn.fn.__module__ == "modules.ui.top_bar"]
    for user in ("alice", "bob"):
        checkpoint_update = load.fn(page_request(user))[0]
        assert checkpoint_update["value"] == shown_choices(shared, shared.accounts.user(user))["sd_model_checkpoint"]


# --- operator-only tabs --------------------------------------------------------------------------------


def test_settings_apply_is_refused_to_users_and_allowed_to_operators(shared):
    from modules.ui.settings_tab import SettingsHandlers

    spec = shared.settings.specs_by_key()["samples_format"]
    handlers = SettingsHandlers(shared, [spec])
    before = shared.settings.current()["samples_format"]
    wanted = "jpg" if before != "jpg" else "png"
    report, _ = handlers.apply(None, wanted, user=shared.accounts.user("alice"))
    assert "--admin-users" in report and shared.settings.current()["samples_format"] == before
    report, _ = handlers.apply(None, wanted, user=shared.accounts.user("carol"))
    assert shared.settings.current()["samples_format"] == wanted
    handlers.apply(None, before, user=shared.accounts.user("carol"))


def test_merger_models_and_extensions_refuse_users_naming_the_flag(shared):
    from modules.ui import extensions_tab
    from modules.ui.merger_tab import MergerHandlers
    from modules.ui.models_tab import ModelsTabHandlers

    alice = shared.accounts.user("alice")
    jobs_before = len(shared.jobs.jobs())
    [merged] = list(MergerHandlers(shared).merge(*([None] * 40), user=alice))
    assert "--admin-users" in merged[0] and len(shared.jobs.jobs()) == jobs_before
    models = ModelsTabHandlers(shared)
    assert "--admin-users" in models.download(None, "https://example.invalid/x.safetensors", None, None, None,
                                              user=alice)[0]
    assert "--admin-users" in models.fetch_cards("Stable-diffusion", None, user=alice)
    assert "--admin-users" in models.run_tool("convert", "a", user=alice)[0]
    assert "--admin-users" in extensions_tab.apply_enabled(shared, [], "none", user=alice)
    assert "--admin-users" in extensions_tab.install(shared, "https://example.invalid/x.git", user=alice)


# --- served: the real middleware, Gradio's request and event data ---------------------------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """webui.build_app's app on loopback with --multi-user: alice and bob users, carol the operator."""
    import webui

    from modules.serving.app_context import AppContext
    from modules.serving.cmd_args import parse_args
    from tests.test_api_support import LiveServer

    data_dir = tmp_path_factory.mktemp("ui-multi-served")
    args = parse_args(["--data-dir", str(data_dir), "--skip-load-model-at-start", "--no-demo-checkpoint", *MULTI])
    context = AppContext.from_args(args)
    context.refresh()
    context.jobs.start()
    try:
        with LiveServer(webui.build_app(args, context), lifespan="on") as server:
            yield server.url, context
    finally:
        context.jobs.shutdown(timeout=WAIT)


def _panel_event(client, config: dict, event: str, event_data=None) -> str:
    """Run the queue panel's `event` ("click" of the panel, or the timer's "tick") as the page does;
    the panel's HTML it returns."""
    import uuid

    [panel] = [c["id"] for c in config["components"] if c.get("props", {}).get("elem_id") == "atelier_my_queue"]
    # The panel's own click (Generate's clicks refresh it too), or the timer's tick.
    [(dependency, trigger)] = [(d, t[0]) for d in config["dependencies"] if d["outputs"] == [panel]
                               for t in d.get("targets", []) if t[1] == event and (event != "click" or t[0] == panel)]
    response = client.post("/gradio_api/run/predict", json={
        "data": [], "event_data": event_data, "fn_index": dependency["id"], "trigger_id": trigger,
        "session_hash": uuid.uuid4().hex})
    assert response.status_code == 200, response.text
    return response.json()["data"][0]


def test_served_queue_panel_knows_who_asks_and_cancels_only_their_jobs(served):
    import httpx

    from tests.test_api_support import basic_auth

    url, context = served
    holder, release = _hold_queue(context, owner="bob")
    try:
        waiting = context.jobs.submit(lambda control: None, kind="txt2img", description="alice's", owner="alice")
        clients = {name: httpx.Client(base_url=url, headers=basic_auth(name, password), timeout=30)
                   for name, password in (("alice", "pa"), ("bob", "pb"), ("carol", "pc"))}
        try:
            config = clients["alice"].get("/config").json()
            seen = {name: _panel_event(client, config, "tick") for name, client in clients.items()}
            assert waiting.id in seen["alice"] and holder.id not in seen["alice"]
            assert holder.id in seen["bob"] and waiting.id not in seen["bob"]
            assert waiting.id in seen["carol"] and holder.id in seen["carol"]
            # Bob presses Cancel on a row id he copied from somewhere: alice's job stays queued.
            _panel_event(clients["bob"], config, "click", {"job_id": waiting.id})
            assert waiting.state is JobState.QUEUED
            after = _panel_event(clients["alice"], config, "click", {"job_id": waiting.id})
            assert waiting.finished and waiting.id not in after
        finally:
            for client in clients.values():
                client.close()
    finally:
        release.set()
        holder.wait(WAIT)


def test_the_output_folder_button_names_the_callers_folder(shared):
    from modules.ui.generation_form import output_folder

    outputs = shared.paths.data_dir / "outputs"
    for tab in ("txt2img", "img2img"):
        assert output_folder(shared, tab, shared.accounts.user("alice")).is_relative_to(outputs / "alice")
        assert not output_folder(shared, tab, shared.accounts.user("bob")).is_relative_to(outputs / "alice")
