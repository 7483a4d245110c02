"""The core of a server shared with --multi-user: accounts from the auth flags, the user in the request
scope, jobs taken in turns between users with a waiting limit, each user's own checkpoint/VAE/clip
skip carried by their jobs, and their own output folders. Without the flag nothing changes.

Queue orders are derived by hand from the round-robin rule (the oldest job of the user whose last job
started longest ago); `WAIT` only bounds a broken test.
"""

from __future__ import annotations

import argparse
import base64
import re
import threading
from pathlib import Path

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from modules.api.auth import AuthPolicy, BasicAuthMiddleware
from modules.library.checkpoints import CheckpointNotFoundError
from modules.outputs.output_paths import user_output_dir, user_output_overrides
from modules.serving.accounts import SHARED_USER, AccountError, Accounts, User, user_of
from modules.serving.cmd_args import parse_args
from modules.serving.generation_service import GenerationSubmission, for_owner, submit_generation
from modules.serving.jobs import FIFO, ROUND_ROBIN, JobQueue, QueueFullError
from modules.serving.settings_change import change_settings
from modules.serving.user_choices import UserChoices
from modules.ui.request_fields import build_request
from tests.test_api_support import WAIT, make_context

MULTI = ["--multi-user", "--gradio-auth", "alice:pa,bob:pb", "--api-auth", "carol:pc", "--admin-users", "carol"]


def accounts_of(argv: list[str]) -> Accounts:
    args = parse_args(argv)
    return Accounts.from_args(args, AuthPolicy.from_args(args).user_names())


# -- accounts --------------------------------------------------------------------------------------

def test_without_the_flag_every_login_is_the_one_shared_operator():
    accounts = accounts_of(["--gradio-auth", "alice:pa,bob:pb"])
    assert not accounts.multi_user
    assert accounts.user("alice") == accounts.user("bob") == SHARED_USER
    assert SHARED_USER.owns("anyone") and SHARED_USER.owner is None


def test_each_auth_pair_is_a_user_and_admins_are_named():
    accounts = accounts_of(MULTI)
    assert accounts.names == ("alice", "bob", "carol")
    alice, carol = accounts.user("alice"), accounts.user("carol")
    assert alice == User("alice", False) and carol == User("carol", True)
    assert alice.owns("alice") and not alice.owns("bob") and carol.owns("bob")
    assert not accounts.user("mallory").owns("mallory") or accounts.user("mallory").name == ""


@pytest.mark.parametrize("argv, fragment", [
    (["--multi-user"], "--gradio-auth"),
    (["--multi-user", "--gradio-auth", "../x:p"], "'../x'"),
    (["--multi-user", "--gradio-auth", ".hidden:p"], "'.hidden'"),
    (["--multi-user", "--gradio-auth", "a/b:p"], "'a/b'"),
    (["--multi-user", "--gradio-auth", "txt2img-images:p"], "shared output folder"),
    (["--multi-user", "--gradio-auth", "alice:p", "--admin-users", "root"], "'root'"),
    (["--gradio-auth", "alice:p", "--admin-users", "alice"], "--multi-user"),
])
def test_flags_that_cannot_keep_users_apart_stop_the_start(argv, fragment, capsys):
    with pytest.raises(SystemExit):
        parse_args(argv)
    assert fragment in capsys.readouterr().err


def test_account_errors_are_value_errors_naming_the_flag():
    with pytest.raises(AccountError, match="--multi-user"):
        Accounts.from_args(argparse.Namespace(multi_user=False, admin_users="x"), ["x"])


def test_the_auth_middleware_tells_the_routes_who_asked():
    args = parse_args(MULTI)
    accounts = Accounts.from_args(args, AuthPolicy.from_args(args).user_names())
    app = FastAPI()

    @app.get("/whoami")
    def whoami(request: Request) -> dict:
        user = user_of(accounts, request)
        return {"name": user.name, "admin": user.admin}

    @app.get("/sdapi/v1/whoami")
    def api_whoami(request: Request) -> dict:
        return whoami(request)

    app.add_middleware(BasicAuthMiddleware, policy=AuthPolicy.from_args(args))
    client = TestClient(app)

    def basic(user: str, password: str) -> dict:
        return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}

    assert client.get("/whoami", headers=basic("alice", "pa")).json() == {"name": "alice", "admin": False}
    assert client.get("/whoami", headers=basic("bob", "pb")).json() == {"name": "bob", "admin": False}
    assert client.get("/whoami", headers=basic("bob", "pa")).status_code == 401  # another user's password
    assert client.get("/sdapi/v1/whoami", headers=basic("carol", "pc")).json() == {"name": "carol", "admin": True}
    assert client.get("/sdapi/v1/whoami", headers=basic("alice", "pa")).status_code == 401  # UI-only user


