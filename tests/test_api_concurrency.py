"""Eight `webuiapi` clients × five txt2img requests at once against a tiny model: every request is
answered with its own images and seeds, none is lost, and the job ids show the FIFO order."""

from __future__ import annotations

import itertools
import threading

import pytest
import webuiapi  # the real A1111 client from PyPI (requirements-test.txt); never skipped

from modules.api.server import create_app
from modules.infotext_utils import parse_generation_parameters
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


def test_many_clients_at_once_each_get_their_own_answers_in_fifo_order(server_and_context):
    server, context = server_and_context
    barrier = threading.Barrier(CLIENTS)
    answers: dict[int, list] = {}
    failures: list[BaseException] = []

    def client(number: int) -> None:
        try:
            api = webuiapi.WebUIApi(host="127.0.0.1", port=server.port, sampler="Euler", steps=2)
            barrier.wait(WAIT)
            answers[number] = [api.txt2img(prompt=f"client {number}", seed=1000 * number + i, width=64, height=64)
                               for i in range(REQUESTS_PER_CLIENT)]
        except BaseException as e:  # noqa: BLE001 - reported below, with the others
            failures.append(e)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    assert not failures, failures
    assert sorted(answers) == list(range(CLIENTS))

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
