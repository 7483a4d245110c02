"""A1111's facades used by extensions on a server shared with `--multi-user`: what an extension's code
does through `shared.opts`, `sd_models.reload_model_weights`/`unload_model_weights` and
`shared.state` stays the calling user's (their job, their own choices); a user who is not an
operator changes no global setting, no global checkpoint and nobody else's job. Also the Ray
workers line (no other user's job id or error) and the X/Y/Z plot's grid folder (the owner's).

Extension code is run where the server runs it: inside a job of an owner (a work function on the
job queue), or in a Gradio event with a stand-in `gr.Request` carrying the user the auth middleware
would put in the ASGI scope. Jobs that must stay running while a test looks wait on an event, so
nothing depends on timing."""

from __future__ import annotations

import logging
import threading
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import pytest

from modules import shared
from modules.cluster.types import WorkerInfo
from modules.extension_host.environment import app_scope
from modules.serving.accounts import USER_STATE_KEY
from tests.test_api_support import WAIT, make_context

MULTI = ["--multi-user", "--gradio-auth", "alice:pa,bob:pb,root:pr", "--admin-users", "root"]


@pytest.fixture(scope="module")
def context(tmp_path_factory):
    context = make_context(tmp_path_factory.mktemp("facades-multi"), names=("a", "b"), args=MULTI)
    yield context
    context.jobs.shutdown(timeout=WAIT)


def page_request(user: str | None):
    """What Gradio hands a handler: a gr.Request-like object whose scope holds the logged-in user."""
    return SimpleNamespace(request=SimpleNamespace(scope={"state": {USER_STATE_KEY: user}}))


@contextmanager
def page_event(user: str):
    """Inside the block this thread handles a Gradio event of `user`'s page (as Gradio sets it)."""
    from gradio.context import LocalContext

    token = LocalContext.request.set(page_request(user))
    try:
        yield
    finally:
        LocalContext.request.reset(token)


def in_job(context, owner: str | None, fn):
    """Run `fn()` as extension code inside a job of `owner` and return what it returned."""
    job = context.jobs.submit(lambda control: _scoped(context, fn), kind="txt2img", description="extension",
                              owner=owner)
    job.wait(WAIT)
    assert job.state.value == "done", job.error
    return job.result


def _scoped(context, fn):
    with app_scope(context):
        return fn()


@contextmanager
def held(context, owner: str, preview: str | None = None):
    """A running job of `owner` that reports a step (with `preview` as its preview when asked) until
    the block ends."""
    release, reported = threading.Event(), threading.Event()

    def work(control):
        while True:
            control.report(1, 10, (lambda: preview) if preview else None)
            reported.set()
            control.check()
            if release.wait(0.01):
                return "released"

    job = context.jobs.submit(work, kind="txt2img", description=f"held for {owner}", owner=owner)
    try:
        assert reported.wait(WAIT)
        yield job
    finally:
        release.set()
        job.wait(WAIT)


@contextmanager
def two_slots(context):
    """Two jobs may run at once (as with two Ray workers), so 'the running job' is ambiguous."""
    context.jobs.set_slots(2)
    try:
        yield
    finally:
        context.jobs.set_slots(1)


# -- shared.opts ---------------------------------------------------------------------------------------------


def test_opts_set_in_a_users_job_stores_their_own_choice_and_refuses_a_global_key(context, caplog):
    opts = shared.opts

    before = dict(context.settings.current())
    other_format = "jpg" if before["samples_format"] != "jpg" else "webp"
    clip_skip = before["CLIP_stop_at_last_layers"] + 1

    def extension_code():
        opts.samples_format = other_format  # A1111's attribute write: no exception into the extension
        return opts.set("samples_format", other_format), opts.set("CLIP_stop_at_last_layers", clip_skip)

    with caplog.at_level(logging.WARNING):
        stored_global, stored_own = in_job(context, "bob", extension_code)
    assert (stored_global, stored_own) == (False, True)
    assert context.settings.current()["samples_format"] == before["samples_format"]
    assert context.settings.current()["CLIP_stop_at_last_layers"] == before["CLIP_stop_at_last_layers"]
    assert context.user_choices.of("bob")["CLIP_stop_at_last_layers"] == clip_skip
    assert "samples_format" in caplog.text and "'bob'" in caplog.text and "--admin-users" in caplog.text
    # run_callbacks=False (a direct store in A1111) is no way around it.
    assert in_job(context, "bob", lambda: opts.set("samples_format", other_format, run_callbacks=False)) is False
    assert context.settings.current()["samples_format"] == before["samples_format"]


