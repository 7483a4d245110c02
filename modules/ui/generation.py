"""A txt2img job as the UI sees it: submit a request, follow the job (progress bar, ETA, live
preview), and turn its result into gallery images and the infotext shown under them.

No gradio here: the tab's handlers map these values onto components. Nothing touches torch; the
job queue's worker runs the generation (modules.serving.jobs).
"""

from __future__ import annotations

import asyncio
import html
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from modules.serving.jobs import Job, JobState
from modules.generation.engine import GenerationRequest, GenerationResult, check_prompt_length
from modules.extension_host.scripts import ScriptSelection, run_txt2img


@dataclass
class GenerationUpdate:
    """One poll of a running job. `preview` is set only when a newer preview than the last is ready."""

    progress_html: str
    preview: Any = None


@dataclass
class GenerationOutcome:
    """A finished job, ready for the gallery: images carry their infotext as PNG `parameters`."""

    images: list = field(default_factory=list)
    infotexts: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    subseeds: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # warnings, interruption, timing
    error: str | None = None

    def info_html(self, index: int = 0) -> str:
        """The infotext of image `index` with the job's notes, as shown under the gallery."""
        infotext = self.infotexts[index] if 0 <= index < len(self.infotexts) else ""
        return infotext_html(infotext, self.notes, self.error)

    def to_state(self) -> dict[str, Any]:
        """What the tab keeps per session for the seed-reuse and paste buttons (plain JSON values)."""
        return {"infotexts": list(self.infotexts), "seeds": list(self.seeds), "subseeds": list(self.subseeds),
                "notes": list(self.notes), "error": self.error, "index": 0}


def describe_request(request: GenerationRequest) -> str:
    """A short job description for the queue and the console."""
    prompt = " ".join(request.prompt.split())
    return (prompt[:60] + "…") if len(prompt) > 60 else prompt


def submit_txt2img(context, request: GenerationRequest, selection: ScriptSelection | None = None) -> Job:
    """Queue `request` on the generation queue, with the extensions' scripts (`selection`: the
    Script dropdown and the scripts' controls). Saving follows the `samples_save` setting (A1111's
    UI). With no checkpoint loaded (start-up load skipped or failed), the job loads the start-up one
    first, as A1111 does on first use (`AppContext.load_default_model`). A prompt over the
    `prompt_max_length` setting raises `PromptTooLongError` and nothing is queued."""
    check_prompt_length(request.prompt, request.negative_prompt, context.settings.current()["prompt_max_length"])

    def work(control):
        control.set_info("job_count", request.n_iter)  # /sdapi/v1/progress reports "Batch i out of n"
        context.load_default_model()
        return run_txt2img(context, request, control, selection=selection)

    return context.jobs.submit(work, kind="txt2img", description=describe_request(request))


class _Follower:
    """The state of one client following a job: which preview it has already shown."""

    def __init__(self, job: Job, loading: Callable[[], bool]):
        self.job, self.loading = job, loading
        self.shown_step: int | None = None

    def update(self) -> GenerationUpdate:
        preview, step = self.job.latest_preview()
        fresh = preview is not None and step != self.shown_step
        if fresh:
            self.shown_step = step
        return GenerationUpdate(render_progress(self.job, self.loading()), preview if fresh else None)


def follow_job(job: Job, *, loading: Callable[[], bool] = lambda: False,
               poll_seconds: float = 0.25) -> Iterator[GenerationUpdate]:
    """Yield the job's progress every `poll_seconds` until it finishes (the finished state is not yielded).

    Reading the job's preview asks the worker for a fresh preview at its next step, so previews are made
    only while someone follows the job.
    """
    follower = _Follower(job, loading)
    while not job.finished:
        yield follower.update()
        try:
            job.wait(poll_seconds)
        except TimeoutError:
            pass


async def follow_job_async(job: Job, *, loading: Callable[[], bool] = lambda: False,
                           poll_seconds: float = 0.25) -> AsyncIterator[GenerationUpdate]:
    """`follow_job` for the web UI's event loop: waiting holds no thread, so many pages following
    their jobs do not use up the worker threads that the API's routes and Gradio's handlers share."""
    follower = _Follower(job, loading)
    while not job.finished:
        yield follower.update()
        await asyncio.sleep(poll_seconds)


