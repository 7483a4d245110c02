"""The job queue with several slots (the Ray mode): events order the threads, no timing is asserted.

`WAIT` only bounds how long a broken test may hang; it never decides a result. To check that a job
did *not* start, a test first lets the dispatcher make a whole decision on the current state
(`settle`): the live slot count below counts the dispatcher's reads, and it reads the count before
every decision.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from modules.serving.jobs import JobControl, JobQueue, JobState

WAIT = 10.0


def wait_for(event: threading.Event) -> None:
    assert event.wait(WAIT), "a job step never happened"


def wait_until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, "condition never became true"
        time.sleep(0.001)


class Slots:
    """A live slot count, as the Ray pool passes its worker count; counts the dispatcher's reads."""

    def __init__(self, value: int):
        self.value = value
        self.reads = 0

    def __call__(self) -> int:
        self.reads += 1  # only the dispatcher calls it
        return self.value


def settle(queue: JobQueue, slots: Slots) -> None:
    """Return once the dispatcher made a whole decision on the state as it was when this was called.

    Read n+1 starts after the call, so the decision after it sees the state; read n+2 starts only
    once that decision is over. `capacity_changed()` is repeated so that a dispatcher asleep
    between the two reads is woken.
    """
    target = slots.reads + 2
    wait_until(lambda: queue.capacity_changed() or slots.reads >= target)


class Blocker:
    """A work function that records its start, then waits for `release`."""

    def __init__(self, name: str, log: list[str]):
        self.name = name
        self.log = log
        self.started = threading.Event()
        self.release = threading.Event()

    def __call__(self, control: JobControl) -> str:
        self.log.append(f"{self.name} start")
        self.started.set()
        wait_for(self.release)
        control.check()
        self.log.append(f"{self.name} end")
        return self.name


class Harness:
    """Makes queues and blockers; the fixture releases every blocker and stops every queue."""

    def __init__(self) -> None:
        self.log: list[str] = []
        self.queues: list[JobQueue] = []
        self.blockers: list[Blocker] = []

    def queue(self, slots: int | Callable[[], int], *, start: bool = True) -> JobQueue:
        queue = JobQueue(f"parallel-{len(self.queues)}", slots=slots)
        self.queues.append(queue)
        if start:
            queue.start()
        return queue

    def blocker(self, name: str) -> Blocker:
        blocker = Blocker(name, self.log)
        self.blockers.append(blocker)
        return blocker


@pytest.fixture
def harness() -> Iterator[Harness]:
    made = Harness()
    yield made
    for blocker in made.blockers:
        blocker.release.set()
    for queue in made.queues:
        queue.shutdown(wait=True, timeout=WAIT)


def test_two_jobs_run_at_once_and_the_third_waits(harness: Harness) -> None:
    slots = Slots(2)
    queue = harness.queue(slots)
    a, b, c = (harness.blocker(name) for name in "abc")
    job_a, job_b, job_c = (queue.submit(blocker, kind="test") for blocker in (a, b, c))
    wait_for(a.started)
    wait_for(b.started)  # both started while neither was released: they run at once
    settle(queue, slots)

    assert job_c.state is JobState.QUEUED and job_c.queue_position == 0
    assert not c.started.is_set()
    assert queue.running_jobs() == [job_a, job_b]
    assert queue.pending_count() == 1

    b.release.set()  # either one finishing frees a slot
    assert job_b.wait(WAIT).state is JobState.DONE and job_b.result == "b"
    wait_for(c.started)
    assert job_c.queue_position is None and job_c.state is JobState.RUNNING
    assert queue.running_jobs() == [job_a, job_c]

    a.release.set()
    c.release.set()
    assert [job.wait(WAIT).result for job in (job_a, job_c)] == ["a", "c"]
    assert queue.running_jobs() == [] and queue.current() is None


