"""Generation and merge jobs on Ray workers (modules/cluster), on a local Ray started by the test:
`--ray-local 2` (two CPU workers, one torch thread each) on tiny SD1 checkpoints "a" and "b".

One cluster serves the whole module (starting Ray and loading a model in each worker takes seconds
on two cores); the test that kills a worker runs last. Results are compared with the embedded mode
on the same data folder under `torch.set_num_threads(1)`: a CPU worker runs torch with one thread,
and float sums over two threads can differ in the last bit.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
import torch

from modules.cluster.ray_runtime import RAY_REQUIREMENT, ray_installed
from modules.generation.engine import GenerationRequest
from modules.serving.generation_service import GenerationSubmission, submit_generation
from modules.serving.jobs import JobState
from tests.test_api_support import WAIT, make_context

pytestmark = pytest.mark.skipif(not ray_installed(),
                                reason=f"Ray is not installed (requirements-test.txt installs {RAY_REQUIREMENT})")

SMALL = {"width": 64, "height": 64, "sampler_name": "Euler"}
# CPU workers (two on a GPU machine too) and an embedded mode on the CPU, so that pixels compare.
CPU = ("--use-cpu", "all")
LONG = 150  # steps (the most a request may ask): seconds on a worker, time to act while it runs
XYZ = "X/Y/Z plot"


def request(**fields) -> GenerationRequest:
    return GenerationRequest(**{"prompt": "a red cube", "steps": 3, "seed": 5, **SMALL, **fields})


def wait_until(condition: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    """Poll `condition` (bounded by `timeout`, which never decides a result on a working pool)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def run(context, submission: GenerationSubmission):
    job = submit_generation(context, submission)
    assert job.wait(WAIT).finished, f"job {job.id} did not finish"
    assert job.state == JobState.DONE, (job.state, job.error)
    return job


def model_of(infotext: str) -> str:
    from modules.outputs.infotext import parse_generation_parameters

    return parse_generation_parameters(infotext)["Model"]


def workers(pool) -> dict:
    return {info.id: info for info in pool.describe()}


def all_idle(pool) -> bool:
    return all(info.state == "idle" for info in pool.describe())


def same_pixels(first, second) -> bool:
    return first.size == second.size and first.mode == second.mode and first.tobytes() == second.tobytes()


def xyz_args(x_type: str, x_values: str, y_type: str, y_values: str) -> tuple:
    """A1111's 18 positional X/Y/Z arguments (API order; tests/test_xyz_script.py): legend drawn, the
    cells' images returned after the grid ("include lone images"), no sub-grids, seeds fixed."""
    return (x_type, x_values, [], y_type, y_values, [], "Nothing", "", [], True, True, False, False, False,
            False, False, 0, False)


def with_extensions(context) -> None:
    """The enabled extensions (the X/Y/Z plot), loaded as webui.compose does."""
    import webui
    from modules.extension_host.environment import app_scope

    with app_scope(context):
        webui.load_extensions(context, context.args)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[tuple]:
    """(context, pool): a server context in Ray mode with two local CPU workers, both ready."""
    from modules.cluster.startup import start_workers
    from modules.extension_host.environment import app_scope

    data_dir = tmp_path_factory.mktemp("ray-cluster")
    context = make_context(data_dir, names=("a", "b"), args=[*CPU, "--ray-local", "2"], load=False, start_jobs=False)
    with_extensions(context)
    with app_scope(context):  # as webui.compose: the job threads inherit the scope
        pool = start_workers(context, context.args)
        try:
            context.jobs.start()
            pool.wait_ready(timeout=300)
            # As webui.start_model_stack: "a" is loaded on a worker and becomes the selected checkpoint,
            # the one a request that names none uses on every worker.
            context.load_startup_model()
            assert context.load_state.error is None, context.load_state.error
            assert context.current_checkpoint_info().name == "a.safetensors"
        except BaseException:
            context.jobs.shutdown(timeout=WAIT)
            pool.shutdown()
            raise
    try:
        yield context, pool
    finally:
        context.jobs.interrupt()
        context.jobs.shutdown(timeout=WAIT)
        pool.shutdown()


@contextmanager
def one_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def embedded(cluster) -> Iterator:
    """The embedded mode (no Ray) on the Ray server's data folder and checkpoints, with the extensions."""
    from modules.serving.app_context import AppContext
    from modules.serving.cmd_args import parse_args

    server, _ = cluster
    context = AppContext.from_args(parse_args(["--data-dir", str(server.paths.data_dir), "--no-demo-checkpoint", *CPU]))
    context.refresh()
    with_extensions(context)
    context.jobs.start()
    assert context.cluster is None
    try:
        yield context
    finally:
        context.jobs.shutdown(timeout=WAIT)


