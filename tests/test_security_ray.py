"""Attacks on the Ray mode (`--ray-local 2`, modules/cluster), as
- an anonymous network client: Ray's own ports (every one must be on loopback), `/atelier/v1/workers`
  without the API's credentials;
- a logged-in API user who is not the operator: checkpoint overrides that are paths, output-folder
  overrides, a huge batch count, a merge named "../x", error texts that could leak the server's
  paths or the run's Ray token; the answers are compared with the embedded mode's on the same data
  folder (the Ray mode must refuse exactly what the embedded mode refuses);
- another local OS user process: a Ray driver without the run's token must not join the cluster, and
  the token must be in no file, no process's command line (both readable by other local users) and no
  API answer; Ray's session folder must not be open to them.
Known holes are strict xfails (reason "HOLE: ...").
And a worker killed twice under one job: the job fails with both reasons, nothing stays stuck.

One local cluster serves the module (as tests/test_cluster_ray.py); the double kill runs last.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import torch
import pytest
from fastapi.testclient import TestClient
from safetensors.torch import save_file

from modules.cluster.ray_runtime import RAY_REQUIREMENT, ray_installed
from modules.generation.engine import GenerationRequest
from modules.serving.generation_service import GenerationSubmission, submit_generation
from modules.serving.jobs import JobState
from tests.test_api_support import WAIT, basic_auth, make_context

pytestmark = pytest.mark.skipif(not ray_installed(),
                                reason=f"Ray is not installed (requirements-test.txt installs {RAY_REQUIREMENT})")

CPU = ("--use-cpu", "all")
SMALL = {"width": 64, "height": 64, "sampler_name": "Euler", "steps": 1}
LONG = 150
API_PASSWORD = "ray-api-pw"
HOME_TOKEN = Path.home() / ".ray" / "auth_token"


def wait_until(condition, what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _file_state(path: Path):
    try:
        return path.stat().st_mtime_ns, path.read_bytes()
    except FileNotFoundError:
        return None


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(self.format(record))
        except Exception:  # noqa: BLE001 - a record that does not format is no leak
            pass


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """(context, pool, token, home_token_before, log_lines): the server in Ray mode, two CPU workers,
    with the token this run gave Ray (read from the server's environment while the cluster runs)."""
    from modules.cluster.startup import start_workers
    from modules.extension_host.environment import app_scope

    home_before = _file_state(HOME_TOKEN)
    records = _Records()
    root = logging.getLogger()
    root.addHandler(records)
    data_dir = tmp_path_factory.mktemp("ray-security")
    context = make_context(data_dir, names=("a", "b"), args=[*CPU, "--ray-local", "2"], load=False, start_jobs=False)
    try:
        with app_scope(context):
            pool = start_workers(context, context.args)
            token = os.environ.get("RAY_AUTH_TOKEN", "")
            try:
                context.jobs.start()
                pool.wait_ready(timeout=300)
                context.load_startup_model()
                assert context.load_state.error is None, context.load_state.error
            except BaseException:
                context.jobs.shutdown(timeout=WAIT)
                pool.shutdown()
                raise
        yield context, pool, token, home_before, records.lines
    finally:
        root.removeHandler(records)
    context.jobs.interrupt()
    context.jobs.shutdown(timeout=WAIT)
    pool.shutdown()


@pytest.fixture(scope="module")
def embedded(cluster):
    """The embedded mode on the same data folder (no Ray): what the Ray mode is compared with."""
    from modules.serving.app_context import AppContext
    from modules.serving.cmd_args import parse_args

    server = cluster[0]
    context = AppContext.from_args(parse_args(["--data-dir", str(server.paths.data_dir), "--no-demo-checkpoint", *CPU]))
    context.refresh()
    context.jobs.start()
    yield context
    context.jobs.shutdown(timeout=WAIT)


@pytest.fixture(scope="module")
def ray_api(cluster):
    from modules.api.server import create_app

    with TestClient(create_app(cluster[0], api=True)) as client:
        yield client


@pytest.fixture(scope="module")
def embedded_api(embedded):
    from modules.api.server import create_app

    with TestClient(create_app(embedded, api=True)) as client:
        yield client


def ray_processes() -> list[psutil.Process]:
    """The processes this server started for Ray (GCS, raylet, workers, ...): its descendants."""
    return psutil.Process().children(recursive=True)


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1, or 127.x written as an IPv4-mapped IPv6 address (::ffff:127.0.0.1)."""
    address = ipaddress.ip_address(host.split("%")[0])
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or (mapped is not None and mapped.is_loopback)


def txt2img(client, **fields):
    return client.post("/sdapi/v1/txt2img", json={"prompt": "a red cube", **SMALL, **fields})


# -- (a) an anonymous network client ----------------------------------------------------------------

def test_every_listening_socket_of_the_local_ray_is_on_loopback(cluster):
    processes = ray_processes()
    names = {process.name() for process in processes}
    assert any("gcs_server" in name for name in names) and any("raylet" in name for name in names), names
    listening = []
    for process in processes:
        try:
            connections = process.net_connections(kind="inet")
        except psutil.NoSuchProcess:
            continue
        listening += [(process.name(), conn.laddr) for conn in connections if conn.status == psutil.CONN_LISTEN]
    assert len(listening) >= 2, listening  # GCS and raylet at least: the scan saw the servers
    exposed = [(name, addr) for name, addr in listening if not is_loopback(addr.ip)]
    assert not exposed, f"Ray listens beyond loopback: {exposed}"


def test_the_workers_route_needs_the_api_credentials(cluster):
    import webui
    from modules.api.routes_workers import PATH
    from modules.serving.cmd_args import parse_args

    context = cluster[0]
    args = parse_args(["--data-dir", str(context.paths.data_dir), "--nowebui", "--api-auth", f"api:{API_PASSWORD}",
                       "--skip-load-model-at-start", *CPU])
    client = TestClient(webui.build_app(args, dataclasses.replace(context, args=args)))
    assert client.get(PATH).status_code == 401
    assert client.get(PATH, headers=basic_auth("api", "wrong")).status_code == 401
    answer = client.get(PATH, headers=basic_auth("api", API_PASSWORD))
    assert answer.status_code == 200, answer.text
    assert answer.json()["mode"] == "ray" and len(answer.json()["workers"]) == 2
    assert API_PASSWORD not in answer.text


# -- (c) another local OS user process --------------------------------------------------------------

_DRIVER = r"""
import os, sys
import ray
try:
    ray.init(address=sys.argv[1], _node_ip_address="127.0.0.1", namespace="atelier", logging_level="ERROR",
             log_to_driver=False)
    print("CONNECTED", flush=True)
    pid = ray.get(ray.remote(num_cpus=0)(lambda: os.getpid()).remote(), timeout=60)
    print("RAN", pid, flush=True)
except BaseException as e:
    print("REFUSED", type(e).__name__, str(e)[:300].replace("\n", " "), flush=True)
"""


def _gcs_address() -> str:
    import ray

    node = ray._private.worker._global_node
    return node.gcs_address


def test_a_ray_driver_without_the_run_token_cannot_join(cluster, tmp_path):
    _, _, token, _, _ = cluster
    assert len(token) >= 32  # the run has a token of its own
    address = _gcs_address()
    home = tmp_path / "home"  # another user's home: no ~/.ray/auth_token of the operator
    home.mkdir()
    base = {key: value for key, value in os.environ.items() if not key.startswith("RAY_")}
    base.update(HOME=str(home), RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    attempts = {
        "with the token (control)": {**base, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token},
        "no token": base,
        "auth turned off": {**base, "RAY_AUTH_MODE": "disabled"},
        "a wrong token": {**base, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * len(token)},
    }
    running = {what: subprocess.Popen([sys.executable, "-c", _DRIVER, address], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True)
               for what, env in attempts.items()}
    outputs = {}
    for what, process in running.items():
        try:
            outputs[what] = process.communicate(timeout=90)[0]
        except subprocess.TimeoutExpired:
            process.kill()
            outputs[what] = "TIMEOUT " + (process.communicate()[0] or "")
    assert "RAN" in outputs["with the token (control)"], outputs["with the token (control)"][-2000:]
    for what in ("no token", "auth turned off", "a wrong token"):
        assert "CONNECTED" not in outputs[what] and "RAN" not in outputs[what], (what, outputs[what][-2000:])


def test_the_run_token_is_written_nowhere(cluster):
    import ray

    context, _, token, home_before, log_lines = cluster
    assert token
    assert _file_state(HOME_TOKEN) == home_before  # ~/.ray/auth_token neither created nor changed
    config = context.settings.path
    assert not config.exists() or token not in config.read_text(encoding="utf-8")
    assert not any(token in line for line in log_lines)
    # Command lines are readable by every local user (ps): the token must not be on any.
    for process in psutil.process_iter(["cmdline"]):
        assert token not in " ".join(process.info["cmdline"] or ()), process
    # Ray's session folder (/tmp/ray/session_*: logs, sockets, metadata) and the data folder.
    session = Path(ray._private.worker._global_node.get_session_dir_path())
    assert any(path.is_file() for path in (session / "logs").iterdir())  # the scan has something to read
    for folder in (session, context.paths.data_dir):
        for path in folder.rglob("*"):
            if path.is_file() and not path.is_symlink():
                try:
                    assert token.encode() not in path.read_bytes(), path
                except (PermissionError, OSError):
                    continue


def test_the_ray_session_folder_is_private_to_the_servers_user(cluster):
    """Ray makes its session folders writable by everyone; they live in a folder only the server's
    user can enter (ray_runtime.private_temp_dir), so nobody else reaches them."""
    import ray

    session = Path(ray._private.worker._global_node.get_session_dir_path())
    # Every way from / to the session's files passes a folder only this user may enter.
    guards = [folder for folder in session.parents
              if folder.stat().st_uid == os.getuid() and not folder.stat().st_mode & 0o077]
    assert guards, [f"{oct(folder.stat().st_mode & 0o7777)} {folder}" for folder in session.parents]
    assert Path("/tmp/ray") not in (session, *session.parents)
    for path in (session / "logs", session / "sockets"):
        assert guards[0] in path.parents


def test_no_api_answer_carries_the_run_token(cluster, ray_api):
    token = cluster[2]
    schema = ray_api.get("/openapi.json")
    assert schema.status_code == 200 and token not in schema.text
    paths = sorted(path for path, methods in schema.json()["paths"].items() if "get" in methods and "{" not in path)
    assert "/atelier/v1/workers" in paths and "/sdapi/v1/cmd-flags" in paths, paths
    for path in paths:
        assert token not in ray_api.get(path).text, path


# -- (b) a logged-in API user who is not the operator ------------------------------------------------

def _jobs_and_done(context, pool):
    return len(context.jobs.jobs()), sum(info.jobs_done for info in pool.describe())


def test_checkpoint_overrides_that_are_paths_are_refused_as_in_the_embedded_mode(cluster, embedded, ray_api,
                                                                                  embedded_api):
    context, pool, _, _, _ = cluster
    folder = context.paths.checkpoints_dir
    link = folder / "passwd.safetensors"  # an operator's stray link; a user can only name it
    link.symlink_to("/etc/passwd")
    try:
        context.refresh()
        embedded.refresh()
        for name in ("/etc/passwd", "../../etc/passwd", "../../../../../../etc/passwd", "passwd", "passwd.safetensors",
                     str(folder / ".." / ".." / ".." / "etc" / "passwd"), "a/../../../etc/passwd"):
            before = _jobs_and_done(context, pool)
            on_ray = txt2img(ray_api, override_settings={"sd_model_checkpoint": name})
            alone = txt2img(embedded_api, override_settings={"sd_model_checkpoint": name})
            assert on_ray.status_code == alone.status_code, (name, on_ray.text, alone.text)
            assert on_ray.status_code in (404, 422), (name, on_ray.text)
            assert on_ray.json()["error"] == alone.json()["error"], (name, on_ray.text, alone.text)
            assert "root:" not in on_ray.text, (name, on_ray.text)
            # Refused on the server, before the queue: no worker saw the name.
            assert _jobs_and_done(context, pool) == before, name
    finally:
        link.unlink()
        context.refresh()
        embedded.refresh()


def test_output_folder_overrides_are_refused_as_in_the_embedded_mode(cluster, ray_api, embedded_api, tmp_path):
    context, pool, _, _, _ = cluster
    outside = tmp_path / "outside"
    for value in (str(outside), "../../../" + outside.name, "/etc"):
        for key in ("outdir_txt2img_samples", "outdir_samples", "outdir_txt2img_grids", "outdir_save"):
            before = _jobs_and_done(context, pool)
            fields = {"override_settings": {key: value}, "save_images": True, "n_iter": 2}
            on_ray, alone = txt2img(ray_api, **fields), txt2img(embedded_api, **fields)
            assert on_ray.status_code == alone.status_code == 422, (key, value, on_ray.text, alone.text)
            assert on_ray.json()["errors"] == alone.json()["errors"]
            assert _jobs_and_done(context, pool) == before
    assert not outside.exists()
    # Nothing was written outside the data folder's outputs by a worker either.
    assert not (context.paths.data_dir.parent / outside.name).exists()


def test_a_huge_batch_count_is_refused_and_a_big_one_fans_out_on_at_most_32_threads(cluster, ray_api, embedded_api):
    context, pool, _, _, _ = cluster
    for fields in ({"n_iter": 1000}, {"n_iter": 100, "batch_size": 9}, {"n_iter": -1}):
        on_ray, alone = txt2img(ray_api, **fields), txt2img(embedded_api, **fields)
        assert on_ray.status_code == alone.status_code == 422, (fields, on_ray.text)
    wait_until(lambda: all(info.state == "idle" for info in pool.describe()), "both workers idle")
    count = 36  # more parts than the fan-out's thread cap
    most, done = [0], threading.Event()

    def watch() -> None:
        while not done.is_set():
            most[0] = max(most[0], sum(1 for t in threading.enumerate() if t.name.startswith("ray-fanout")))
            time.sleep(0.005)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        job = submit_generation(context, GenerationSubmission(GenerationRequest(prompt="x", seed=3, n_iter=count,
                                                                                 **SMALL), save=False))
        assert job.wait(WAIT).state == JobState.DONE, job.error
    finally:
        done.set()
        watcher.join(WAIT)
    assert len(job.result.images) == count and job.result.seeds == list(range(3, 3 + count))
    assert 2 <= most[0] <= 32, most[0]  # fanned out, and bounded


def test_a_merge_named_with_a_path_is_refused_before_any_job(cluster, embedded, tmp_path):
    """The Checkpoint Merger tab's Custom Name (and the API's `custom_name`) is a file name: one that
    climbs out of the checkpoint folder is refused where the request is made, in both modes."""
    from pydantic import ValidationError

    from modules.merging.merger import MergeRequest

    for target in (cluster[0], embedded):
        climb = Path(os.path.relpath(tmp_path, target.paths.checkpoints_dir)) / "escaped"
        for name in (str(climb), "/tmp/escaped", "sub\\escaped", ".."):
            with pytest.raises(ValidationError, match="custom_name"):
                MergeRequest(primary_model_name="a", secondary_model_name="b", multiplier=0.5, custom_name=name)
    assert not any(tmp_path.iterdir())


def test_a_worker_error_shows_no_more_of_the_server_than_the_embedded_mode(cluster, embedded, ray_api, embedded_api):
    """A checkpoint that does not load (a broken file on the shared folder): the API's error and the
    worker's `last_error` in /atelier/v1/workers, against the embedded mode's."""
    from modules.api.routes_workers import PATH

    context, pool, token, _, _ = cluster
    broken = context.paths.checkpoints_dir / "broken.safetensors"
    # A valid safetensors file (the server lists it) that is no Stable Diffusion model: it fails on
    # the worker, while loading.
    save_file({"not.a.unet": torch.zeros(4)}, str(broken))
    try:
        context.refresh()
        embedded.refresh()
        on_ray = txt2img(ray_api, override_settings={"sd_model_checkpoint": "broken"})
        alone = txt2img(embedded_api, override_settings={"sd_model_checkpoint": "broken"})
        assert on_ray.status_code == alone.status_code and on_ray.status_code >= 400, (on_ray.text, alone.text)
        assert "Traceback" not in on_ray.text and "ray." not in on_ray.json()["errors"], on_ray.text
        workers = ray_api.get(PATH).json()
        errors = [worker["last_error"] for worker in workers["workers"] if worker["last_error"]]
        assert errors, workers
        [embedded_error] = [worker["last_error"] for worker in embedded_api.get(PATH).json()["workers"]]
        # The same words as the embedded mode (its error names the file in the model folder, which a
        # logged-in user sees there too): nothing of Ray, the worker's environment or the token added.
        assert on_ray.json()["error"] == alone.json()["error"]
        assert on_ray.json()["errors"] == alone.json()["errors"], (on_ray.text, alone.text)
        assert errors == [embedded_error], (errors, embedded_error)
        for text in (on_ray.text, *errors):
            assert token not in text
            assert "RAY_" not in text and "PYTHONPATH" not in text and "Traceback" not in text, text
    finally:
        broken.unlink()
        context.refresh()
        embedded.refresh()


# -- last: a job lost twice ----------------------------------------------------------------------------

def test_a_job_whose_worker_is_killed_twice_fails_with_both_reasons_and_nothing_stays_stuck(cluster):
    import ray

    context, pool, _, _, _ = cluster
    wait_until(lambda: all(info.state == "idle" for info in pool.describe()), "both workers idle")
    job = submit_generation(context, GenerationSubmission(
        GenerationRequest(prompt="x", **{**SMALL, "steps": LONG}, seed=9), save=False))

    def runner(avoid: str | None = None):
        return next((slot for slot in pool._slots if slot.current_job == job.id and slot.id != avoid), None)

    wait_until(lambda: runner() is not None or job.finished, "the job on a worker")
    first = runner()
    assert first is not None and not job.finished, job.error
    ray.kill(first.actor, no_restart=False)
    wait_until(lambda: runner(avoid=first.id) is not None or job.finished, "the job run again on the other worker")
    second = runner(avoid=first.id)
    assert second is not None and not job.finished, (job.state, job.error)
    ray.kill(second.actor, no_restart=False)

    assert job.wait(WAIT).state == JobState.FAILED, (job.state, job.error)
    assert "lost twice" in job.error and first.id in job.error and second.id in job.error, job.error
    # Both workers come back by themselves and the queue goes on.
    wait_until(lambda: all(info.state == "idle" for info in pool.describe()), "both workers back", timeout=180)
    after = submit_generation(context, GenerationSubmission(GenerationRequest(prompt="y", **SMALL), save=False))
    assert after.wait(WAIT).state == JobState.DONE, after.error
    assert context.jobs.current() is None