def outcome_of(job: Job, *, show_grid: bool = False, grid_batch_size: int = 1, grid_n_rows: int = -1,
               grid_prevent_empty_spots: bool = False) -> GenerationOutcome:
    """The finished job's images and infotexts, with what the user should know about it. With
    `show_grid` (A1111's `return_grid`) several images are preceded by their grid (laid out by the
    `n_rows` / `grid_prevent_empty_spots` settings), which carries the first image's infotext and
    seeds, unless a script already put its own grids first."""
    result: GenerationResult | None = job.result if isinstance(job.result, GenerationResult) else None
    outcome = GenerationOutcome()
    finished = len(result.images) if result is not None else 0  # generated images, a grid not counted
    if result is not None:
        for image, infotext in zip(result.images, result.infotexts):
            image.info["parameters"] = infotext  # gradio writes text info into the PNG it serves
        outcome.images = list(result.images)
        # The queue keeps the last jobs for status queries; the gallery has the pictures now, and a
        # hundred finished batches would otherwise pin gigabytes.
        result.images.clear()
        outcome.infotexts = list(result.infotexts)
        outcome.seeds = list(result.seeds)
        outcome.subseeds = list(result.subseeds)
        outcome.notes.extend(result.warnings)
        if show_grid and len(outcome.images) > 1 and result.index_of_first_image == 0 and outcome.infotexts:
            _put_grid_first(outcome, grid_batch_size, grid_n_rows, grid_prevent_empty_spots)
    if job.state is JobState.FAILED:
        outcome.error = job.error or "the job failed; see the console"
    elif job.state is JobState.INTERRUPTED:
        outcome.notes.append(f"Interrupted; {finished} image{'s' if finished != 1 else ''} finished." if finished
                             else "Interrupted before an image was finished.")
    if job.started_at is not None and job.finished_at is not None:
        outcome.notes.append(f"Time taken: {_duration(job.finished_at - job.started_at)}")
    return outcome


def _put_grid_first(outcome: GenerationOutcome, batch_size: int, n_rows: int, prevent_empty_spots: bool) -> None:
    from modules.outputs.images import image_grid

    grid = image_grid(outcome.images, batch_size=batch_size, n_rows=n_rows, prevent_empty_spots=prevent_empty_spots)
    grid.info["parameters"] = outcome.infotexts[0]
    outcome.images.insert(0, grid)
    outcome.infotexts.insert(0, outcome.infotexts[0])
    for values in (outcome.seeds, outcome.subseeds):
        if values:
            values.insert(0, values[0])


def render_progress(job: Job, loading_checkpoint: bool = False) -> str:
    """The progress bar's HTML: queue position, then percent, step and ETA."""
    if job.state is JobState.QUEUED:
        position = job.queue_position
        ahead = "" if position is None else f" ({position + 1} in line)" if position else " (next)"
        return _bar(0, f"Waiting in the queue{ahead}…")
    if job.finished:
        return ""
    if job.total_steps == 0:
        text = "Waiting for the checkpoint to load…" if loading_checkpoint else "Starting…"
        return _bar(0, text)
    percent = job.progress * 100
    eta = job.eta_seconds
    eta_text = f" · ETA {_duration(eta)}" if eta is not None else ""
    return _bar(percent, f"{percent:.0f}% · step {job.step}/{job.total_steps}{eta_text}")


def _bar(percent: float, text: str) -> str:
    return (f"<div class='progress-bar' role='progressbar' aria-valuenow='{percent:.0f}' aria-valuemin='0' "
            f"aria-valuemax='100'><div class='progress-fill' style='width:{percent:.1f}%'></div>"
            f"<span class='progress-text'>{html.escape(text)}</span></div>")


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest:02d} s"


def infotext_html(infotext: str, notes: list[str] = (), error: str | None = None) -> str:
    """The infotext as A1111 shows it under the gallery: prompt, then the parameter lines; the
    job's notes below it, an error above everything."""
    parts = []
    if error:
        parts.append(error_html(error))
    if infotext:
        lines = [html.escape(line) for line in infotext.split("\n")]
        parts.append(f"<p class='infotext'>{'<br>'.join(lines)}</p>")
    for note in notes:
        parts.append(f"<p class='job-note'>{html.escape(note)}</p>")
    return "".join(parts)


def error_html(message: str) -> str:
    lines = "<br>".join(html.escape(line) for line in message.split("\n"))
    return f"<div class='error'><b>Error</b><br>{lines}</div>"


def follow_until_done(job: Job, poll_seconds: float = 0.05) -> GenerationOutcome:
    """Wait for `job` without a UI (tests, scripts) and return its outcome."""
    for _ in follow_job(job, poll_seconds=poll_seconds):
        pass
    return outcome_of(job)