def test_opts_set_in_a_users_page_event_is_theirs_too(context):
    opts = shared.opts

    before = context.settings.current()["samples_format"]
    other_format = "jpg" if before != "jpg" else "webp"
    with app_scope(context), page_event("alice"):
        assert opts.set("samples_format", other_format) is False
    assert context.settings.current()["samples_format"] == before


def test_an_operators_job_still_changes_global_settings(context):
    opts = shared.opts

    before = context.settings.current()["samples_format"]
    other_format = "jpg" if before != "jpg" else "webp"
    try:
        assert in_job(context, "root", lambda: opts.set("samples_format", other_format)) is True
        assert context.settings.current()["samples_format"] == other_format
    finally:
        context.settings.apply({"samples_format": before})


# -- sd_models -----------------------------------------------------------------------------------------------


def test_reload_model_weights_in_a_users_job_loads_for_that_job_only(context):
    from modules import sd_models

    global_choice = context.settings.current()["sd_model_checkpoint"]
    loaded = context.models.current_info()
    other = next(info for info in context.checkpoints.list() if info.filename != loaded.filename)

    def extension_code():
        model = sd_models.reload_model_weights(info=sd_models.CheckpointInfo(str(other.filename)))
        return model.sd_checkpoint_info.filename, str(context.models.current_info().filename)

    try:
        returned, current_in_job = in_job(context, "bob", extension_code)
        assert returned == current_in_job == str(other.filename)  # the job got the model it asked for
        assert context.settings.current()["sd_model_checkpoint"] == global_choice  # config.json not written
    finally:
        context.models.load(loaded.title)


def test_a_user_outside_a_job_cannot_switch_or_unload_anyones_model(context, caplog):
    from modules import sd_models

    global_choice = context.settings.current()["sd_model_checkpoint"]
    loaded = context.models.current_info()
    other = next(info for info in context.checkpoints.list() if info.filename != loaded.filename)
    with caplog.at_level(logging.WARNING), app_scope(context), page_event("alice"):
        model = sd_models.reload_model_weights(info=sd_models.CheckpointInfo(str(other.filename)))
        sd_models.unload_model_weights()
    assert model.sd_checkpoint_info.filename == str(loaded.filename)
    assert context.models.current_info().filename == loaded.filename and context.models.current() is not None
    assert context.settings.current()["sd_model_checkpoint"] == global_choice
    assert caplog.text.count("--admin-users") >= 2 and "'alice'" in caplog.text


def test_unload_in_a_users_job_is_refused(context):
    from modules import sd_models

    loaded = context.models.current_info()
    in_job(context, "bob", sd_models.unload_model_weights)
    assert context.models.current() is not None and context.models.current_info().filename == loaded.filename


def test_an_operator_still_switches_the_global_checkpoint(context):
    from modules import sd_models

    loaded = context.models.current_info()
    global_choice = context.settings.current()["sd_model_checkpoint"]
    other = next(info for info in context.checkpoints.list() if info.filename != loaded.filename)
    try:
        with app_scope(context), page_event("root"):
            sd_models.reload_model_weights(info=sd_models.CheckpointInfo(str(other.filename)))
        now = context.models.current_info()
        assert now.filename == other.filename
        assert context.settings.current()["sd_model_checkpoint"] == now.title
    finally:
        context.models.load(loaded.title)
        context.settings.apply({"sd_model_checkpoint": global_choice})


# -- shared.state --------------------------------------------------------------------------------------------


def test_state_in_a_job_is_that_job_not_the_first_running_one(context):
    state = shared.state

    with two_slots(context), held(context, "alice", preview="alice's preview") as alices:
        # Alice's preview exists (reading it asks her job for one).
        for _ in range(int(WAIT * 100)):
            if alices.preview == "alice's preview":
                break
            threading.Event().wait(0.01)
        assert alices.preview == "alice's preview"

        def extension_code():
            seen = (state.current_image, state.job_no, state.interrupted)
            state.skip()
            state.interrupt()
            return seen

        bobs = context.jobs.submit(lambda control: _scoped(context, extension_code), kind="txt2img", owner="bob")
        bobs.wait(WAIT)
        assert bobs.result[0] is None  # his own job has no preview; alice's is not his to see
        assert not alices.interrupt_requested and not alices.skip_requested
        assert bobs.state.value == "interrupted"  # he stopped his own job
    assert alices.state.value == "done"


