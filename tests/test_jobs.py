"""The job queue with fake work functions: events order the threads, no timing is asserted.

`WAIT` only bounds how long a broken test may hang; it never decides a result.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from modules.serving.jobs import Job, JobControl, JobInterrupted, JobQueue, JobState

WAIT = 10.0


def wait_for(event: threading.Event) -> None:
    assert event.wait(WAIT), "a worker step never happened"


def wait_until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, "condition never became true"
        time.sleep(0.001)


def blocking_job(started: threading.Event, release: threading.Event, result: Any = "blocker") -> Callable[[JobControl], Any]:
    def work(control: JobControl) -> Any:
        started.set()
        wait_for(release)
        return result
    return work


def test_fifo_with_concurrent_submitters(queue: JobQueue) -> None:
    executed: list[str] = []
    jobs: dict[tuple[int, int], Job] = {}
    jobs_lock = threading.Lock()
    barrier = threading.Barrier(8)

    def make_work(thread_no: int, job_no: int) -> Callable[[JobControl], Any]:
        def work(control: JobControl) -> Any:
            executed.append(control.job_id)  # only the worker appends: no lock needed
            return (thread_no, job_no)
        return work

    def submitter(thread_no: int) -> None:
        barrier.wait(WAIT)
        for job_no in range(5):
            job = queue.submit(make_work(thread_no, job_no), kind="test", description=f"{thread_no}/{job_no}")
            with jobs_lock:
                jobs[(thread_no, job_no)] = job

    threads = [threading.Thread(target=submitter, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)

    assert len(jobs) == 40
    for (thread_no, job_no), job in jobs.items():
        assert job.wait(WAIT).state is JobState.DONE
        assert job.result == (thread_no, job_no)
    assert len(executed) == 40 and len(set(executed)) == 40
    assert executed == sorted(executed, key=lambda job_id: int(job_id.split("-")[1]))
    assert sorted(executed) == sorted(job.id for job in jobs.values())
    # Each submitter's own jobs keep their order too.
    for thread_no in range(8):
        ids = [jobs[(thread_no, job_no)].id for job_no in range(5)]
        assert ids == sorted(ids)
    assert queue.pending_count() == 0


def test_progress_eta_and_queue_position(queue: JobQueue) -> None:
    started, reported, release, release_first = (threading.Event() for _ in range(4))

    def work(control: JobControl) -> str:
        started.set()
        wait_for(release_first)
        control.add_info("a warning")
        control.set_info("job_no", 0)
        time.sleep(0.002)  # elapsed time must be measurable for an ETA; not asserted
        control.report(1, 4)
        reported.set()
        wait_for(release)
        control.report(4, 4)
        return "ok"

    job = queue.submit(work, kind="txt2img", description="progress")
    second = queue.submit(lambda control: "second", kind="txt2img")
    wait_for(started)
    assert job.state is JobState.RUNNING and job.started_at is not None
    assert job.queue_position is None and second.queue_position == 0
    assert queue.current() is job and queue.pending_count() == 1
    assert job.eta_seconds is None and job.progress == 0.0
    release_first.set()

    wait_for(reported)
    assert (job.step, job.total_steps, job.progress) == (1, 4, 0.25)
    eta = job.eta_seconds
    assert eta is not None and eta >= 0.0
    assert job.info == {"lines": ["a warning"], "job_no": 0}
    release.set()

    assert job.wait(WAIT).state is JobState.DONE
    assert job.result == "ok" and job.progress == 1.0 and job.eta_seconds is None and job.error is None
    assert job.created_at <= job.started_at <= job.finished_at
    assert second.wait(WAIT).result == "second"
    assert [j.id for j in queue.jobs()] == [job.id, second.id]


def test_interrupt_running_job_keeps_partial_result(queue: JobQueue) -> None:
    reached, release = threading.Event(), threading.Event()
    steps_run: list[int] = []

    def work(control: JobControl) -> list[int]:
        try:
            for step in range(1000):
                control.check()
                steps_run.append(step)
                control.report(step + 1, 1000)
                if step == 2:
                    reached.set()
                    wait_for(release)
        except JobInterrupted:
            pass  # keep the finished steps, as a txt2img keeps its finished images
        return list(steps_run)

    job = queue.submit(work, kind="txt2img")
    wait_for(reached)
    assert queue.interrupt() is True
    release.set()

    assert job.wait(WAIT).state is JobState.INTERRUPTED
    assert steps_run == [0, 1, 2]  # check() raised at the very next step
    assert job.result == [0, 1, 2]
    assert job.interrupt_requested
    assert queue.interrupt(job.id) is False  # already finished


def test_uncaught_interrupt_passes_broad_except(queue: JobQueue) -> None:
    reached, release = threading.Event(), threading.Event()

    def work(control: JobControl) -> str:
        reached.set()
        wait_for(release)
        try:
            control.check()
        except Exception:  # noqa: BLE001 - an extension's broad except must not swallow the interrupt
            return "swallowed"
        return "not interrupted"

    job = queue.submit(work, kind="txt2img")
    wait_for(reached)
    assert queue.interrupt(job.id) is True
    release.set()
    assert job.wait(WAIT).state is JobState.INTERRUPTED
    assert job.result is None and job.error is None


def test_cancel_queued_job(queue: JobQueue) -> None:
    started, release = threading.Event(), threading.Event()
    ran: list[str] = []
    blocker = queue.submit(blocking_job(started, release), kind="test")
    cancelled = queue.submit(lambda control: ran.append("cancelled"), kind="test")
    after = queue.submit(lambda control: ran.append("after") or "after", kind="test")
    wait_for(started)
    assert after.queue_position == 1

    assert queue.interrupt(cancelled.id) is True
    assert cancelled.wait(0).state is JobState.INTERRUPTED
    assert cancelled.started_at is None and cancelled.finished_at is not None
    assert after.queue_position == 0 and queue.pending_count() == 1
    assert blocker.state is JobState.RUNNING and not blocker.interrupt_requested
    release.set()

    assert blocker.wait(WAIT).state is JobState.DONE
    assert after.wait(WAIT).result == "after"
    assert ran == ["after"]
    assert queue.interrupt("task-does-not-exist") is False


def test_skip_moves_to_next_image(queue: JobQueue) -> None:
    reached, release = threading.Event(), threading.Event()

    def work(control: JobControl) -> list[int]:
        steps_per_image: list[int] = []
        for image in range(3):
            done = 0
            for step in range(5):
                control.check()
                if control.consume_skip():
                    break
                done += 1
                control.report(image * 5 + step + 1, 15)
                if image == 0 and step == 1:
                    reached.set()
                    wait_for(release)
            steps_per_image.append(done)
        return steps_per_image

    assert queue.skip() is False  # nothing running
    job = queue.submit(work, kind="txt2img")
    wait_for(reached)
    assert queue.skip() is True
    release.set()
    assert job.wait(WAIT).state is JobState.DONE
    assert job.result == [2, 5, 5]  # only the first image was cut short


def test_skip_flag_is_visible_until_consumed(queue: JobQueue) -> None:
    reached, release = threading.Event(), threading.Event()

    def work(control: JobControl) -> tuple[bool, bool, bool, bool]:
        reached.set()
        wait_for(release)
        return control.skip_requested, control.consume_skip(), control.skip_requested, control.interrupted

    job = queue.submit(work, kind="txt2img")
    wait_for(reached)
    assert queue.skip(job.id) is True
    release.set()
    assert job.wait(WAIT).result == (True, True, False, False)


def test_failing_job_then_next_job_runs(queue: JobQueue, caplog: pytest.LogCaptureFixture) -> None:
    def failing(control: JobControl) -> None:
        raise ValueError("bad seed 'abc'")

    def bad_report(control: JobControl) -> None:
        control.report(1, 0)

    failed = queue.submit(failing, kind="txt2img")
    bad = queue.submit(bad_report, kind="txt2img")
    next_job = queue.submit(lambda control: 42, kind="txt2img")

    assert failed.wait(WAIT).state is JobState.FAILED
    assert failed.error == "ValueError: bad seed 'abc'" and failed.result is None
    assert bad.wait(WAIT).state is JobState.FAILED and bad.error.startswith("ValueError: report(")
    assert next_job.wait(WAIT).result == 42 and next_job.state is JobState.DONE
    assert "bad seed" in caplog.text and "Traceback" in caplog.text


def test_failing_preview_does_not_fail_the_job() -> None:
    q = JobQueue("preview-fail", preview_every_steps=1)
    q.start()
    try:
        def broken_preview() -> Any:
            raise RuntimeError("decode failed")

        def work(control: JobControl) -> str:
            for step in range(3):
                control.report(step + 1, 3, broken_preview)
            return "images"

        job = q.submit(work, kind="txt2img")
        assert job.wait(WAIT).state is JobState.DONE and job.result == "images"
        assert job.preview is None
        assert q.submit(lambda control: "next", kind="txt2img").wait(WAIT).result == "next"
    finally:
        q.shutdown()


def test_preview_is_made_only_when_asked(queue: JobQueue) -> None:
    first, second, release_first, release_second = (threading.Event() for _ in range(4))
    made: list[int] = []

    def factory_for(step: int) -> Callable[[], str]:
        def make() -> str:
            made.append(step)
            assert threading.current_thread().name == "jobs-test"  # built on the worker, not the client
            return f"preview@{step}"
        return make

    def work(control: JobControl) -> None:
        control.report(1, 3, factory_for(1))
        first.set()
        wait_for(release_first)
        control.report(2, 3, factory_for(2))
        control.report(3, 3, factory_for(3))
        second.set()
        wait_for(release_second)

    job = queue.submit(work, kind="txt2img")
    wait_for(first)
    assert made == []  # nobody asked
    assert job.preview is None  # this read asks for one
    release_first.set()

    wait_for(second)
    assert made == [2]  # made at the next step only; the request was used up
    assert job.preview == "preview@2" and job.preview_step == 2
    release_second.set()
    job.wait(WAIT)


def test_preview_every_n_steps() -> None:
    q = JobQueue("preview-every", preview_every_steps=2)
    q.start()
    try:
        made: list[int] = []

        def work(control: JobControl) -> None:
            for step in range(1, 7):
                control.report(step, 6, lambda step=step: made.append(step) or step)

        job = q.submit(work, kind="txt2img")
        job.wait(WAIT)
        assert made == [2, 4, 6]
        assert job.preview_step == 6
    finally:
        q.shutdown()


def test_run_exclusive_waits_for_running_job(queue: JobQueue) -> None:
    started, release = threading.Event(), threading.Event()
    order: list[str] = []

    def work(control: JobControl) -> None:
        order.append("job start")
        started.set()
        wait_for(release)
        order.append("job end")

    def switch_model() -> str:
        order.append("exclusive")
        return "model B"

    outcome: dict[str, Any] = {}
    job = queue.submit(work, kind="txt2img")
    wait_for(started)
    caller = threading.Thread(target=lambda: outcome.update(result=queue.run_exclusive(switch_model)))
    caller.start()
    wait_until(lambda: len(queue._pending) == 1)  # the switch is queued behind the running job
    later = queue.submit(lambda control: order.append("later job"), kind="txt2img")
    assert order == ["job start"]
    release.set()
    caller.join(WAIT)

    assert outcome == {"result": "model B"}
    later.wait(WAIT)
    assert job.state is JobState.DONE
    assert order == ["job start", "job end", "exclusive", "later job"]


def test_run_exclusive_reraises_and_runs_inline_on_worker(queue: JobQueue) -> None:
    def broken() -> None:
        raise FileNotFoundError("checkpoint 'x.safetensors' not found")

    with pytest.raises(FileNotFoundError, match="x.safetensors"):
        queue.run_exclusive(broken)
    # From inside a job, waiting for the worker would deadlock: it runs at once instead.
    job = queue.submit(lambda control: queue.run_exclusive(lambda: "inline"), kind="test")
    assert job.wait(WAIT).result == "inline"
    assert queue.run_exclusive(lambda: 7) == 7

    started, release = threading.Event(), threading.Event()
    queue.submit(blocking_job(started, release), kind="test")
    wait_for(started)
    withdrawn: list[str] = []
    with pytest.raises(TimeoutError):
        queue.run_exclusive(lambda: withdrawn.append("ran"), timeout=0.001)
    release.set()
    assert queue.run_exclusive(lambda: "after") == "after"
    assert withdrawn == []  # timed out before it started, so it never runs

    with pytest.raises(RuntimeError, match="not started"):
        JobQueue("idle").run_exclusive(lambda: None)


def test_shutdown_cancels_pending_and_finishes_running() -> None:
    q = JobQueue("shutdown")
    started, release = threading.Event(), threading.Event()
    q.start()
    running = q.submit(blocking_job(started, release, "finished"), kind="test")
    pending = q.submit(lambda control: "never", kind="test")
    wait_for(started)

    stopper = threading.Thread(target=q.shutdown, kwargs={"wait": True})
    stopper.start()
    assert pending.wait(WAIT).state is JobState.INTERRUPTED
    with pytest.raises(RuntimeError, match="shut down"):
        q.submit(lambda control: None, kind="test")
    release.set()
    stopper.join(WAIT)

    assert not stopper.is_alive() and not q.running
    assert running.state is JobState.DONE and running.result == "finished"
    assert pending.result is None and pending.started_at is None
    with pytest.raises(RuntimeError, match="shut down"):
        q.start()


def test_shutdown_can_drain_the_queue() -> None:
    q = JobQueue("drain")
    jobs = [q.submit(lambda control, n=n: n, kind="test") for n in range(3)]  # queued before start
    assert [job.queue_position for job in jobs] == [0, 1, 2]
    q.start()
    q.shutdown(wait=True, cancel_pending=False, timeout=WAIT)
    assert [job.wait(0).result for job in jobs] == [0, 1, 2]
    assert not q.running


def test_history_is_bounded() -> None:
    q = JobQueue("history", history_limit=3)
    q.start()
    try:
        jobs = [q.submit(lambda control, n=n: n, kind="test") for n in range(5)]
        for job in jobs:
            job.wait(WAIT)
        assert [job.id for job in q.jobs()] == [job.id for job in jobs[2:]]
        assert [job.id for job in q.jobs(limit=2)] == [job.id for job in jobs[3:]]
        assert q.get(jobs[0].id) is None and q.get(jobs[4].id) is jobs[4]
    finally:
        q.shutdown()


def test_wait_timeout_and_bad_work() -> None:
    q = JobQueue("not-started")
    job = q.submit(lambda control: None, kind="test")
    with pytest.raises(TimeoutError, match=job.id):
        job.wait(0.001)
    with pytest.raises(TypeError, match="callable"):
        q.submit("not a function", kind="test")  # type: ignore[arg-type]
    q.shutdown()
    assert job.state is JobState.INTERRUPTED
