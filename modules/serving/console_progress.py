"""A progress bar in the console for every job that reports steps, as A1111 prints one per generation.

    txt2img task-000003:  45%|██████▎       | 9/20 [00:01<00:01, 7.9it/s]

`ConsoleProgress` is a job-queue listener (modules.serving.jobs `JobQueue.add_listener`); it owns one tqdm
bar per running job and closes it when the job ends, with the job's end state when it did not
simply finish. Jobs that never report a step (a checkpoint switch) draw no bar: the log says what
they did.
"""

from __future__ import annotations

import sys
import threading
from typing import TYPE_CHECKING, TextIO

from modules.serving.jobs import JobEvent, JobState

if TYPE_CHECKING:
    from tqdm import tqdm

    from modules.serving.jobs import Job, JobQueue


class ConsoleProgress:
    """Draws the bars; `stream` defaults to stderr (where tqdm and the log go)."""

    def __init__(self, stream: TextIO | None = None):
        self._stream = stream
        self._bars: dict[str, tqdm] = {}
        self._lock = threading.Lock()

    def __call__(self, event: JobEvent, job: Job) -> None:
        if event is JobEvent.PROGRESS:
            self._advance(job)
        elif event is JobEvent.FINISHED:
            self._close(job)

    def _advance(self, job: Job) -> None:
        from tqdm import tqdm

        step, total = job.step, job.total_steps
        with self._lock:
            bar = self._bars.get(job.id)
            if bar is None:
                bar = tqdm(total=total, desc=f"{job.kind} {job.id}", unit="it", file=self._stream or sys.stderr,
                           dynamic_ncols=True, leave=True)
                self._bars[job.id] = bar
            if bar.total != total:
                bar.total = total
            if step > bar.n:
                bar.update(step - bar.n)  # tqdm redraws at most every `mininterval`

    def _close(self, job: Job) -> None:
        with self._lock:
            bar = self._bars.pop(job.id, None)
        if bar is None:
            return
        if job.state is JobState.DONE and bar.total and bar.n < bar.total:
            bar.update(bar.total - bar.n)  # the last step is not always reported
        elif job.state is not JobState.DONE:
            bar.set_postfix_str(job.state.value, refresh=False)
        bar.close()


def install_console_progress(jobs: JobQueue, stream: TextIO | None = None) -> ConsoleProgress:
    """Draw a console progress bar for each job of `jobs`; returns the listener (to remove it again)."""
    progress = ConsoleProgress(stream)
    jobs.add_listener(progress)
    return progress