def test_fifo_start_order_follows_a_changing_slot_count(harness: Harness) -> None:
    slots = Slots(1)
    queue = harness.queue(slots)
    blockers = [harness.blocker(f"j{n}") for n in range(5)]
    jobs = [queue.submit(blocker, kind="test") for blocker in blockers]
    wait_for(blockers[0].started)
    settle(queue, slots)
    assert [job.queue_position for job in jobs] == [None, 0, 1, 2, 3]

    slots.value = 3  # a worker joined: the pool says so
    queue.capacity_changed()
    wait_for(blockers[1].started)
    wait_for(blockers[2].started)
    settle(queue, slots)
    assert queue.running_jobs() == jobs[:3]  # in start order
    assert [job.state for job in jobs] == [JobState.RUNNING] * 3 + [JobState.QUEUED] * 2
    assert jobs[3].queue_position == 0 and jobs[4].queue_position == 1

    slots.value = 1  # two workers left: the running jobs go on, nothing new starts
    queue.capacity_changed()
    blockers[0].release.set()
    jobs[0].wait(WAIT)
    settle(queue, slots)
    assert jobs[3].state is JobState.QUEUED and jobs[3].queue_position == 0

    blockers[1].release.set()
    jobs[1].wait(WAIT)
    settle(queue, slots)
    assert jobs[3].state is JobState.QUEUED  # job 2 still holds the only slot

    blockers[2].release.set()
    wait_for(blockers[3].started)
    settle(queue, slots)
    assert queue.running_jobs() == [jobs[3]]
    assert jobs[4].state is JobState.QUEUED and jobs[4].queue_position == 0

    slots.value = 2
    queue.capacity_changed()
    wait_for(blockers[4].started)
    assert queue.running_jobs() == jobs[3:]
    for blocker in blockers:
        blocker.release.set()
    for job in jobs:
        assert job.wait(WAIT).state is JobState.DONE


def test_slot_counts_below_one_run_one_job(harness: Harness) -> None:
    slots = Slots(0)
    queue = harness.queue(slots)
    first, second = harness.blocker("first"), harness.blocker("second")
    job_first, job_second = queue.submit(first, kind="test"), queue.submit(second, kind="test")
    wait_for(first.started)
    settle(queue, slots)
    assert job_second.state is JobState.QUEUED

    first.release.set()
    second.release.set()
    assert job_second.wait(WAIT).state is JobState.DONE and job_first.state is JobState.DONE


def test_a_failing_slot_count_runs_one_job(harness: Harness, caplog: pytest.LogCaptureFixture) -> None:
    def broken() -> int:
        raise ConnectionError("ray cluster gone")

    queue = harness.queue(broken)
    assert queue.submit(lambda control: "still runs", kind="test").wait(WAIT).result == "still runs"
    assert "ray cluster gone" in caplog.text


def test_run_exclusive_waits_for_both_running_jobs_and_holds_back_later_ones(harness: Harness) -> None:
    slots = Slots(3)  # room for the later job: only the exclusive function may hold it back
    queue = harness.queue(slots)
    a, b, later = harness.blocker("a"), harness.blocker("b"), harness.blocker("later")
    later.release.set()
    job_a, job_b = queue.submit(a, kind="test"), queue.submit(b, kind="test")
    wait_for(a.started)
    wait_for(b.started)

    seen_inside: dict[str, Any] = {}

    def switch_model() -> str:
        harness.log.append("exclusive")
        seen_inside.update(running=queue.running_jobs(), on_worker=queue.on_worker())
        return "model B"

    outcome: dict[str, Any] = {}
    caller = threading.Thread(target=lambda: outcome.update(result=queue.run_exclusive(switch_model)))
    caller.start()
    wait_until(lambda: len(queue._pending) == 1)  # the switch is queued behind the running jobs
    job_later = queue.submit(later, kind="test")
    settle(queue, slots)
    assert job_later.state is JobState.QUEUED and job_later.queue_position == 0

    a.release.set()
    job_a.wait(WAIT)
    settle(queue, slots)
    assert "exclusive" not in harness.log and job_later.state is JobState.QUEUED

    b.release.set()
    caller.join(WAIT)
    assert outcome == {"result": "model B"}
    assert job_later.wait(WAIT).state is JobState.DONE
    assert job_b.state is JobState.DONE
    assert harness.log.index("exclusive") > max(harness.log.index("a end"), harness.log.index("b end"))
    assert harness.log.index("later start") > harness.log.index("exclusive")
    assert seen_inside == {"running": [], "on_worker": True}


