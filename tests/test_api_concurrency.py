"""Eight `webuiapi` clients × five txt2img requests at once against a tiny model: every request is
answered with its own images and seeds, none is lost, and the job ids show the FIFO order."""

from __future__ import annotations

import itertools
import threading

import pytest
import webuiapi  # the real A1111 client from PyPI (requirements-test.txt); never skipped

from modules.api.server import create_app
from modules.outputs.infotext import parse_generation_parameters
from tests.test_api_support import WAIT, make_context, serving

CLIENTS = 8
REQUESTS_PER_CLIENT = 5


@pytest.fixture(scope="module")
def server_and_context(tmp_path_factory):
    context = make_context(tmp_path_factory.mktemp("api-concurrency"))
    try:
        with serving(create_app(context, api=True)) as server:
            yield server, context
    finally:
        context.jobs.shutdown(timeout=WAIT)


def run_clients(port: int, seed_base: int) -> dict[int, list]:
    """CLIENTS webuiapi clients started together, each sending REQUESTS_PER_CLIENT txt2img requests
    (prompt "client N", seed seed_base*N + i); their answers by client number. Fails on any error."""
    barrier = threading.Barrier(CLIENTS)
    answers: dict[int, list] = {}
    failures: list[BaseException] = []

    def client(number: int) -> None:
        try:
            api = webuiapi.WebUIApi(host="127.0.0.1", port=port, sampler="Euler", steps=2)
            barrier.wait(WAIT)
            answers[number] = [api.txt2img(prompt=f"client {number}", seed=seed_base * number + i, width=64,
                                           height=64) for i in range(REQUESTS_PER_CLIENT)]
        except BaseException as e:  # noqa: BLE001 - reported below, with the others
            failures.append(e)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    assert not failures, failures
    assert sorted(answers) == list(range(CLIENTS))
    return answers


def test_many_clients_at_once_each_get_their_own_answers_in_fifo_order(server_and_context):
    server, context = server_and_context
    answers = run_clients(server.port, seed_base=1000)

    job_ids = []
    for number, results in answers.items():
        assert len(results) == REQUESTS_PER_CLIENT
        for i, result in enumerate(results):
            seed = 1000 * number + i
            assert result.info["all_seeds"] == [seed] and result.info["prompt"] == f"client {number}"
            assert len(result.images) == 1 and result.image.size == (64, 64)
            parameters = parse_generation_parameters(result.image.info["parameters"])
            assert parameters["Seed"] == str(seed) and parameters["Prompt"] == f"client {number}"
            job_ids.append(result.info["job_id"])
    assert len(set(job_ids)) == CLIENTS * REQUESTS_PER_CLIENT  # none lost, none answered twice

    # FIFO: ids are handed out in submission order, and each job started after the previous one ended.
    jobs = [context.jobs.get(job_id) for job_id in sorted(job_ids)]
    assert all(job.state == "done" for job in jobs)
    for earlier, later in itertools.pairwise(jobs):
        assert earlier.finished_at <= later.started_at
    distinct_images = {result.image.tobytes() for results in answers.values() for result in results}
    assert len(distinct_images) == CLIENTS * REQUESTS_PER_CLIENT  # 40 seeds, 40 different pictures


def test_broken_files_sorting_first_do_not_stop_generation(tmp_path):
    """An interrupted download and a garbage file sort before the only good checkpoint, and nothing is
    chosen: the start-up load (running in the background, as the server starts it) skips them, every
    request naming no checkpoint is served by the good one, and a request naming a broken file gets a
    422 that says why and what to do."""
    from modules.api.server import start_background_load
    from tests.test_checkpoint_problems import GARBAGE, GOOD, TRUNCATED, write_library

    write_library(tmp_path / "models" / "Stable-diffusion", broken=(TRUNCATED, GARBAGE))
    context = make_context(tmp_path, names=(), load=False)
    assert [info.name for info in context.checkpoints.list()] == [TRUNCATED, GARBAGE, GOOD]
    try:
        with serving(create_app(context, api=True)) as server:
            start_background_load(context)  # requests may arrive while it runs
            answers = run_clients(server.port, seed_base=100)
            results = [result for number in sorted(answers) for result in answers[number]]
            assert len(results) == CLIENTS * REQUESTS_PER_CLIENT
            assert all(len(result.images) == 1 for result in results)
            assert {parse_generation_parameters(r.image.info["parameters"])["Model"] for r in results} == {"good"}
            assert {s.title for s in context.load_state.skipped} == {TRUNCATED, GARBAGE}

            api = webuiapi.WebUIApi(host="127.0.0.1", port=server.port, sampler="Euler", steps=2)
            with pytest.raises(RuntimeError) as refused:
                api.txt2img(prompt="x", width=64, height=64, override_settings={"sd_model_checkpoint": TRUNCATED})
            status, body = refused.value.args
            assert status == 422 and "cannot be loaded" in body and "truncated" in body
            assert "Replace or delete the file" in body and GOOD in body
            response = api.session.post(f"{api.baseurl}/options", json={"sd_model_checkpoint": GARBAGE})
            assert response.status_code == 422 and "cannot be loaded" in response.json()["detail"]
            assert context.models.current_info().name == GOOD  # nothing changed
    finally:
        context.jobs.shutdown(timeout=WAIT)
