"""The API on a server shared with `--multi-user`, tested as an attacker would try it: user bob must
not see, follow, interrupt, skip or cancel alice's jobs (by id or by her `force_task_id`), must not
change global settings or use the operators' routes, and his own checkpoint choice must change only
his own jobs. The operator (root, `--admin-users`) sees and controls everything. A server without
`--multi-user` keeps A1111's behaviour: everyone sees and controls every job.

Jobs that must stay running or waiting while a test looks are plain work functions submitted to the
queue with an owner (`held_job`), so nothing depends on timing."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from modules.api.auth import install_auth
from modules.api.server import create_app
from modules.outputs.infotext import parse_generation_parameters
from tests.test_api_support import WAIT, assert_error, basic_auth, make_context, png_base64

PASSWORDS = {"alice": "alice-pw", "bob": "bob-pw", "carol": "carol-pw", "root": "root-pw"}
SMALL = {"width": 64, "height": 64, "steps": 2}
UNKNOWN_JOB = "task-999999"


def auth_flags(*extra: str) -> list[str]:
    return ["--api-auth", ",".join(f"{user}:{password}" for user, password in PASSWORDS.items()), *extra]


@pytest.fixture(scope="module")
def context(tmp_path_factory):
    context = make_context(tmp_path_factory.mktemp("api-multi-user"), names=("a", "b"),
                           args=auth_flags("--multi-user", "--admin-users", "root"))
    yield context
    context.jobs.shutdown(timeout=WAIT)


@pytest.fixture(scope="module")
def app(context):
    app = create_app(context, api=True)
    install_auth(app, context.args)
    return app


@pytest.fixture(scope="module")
def clients(app) -> dict[str, TestClient]:
    return {user: TestClient(app, headers=basic_auth(user, password)) for user, password in PASSWORDS.items()}


@contextmanager
def held_job(context, owner: str | None, *, kind: str = "txt2img", steps: tuple[int, int] = (3, 10)):
    """A job of `owner` that reports `steps` once it runs and then waits until the block ends; the
    block gets the job (running or waiting, as the queue decides)."""
    release = threading.Event()

    def work(control):
        control.report(*steps)
        assert release.wait(WAIT)

    job = context.jobs.submit(work, kind=kind, description=f"held for {owner}", owner=owner)
    try:
        yield job
    finally:
        release.set()
        if job.state.value == "queued":
            context.jobs.interrupt(job.id)
        job.wait(WAIT)


@contextmanager
def running(context, owner: str | None, **kwargs) -> Iterator:
    """`held_job` that is running (and has reported its step) when the block starts."""
    with held_job(context, owner, **kwargs) as job:
        wait_for(lambda: job.state.value == "running" and job.step > 0)
        yield job


def wait_for(condition) -> None:
    done = threading.Event()
    for _ in range(int(WAIT * 100)):
        if condition():
            return
        done.wait(0.01)
    raise AssertionError("condition not reached")


def info_of(response) -> dict:
    assert response.status_code == 200, response.text
    return json.loads(response.json()["info"])


def not_found_text(response, job_id: str) -> str:
    """The 404's message with the asked id taken out, to compare answers for different ids."""
    body = assert_error(response, 404)
    return body["errors"].replace(repr(job_id), "<id>")


def test_a_user_lists_only_their_own_jobs_and_the_operator_all_with_owners(context, clients):
    with running(context, "alice") as alices, held_job(context, "bob") as bobs:
        listed = {user: {job["id"]: job for job in clients[user].get("/sdapi/v1/jobs").json()} for user in PASSWORDS}
        assert bobs.id in listed["bob"] and alices.id not in listed["bob"]
        assert {job["owner"] for job in listed["bob"].values()} == {"bob"}
        assert alices.id in listed["alice"] and bobs.id not in listed["alice"]
        assert listed["carol"] == {}
        assert listed["root"][alices.id]["owner"] == "alice" and listed["root"][bobs.id]["owner"] == "bob"
        assert listed["root"][alices.id]["state"] == "running" and listed["root"][bobs.id]["state"] == "queued"


def test_another_users_job_is_not_found_exactly_as_an_unknown_one(context, clients):
    with running(context, "alice") as alices:
        bob = clients["bob"]
        unknown = not_found_text(bob.get(f"/sdapi/v1/jobs/{UNKNOWN_JOB}"), UNKNOWN_JOB)
        assert not_found_text(bob.get(f"/sdapi/v1/jobs/{alices.id}"), alices.id) == unknown
        assert not_found_text(bob.post(f"/sdapi/v1/jobs/{alices.id}/interrupt"), alices.id) == unknown
        assert not alices.interrupt_requested
        assert clients["alice"].get(f"/sdapi/v1/jobs/{alices.id}").json()["state"] == "running"
        assert clients["root"].get(f"/sdapi/v1/jobs/{alices.id}").json()["owner"] == "alice"