def test_outside_a_job_a_user_stops_nothing_and_sees_no_preview(context, caplog):
    state = shared.state

    with held(context, "alice", preview="alice's preview") as alices:
        alices.preview  # noqa: B018 - asks for one
        with caplog.at_level(logging.WARNING), app_scope(context):
            with page_event("bob"):
                bob_sees = state.current_image
                state.interrupt()
                state.skipped = True
            state.interrupt()  # no job, no page: the caller cannot be known
            nobody_sees = state.current_image
        assert (bob_sees, nobody_sees) == (None, None)
        assert not alices.interrupt_requested and not alices.skip_requested
        assert "did nothing" in caplog.text and "'bob'" in caplog.text
        with app_scope(context), page_event("root"):
            state.interrupt()  # an operator: A1111's behaviour, the running job
        assert alices.interrupt_requested
    assert alices.state.value == "interrupted"


def test_without_multi_user_the_state_acts_on_the_running_job_from_anywhere(tmp_path):
    state = shared.state

    single = make_context(tmp_path, names=(), args=["--gradio-auth", "alice:pa"], load=False)
    try:
        with held(single, None, preview="p") as job:
            with app_scope(single), page_event("alice"):
                state.skip()
                assert job.skip_requested
                state.interrupt()
            assert job.interrupt_requested
    finally:
        single.jobs.shutdown(timeout=WAIT)


# -- the workers line -----------------------------------------------------------------------------------------


class FakeCluster:
    def __init__(self, workers):
        self.workers = workers

    def describe(self):
        return list(self.workers)


def test_the_workers_line_hides_other_users_jobs_and_errors(context):
    from modules.ui.shared import UiShared
    from modules.ui.workers_status import build

    error = "RuntimeError: alice's secret prompt"
    with held(context, "alice") as alices:
        cluster = FakeCluster([WorkerInfo("worker-0", "n", "cuda:0", "busy", (), current_job=alices.id),
                               WorkerInfo("worker-1", "n", "cuda:1", "idle", (), last_error=error)])
        ray_context = SimpleNamespace(cluster=cluster, accounts=context.accounts, jobs=context.jobs)
        shared = UiShared()
        with gr.Blocks():
            status = build(ray_context, shared)
        [(on_load, _)] = shared.page_loads
        seen = {user: on_load(page_request(user)) for user in ("alice", "bob", "root")}
        assert alices.id not in seen["bob"] and "secret" not in seen["bob"]
        assert alices.id not in status.value and "secret" not in status.value  # built into everyone's page
        assert alices.id in seen["alice"] and "secret" not in seen["alice"]  # her job, not her error
        assert alices.id in seen["root"] and "secret" in seen["root"]


# -- the X/Y/Z plot's grid -----------------------------------------------------------------------------------


def test_an_xyz_plot_of_a_user_saves_its_grid_in_their_folder(context):
    from modules.extension_host.extensions import BUILTIN_DIR, ExtensionFolders, load_extensions
    from modules.serving.generation_service import GenerationSubmission, submit_generation
    from modules.ui.request_fields import build_request

    data_dir = context.paths.data_dir
    folders = ExtensionFolders(user=data_dir / "extensions", builtin=BUILTIN_DIR)
    context.extensions = load_extensions(context.settings, context.args, folders)
    assert context.settings.current()["grid_save"]
    args = ["CFG Scale", "5, 9", [], "Nothing", "", [], "Nothing", "", [], True, False, False, False, False, False,
            False, 0, False]
    selection = context.extensions.scripts.selection_from_api("x/y/z plot", args, {})
    request = build_request({"prompt": "a fox", "width": 64, "height": 64, "steps": 1, "sampler_name": "Euler",
                             "seed": 5})
    job = submit_generation(context, GenerationSubmission(request, selection=selection, owner="alice", save=True))
    job.wait(WAIT * 2)
    assert job.state.value == "done", job.error
    outputs = data_dir / "outputs"
    grids = [Path(path) for path in job.result.saved_paths if Path(path).name.startswith("xyz_grid")]
    assert grids, job.result.saved_paths
    assert all(path.is_relative_to(outputs / "alice") and path.is_file() for path in grids)
    assert all(Path(path).is_relative_to(outputs / "alice") for path in job.result.saved_paths)  # cells too
    assert not list(outputs.glob("txt2img-grids/**/xyz_grid*"))  # nothing in the shared folder