def test_batches_fan_out_over_both_workers_with_the_pixels_of_the_embedded_mode(cluster, embedded):
    context, pool = cluster
    wait_until(lambda: all_idle(pool), "both workers idle")
    before = {id: info.jobs_done for id, info in workers(pool).items()}
    submission = GenerationSubmission(request(seed=1234, n_iter=3), save=False)

    on_ray = run(context, submission).result
    with one_thread():
        alone = run(embedded, submission).result

    after = workers(pool)
    assert len(after) == 2 and all(after[id].jobs_done > before[id] for id in before), after
    assert on_ray.seeds == alone.seeds == [1234, 1235, 1236]
    assert len(on_ray.images) == len(alone.images) == 3
    assert all(same_pixels(mine, theirs) for mine, theirs in zip(on_ray.images, alone.images))
    assert on_ray.infotexts == alone.infotexts
    assert "Seed: 1235," in on_ray.infotexts[1]
    assert not same_pixels(on_ray.images[0], on_ray.images[1])  # the parts are not one picture thrice


def test_mixed_requests_for_two_checkpoints_cause_no_reloads_after_warm_up(cluster):
    context, pool = cluster
    cache = int(context.settings.current()["sd_checkpoints_limit"])
    assert cache == 1  # each worker keeps one model: only affinity avoids reloading

    def one(name: str) -> str:
        job = run(context, GenerationSubmission(request(override_settings={"sd_model_checkpoint": name}),
                                                save=False))
        return model_of(job.result.infotexts[0])

    assert (one("a"), one("b")) == ("a", "b")
    loads = sum(info.extra["model_loads"] for info in pool.describe())
    held = sorted(title.split(".")[0] for info in pool.describe() for title in info.loaded_checkpoints)
    assert held == ["a", "b"], pool.describe()
    # Not a strict alternation: a round robin over two workers would reload here (a on both, b on both).
    for name in ("a", "a", "b", "b", "a", "b"):
        assert one(name) == name
    assert sum(info.extra["model_loads"] for info in pool.describe()) == loads, pool.describe()


def test_an_xyz_grid_is_split_over_both_workers_and_equals_the_embedded_grid(cluster, embedded):
    from modules.extension_host.scripts import ScriptSelection

    context, pool = cluster
    wait_until(lambda: all_idle(pool), "both workers idle")
    before = {id: info.jobs_done for id, info in workers(pool).items()}
    selection = ScriptSelection(script=XYZ, script_args=xyz_args("Seed", "11, 12", "CFG Scale", "5, 9"))
    submission = GenerationSubmission(request(), selection=selection, save=False)

    on_ray = run(context, submission).result
    with one_thread():
        alone = run(embedded, submission).result

    after = workers(pool)
    assert all(after[id].jobs_done > before[id] for id in before), after
    assert len(on_ray.images) == len(alone.images) == 5  # the grid, then the 4 cells
    grid = on_ray.images[0]
    assert grid.width > 2 * 64 and grid.height > 2 * 64
    assert all(same_pixels(mine, theirs) for mine, theirs in zip(on_ray.images, alone.images))
    assert on_ray.infotexts == alone.infotexts
    assert [text.count("Seed: 11,") for text in on_ray.infotexts[1:]] == [1, 0, 1, 0]  # x (seed) inner


def test_interrupt_reaches_the_job_on_its_worker(cluster):
    context, pool = cluster
    job = submit_generation(context, GenerationSubmission(request(steps=LONG), save=False))
    wait_until(lambda: job.step > 0 or job.finished, "the job's first steps")
    assert not job.finished
    worker_id = next(info.id for info in pool.describe() if info.current_job == job.id)
    context.jobs.interrupt(job.id)
    assert job.wait(WAIT).state == JobState.INTERRUPTED
    # Stopped by the worker: its partial image says so, or none was made. A job whose worker never
    # heard of the interrupt would come back with all its steps done and `interrupted` unset.
    assert job.result is None or job.result.interrupted
    wait_until(lambda: workers(pool)[worker_id].state == "idle", f"{worker_id} idle again")
    assert workers(pool)[worker_id].last_error is None
    assert len(run(context, GenerationSubmission(request(), save=False)).result.images) == 1