# -- the queue -------------------------------------------------------------------------------------

def _recording_queue(order: str = ROUND_ROBIN, owner_limit: int = 0):
    started_order: list[str] = []
    queue = JobQueue("test", order=order, owner_limit=owner_limit)
    return queue, started_order


def _work(started_order: list[str], name: str, gate: threading.Event | None = None):
    def work(control):
        started_order.append(name)
        if gate is not None:
            assert gate.wait(WAIT)
        return name
    return work


def _two_users_three_jobs(order: str) -> tuple[list[str], dict[str, int | None]]:
    """alice's first job runs while alice queues two more and then bob queues three."""
    queue, started = _recording_queue(order)
    gate = threading.Event()
    queue.start()
    try:
        first = queue.submit(_work(started, "a1", gate), kind="t", owner="alice")
        while first.state.value != "running":
            first.wait(0.01) if first.finished else threading.Event().wait(0.005)
        jobs = {"a1": first}
        for name, owner in (("a2", "alice"), ("a3", "alice"), ("b1", "bob"), ("b2", "bob"), ("b3", "bob")):
            jobs[name] = queue.submit(_work(started, name), kind="t", owner=owner)
        positions = {name: job.queue_position for name, job in jobs.items()}
        assert [job.id for job in queue.waiting_jobs()] == [
            jobs[name].id for name in sorted((n for n in positions if positions[n] is not None), key=positions.get)]
        gate.set()
        for job in jobs.values():
            job.wait(WAIT)
        return started, positions
    finally:
        queue.shutdown(timeout=WAIT)


def test_round_robin_gives_users_turns():
    started, positions = _two_users_three_jobs(ROUND_ROBIN)
    # alice was served last (a1 runs), bob never: bob first, then turns.
    assert started == ["a1", "b1", "a2", "b2", "a3", "b3"]
    assert positions == {"a1": None, "b1": 0, "a2": 1, "b2": 2, "a3": 3, "b3": 4}


def test_fifo_setting_restores_submission_order():
    started, positions = _two_users_three_jobs(FIFO)
    assert started == ["a1", "a2", "a3", "b1", "b2", "b3"]
    assert positions == {"a1": None, "a2": 0, "a3": 1, "b1": 2, "b2": 3, "b3": 4}


def test_without_owners_round_robin_is_fifo():
    queue, started = _recording_queue(ROUND_ROBIN)
    jobs = [queue.submit(_work(started, f"j{i}"), kind="t") for i in range(5)]
    assert [job.queue_position for job in jobs] == [0, 1, 2, 3, 4]
    queue.start()
    try:
        for job in jobs:
            job.wait(WAIT)
    finally:
        queue.shutdown(timeout=WAIT)
    assert started == [f"j{i}" for i in range(5)]


def test_an_exclusive_call_stays_a_barrier_between_turns():
    queue, started = _recording_queue(ROUND_ROBIN)
    gate = threading.Event()
    queue.start()
    try:
        blocker = queue.submit(_work(started, "a0", gate), kind="t", owner="alice")
        while blocker.state.value != "running":
            threading.Event().wait(0.005)
        a1 = queue.submit(_work(started, "a1"), kind="t", owner="alice")
        done = threading.Event()
        thread = threading.Thread(target=lambda: (queue.run_exclusive(lambda: started.append("X")), done.set()))
        thread.start()
        while queue._pending and len(queue._pending) < 2:  # the exclusive call is queued behind a1
            threading.Event().wait(0.005)
        b1 = queue.submit(_work(started, "b1"), kind="t", owner="bob")
        # b1 came after the barrier: it cannot overtake a1 although bob was never served.
        assert (a1.queue_position, b1.queue_position) == (0, 1)
        gate.set()
        b1.wait(WAIT)
        assert done.wait(WAIT)
    finally:
        queue.shutdown(timeout=WAIT)
    assert started == ["a0", "a1", "X", "b1"]


