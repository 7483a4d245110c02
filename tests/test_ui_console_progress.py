"""Job-queue listeners and the console progress bar drawn from them."""

from __future__ import annotations

import io
import threading

import pytest

from modules.serving.console_progress import install_console_progress
from modules.serving.jobs import JobEvent

WAIT = 10.0


def test_listeners_see_start_steps_and_end(queue):
    events = []
    queue.add_listener(lambda event, job: events.append((event, job.id, job.step)))

    def work(control):
        for step in (1, 2, 3):
            control.report(step, 3)
        return "ok"

    job = queue.submit(work, kind="txt2img").wait(WAIT)
    assert job.result == "ok"
    finished = threading.Event()
    queue.add_listener(lambda event, _: event is JobEvent.FINISHED and finished.set())
    queue.submit(lambda control: None, kind="x")
    assert finished.wait(WAIT)
    mine = [(event, step) for event, job_id, step in events if job_id == job.id]
    assert mine == [(JobEvent.STARTED, 0), (JobEvent.PROGRESS, 1), (JobEvent.PROGRESS, 2), (JobEvent.PROGRESS, 3),
                    (JobEvent.FINISHED, 3)]


def test_a_failing_listener_does_not_break_jobs_and_cancelled_jobs_finish(queue, caplog):
    def broken(event, job):
        raise RuntimeError("listener bug")

    queue.add_listener(broken)
    seen = []
    queue.add_listener(lambda event, job: seen.append((event, job.id)))
    started, release = threading.Event(), threading.Event()
    blocker = queue.submit(lambda control: (started.set(), release.wait(WAIT)), kind="x")
    assert started.wait(WAIT)
    waiting = queue.submit(lambda control: None, kind="x")
    assert queue.interrupt(waiting.id)  # cancelled before it started
    release.set()
    assert blocker.wait(WAIT).state.value == "done"
    assert (JobEvent.FINISHED, waiting.id) in seen and (JobEvent.STARTED, waiting.id) not in seen
    assert "listener bug" in caplog.text
    queue.remove_listener(broken)
    with pytest.raises(TypeError):
        queue.add_listener("not callable")


def test_console_progress_draws_one_bar_per_job(queue):
    stream = io.StringIO()
    install_console_progress(queue, stream)

    def work(control):
        for step in range(1, 5):
            control.report(step, 5)  # the last step is not reported: the bar still ends full

    job = queue.submit(work, kind="txt2img").wait(WAIT)
    silent = queue.submit(lambda control: None, kind="checkpoint").wait(WAIT)
    done = threading.Event()
    queue.add_listener(lambda event, _: event is JobEvent.FINISHED and done.set())
    queue.submit(lambda control: None, kind="x")
    assert done.wait(WAIT)
    text = stream.getvalue()
    assert f"txt2img {job.id}" in text and "5/5" in text
    assert silent.id not in text  # a job without steps draws no bar