def test_interrupt_and_skip_reach_only_the_callers_own_running_job(context, clients):
    with running(context, "alice") as alices:
        for route in ("/sdapi/v1/interrupt", "/sdapi/v1/skip"):
            assert clients["bob"].post(route).status_code == 200
        assert not alices.interrupt_requested and not alices.skip_requested
        assert clients["alice"].post("/sdapi/v1/skip").status_code == 200
        assert alices.skip_requested and not alices.interrupt_requested
        assert clients["alice"].post("/sdapi/v1/interrupt").status_code == 200
        assert alices.interrupt_requested
    assert alices.state.value == "interrupted"


def test_a_waiting_job_is_cancelled_only_by_its_owner_or_an_operator(context, clients):
    with running(context, "alice"), held_job(context, "bob") as first, held_job(context, "bob") as second:
        assert_error(clients["alice"].post(f"/sdapi/v1/jobs/{first.id}/interrupt"), 404)
        assert first.state.value == "queued"
        assert clients["bob"].post(f"/sdapi/v1/jobs/{first.id}/interrupt").json()["state"] == "interrupted"
        assert clients["root"].post(f"/sdapi/v1/jobs/{second.id}/interrupt").json()["state"] == "interrupted"
        assert (first.state.value, second.state.value) == ("interrupted", "interrupted")


def test_the_operator_interrupts_whatever_runs(context, clients):
    with running(context, "alice") as alices:
        assert clients["root"].post("/sdapi/v1/interrupt").status_code == 200
        assert alices.interrupt_requested


def test_the_workers_route_shows_a_user_only_their_own_running_job(context, clients):
    def current_job(user: str):
        (worker,) = clients[user].get("/atelier/v1/workers").json()["workers"]
        return worker["current_job"], worker["state"]

    with running(context, "alice") as alices:
        assert current_job("alice") == current_job("root") == (alices.id, "busy")
        assert current_job("bob") == (None, "busy")


def test_force_task_ids_are_each_users_own(context, clients):
    alices = info_of(clients["alice"].post("/sdapi/v1/txt2img", json={"prompt": "x", "force_task_id": "my-task",
                                                                      **SMALL}))["job_id"]
    assert context.jobs.get(alices).owner == "alice"
    assert clients["alice"].get("/sdapi/v1/jobs/my-task").json()["id"] == alices
    assert_error(clients["bob"].get("/sdapi/v1/jobs/my-task"), 404, "job 'my-task' not found")
    assert_error(clients["bob"].post("/sdapi/v1/jobs/my-task/interrupt"), 404)
    # Bob naming his task the same neither finds nor replaces hers.
    bobs = info_of(clients["bob"].post("/sdapi/v1/txt2img", json={"prompt": "y", "force_task_id": "my-task",
                                                                  **SMALL}))["job_id"]
    assert bobs != alices
    assert clients["bob"].get("/sdapi/v1/jobs/my-task").json()["id"] == bobs
    assert clients["alice"].get("/sdapi/v1/jobs/my-task").json()["id"] == alices


def test_saved_images_go_to_the_callers_own_folder(context, clients):
    outputs = context.paths.data_dir / "outputs"
    info_of(clients["bob"].post("/sdapi/v1/txt2img", json={"prompt": "x", "seed": 5, "save_images": True, **SMALL}))
    init = png_base64(Image.new("RGB", (64, 64), "gray"))
    info_of(clients["alice"].post("/sdapi/v1/img2img", json={"prompt": "x", "seed": 6, "save_images": True,
                                                              "init_images": [init], **SMALL}))
    saved = sorted(str(path.relative_to(outputs).parent.parent) for path in outputs.rglob("*.png"))
    assert saved == ["alice/img2img-images", "bob/txt2img-images"]


def test_progress_reports_the_callers_own_job(context, clients):
    with running(context, "alice") as alices, held_job(context, "root") as roots, held_job(context, "bob") as bobs:
        alice = clients["alice"].get("/sdapi/v1/progress").json()
        assert alice["current_task"] == alices.id and alice["progress"] == pytest.approx(0.01 + 3 / 10)
        # Round-robin: root and bob have not been served, root's job came first: bob's is 2nd.
        assert (roots.queue_position, bobs.queue_position) == (0, 1)
        bob = clients["bob"].get("/sdapi/v1/progress").json()
        assert bob["current_task"] == bobs.id and bob["progress"] == 0.0
        assert bob["textinfo"].startswith("Waiting in the queue: 2nd")
        assert bob["eta_relative"] >= 0.0 and bob["current_image"] is None
        carol = clients["carol"].get("/sdapi/v1/progress").json()
        assert carol["current_task"] is None and carol["progress"] == 0.0 and carol["textinfo"] is None
        # The operator follows the running job, as A1111's progress does.
        assert clients["root"].get("/sdapi/v1/progress").json()["current_task"] == alices.id


