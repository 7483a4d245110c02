"""A txt2img job as the UI sees it: submit a request, follow the job (progress bar, ETA, live
preview), and turn its result into gallery images and the infotext shown under them.

No gradio here: the tab's handlers map these values onto components. Nothing touches torch; the
job runs through the generation service the API uses too (modules.serving.generation_service).
"""

from __future__ import annotations

import asyncio
import html
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from modules.serving.generation_service import GenerationSubmission, finished_generation, submit_generation
from modules.serving.accounts import ordinal
from modules.serving.jobs import Job, JobState


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


class _Follower:
    """The state of one client following a job: which preview it has already shown."""

    def __init__(self, job: Job, loading: Callable[[], bool], show_bar: bool = True):
        self.job, self.loading, self.show_bar = job, loading, show_bar
        self.shown_step: int | None = None

    def update(self) -> GenerationUpdate:
        preview, step = self.job.latest_preview()
        fresh = preview is not None and step != self.shown_step
        if fresh:
            self.shown_step = step
        return GenerationUpdate(render_progress(self.job, self.loading(), show_bar=self.show_bar),
                                preview if fresh else None)


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
                           poll_seconds: float = 0.25, show_bar: bool = True) -> AsyncIterator[GenerationUpdate]:
    """`follow_job` for the web UI's event loop: waiting holds no thread, so many pages following
    their jobs do not use up the worker threads that the API's routes and Gradio's handlers share.
    `show_bar` False: the bar is sent hidden (the Generate button still reads it)."""
    follower = _Follower(job, loading, show_bar)
    loop = asyncio.get_running_loop()
    while not job.finished:
        yield follower.update()
        # A long refresh period must not hold back the result: the end of the job is noticed at once.
        deadline = loop.time() + poll_seconds
        while not job.finished and (left := deadline - loop.time()) > 0:
            await asyncio.sleep(min(FINISH_CHECK_SECONDS, left))


def outcome_of(settings: Mapping[str, Any], submission: GenerationSubmission, job: Job) -> GenerationOutcome:
    """The finished job's gallery (`finished_generation`: the grid first when A1111 returns one),
    with what the user should know about the job: warnings, interruption, time taken, the error."""
    finished = finished_generation(settings, submission, job)
    outcome = GenerationOutcome(images=finished.images, infotexts=finished.infotexts, seeds=finished.seeds,
                                subseeds=finished.subseeds, notes=list(finished.result.warnings))
    if job.state is JobState.FAILED:
        outcome.error = job.error or "the job failed; see the console"
    elif job.state is JobState.INTERRUPTED:
        generated = len(finished.images) - finished.index_of_first_image
        outcome.notes.append(f"Interrupted; {generated} image{'s' if generated != 1 else ''} finished." if generated
                             else "Interrupted before an image was finished.")
    if job.started_at is not None and job.finished_at is not None:
        outcome.notes.append(f"Time taken: {_duration(job.finished_at - job.started_at)}")
    return outcome


MIN_POLL_SECONDS = 0.05  # a refresh period of 0 would poll without pause
MAX_POLL_SECONDS = 10.0  # longer, and the bar would look stuck
FINISH_CHECK_SECONDS = 0.1  # how soon a follower sees its job end, whatever the refresh period


def follow_options(settings: Mapping[str, Any]) -> dict[str, Any]:
    """`follow_job_async` keywords from A1111's settings: `live_preview_refresh_period` (ms; at least
    `MIN_POLL_SECONDS`, at most `MAX_POLL_SECONDS`) and `show_progressbar`."""
    try:
        period = float(settings.get("live_preview_refresh_period", 1000)) / 1000
    except (TypeError, ValueError):
        period = 1.0
    if period != period:  # NaN
        period = 1.0
    return {"poll_seconds": min(MAX_POLL_SECONDS, max(MIN_POLL_SECONDS, period)),
            "show_bar": bool(settings.get("show_progressbar", True))}


def render_progress(job: Job, loading_checkpoint: bool = False, *, show_bar: bool = True) -> str:
    """The progress bar's HTML: queue position, then percent, step and ETA. The bar also carries a
    short form of its text (`data-short`), which the page shows on the Generate button and in the
    strip that stays in view while the page is scrolled (modules.ui.progress_display)."""
    if job.state is JobState.QUEUED and getattr(job, "owner", None) is None:  # a single-user queue: the place only
        position = job.queue_position
        ahead = "" if position is None else f" ({position + 1} in line)" if position else " (next)"
        return _bar(0, f"Waiting in the queue{ahead}…", f"Queued{ahead}", show_bar)
    if job.state is JobState.QUEUED:  # a --multi-user user's job: the place among everyone's, and the wait
        place = queue_place(job)
        return _bar(0, f"Waiting in the queue{': ' + place if place else '…'}",
                    f"Queued{': ' + place if place else ''}", show_bar)
    if job.finished:
        return ""
    if job.total_steps == 0:
        text = "Waiting for the checkpoint to load…" if loading_checkpoint else "Starting…"
        return _bar(0, text, "Loading checkpoint…" if loading_checkpoint else text, show_bar)
    percent = job.progress * 100
    eta = job.eta_seconds
    eta_text = f" · ETA {_duration(eta)}" if eta is not None else ""
    return _bar(percent, f"{percent:.0f}% · step {job.step}/{job.total_steps}{eta_text}", f"{percent:.0f}%{eta_text}",
                show_bar)


def queue_place(job: Job) -> str:
    """Where a queued job stands, as the bar and the queue panel say it: "next", "2nd, ~40 s" (the
    wait from `job.wait_estimate`, left out while the queue has nothing to estimate from); "" when
    the job is not waiting (it started or finished meanwhile)."""
    standing = queue_standing(job)
    return ", ".join(part for part in standing if part) if standing else ""


def queue_standing(job: Job) -> tuple[str, str] | None:
    """(place: "next", "2nd", ...; wait: "~40 s", or "" while nothing is known to estimate from) of a
    queued job; None when it is not waiting."""
    position = job.queue_position
    if position is None:
        return None
    place = "next" if position == 0 else ordinal(position + 1)
    wait = job.wait_estimate
    if wait is None:
        return place, ""
    # An estimate: whole seconds (at least 1), not the tenths a running job's ETA shows.
    return place, f"~{max(1, round(wait))} s" if wait < 59.5 else f"~{_duration(wait)}"


def _bar(percent: float, text: str, short: str, shown: bool = True) -> str:
    classes = "progress-bar" if shown else "progress-bar progress-hidden"
    return (f"<div class='{classes}' role='progressbar' aria-valuenow='{percent:.0f}' aria-valuemin='0' "
            f"aria-valuemax='100' data-short='{html.escape(short, quote=True)}'>"
            f"<div class='progress-fill' style='width:{percent:.1f}%'></div>"
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


def follow_until_done(context, submission: GenerationSubmission, poll_seconds: float = 0.05) -> GenerationOutcome:
    """Submit and wait without a UI (tests, scripts); the outcome the tab would show."""
    job = submit_generation(context, submission)
    for _ in follow_job(job, poll_seconds=poll_seconds):
        pass
    return outcome_of(context.settings.current(), submission, job)
