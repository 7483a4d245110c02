"""The job queue: only the queue's own threads touch the GPU; HTTP and UI handlers submit and observe.

A handler builds a work function (`Callable[[JobControl], Any]`), calls `JobQueue.submit`, and gets a
`Job` back at once. A dispatcher thread starts jobs in submission order (FIFO; ids increase in that
order; between several users, in turns: see `owner` below), each on a thread of its own, at most `slots` at once (1 by default: one job at a time). The
work function reports progress through its `JobControl` and polls it for interrupt and skip requests;
clients read the `Job` (state, progress, ETA, preview, result, error) and never touch the model
themselves (ComfyUI's habit; A1111's `queue_lock` made explicit).

Decisions worth knowing:
- `slots` > 1 is for the Ray mode, where a running job only waits on a remote worker (the pool's
  live worker count is passed as a callable). Jobs *start* in queue order: the next job
  waits for a free slot and nothing overtakes it; they may finish in any order. `slots` is read
  by the dispatcher without the queue's lock (the pool may hold its own lock while calling
  `capacity_changed()`), at every decision; `capacity_changed()` makes it decide again.
- A slot stays taken until its job's FINISHED listeners have run, so with one slot the next job's
  STARTED event always follows the previous job's FINISHED event, as with a single worker.
- Each job thread runs in its own copy of the dispatcher's context (itself a copy of the context
  that called `start()`): context variables a job sets do not leak into later jobs, while those an
  exclusive function sets (it runs on the dispatcher) reach the jobs after it.
- Previews are lazy and always built on the job's thread. `JobControl.report` takes a
  `preview_factory` (a cheap closure over the current latent); it is called only when a client
  has asked for a preview since the last one (reading `Job.preview` asks) or, if
  `JobQueue.preview_every_steps` > 0, every that many steps. A denoise loop therefore pays for a
  preview (a VAE/approx decode) only when someone looks, and the decode stays on the thread that
  runs the job. The cost is one step of latency: a poll returns the preview made after the
  previous poll.
- `JobInterrupted` derives from `BaseException`, like A1111's `InterruptedException`, so a broad
  `except Exception` inside a sampler or an extension cannot swallow an interrupt.
- A job that was interrupted while running ends in state `interrupted` even if the work function
  returns normally; whatever it returned is kept as `result` (finished images survive).
- Jobs carry an `owner` (a user of `--multi-user`; None for the shared identity). With `order`
  "round-robin" (the default), jobs of different owners waiting together are started in turns: the
  next job is the oldest one of the owner whose last job started longest ago (an owner never served
  first), so one user's fifty queued jobs do not hold back everyone else. With one owner (every job's
  owner None, a single-user server) that is exactly FIFO; `order` "fifo" restores FIFO between owners
  too. `queue_position` and `wait_estimate` follow the order the jobs will actually start in.
  `owner_limit` caps the jobs an owner may have waiting (not running): `submit` raises
  `QueueFullError` beyond it.
- `run_exclusive(fn)` takes its place in the same FIFO as jobs: it runs on the dispatcher once every
  job submitted before it has finished and no job runs, and jobs submitted after it wait for it,
  so each job sees the model it was submitted against (A1111's FIFO `queue_lock` behaves the same
  way).
- Listeners (`add_listener`) observe every job's start, reported steps and end, e.g. the console
  progress bar (modules.serving.console_progress). They are called on the thread that caused the event
  (the job's thread, or the caller of `interrupt`/`shutdown` for a job cancelled before it started),
  may run concurrently for different jobs when `slots` > 1, must be quick, and a failing listener is
  logged and ignored.
"""

from __future__ import annotations

import contextvars
import enum
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_HISTORY_LIMIT = 100


class JobInterrupted(BaseException):
    """Raised by `JobControl.check()` once the job was interrupted.

    A `BaseException` so that broad `except Exception` blocks in work code let it through; catch it
    explicitly where finished images should be kept.
    """


class QueueFullError(RuntimeError):
    """`submit` for an owner who already has `owner_limit` jobs waiting."""

    def __init__(self, owner: str | None, limit: int):
        self.owner, self.limit = owner, limit
        who = f"user {owner!r}" if owner else "this server"
        super().__init__(f"{who} already has {limit} job{'s' if limit != 1 else ''} waiting in the queue, the "
                         "most one user may have; wait for one to start, or cancel one under My queue")


ROUND_ROBIN = "round-robin"
FIFO = "fifo"
QUEUE_ORDERS = (ROUND_ROBIN, FIFO)


