"""`GET /atelier/v1/workers`: in the embedded mode the one in-process worker (idle, busy while a job
runs, its jobs done and last error, the checkpoints it holds, its device), in Ray mode the pool's
view as it gives it; served without --api, listed in /docs, behind the API's credentials."""

from __future__ import annotations

import dataclasses
import socket
import threading

import pytest
from fastapi.testclient import TestClient

from modules.api.routes_workers import PATH
from modules.api.server import create_app
from modules.cluster.types import EMBEDDED_WORKER_ID, WorkerInfo, workers_summary
from tests.test_api_support import WAIT, basic_auth, make_context


@pytest.fixture(scope="module")
def context(tmp_path_factory):
    context = make_context(tmp_path_factory.mktemp("workers-api"), ("a", "b"))
    yield context
    context.jobs.shutdown()


@pytest.fixture(scope="module")
def client(context):
    return TestClient(create_app(context, api=False))  # Atelier's own routes need no --api


def only_worker(client) -> dict:
    response = client.get(PATH)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["mode"] == "embedded"
    [worker] = body["workers"]
    assert worker["id"] == EMBEDDED_WORKER_ID
    return body | {"worker": worker}


def test_the_embedded_worker_is_idle_then_busy_while_a_job_runs(context, client):
    idle = only_worker(client)
    assert idle["summary"] == "1 worker, 0 busy"
    assert idle["worker"]["state"] == "idle" and idle["worker"]["current_job"] is None
    assert idle["worker"]["node"] == socket.gethostname()
    assert idle["worker"]["device"] == str(context.models.current().device)

    started, release = threading.Event(), threading.Event()

    def blocker(control):
        started.set()
        assert release.wait(WAIT)

    job = context.jobs.submit(blocker, kind="test", description="blocks until released")
    try:
        assert started.wait(WAIT)
        busy = only_worker(client)
        assert busy["summary"] == "1 worker, 1 busy"
        assert busy["worker"]["state"] == "busy" and busy["worker"]["current_job"] == job.id
    finally:
        release.set()
    job.wait(WAIT)
    after = only_worker(client)
    assert after["worker"]["state"] == "idle" and after["worker"]["current_job"] is None
    assert after["worker"]["jobs_done"] == idle["worker"]["jobs_done"] + 1


def test_a_failed_job_is_the_last_error_and_not_counted_as_done(context, client):
    before = only_worker(client)["worker"]

    def fail(message):
        def work(control):
            raise ValueError(message)
        return context.jobs.submit(work, kind="test").wait(WAIT)

    first = fail("first <b>failure</b>")
    second = fail("second failure")
    assert first.error != second.error  # so the test can tell which one is reported
    worker = only_worker(client)["worker"]
    assert worker["last_error"] == second.error and "second failure" in worker["last_error"]
    assert worker["jobs_done"] == before["jobs_done"]
    # A later success leaves the last error as it was: it is the newest *failed* job's.
    context.jobs.submit(lambda control: None, kind="test").wait(WAIT)
    worker = only_worker(client)["worker"]
    assert worker["last_error"] == second.error and worker["jobs_done"] == before["jobs_done"] + 1


def test_the_held_checkpoints_are_listed_most_recent_first(context, client):
    context.settings.apply({"sd_checkpoints_limit": 2})
    titles = {}
    for name in ("a", "b"):
        context.models.load(f"{name}.safetensors")
        titles[name] = context.models.current_info().title
    assert only_worker(client)["worker"]["loaded_checkpoints"] == [titles["b"], titles["a"]]
    context.models.load(titles["a"])  # cached: it becomes the most recently used
    assert only_worker(client)["worker"]["loaded_checkpoints"] == [titles["a"], titles["b"]]


def test_a_held_model_lock_does_not_make_the_route_wait(context, client):
    """A generation holds the model manager's lock from start to end: the route answers meanwhile,
    with every checkpoint held."""
    context.settings.apply({"sd_checkpoints_limit": 2})
    context.models.load("b.safetensors")
    context.models.load("a.safetensors")
    held = only_worker(client)["worker"]["loaded_checkpoints"]
    assert len(held) == 2
    holding, release = threading.Event(), threading.Event()

    def hold():
        with context.models.lock:
            holding.set()
            release.wait(WAIT)

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    try:
        assert holding.wait(WAIT)
        worker = only_worker(client)["worker"]
        assert worker["loaded_checkpoints"] == held
    finally:
        release.set()
        holder.join(WAIT)


def test_without_a_loaded_model_the_device_is_empty(tmp_path):
    context = make_context(tmp_path, (), load=False, start_jobs=False)
    worker = only_worker(TestClient(create_app(context, api=False)))["worker"]
    assert worker["device"] == "" and worker["loaded_checkpoints"] == [] and worker["jobs_done"] == 0
    assert worker["last_error"] is None and worker["state"] == "idle"


class FakeCluster:
    """What the route may call on a WorkerPool: describe() and summary()."""

    def __init__(self, workers: list[WorkerInfo]):
        self.workers = workers
        self.calls: list[str] = []

    def describe(self) -> list[WorkerInfo]:
        self.calls.append("describe")
        return list(self.workers)

    def summary(self) -> str:
        self.calls.append("summary")
        return workers_summary(self.workers)


RAY_WORKERS = [
    WorkerInfo("worker-0", "node-1", "cuda:0", "busy", ("b [2]", "a [1]"), current_job="job-7", jobs_done=4),
    WorkerInfo("worker-1", "node-2", "cpu", "idle", (), jobs_done=2, last_error="OSError: cannot read /m/x.ckpt",
               extra={"restarts": 1}),
    WorkerInfo("worker-2", "node-2", "", "dead", (), last_error="the node left the cluster"),
]


def test_ray_mode_answers_the_pools_view(context):
    cluster = FakeCluster(RAY_WORKERS)
    ray_context = dataclasses.replace(context)
    ray_context.cluster = cluster
    response = TestClient(create_app(ray_context, api=False)).get(PATH)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["mode"] == "ray"
    assert body["summary"] == "2 workers, 1 busy"  # the dead one is not counted
    assert body["workers"] == [worker.as_json() for worker in RAY_WORKERS]
    assert set(cluster.calls) == {"describe", "summary"}


def test_the_route_is_listed_in_the_docs_and_takes_the_api_credentials(context):
    from modules.api.auth import install_auth
    from modules.serving.cmd_args import parse_args

    args = parse_args(["--data-dir", str(context.paths.data_dir), "--nowebui", "--api-auth", "api:pw-api",
                       "--gradio-auth", "ui:pw-ui"])
    guarded = dataclasses.replace(context, args=args)
    app = create_app(guarded, api=True)
    install_auth(app, args)
    client = TestClient(app)
    assert client.get(PATH).status_code == 401
    assert client.get(PATH, headers=basic_auth("ui", "pw-ui")).status_code == 401
    assert client.get(PATH, headers=basic_auth("api", "wrong")).status_code == 401
    api = basic_auth("api", "pw-api")
    assert client.get(PATH, headers=api).json()["mode"] == "embedded"
    schema = client.get("/openapi.json", headers=api).json()
    assert "WorkersResponse" in str(schema["paths"][PATH]["get"]["responses"]["200"])