def test_the_webuiapi_client_works_unchanged_against_ray_mode(cluster):
    import webuiapi

    from modules.api.server import create_app
    from tests.test_api_support import serving

    context, pool = cluster
    with serving(create_app(context, api=True)) as server:
        api = webuiapi.WebUIApi(host="127.0.0.1", port=server.port, sampler="Euler", steps=3)
        result = api.txt2img(prompt="a red cube", seed=77, n_iter=2, width=64, height=64, cfg_scale=5)
        assert result.info["all_seeds"] == [77, 78] and len(result.images) == 2
        assert all(image.size == (64, 64) for image in result.images)
        assert result.images[1].info["parameters"] == result.info["infotexts"][1]
        assert "Seed: 78," in result.info["infotexts"][1]

        assert api.get_options()["CLIP_stop_at_last_layers"] == 1
        api.set_options({"CLIP_stop_at_last_layers": 2})
        try:
            assert api.get_options()["CLIP_stop_at_last_layers"] == 2
            # The worker mirrors the server's settings before the job.
            assert "Clip skip: 2" in api.txt2img(prompt="x", width=64, height=64).info["infotexts"][0]
        finally:
            api.set_options({"CLIP_stop_at_last_layers": 1})
        assert "Clip skip" not in api.txt2img(prompt="x", width=64, height=64).info["infotexts"][0]

        # Progress of a running job comes back from its worker; then the API's interrupt stops it.
        long_job: dict = {}

        def long_request() -> None:
            try:
                long_job["result"] = api.txt2img(prompt="x", steps=LONG, width=64, height=64)
            except Exception as error:  # noqa: BLE001 - reported by the assertions below
                long_job["error"] = error

        thread = threading.Thread(target=long_request, daemon=True)
        thread.start()
        seen: list[dict] = []

        def progressing() -> bool:
            seen.append(api.get_progress())
            return "error" in long_job or (0 < seen[-1]["progress"] < 1 and seen[-1]["state"]["sampling_step"] > 0)

        wait_until(progressing, "progress from the worker")
        assert "error" not in long_job, long_job
        assert seen[-1]["state"]["sampling_steps"] == LONG and seen[-1]["current_task"] is not None
        api.interrupt()
        thread.join(WAIT)
        assert not thread.is_alive() and "result" in long_job, long_job
        assert long_job["result"].info["steps"] == LONG
    wait_until(lambda: all_idle(pool), "both workers idle")


def test_a_merge_runs_on_a_worker_and_is_listed_by_the_server(cluster):
    from modules.merging.merger import MergeRequest
    from modules.merging.service import submit_merge

    context, pool = cluster
    merge = MergeRequest(primary_model_name="a", secondary_model_name="b", interpolation_method="Weighted sum",
                         multiplier=0.5, custom_name="a_b_half")
    job = submit_merge(context, merge)
    assert job.wait(WAIT).state == JobState.DONE, job.error
    merged = job.result
    assert merged.path.is_file() and merged.path.parent == context.paths.checkpoints_dir
    assert merged.path in [info.filename for info in context.checkpoints.list()]
    # A client selects the merge by the title the merge returned (the API's MergeResponse.title).
    assert context.checkpoints.find(merged.title).filename == merged.path
    assert merged.title in [info.title for info in context.checkpoints.list()]
    # Every worker can use it (fanned out: both take a part), including the one that did not merge.
    wait_until(lambda: all_idle(pool), "both workers idle")
    result = run(context, GenerationSubmission(
        request(n_iter=2, override_settings={"sd_model_checkpoint": "a_b_half"}), save=False)).result
    assert [model_of(text) for text in result.infotexts] == ["a_b_half", "a_b_half"]


def test_a_worker_killed_mid_job_loses_nothing_and_comes_back(cluster):
    import ray

    context, pool = cluster
    wait_until(lambda: all_idle(pool), "both workers idle")
    victim = submit_generation(context, GenerationSubmission(request(steps=LONG, seed=4242), save=False))
    wait_until(lambda: victim.step > 0 or victim.finished, "the victim's first steps")
    assert not victim.finished
    killed = next(slot for slot in pool._slots if slot.current_job == victim.id)
    done_before = killed.jobs_done

    outcomes: list[tuple] = []
    lock = threading.Lock()
    go = threading.Barrier(9)

    def client(number: int) -> None:
        go.wait()
        for index in range(5):
            seed = 100 * number + index
            job = submit_generation(context, GenerationSubmission(request(steps=2, seed=seed), save=False))
            job.wait(WAIT)
            images = len(job.result.images) if job.result is not None else 0
            seeds = job.result.seeds if job.result is not None else []
            with lock:
                outcomes.append((seed, job.state, job.error, images, seeds))

    clients = [threading.Thread(target=client, args=(number,), daemon=True) for number in range(8)]
    for thread in clients:
        thread.start()
    go.wait()
    ray.kill(killed.actor, no_restart=False)  # the process dies; Ray starts it again

    assert victim.wait(WAIT).state == JobState.DONE, victim.error
    assert len(victim.result.images) == 1 and victim.result.seeds == [4242]
    lines = victim.info.get("lines", [])
    assert any(f"Worker {killed.id} was lost" in line and "running it again" in line for line in lines), lines
    for thread in clients:
        thread.join(WAIT)
    assert not any(thread.is_alive() for thread in clients)
    assert len(outcomes) == 40
    failed = [outcome for outcome in outcomes if outcome[1] != JobState.DONE or outcome[3] != 1]
    assert not failed, failed
    assert all(seeds == [seed] for seed, _, _, _, seeds in outcomes)

    # The killed worker comes back by itself and takes work again.
    wait_until(lambda: workers(pool)[killed.id].state == "idle", f"{killed.id} back", timeout=120)
    wait_until(lambda: all_idle(pool), "both workers idle")
    run(context, GenerationSubmission(request(n_iter=2), save=False))  # one part on each idle worker
    assert workers(pool)[killed.id].jobs_done > done_before
    assert pool.summary() == "2 workers, 0 busy"
