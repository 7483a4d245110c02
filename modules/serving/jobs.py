"""The job queue: one worker thread owns the GPU; HTTP and UI handlers only submit and observe.

A handler builds a work function (`Callable[[JobControl], Any]`), calls `JobQueue.submit`, and gets a
`Job` back at once. The worker runs jobs one at a time in submission order (FIFO; ids increase in
that order). The work function reports progress through its `JobControl` and polls it for
interrupt and skip requests; clients read the `Job` (state, progress, ETA, preview, result, error)
and never touch the model themselves (ComfyUI's habit; A1111's `queue_lock` made explicit).

Decisions worth knowing:
- Previews are lazy and always built on the worker thread. `JobControl.report` takes a
  `preview_factory` (a cheap closure over the current latent); it is called only when a client
  has asked for a preview since the last one (reading `Job.preview` asks) or, if
  `JobQueue.preview_every_steps` > 0, every that many steps. A denoise loop therefore pays for a
  preview (a VAE/approx decode) only when someone looks, and the decode stays on the thread that
  owns the GPU. The cost is one step of latency: a poll returns the preview made after the
  previous poll.
- `JobInterrupted` derives from `BaseException`, like A1111's `InterruptedException`, so a broad
  `except Exception` inside a sampler or an extension cannot swallow an interrupt.
- A job that was interrupted while running ends in state `interrupted` even if the work function
  returns normally; whatever it returned is kept as `result` (finished images survive).
- `run_exclusive(fn)` takes its place in the same FIFO as jobs: it runs after the running job and
  after jobs submitted before it, so those jobs see the model they were submitted against
  (A1111's FIFO `queue_lock` behaves the same way).
- Listeners (`add_listener`) observe every job's start, reported steps and end, e.g. the console
  progress bar (modules.serving.console_progress). They are called on the thread that caused the event
  (the worker, or the caller of `interrupt`/`shutdown` for a job cancelled before it started), must
  be quick, and a failing listener is logged and ignored.
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

    def __init__(self, job_id: str, kind: str, description: str, queue: JobQueue):
        self.id = job_id
        self.kind = kind
        self.description = description
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


class JobQueue:
    """A FIFO of jobs run by one worker thread. Thread-safe; every method may be called from any thread."""

    def __init__(self, name: str = "generation", *, history_limit: int = DEFAULT_HISTORY_LIMIT,
                 preview_every_steps: int = 0):
        if history_limit < 0:
            raise ValueError(f"history_limit must be 0 or more, got {history_limit}")
        self.name = name
        # 0: previews only on request (a client reading Job.preview). Settable at run time.
        self.preview_every_steps = preview_every_steps
        self._history_limit = history_limit
        self._cond = threading.Condition()
        self._pending: deque[_QueuedJob | _Exclusive] = deque()
        self._jobs: dict[str, Job] = {}  # every queued, running and remembered finished job
        self._history: deque[Job] = deque()
        self._current: Job | None = None
        self._counter = 0
        self._thread: threading.Thread | None = None
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
            # Daemon: a job stuck in native code must not keep the process alive at exit. The worker
            # runs in a copy of the starting context, so it sees the app the starter was in
            # (modules.extension_host.environment).
            self._thread = threading.Thread(target=contextvars.copy_context().run, args=(self._run,),
                                            name=f"jobs-{self.name}", daemon=True)
            self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stopping

    def shutdown(self, wait: bool = True, *, cancel_pending: bool = True, timeout: float | None = None) -> None:
        """Stop accepting work and stop the worker after the running job.

        With `cancel_pending`, queued jobs end as interrupted and queued `run_exclusive` calls raise
        RuntimeError; without it the worker first drains the queue. The running job is not
        interrupted: call `interrupt()` first for that.
        """
        with self._cond:
            self._stopping = True
            self._drain_on_stop = not cancel_pending
            cancelled = list(self._pending) if cancel_pending else []
            if cancel_pending:
                self._pending.clear()
            thread = self._thread
            self._cond.notify_all()
        for entry in cancelled:
            self._cancel_entry(entry, "the job queue was shut down")
        if wait and thread is not None and thread is not threading.current_thread():
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

    def submit(self, work: Callable[[JobControl], Any], *, kind: str, description: str = "") -> Job:
        """Queue `work` and return its Job at once. The work runs on the worker thread."""
        if not callable(work):
            raise TypeError(f"work must be callable as work(control), got {type(work).__name__}")
        with self._cond:
            if self._stopping:
                raise RuntimeError(f"job queue {self.name!r} is shut down; no new jobs are accepted")
            # Id and queue slot are taken under one lock, so ids increase in execution order.
            self._counter += 1
            job = Job(f"task-{self._counter:06d}", kind, description, self)
            self._jobs[job.id] = job
            self._pending.append(_QueuedJob(job, work))
            self._cond.notify_all()
        log.debug("Queued job %s (%s) %s", job.id, kind, description)
        return job

    def on_worker(self) -> bool:
        """Whether the caller runs on this queue's worker (inside a job), where waiting for another
        job would deadlock."""
        return threading.current_thread() is self._thread

    def run_exclusive(self, fn: Callable[[], T], timeout: float | None = None) -> T:
        """Run `fn` on the worker between jobs (after those queued before it) and return its result.

        Its exception is re-raised here. Called from the worker itself (e.g. inside a job), `fn`
        runs at once, since waiting for the worker there would deadlock. If `timeout` seconds pass
        before `fn` started, it is withdrawn and TimeoutError raised; once started it runs to the end.
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
            self._cond.notify_all()
        try:
            return future.result(timeout)
        except TimeoutError:
            # A cancelled future is dropped by the worker; one already running cannot be stopped.
            future.cancel()
            raise

    # -- control ---------------------------------------------------------------------------------

    def interrupt(self, job_id: str | None = None) -> bool:
        """Interrupt the running job (None: whichever runs now) or cancel a queued one.

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
            else:
                job._interrupt_requested = True
                return True
        self._cancel_entry(entry, "cancelled before it started")
        return True

    def skip(self, job_id: str | None = None) -> bool:
        """Ask the running job to skip its current image. Returns False when no job is running."""
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
        return self._current

    def pending_count(self) -> int:
        with self._cond:
            return sum(1 for entry in self._pending if isinstance(entry, _QueuedJob))

    def jobs(self, limit: int | None = None) -> list[Job]:
        """Known jobs (finished history, running, queued) in submission order; the last `limit`."""
        with self._cond:
            # Insertion order of the dict is submission order; evictions only remove.
            known = list(self._jobs.values())
        return known if limit is None else known[-limit:] if limit > 0 else []

    # -- internals -------------------------------------------------------------------------------

    def _resolve(self, job_id: str | None) -> Job | None:
        return self._current if job_id is None else self._jobs.get(job_id)

    def _position_of(self, job: Job) -> int | None:
        with self._cond:
            position = 0
            for entry in self._pending:
                if isinstance(entry, _QueuedJob):
                    if entry.job is job:
                        return position
                    position += 1
            return None

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

    def _next_entry(self) -> _QueuedJob | _Exclusive | None:
        with self._cond:
            while not self._pending:
                if self._stopping:
                    return None
                self._cond.wait()
            if self._stopping and not self._drain_on_stop:
                return None
            entry = self._pending.popleft()
            if isinstance(entry, _QueuedJob):
                # Marked under the queue lock so interrupt() never sees a job that is neither
                # in the pending deque nor running.
                entry.job._mark_running()
                self._current = entry.job
            return entry

    def _run(self) -> None:
        log.debug("Job queue %r worker started", self.name)
        while True:
            entry = self._next_entry()
            if entry is None:
                break
            if isinstance(entry, _Exclusive):
                self._run_exclusive_entry(entry)
            else:
                self._run_job(entry)
        log.debug("Job queue %r worker stopped", self.name)

    def _run_exclusive_entry(self, entry: _Exclusive) -> None:
        if not entry.future.set_running_or_notify_cancel():
            return
        try:
            entry.future.set_result(entry.fn())
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting caller, who re-raises it
            entry.future.set_exception(exc)

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
        except BaseException as exc:  # one failing job (even SystemExit) must not stop the worker
            log.exception("Job %s (%s) failed", job.id, job.kind)
            # Kept without its traceback: the frames would pin the job's tensors in the history.
            state, error, exception = JobState.FAILED, f"{type(exc).__name__}: {exc}", exc.with_traceback(None)
        with self._cond:
            self._current = None
        # Remembered before it is marked finished, so a client woken by wait() finds it in jobs().
        self._remember(job)
        job._finish(state, result=result, error=error, exception=exception)
        self._notify(JobEvent.FINISHED, job)
        log.info("Job %s %s", job.id, job.state.value)