def test_a_user_may_have_only_so_many_jobs_waiting():
    queue, started = _recording_queue(ROUND_ROBIN, owner_limit=2)
    gate = threading.Event()
    queue.start()
    try:
        running = queue.submit(_work(started, "a0", gate), kind="t", owner="alice")
        while running.state.value != "running":
            threading.Event().wait(0.005)
        queue.submit(_work(started, "a1"), kind="t", owner="alice")
        queue.submit(_work(started, "a2"), kind="t", owner="alice")  # the running one does not count
        with pytest.raises(QueueFullError, match="'alice' already has 2 jobs waiting") as refused:
            queue.submit(_work(started, "a3"), kind="t", owner="alice")
        assert "My queue" in str(refused.value)
        queue.submit(_work(started, "b1"), kind="t", owner="bob")  # another user is not held back
        queue.submit(_work(started, "n1"), kind="t")  # nor the shared user of a single-user server
        assert queue.pending_count() == 4
    finally:
        gate.set()
        queue.shutdown(timeout=WAIT, cancel_pending=False)
    assert "a3" not in started


def test_wait_estimates_grow_along_the_queue_once_a_job_was_measured():
    queue, started = _recording_queue(ROUND_ROBIN)
    queue.start()

    def stepping(control):
        for step in range(1, 5):
            control.report(step, 4)
            threading.Event().wait(0.01)

    try:
        gate = threading.Event()
        first = queue.submit(_work(started, "a0", gate), kind="t", owner="alice")
        waiting = queue.submit(stepping, kind="t", owner="bob", expected_steps=4)
        assert waiting.wait_estimate is None  # nothing measured yet
        gate.set()
        first.wait(WAIT)
        waiting.wait(WAIT)
        gate2 = threading.Event()
        blocker = queue.submit(_work(started, "a1", gate2), kind="t", owner="alice")
        while blocker.state.value != "running":
            threading.Event().wait(0.005)
        second = queue.submit(stepping, kind="t", owner="bob", expected_steps=4)
        third = queue.submit(stepping, kind="t", owner="carol", expected_steps=8)
        fourth = queue.submit(stepping, kind="t", owner="dave", expected_steps=4)
        in_line = sorted((second, third, fourth), key=lambda job: job.queue_position)
        # bob was served last: the users never served go first (carol, then dave).
        assert in_line == [third, fourth, second]
        estimates = [job.wait_estimate for job in in_line]
        assert all(value is not None for value in estimates)
        # Each waits for the ones before it: carol's 8 steps are in dave's and bob's estimates.
        assert estimates[0] < estimates[1] < estimates[2]
        assert blocker.wait_estimate is None  # running: not waiting
    finally:
        gate2.set()
        queue.shutdown(timeout=WAIT, cancel_pending=False)


# -- per-user choices and folders ------------------------------------------------------------------

def test_user_choices_persist_and_fall_back_to_the_global_settings(tmp_path):
    path = tmp_path / "user-choices.json"
    choices = UserChoices(path)
    assert choices.set("alice", {"sd_vae": "x.pt", "CLIP_stop_at_last_layers": 2}) == ["sd_vae",
                                                                                      "CLIP_stop_at_last_layers"]
    assert choices.set("alice", {"sd_vae": "x.pt"}) == []
    settings = {"sd_model_checkpoint": "g.safetensors", "sd_vae": "Automatic", "CLIP_stop_at_last_layers": 1}
    assert UserChoices(path).effective("alice", settings) == {"sd_model_checkpoint": "g.safetensors",
                                                              "sd_vae": "x.pt", "CLIP_stop_at_last_layers": 2}
    assert UserChoices(path).effective("bob", settings) == settings
    with pytest.raises(ValueError, match="samples_format"):
        choices.set("alice", {"samples_format": "jpg"})


@pytest.mark.parametrize("value, expected", [
    ("outputs/txt2img-images", "outputs/alice/txt2img-images"),
    ("outputs", "outputs/alice"),
    ("outputs/alice/mine", "outputs/alice/mine"),
    ("outputs/bob/x", "outputs/alice/bob/x"),
    ("outputs/../outputs/x", "outputs/alice/x"),
    ("elsewhere", "elsewhere/alice"),
])
def test_output_folders_move_under_the_users_own(tmp_path, value, expected):
    assert user_output_dir(value, "alice", tmp_path) == tmp_path / expected