def model_of(response) -> tuple[str, int]:
    info = info_of(response)
    return parse_generation_parameters(info["infotexts"][0])["Model"], info["clip_skip"]


def test_a_users_checkpoint_and_clip_skip_change_only_their_own_jobs(context, clients):
    def shown(user: str) -> str:  # the model name of the checkpoint GET options shows `user`
        title = clients[user].get("/sdapi/v1/options").json()["sd_model_checkpoint"]
        return context.checkpoints.find(title).model_name

    def loaded() -> str:
        return context.models.current_info().model_name

    global_before = dict(context.settings.current())
    bob, alice = clients["bob"], clients["alice"]
    assert loaded() == "a"
    assert bob.post("/sdapi/v1/options", json={"sd_model_checkpoint": "b", "CLIP_stop_at_last_layers": 2}
                    ).status_code == 200
    try:
        assert shown("bob") == "b" and bob.get("/sdapi/v1/options").json()["CLIP_stop_at_last_layers"] == 2
        assert shown("alice") == "a"
        assert context.settings.current() == global_before
        assert loaded() == "a"  # nothing was loaded under anyone

        assert model_of(bob.post("/sdapi/v1/txt2img", json={"prompt": "x", **SMALL})) == ("b", 2)
        # His job left b loaded; alice, who chose nothing, still sees and gets the start-up checkpoint.
        assert loaded() == "b" and shown("alice") == "a"
        assert model_of(alice.post("/sdapi/v1/txt2img", json={"prompt": "x", **SMALL})) == ("a", 1)
        with running(context, "root"):  # bob's job waits: his choice is loaded only when it starts
            reply: dict = {}
            thread = threading.Thread(target=lambda: reply.update(
                r=bob.post("/sdapi/v1/txt2img", json={"prompt": "x", **SMALL})))
            thread.start()
            wait_for(lambda: any(job.owner == "bob" for job in context.jobs.waiting_jobs()))
            assert loaded() == "a"
        thread.join(WAIT)
        assert model_of(reply["r"]) == ("b", 2)
    finally:
        a_title = context.checkpoints.find("a").title
        context.user_choices.set("bob", {"sd_model_checkpoint": a_title, "CLIP_stop_at_last_layers": 1})
        context.models.load(a_title)


def test_a_user_may_not_change_global_settings(context, clients):
    bob, before = clients["bob"], dict(context.settings.current())
    own_before = context.user_choices.of("bob")
    assert_error(bob.post("/sdapi/v1/options", json={"samples_format": "jpg"}), 403, "'samples_format'",
                 "--admin-users")
    # All or nothing: his own key beside a global one is not stored either.
    assert_error(bob.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 3, "samples_format": "jpg"}),
                 403, "--admin-users")
    assert context.settings.current() == before and context.user_choices.of("bob") == own_before
    # A client posting back what GET showed changes nothing, and pins no choice of its own.
    shown = clients["carol"].get("/sdapi/v1/options").json()
    posted = clients["carol"].post("/sdapi/v1/options", json=shown)
    assert posted.status_code == 200, posted.text
    assert context.user_choices.of("carol") == {} and context.settings.current() == before


def test_override_settings_kept_afterwards_are_global_for_operators_only(context, clients):
    bob, before = clients["bob"], dict(context.settings.current())
    keep = {"prompt": "x", "override_settings_restore_afterwards": False, **SMALL}
    assert_error(bob.post("/sdapi/v1/txt2img", json={**keep, "override_settings": {"samples_format": "jpg"}}),
                 403, "samples_format", "--admin-users", "override_settings_restore_afterwards=true")
    assert context.settings.current() == before
    # His own clip skip, kept, becomes his choice, not the server's.
    info_of(clients["carol"].post("/sdapi/v1/txt2img",
                                  json={**keep, "override_settings": {"CLIP_stop_at_last_layers": 2}}))
    assert context.user_choices.of("carol") == {"CLIP_stop_at_last_layers": 2}
    assert context.settings.current() == before
    context.user_choices.set("carol", {"CLIP_stop_at_last_layers": before["CLIP_stop_at_last_layers"]})