def test_current_is_the_earliest_started_and_interrupt_none_hits_it(harness: Harness) -> None:
    queue = harness.queue(2)
    a, b = harness.blocker("a"), harness.blocker("b")
    job_a, job_b = queue.submit(a, kind="test"), queue.submit(b, kind="test")
    wait_for(a.started)
    wait_for(b.started)
    assert queue.current() is job_a
    assert queue.running_jobs() == [job_a, job_b]

    assert queue.interrupt() is True
    assert job_a.interrupt_requested and not job_b.interrupt_requested
    assert queue.skip() is True
    assert job_a.skip_requested and not job_b.skip_requested

    a.release.set()
    assert job_a.wait(WAIT).state is JobState.INTERRUPTED
    assert queue.current() is job_b  # the only one left

    assert queue.skip(job_b.id) is True and job_b.skip_requested
    assert queue.interrupt(job_b.id) is True
    b.release.set()
    assert job_b.wait(WAIT).state is JobState.INTERRUPTED
    assert queue.current() is None
    assert queue.interrupt() is False and queue.skip() is False


def test_on_worker_inside_every_job_and_run_exclusive_runs_inline(harness: Harness) -> None:
    queue = harness.queue(2)
    a = harness.blocker("a")
    job_a = queue.submit(a, kind="test")
    wait_for(a.started)

    def work(control: JobControl) -> tuple[bool, str]:
        # Another job runs meanwhile; waiting for the queue here would wait for it, so it runs now.
        return queue.on_worker(), queue.run_exclusive(lambda: "inline")

    job_b = queue.submit(work, kind="test")
    assert job_b.wait(WAIT).result == (True, "inline")
    assert job_a.state is JobState.RUNNING
    assert not queue.on_worker()  # the test's own thread
    a.release.set()
    job_a.wait(WAIT)


def test_shutdown_while_two_run_cancels_the_queue_and_waits_for_both(harness: Harness) -> None:
    queue = harness.queue(2)
    a, b = harness.blocker("a"), harness.blocker("b")
    job_a, job_b = queue.submit(a, kind="test"), queue.submit(b, kind="test")
    pending = queue.submit(lambda control: "never", kind="test")
    wait_for(a.started)
    wait_for(b.started)

    stopper = threading.Thread(target=queue.shutdown, kwargs={"wait": True})
    stopper.start()
    assert pending.wait(WAIT).state is JobState.INTERRUPTED and pending.started_at is None
    with pytest.raises(RuntimeError, match="shut down"):
        queue.submit(lambda control: None, kind="test")

    a.release.set()
    job_a.wait(WAIT)
    assert stopper.is_alive()  # job b still runs: shutdown waits for it too
    assert job_b.state is JobState.RUNNING

    b.release.set()
    stopper.join(WAIT)
    assert not stopper.is_alive() and not queue.running
    assert (job_a.state, job_a.result) == (JobState.DONE, "a")
    assert (job_b.state, job_b.result) == (JobState.DONE, "b")


def test_shutdown_can_drain_the_queue_with_two_slots(harness: Harness) -> None:
    queue = harness.queue(2, start=False)
    jobs = [queue.submit(lambda control, n=n: n, kind="test") for n in range(5)]  # queued before start
    assert [job.queue_position for job in jobs] == [0, 1, 2, 3, 4]
    queue.start()
    queue.shutdown(wait=True, cancel_pending=False, timeout=WAIT)
    assert [job.wait(0).result for job in jobs] == [0, 1, 2, 3, 4]
    assert not queue.running