def test_an_empty_output_setting_still_lands_in_the_users_folder(tmp_path):
    settings = {"outdir_samples": "", "outdir_grids": "", "outdir_txt2img_samples": "",
                "outdir_txt2img_grids": "outputs/txt2img-grids", "outdir_img2img_samples": "outputs/img2img-images",
                "outdir_img2img_grids": "outputs/img2img-grids", "outdir_extras_samples": "outputs/extras-images"}
    overrides = user_output_overrides(settings, "bob", tmp_path)
    assert "outdir_samples" not in overrides
    assert overrides["outdir_txt2img_samples"] == str(tmp_path / "outputs/bob/txt2img-images")
    assert all(Path(value).is_relative_to(tmp_path / "outputs" / "bob") for value in overrides.values())


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    context = make_context(tmp_path_factory.mktemp("multi"), names=("a", "b"), args=MULTI)
    yield context
    context.jobs.shutdown(timeout=WAIT)


def _request(**fields):
    return build_request({"prompt": "a fox", "width": 64, "height": 64, "steps": 1, "sampler_name": "Euler",
                          "seed": 5, **fields})


def test_a_users_top_bar_choice_is_theirs_and_rides_on_their_jobs(shared):
    alice, bob = shared.accounts.user("alice"), shared.accounts.user("bob")
    global_before = dict(shared.settings.current())
    loaded_before = shared.models.current_info().title
    report = change_settings(shared, {"sd_model_checkpoint": "b", "CLIP_stop_at_last_layers": 2}, api=True, user=alice)
    assert report.ok and set(report.changed) == {"sd_model_checkpoint", "CLIP_stop_at_last_layers"}
    assert shared.models.current_info().title == loaded_before  # nothing switched under anyone
    assert shared.settings.current()["CLIP_stop_at_last_layers"] == global_before["CLIP_stop_at_last_layers"]

    jobs = [submit_generation(shared, GenerationSubmission(_request(), owner=owner, save=True))
            for owner in ("alice", "bob", "alice")]
    results = [job.wait(WAIT * 6).result for job in jobs]
    assert [job.state.value for job in jobs] == ["done"] * 3, [job.error for job in jobs]
    alice_text, bob_text, alice_again = (result.infotexts[0] for result in results)
    def model(text: str) -> str:
        return re.search(r"Model: ([^,\n]+)", text).group(1)

    assert (model(alice_text), model(bob_text), model(alice_again)) == ("b", "a", "b")
    assert "Clip skip: 2" in alice_text and "Clip skip" not in bob_text
    outputs = shared.paths.data_dir / "outputs"
    for result, owner in zip(results, ("alice", "bob", "alice")):
        assert all(Path(path).is_relative_to(outputs / owner) for path in result.saved_paths)
    assert shared.settings.current()["sd_model_checkpoint"] == global_before["sd_model_checkpoint"]
    del bob


def test_a_user_cannot_change_global_settings_but_an_operator_can(shared):
    alice, carol = shared.accounts.user("alice"), shared.accounts.user("carol")
    before = shared.settings.current()["samples_format"]
    refused = change_settings(shared, {"samples_format": "jpg", "sd_vae": "None"}, api=True, user=alice)
    assert "samples_format" in refused.refused and "--admin-users" in refused.refused["samples_format"]
    assert shared.user_choices.of("alice").get("sd_vae") != "None"  # the API's all-or-nothing rule
    # Posting back an unchanged global value (a client sending GET options back) is fine.
    same = change_settings(shared, {"samples_format": before, "sd_vae": "None"}, api=True, user=alice)
    assert same.ok and shared.user_choices.of("alice")["sd_vae"] == "None"
    assert shared.settings.current()["samples_format"] == before
    try:
        assert change_settings(shared, {"samples_format": "jpg"}, api=True, user=carol).ok
        assert shared.settings.current()["samples_format"] == "jpg"
    finally:
        shared.settings.apply({"samples_format": before})
    with pytest.raises(CheckpointNotFoundError):
        change_settings(shared, {"sd_model_checkpoint": "no-such-model"}, api=True, user=alice)


def test_a_request_cannot_send_a_users_images_into_another_users_folder(shared):
    request = _request().model_copy(update={"override_settings": {"outdir_txt2img_samples": "outputs/bob/stolen"}})
    submission = GenerationSubmission(request, owner="alice")
    overrides = for_owner(shared, submission).request.override_settings
    alice_root = shared.paths.data_dir / "outputs" / "alice"
    assert Path(overrides["outdir_txt2img_samples"]).is_relative_to(alice_root)
    assert all(Path(overrides[key]).is_relative_to(alice_root) for key in overrides if key.startswith("outdir_"))