@pytest.mark.parametrize(("method", "path", "body"), [
    ("post", "/sdapi/v1/reload-checkpoint", None),
    ("post", "/sdapi/v1/unload-checkpoint", None),
    ("post", "/sdapi/v1/merge-checkpoints", {"primary_model_name": "a", "secondary_model_name": "b"}),
    ("post", "/atelier/v1/models/downloads", {"source": "https://example.com/models/x.safetensors"}),
    ("post", "/atelier/v1/models/downloads/some-id/cancel", None),
    ("delete", "/atelier/v1/models/downloads/some-id", None),
    ("post", "/atelier/v1/models/cards", {"kind": "lora"}),
    ("post", "/atelier/v1/models/convert", {"name": "a", "tool": "fp16"}),
])
def test_operator_routes_refuse_other_users(context, clients, method, path, body):
    loaded = context.models.current_info()
    response = getattr(clients["bob"], method)(path, **({"json": body} if body is not None else {}))
    assert_error(response, 403, "--admin-users")
    assert context.models.current_info() == loaded


def test_the_operator_may_reload_and_change_global_settings(context, clients):
    root, before = clients["root"], context.settings.current()["samples_format"]
    assert root.post("/sdapi/v1/reload-checkpoint").status_code == 200
    assert root.post("/sdapi/v1/options", json={"samples_format": "jpg"}).status_code == 200
    try:
        assert context.settings.current()["samples_format"] == "jpg"
    finally:
        assert root.post("/sdapi/v1/options", json={"samples_format": before}).status_code == 200


def test_a_user_at_the_waiting_limit_gets_429_and_others_still_queue(context, clients):
    limit = context.settings.current()["multi_user_queue_limit"]
    assert limit > 0
    with running(context, "root"), ExitStack() as stack:
        for _ in range(limit):
            stack.enter_context(held_job(context, "bob"))
        body = assert_error(clients["bob"].post("/sdapi/v1/txt2img", json={"prompt": "x", **SMALL}), 429,
                            "'bob'", f"{limit} jobs waiting")
        assert body["error"] == "QueueFullError"
        image = png_base64(Image.new("RGB", (8, 8)))
        assert_error(clients["bob"].post("/sdapi/v1/extra-single-image", json={"image": image,
                                                                                "upscaler_1": "Lanczos"}), 429)
        assert sum(job.owner == "bob" for job in context.jobs.waiting_jobs()) == limit
        # The limit is per user: alice still gets a place in the queue.
        with held_job(context, "alice") as alices:
            assert alices.state.value == "queued"


def test_extras_run_as_the_callers_job(context, clients):
    image = png_base64(Image.new("RGB", (8, 8)))
    seen: list = []
    with running(context, "root"):
        thread = threading.Thread(target=lambda: seen.append(clients["bob"].post(
            "/sdapi/v1/extra-single-image", json={"image": image, "upscaler_1": "Lanczos", "upscaling_resize": 2})))
        thread.start()
        wait_for(lambda: any(job.kind == "extras" for job in context.jobs.waiting_jobs()))
        waiting = next(job for job in context.jobs.waiting_jobs() if job.kind == "extras")
        assert waiting.owner == "bob"
    thread.join(WAIT)
    assert seen[0].status_code == 200, seen[0].text


# -- a server without --multi-user: A1111's behaviour -----------------------------------------------------


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory):
    context = make_context(tmp_path_factory.mktemp("api-single-user"), args=auth_flags(), load=False)
    app = create_app(context, api=True)
    install_auth(app, context.args)
    yield context, {user: TestClient(app, headers=basic_auth(user, pw)) for user, pw in PASSWORDS.items()}
    context.jobs.shutdown(timeout=WAIT)


def test_without_multi_user_every_login_sees_and_controls_every_job(shared_server):
    context, clients = shared_server
    with running(context, None) as first, held_job(context, None) as second:
        listed = clients["bob"].get("/sdapi/v1/jobs").json()
        assert [job["id"] for job in listed][-2:] == [first.id, second.id]
        assert all(job["owner"] is None for job in listed)
        assert clients["bob"].get("/sdapi/v1/progress").json()["current_task"] == first.id
        assert clients["bob"].get(f"/sdapi/v1/jobs/{second.id}").json()["queue_position"] == 0
        assert clients["carol"].post("/sdapi/v1/options", json={"samples_format": "jpg"}).status_code == 200
        assert context.settings.current()["samples_format"] == "jpg"
        assert clients["carol"].post(f"/sdapi/v1/jobs/{second.id}/interrupt").json()["state"] == "interrupted"
        assert clients["bob"].post("/sdapi/v1/interrupt").status_code == 200
        assert first.interrupt_requested