class JobState(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    INTERRUPTED = "interrupted"

    @property
    def finished(self) -> bool:
        return self in (JobState.DONE, JobState.FAILED, JobState.INTERRUPTED)


class JobEvent(str, enum.Enum):
    """What a queue listener is told about a job."""

    STARTED = "started"
    PROGRESS = "progress"  # a step was reported; read job.step / job.total_steps
    FINISHED = "finished"  # done, failed or interrupted (also when cancelled before it started)


JobListener = Callable[[JobEvent, "Job"], None]


class Job:
    """A client's read-only view of one submitted job. Only the queue and its worker change it."""

    def __init__(self, job_id: str, kind: str, description: str, queue: JobQueue, *, owner: str | None = None,
                 expected_steps: int | None = None, sequence: int = 0):
        self.id = job_id
        self.kind = kind
        self.description = description
        self.owner = owner  # the user who submitted it (modules.serving.accounts); None: shared
        self.expected_steps = expected_steps  # for the wait estimate of the jobs behind it
        self._sequence = sequence  # submission order, for the start order
        self._queue = queue
        # Guards every mutable field below so that compound reads (step with total, progress with
        # ETA) are consistent while the worker writes.
        self._lock = threading.Lock()
        self._finished_event = threading.Event()
        self._state = JobState.QUEUED
        self._step = 0
        self._total_steps = 0
        self._progress = 0.0
        self._preview: Any = None
        self._preview_step: int | None = None
        self._preview_requested = False
        self._result: Any = None
        self._error: str | None = None
        self._exception: BaseException | None = None
        self._info: dict[str, Any] = {"lines": []}
        self._interrupt_requested = False
        self._skip_requested = False
        self.created_at = time.time()
        self._started_at: float | None = None
        self._finished_at: float | None = None
        self._started_monotonic: float | None = None

    def __repr__(self) -> str:
        return f"Job(id={self.id!r}, kind={self.kind!r}, state={self.state.value!r}, progress={self.progress:.2f})"

    @property
    def state(self) -> JobState:
        return self._state

    @property
    def finished(self) -> bool:
        return self._state.finished

    @property
    def queue_position(self) -> int | None:
        """0 for the next job to run; None once the job left the queue."""
        if self._state is not JobState.QUEUED:
            return None
        return self._queue._position_of(self)

    @property
    def wait_estimate(self) -> float | None:
        """Seconds until this queued job should start (see `JobQueue.wait_estimate`); None when
        unknown or once it left the queue."""
        return self._queue.wait_estimate(self)

    @property
    def step(self) -> int:
        return self._step

    @property
    def total_steps(self) -> int:
        return self._total_steps

    @property
    def progress(self) -> float:
        """0..1 while running; 1 once done (the work may not report its last step)."""
        return self._progress

    @property
    def eta_seconds(self) -> float | None:
        """Seconds left, extrapolated linearly from the elapsed time; None until a step was reported."""
        with self._lock:
            if self._state is not JobState.RUNNING or self._started_monotonic is None or self._progress <= 0:
                return None
            elapsed = time.monotonic() - self._started_monotonic
            return max(0.0, elapsed / self._progress * (1.0 - self._progress))

    @property
    def preview(self) -> Any:
        """The latest preview the worker built, or None. Reading it asks the worker for a fresh one
        at the next reported step (see the module docstring)."""
        return self.latest_preview()[0]

    def latest_preview(self) -> tuple[Any, int | None]:
        """`(preview, the step it was made at)`, read together (a preview published between two
        separate reads would be paired with the wrong step); asks for a fresh one like `preview`."""
        with self._lock:
            if self._state is JobState.RUNNING:
                self._preview_requested = True
            return self._preview, self._preview_step

    @property
    def preview_step(self) -> int | None:
        """The step the current preview was made at (clients use it to skip unchanged previews)."""
        return self._preview_step

    @property
    def result(self) -> Any:
        return self._result

    @property
    def error(self) -> str | None:
        """`"ExceptionType: message"` for a failed job; the traceback is in the log."""
        return self._error

    @property
    def exception(self) -> BaseException | None:
        """The exception a failed job raised (callers map its type, e.g. to an HTTP status)."""
        return self._exception

    @property
    def info(self) -> dict[str, Any]:
        """A copy of the job's info: `"lines"` holds free-text lines (warnings, notes) in order."""
        with self._lock:
            return {key: list(value) if isinstance(value, list) else value for key, value in self._info.items()}

    @property
    def started_at(self) -> float | None:
        return self._started_at

    @property
    def finished_at(self) -> float | None:
        return self._finished_at

    @property
    def interrupt_requested(self) -> bool:
        return self._interrupt_requested

    @property
    def skip_requested(self) -> bool:
        """A skip was asked for and the work has not taken it yet."""
        return self._skip_requested

    def wait(self, timeout: float | None = None) -> Job:
        """Block until the job finished; raise TimeoutError if `timeout` seconds pass first."""
        if not self._finished_event.wait(timeout):
            raise TimeoutError(f"job {self.id} still {self._state.value} after {timeout} s")
        return self

    # -- written by the queue / worker only ------------------------------------------------------

    def _mark_running(self) -> None:
        with self._lock:
            self._state = JobState.RUNNING
            self._started_at = time.time()
            self._started_monotonic = time.monotonic()

    def _finish(self, state: JobState, *, result: Any = None, error: str | None = None,
                exception: BaseException | None = None) -> None:
        with self._lock:
            self._state = state
            self._result = result
            self._error = error
            self._exception = exception
            if state is JobState.DONE:
                self._progress = 1.0
            self._preview_requested = False
            self._finished_at = time.time()
        self._finished_event.set()


class JobControl:
    """What a work function gets: progress reporting and interrupt/skip polling for its job."""

    def __init__(self, job: Job, queue: JobQueue):
        self._job = job
        self._queue = queue
        self._preview_failed = False

    @property
    def job_id(self) -> str:
        return self._job.id

    @property
    def interrupted(self) -> bool:
        return self._job._interrupt_requested

    @property
    def skip_requested(self) -> bool:
        """A1111's "skip": stop the current image, go on with the next one. See `consume_skip`."""
        return self._job._skip_requested

    @property
    def preview_wanted(self) -> bool:
        """A client asked for a preview since the last one, or `preview_every_steps` are nearly up (a
        Ray relay asks its worker for one then)."""
        job, every = self._job, self._queue.preview_every_steps
        last = job._preview_step if job._preview_step is not None else 0
        return job._preview_requested or (every > 0 and job._step + 1 - last >= every)

    def consume_skip(self) -> bool:
        """Return whether a skip was pending and clear it, so it applies to one image only."""
        with self._job._lock:
            pending = self._job._skip_requested
            self._job._skip_requested = False
            return pending

    def check(self) -> None:
        """Raise `JobInterrupted` if the job was interrupted. Call it at least once per step."""
        if self._job._interrupt_requested:
            raise JobInterrupted(f"job {self._job.id} was interrupted")

    def report(self, step: int, total: int, preview_factory: Callable[[], Any] | None = None) -> None:
        """Record progress `step` of `total` (step is clamped to 0..total).

        `preview_factory` is called here, on the worker, only when a client asked for a preview or
        `preview_every_steps` have passed; it must be cheap to create and is not kept afterwards, so
        it does not pin the latent it closes over. A failing factory is logged and ignored: a broken
        preview must never fail a generation.
        """
        if total < 1:
            raise ValueError(f"report(step={step}, total={total}): total must be at least 1")
        job = self._job
        step = min(max(step, 0), total)
        with job._lock:
            job._step = step
            job._total_steps = total
            job._progress = step / total
            wanted = job._preview_requested
            every = self._queue.preview_every_steps
            last = job._preview_step if job._preview_step is not None else 0
            if every > 0 and step - last >= every:
                wanted = True
        self._queue._notify(JobEvent.PROGRESS, job)
        if preview_factory is None or not wanted:
            return
        try:
            preview = preview_factory()
        except Exception:
            # Log the first failure with its traceback; later ones would repeat it every step.
            if not self._preview_failed:
                log.exception("Preview for job %s failed at step %d; continuing without it", job.id, step)
                self._preview_failed = True
            else:
                log.debug("Preview for job %s failed again at step %d", job.id, step)
            with job._lock:
                job._preview_requested = False
            return
        with job._lock:
            job._preview = preview
            job._preview_step = step
            job._preview_requested = False

    def add_info(self, line: str) -> None:
        """Append a free-text line (a warning, a note) to `Job.info["lines"]`."""
        with self._job._lock:
            self._job._info["lines"].append(str(line))

    def set_info(self, key: str, value: Any) -> None:
        """Set a structured info value (e.g. `"job_no"`); `"lines"` is reserved for `add_info`."""
        if key == "lines":
            raise ValueError('info key "lines" is reserved; use add_info(line) to append a line')
        with self._job._lock:
            self._job._info[key] = value


@dataclass
class _Exclusive:
    """A callable queued by `run_exclusive`; the caller waits on `future`."""

    fn: Callable[[], Any]
    future: Future


@dataclass
class _QueuedJob:
    job: Job
    work: Callable[[JobControl], Any]
    exclusive: bool = False


class JobQueue:
    """A queue of jobs started by a dispatcher thread, up to `slots` at once, each on a thread of its own.

    Thread-safe; every method may be called from any thread.
    """

    def __init__(self, name: str = "generation", *, history_limit: int = DEFAULT_HISTORY_LIMIT,
                 preview_every_steps: int = 0, slots: int | Callable[[], int] = 1,
                 order: str | Callable[[], str] = ROUND_ROBIN, owner_limit: int | Callable[[], int] = 0):
        if history_limit < 0:
            raise ValueError(f"history_limit must be 0 or more, got {history_limit}")
        if not callable(slots) and not isinstance(slots, int):
            raise TypeError(f"slots must be an int or a callable returning one, got {type(slots).__name__}")
        self.name = name
        # 0: previews only on request (a client reading Job.preview). Settable at run time.
        self.preview_every_steps = preview_every_steps
        self._history_limit = history_limit
        self._slots = slots
        # Read at every decision (a setting may change them); see `_order` and `_owner_limit`.
        self._order_source = order
        self._owner_limit_source = owner_limit
        # owner -> the start tick of their last job, for the round-robin order.
        self._served: dict[str | None, int] = {}
        self._serve_tick = 0
        # Measured from finished jobs, for the wait estimate, per kind (a merge's "steps" are tensors,
        # an upscale's images): seconds per reported step, and the durations (for jobs whose steps
        # are not known ahead). Moving averages.
        self._seconds_per_step: dict[str, float] = {}
        self._durations: dict[str, float] = {}
        self._cond = threading.Condition()
        self._pending: deque[_QueuedJob | _Exclusive] = deque()
        self._jobs: dict[str, Job] = {}  # every queued, running and remembered finished job
        self._history: deque[Job] = deque()
        self._running: list[Job] = []  # in start order; a job leaves it just before it is marked finished
        # Job thread -> slot number. A thread holds its slot until its FINISHED listeners have run.
        self._job_threads: dict[threading.Thread, int] = {}
        self._thread_jobs: dict[threading.Thread, Job] = {}  # the same threads' jobs (job_of_current_thread)
        self._exclusive_running = False  # the running job was submitted with exclusive=True
        # Bumped on every change the dispatcher waits for, so a change that happens while it reads
        # `slots` (outside the lock) is not slept through.
        self._changes = 0
        self._counter = 0
        self._thread: threading.Thread | None = None  # the dispatcher
        self._stopping = False
        self._drain_on_stop = False
        self._listeners: tuple[JobListener, ...] = ()  # replaced whole, so notifying needs no lock

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        with self._cond:
            if self._stopping:
                raise RuntimeError(f"job queue {self.name!r} was shut down; create a new JobQueue")
            if self._thread is not None:
                return
            # Daemon: a job stuck in native code must not keep the process alive at exit. The
            # dispatcher runs in a copy of the starting context, and each job in a copy of that, so
            # they see the app the starter was in (modules.extension_host.environment).
            self._thread = threading.Thread(target=contextvars.copy_context().run, args=(self._dispatch,),
                                            name=f"jobs-{self.name}-dispatcher", daemon=True)
            self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stopping

    def shutdown(self, wait: bool = True, *, cancel_pending: bool = True, timeout: float | None = None) -> None:
        """Stop accepting work and stop the dispatcher once the running jobs finished.

        With `cancel_pending`, queued jobs end as interrupted and queued `run_exclusive` calls raise
        RuntimeError; without it the dispatcher first drains the queue. Running jobs are not
        interrupted: call `interrupt()` first for that. With `wait`, blocks until the running (and,
        when draining, the queued) jobs finished, at most `timeout` seconds; called from inside a
        job it does not wait, since it would wait for itself.
        """
        with self._cond:
            self._stopping = True
            self._drain_on_stop = not cancel_pending
            cancelled = list(self._pending) if cancel_pending else []
            if cancel_pending:
                self._pending.clear()
            thread = self._thread
            self._changed()
        for entry in cancelled:
            self._cancel_entry(entry, "the job queue was shut down")
        # The dispatcher leaves only after every job thread has ended, so joining it joins them too.
        if wait and thread is not None and not self.on_worker():
            thread.join(timeout)

    # -- listeners -------------------------------------------------------------------------------

    def add_listener(self, listener: JobListener) -> None:
        """Call `listener(event, job)` for every job's start, reported step and end (see the module docstring)."""
        if not callable(listener):
            raise TypeError(f"listener must be callable as listener(event, job), got {type(listener).__name__}")
        with self._cond:
            self._listeners = (*self._listeners, listener)

    def remove_listener(self, listener: JobListener) -> None:
        with self._cond:
            self._listeners = tuple(known for known in self._listeners if known is not listener)

    def _notify(self, event: JobEvent, job: Job) -> None:
        for listener in self._listeners:
            try:
                listener(event, job)
            except Exception:  # an observer must never break a job
                log.exception("Job listener %r failed on %s of %s", listener, event.value, job.id)

    # -- submitting ------------------------------------------------------------------------------

    def submit(self, work: Callable[[JobControl], Any], *, kind: str, description: str = "",
               exclusive: bool = False, owner: str | None = None, expected_steps: int | None = None) -> Job:
        """Queue `work` and return its Job at once. The work runs on a job thread of this queue.
        `exclusive`: with several slots, it starts once no other job runs, and no job starts while
        it runs (a checkpoint switch that later jobs must see; with one slot every job is so).
        `owner`: the submitting user (see the module docstring); `QueueFullError` when they already
        have `owner_limit` jobs waiting. `expected_steps`: the steps the work will report, if known,
        for the wait estimate of the jobs queued behind it."""
        if not callable(work):
            raise TypeError(f"work must be callable as work(control), got {type(work).__name__}")
        limit = self._owner_limit()
        with self._cond:
            if self._stopping:
                raise RuntimeError(f"job queue {self.name!r} is shut down; no new jobs are accepted")
            if limit > 0 and owner is not None:
                waiting = sum(1 for entry in self._pending if isinstance(entry, _QueuedJob) and entry.job.owner == owner)
                if waiting >= limit:
                    raise QueueFullError(owner, limit)
            # Ids increase in submission order (with FIFO order also in start order).
            self._counter += 1
            job = Job(f"task-{self._counter:06d}", kind, description, self, owner=owner,
                      expected_steps=expected_steps, sequence=self._counter)
            self._jobs[job.id] = job
            self._pending.append(_QueuedJob(job, work, exclusive))
            self._changed()
        log.debug("Queued job %s (%s) %s", job.id, kind, description)
        return job

    def on_worker(self) -> bool:
        """Whether the caller runs on one of this queue's threads (inside a job, or an exclusive
        function on the dispatcher), where waiting for the queue would deadlock."""
        current = threading.current_thread()
        with self._cond:
            return current is self._thread or current in self._job_threads

    def job_of_current_thread(self) -> Job | None:
        """The job whose thread calls this (None elsewhere, the dispatcher included): code running
        inside a job (an extension's script) acts on that job and for its owner."""
        with self._cond:
            return self._thread_jobs.get(threading.current_thread())

    def run_exclusive(self, fn: Callable[[], T], timeout: float | None = None) -> T:
        """Run `fn` on the dispatcher once the jobs queued before it finished and no job runs, and
        return its result; jobs queued after it start once it returned.

        Its exception is re-raised here. Called from the queue's own threads (e.g. inside a job),
        `fn` runs at once, since waiting for the queue there would deadlock. If `timeout` seconds
        pass before `fn` started, it is withdrawn and TimeoutError raised; once started it runs to
        the end.
        """
        if self.on_worker():
            return fn()
        future: Future = Future()
        with self._cond:
            if self._stopping:
                raise RuntimeError(f"job queue {self.name!r} is shut down; cannot run exclusive work")
            if self._thread is None:
                raise RuntimeError(f"job queue {self.name!r} is not started; call start() before run_exclusive()")
            self._pending.append(_Exclusive(fn, future))
            self._changed()
        try:
            return future.result(timeout)
        except TimeoutError:
            # A cancelled future is dropped by the dispatcher; one already running cannot be stopped.
            if future.cancel():
                with self._cond:
                    self._changed()  # it may have held back the jobs behind it
            raise

    def set_slots(self, slots: int | Callable[[], int]) -> None:
        """Replace `slots` (the Ray mode passes its pool's live worker count) and wake the dispatcher."""
        if not callable(slots) and not isinstance(slots, int):
            raise TypeError(f"slots must be an int or a callable returning one, got {type(slots).__name__}")
        self._slots = slots
        self.capacity_changed()

    def capacity_changed(self) -> None:
        """Tell the dispatcher that `slots` may have changed (e.g. a Ray worker came or went)."""
        with self._cond:
            self._changed()

    # -- control ---------------------------------------------------------------------------------

    def interrupt(self, job_id: str | None = None) -> bool:
        """Interrupt a running job (None: `current()`) or cancel a queued one.

        Returns False when there is nothing to interrupt (no such job, or already finished).
        """
        with self._cond:
            job = self._resolve(job_id)
            if job is None or job.finished:
                return False
            if job.state is JobState.QUEUED:
                entry = next((e for e in self._pending if isinstance(e, _QueuedJob) and e.job is job), None)
                if entry is None:  # shutdown() took it out and is cancelling it right now
                    return False
                self._pending.remove(entry)
                self._changed()  # it may have been the head
            else:
                job._interrupt_requested = True
                return True
        self._cancel_entry(entry, "cancelled before it started")
        return True

    def skip(self, job_id: str | None = None) -> bool:
        """Ask a running job (None: `current()`) to skip its current image. False when it does not run."""
        with self._cond:
            job = self._resolve(job_id)
            if job is None or job.state is not JobState.RUNNING:
                return False
            with job._lock:
                job._skip_requested = True
            return True

    # -- observing -------------------------------------------------------------------------------

    def get(self, job_id: str) -> Job | None:
        with self._cond:
            return self._jobs.get(job_id)

    def current(self) -> Job | None:
        """The earliest-started running job, or None when none runs."""
        with self._cond:
            return self._running[0] if self._running else None

    def running_jobs(self) -> list[Job]:
        """The running jobs, in start order."""
        with self._cond:
            return list(self._running)

    def pending_count(self) -> int:
        with self._cond:
            return sum(1 for entry in self._pending if isinstance(entry, _QueuedJob))

    def waiting_jobs(self) -> list[Job]:
        """The queued jobs in the order they will start (see `order`)."""
        order = self._order()
        with self._cond:
            return [entry.job for entry in self._start_order(order)]

    def wait_estimate(self, job: Job) -> float | None:
        """Seconds until queued `job` should start: what the running jobs have left plus the expected
        time of the jobs that start before it, shared among the slots. Expected times come from the
        finished jobs (seconds per step, or the last duration of the same kind); None while nothing
        is known to estimate from, and for a job that is not queued."""
        order, slots = self._order(), self._slot_count()
        with self._cond:
            ahead = self._start_order(order)
            if job._state is not JobState.QUEUED or all(entry.job is not job for entry in ahead):
                return None
            ahead = ahead[:next(i for i, entry in enumerate(ahead) if entry.job is job)]
            total = 0.0
            for running in self._running:
                left = running.eta_seconds
                if left is None:
                    expected = self._expected_seconds(running)
                    if expected is None:
                        return None
                    left = max(0.0, expected - (time.time() - (running.started_at or time.time())))
                total += left
            for entry in ahead:
                expected = self._expected_seconds(entry.job)
                if expected is None:
                    return None
                total += expected
            return total / max(1, slots)

    def jobs(self, limit: int | None = None) -> list[Job]:
        """Known jobs (finished history, running, queued) in submission order; the last `limit`."""
        with self._cond:
            # Insertion order of the dict is submission order; evictions only remove.
            known = list(self._jobs.values())
        return known if limit is None else known[-limit:] if limit > 0 else []

    # -- internals -------------------------------------------------------------------------------

    def _changed(self) -> None:
        """Wake the dispatcher; call with `_cond` held."""
        self._changes += 1
        self._cond.notify_all()

    def _resolve(self, job_id: str | None) -> Job | None:
        if job_id is None:
            return self._running[0] if self._running else None
        return self._jobs.get(job_id)

    def _position_of(self, job: Job) -> int | None:
        order = self._order()
        with self._cond:
            return next((i for i, entry in enumerate(self._start_order(order)) if entry.job is job), None)

    def _order(self) -> str:
        """The `order` in effect; an unknown value (a hand-edited setting) is round-robin."""
        source = self._order_source
        try:
            value = source() if callable(source) else source
        except Exception:  # a broken setting must not stop the dispatcher
            log.exception("Job queue %r: order callable failed; using round-robin", self.name)
            return ROUND_ROBIN
        return value if value in QUEUE_ORDERS else ROUND_ROBIN

    def _owner_limit(self) -> int:
        source = self._owner_limit_source
        try:
            return max(0, int(source() if callable(source) else source))
        except Exception:
            log.exception("Job queue %r: owner limit callable failed; no limit", self.name)
            return 0

    def _start_order(self, order: str) -> list[_QueuedJob]:
        """The queued jobs in the order they will start; call with `_cond` held. A queued exclusive
        function is a barrier: the jobs before it start before it, those after it after it."""
        served, tick = dict(self._served), self._serve_tick
        result: list[_QueuedJob] = []
        segment: list[_QueuedJob] = []

        def flush() -> None:
            nonlocal tick
            if order == FIFO:
                result.extend(segment)
            else:
                by_owner: dict[str | None, deque[_QueuedJob]] = {}
                for entry in segment:
                    by_owner.setdefault(entry.job.owner, deque()).append(entry)
                while by_owner:
                    owner = min(by_owner, key=lambda o: (served.get(o, -1), by_owner[o][0].job._sequence))
                    result.append(by_owner[owner].popleft())
                    served[owner], tick = tick, tick + 1
                    if not by_owner[owner]:
                        del by_owner[owner]
            segment.clear()

        for entry in self._pending:
            if isinstance(entry, _Exclusive):
                flush()
            else:
                segment.append(entry)
        flush()
        return result

    def _expected_seconds(self, job: Job) -> float | None:
        """How long `job` should run in all, from what the finished jobs took; call with `_cond` held."""
        steps = job._total_steps or job.expected_steps
        per_step = self._seconds_per_step.get(job.kind)
        if steps and per_step is not None:
            return steps * per_step
        return self._durations.get(job.kind)

    def _record_duration(self, job: Job) -> None:
        """Learn from a finished job for later wait estimates (a moving average)."""
        if job._state is not JobState.DONE or job._started_at is None or job._finished_at is None:
            return
        seconds = max(0.0, job._finished_at - job._started_at)
        with self._cond:
            previous = self._durations.get(job.kind)
            self._durations[job.kind] = seconds if previous is None else 0.5 * previous + 0.5 * seconds
            if job._total_steps > 0:
                per_step = seconds / job._total_steps
                known = self._seconds_per_step.get(job.kind)
                self._seconds_per_step[job.kind] = per_step if known is None else 0.5 * known + 0.5 * per_step

    def _cancel_entry(self, entry: _QueuedJob | _Exclusive, reason: str) -> None:
        if isinstance(entry, _Exclusive):
            entry.future.set_exception(RuntimeError(f"job queue {self.name!r}: {reason}"))
            return
        with entry.job._lock:
            entry.job._interrupt_requested = True
            entry.job._info["lines"].append(reason)
        self._remember(entry.job)
        entry.job._finish(JobState.INTERRUPTED)
        self._notify(JobEvent.FINISHED, entry.job)
        log.info("Job %s %s", entry.job.id, reason)

    def _remember(self, job: Job) -> None:
        """Move a finished job into the bounded history, forgetting the oldest beyond the limit."""
        with self._cond:
            self._history.append(job)
            while len(self._history) > self._history_limit:
                self._jobs.pop(self._history.popleft().id, None)

    def _slot_count(self) -> int:
        """`slots` now, at least 1. Called without `_cond` held: a callable may take its own locks."""
        if not callable(self._slots):
            return max(1, self._slots)
        try:
            return max(1, int(self._slots()))
        except Exception:  # a broken count must not stop the dispatcher; one slot always works
            log.exception("Job queue %r: slots callable %r failed; running one job at a time", self.name, self._slots)
            return 1

    def _next_entry(self) -> tuple[_QueuedJob, threading.Thread] | _Exclusive | None:
        """Wait until the head of the queue may start and take it: a job comes with the (not yet
        started) thread that will run it. None once the dispatcher should stop; it then has waited
        for every job thread to end. The head is the first entry, or with jobs first, the job that
        `order` starts next."""
        while True:
            with self._cond:
                seen = self._changes
            slots = self._slot_count()
            order = self._order()
            with self._cond:
                if self._stopping and not (self._drain_on_stop and self._pending):
                    while self._job_threads:
                        self._cond.wait()
                    return None
                head = self._pending[0] if self._pending else None
                if isinstance(head, _QueuedJob):
                    head = self._start_order(order)[0]
                if isinstance(head, _Exclusive):
                    if head.future.cancelled():  # withdrawn after its timeout: must not hold back the queue
                        self._pending.popleft()
                        continue
                    if not self._job_threads:
                        return self._pending.popleft()
                elif (head is not None and len(self._job_threads) < slots and not self._exclusive_running
                      and not (head.exclusive and self._job_threads)):
                    self._pending.remove(head)
                    self._served[head.job.owner] = self._serve_tick
                    self._serve_tick += 1
                    # Marked under the queue lock so interrupt() never sees a job that is neither
                    # in the pending deque nor running.
                    head.job._mark_running()
                    self._running.append(head.job)
                    slot = min(set(range(len(self._job_threads) + 1)) - set(self._job_threads.values()))
                    # Slot 0 keeps the single worker's name, so logs read as before with one slot.
                    name = f"jobs-{self.name}" if slot == 0 else f"jobs-{self.name}-{slot + 1}"
                    # Each job runs in a copy of the dispatcher's context: one Context cannot be
                    # entered by two threads at once.
                    thread = threading.Thread(target=contextvars.copy_context().run, args=(self._job_thread, head),
                                              name=name, daemon=True)
                    self._job_threads[thread] = slot  # before it starts, so on_worker() holds in the job
                    self._thread_jobs[thread] = head.job
                    self._exclusive_running = head.exclusive
                    return head, thread
                if self._changes == seen:
                    self._cond.wait()

    def _dispatch(self) -> None:
        log.debug("Job queue %r dispatcher started", self.name)
        while True:
            taken = self._next_entry()
            if taken is None:
                break
            if isinstance(taken, _Exclusive):
                self._run_exclusive_entry(taken)
                continue
            entry, thread = taken
            try:
                thread.start()
            except BaseException as exc:  # noqa: BLE001 - e.g. "can't start new thread"; the job must still end
                log.exception("Job %s (%s) could not start a thread", entry.job.id, entry.job.kind)
                with self._cond:
                    self._job_threads.pop(thread, None)
                    self._thread_jobs.pop(thread, None)
                    self._exclusive_running = False
                    self._changed()
                self._end_job(entry.job, JobState.FAILED, error=f"{type(exc).__name__}: {exc}",
                              exception=exc.with_traceback(None))
        log.debug("Job queue %r dispatcher stopped", self.name)

    def _run_exclusive_entry(self, entry: _Exclusive) -> None:
        if not entry.future.set_running_or_notify_cancel():
            return
        try:
            entry.future.set_result(entry.fn())
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting caller, who re-raises it
            entry.future.set_exception(exc)

    def _job_thread(self, entry: _QueuedJob) -> None:
        try:
            self._run_job(entry)
        finally:
            # The slot is freed only now, after the FINISHED listeners (see the module docstring).
            with self._cond:
                self._job_threads.pop(threading.current_thread(), None)
                self._thread_jobs.pop(threading.current_thread(), None)
                if not self._job_threads:
                    self._exclusive_running = False
                self._changed()

    def _run_job(self, entry: _QueuedJob) -> None:
        job = entry.job
        control = JobControl(job, self)
        log.info("Job %s (%s) started %s", job.id, job.kind, job.description)
        self._notify(JobEvent.STARTED, job)
        result: Any = None
        error: str | None = None
        exception: BaseException | None = None
        try:
            result = entry.work(control)
            state = JobState.INTERRUPTED if job._interrupt_requested else JobState.DONE
        except JobInterrupted:
            state = JobState.INTERRUPTED
        except BaseException as exc:  # one failing job (even SystemExit) must not stop the queue
            log.exception("Job %s (%s) failed", job.id, job.kind)
            # Kept without its traceback: the frames would pin the job's tensors in the history.
            state, error, exception = JobState.FAILED, f"{type(exc).__name__}: {exc}", exc.with_traceback(None)
        self._end_job(job, state, result=result, error=error, exception=exception)

    def _end_job(self, job: Job, state: JobState, *, result: Any = None, error: str | None = None,
                 exception: BaseException | None = None) -> None:
        with self._cond:
            self._running.remove(job)
        # Remembered before it is marked finished, so a client woken by wait() finds it in jobs().
        self._remember(job)
        job._finish(state, result=result, error=error, exception=exception)
        self._record_duration(job)
        self._notify(JobEvent.FINISHED, job)
        log.info("Job %s %s", job.id, job.state.value)