def test_single_user_submissions_are_left_alone(tmp_path):
    context = make_context(tmp_path, names=("a",), args=["--gradio-auth", "alice:pa"], start_jobs=False)
    submission = GenerationSubmission(_request(), owner="alice")
    assert for_owner(context, submission) is submission


def test_posting_back_every_global_setting_unchanged_is_not_a_change(shared):
    alice = shared.accounts.user("alice")
    everything = {key: list(value) if isinstance(value, tuple) else value
                  for key, value in shared.settings.current().to_dict().items()}
    report = change_settings(shared, {**everything, "CLIP_stop_at_last_layers": 3}, api=True, user=alice)
    assert report.ok, report.refused
    assert shared.user_choices.of("alice")["CLIP_stop_at_last_layers"] == 3


def test_an_operator_setting_the_global_checkpoint_gets_it_for_their_own_jobs_too(shared):
    carol = shared.accounts.user("carol")
    before = shared.settings.current()["CLIP_stop_at_last_layers"]
    change_settings(shared, {"CLIP_stop_at_last_layers": 4}, api=True, user=User("carol", False))  # not via admin
    assert shared.user_choices.of("carol")["CLIP_stop_at_last_layers"] == 4
    try:
        assert change_settings(shared, {"CLIP_stop_at_last_layers": 5}, api=True, user=carol).ok
        assert shared.settings.current()["CLIP_stop_at_last_layers"] == 5
        assert "CLIP_stop_at_last_layers" not in shared.user_choices.of("carol")
        assert shared.user_choices.effective("carol", shared.settings.current())["CLIP_stop_at_last_layers"] == 5
    finally:
        shared.settings.apply({"CLIP_stop_at_last_layers": before})


def test_an_unreadable_choices_file_is_moved_aside_not_overwritten(tmp_path):
    path = tmp_path / "user-choices.json"
    path.write_text("{not json", encoding="utf-8")
    choices = UserChoices(path)
    assert choices.of("alice") == {}
    assert (tmp_path / "user-choices.json.unreadable").read_text(encoding="utf-8") == "{not json"
    choices.set("alice", {"sd_vae": "None"})
    assert UserChoices(path).of("alice") == {"sd_vae": "None"}


def test_the_stand_in_for_an_unknown_caller_owns_nothing():
    accounts = accounts_of(MULTI)
    nobody = accounts.user(None)
    assert not nobody.owns("") and not nobody.owns(None) and not nobody.owns("alice")
    with pytest.raises(ValueError):
        user_output_dir("outputs/txt2img-images", "", Path("/data"))


def test_wait_estimates_learn_per_kind():
    queue = JobQueue("test")
    queue.start()
    try:
        def steps(count: int, pause: float):
            def work(control):
                for step in range(1, count + 1):
                    control.report(step, count)
                    threading.Event().wait(pause)
            return work
        # A slow "step" of another kind (an upscaled image) must not make txt2img steps look slow.
        queue.submit(steps(1, 0.2), kind="extras").wait(WAIT)
        queue.submit(steps(4, 0.001), kind="txt2img").wait(WAIT)
        gate = threading.Event()
        blocker = queue.submit(lambda control: gate.wait(WAIT), kind="other")
        while blocker.state.value != "running":
            threading.Event().wait(0.005)
        txt = queue.submit(steps(4, 0), kind="txt2img", expected_steps=4)
        ext = queue.submit(steps(4, 0), kind="extras", expected_steps=4)
        assert queue._expected_seconds(txt) < queue._expected_seconds(ext)
    finally:
        gate.set()
        queue.shutdown(timeout=WAIT)


def test_a_link_in_a_users_folder_does_not_lead_into_another_users(tmp_path):
    (tmp_path / "outputs" / "ann").mkdir(parents=True)
    (tmp_path / "outputs" / "ben").mkdir(parents=True)
    (tmp_path / "outputs" / "ben" / "shortcut").symlink_to(tmp_path / "outputs" / "ann")
    with pytest.raises(ValueError, match="through a link"):
        user_output_dir("outputs/ben/shortcut", "ben", tmp_path)
    with pytest.raises(ValueError, match="through a link"):
        user_output_dir("outputs/shortcut", "ben", tmp_path)  # lands on outputs/ben/shortcut too
    assert user_output_dir("outputs/ben/own", "ben", tmp_path) == tmp_path / "outputs/ben/own"
