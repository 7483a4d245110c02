"""The user's place in the shared job queue: the "My queue" panel, and which of a page's own jobs
its progress bar follows.

- `PageJobs`: with `--multi-user` Generate stays pressable while the tab's job runs, and each click
  queues a job of its own, each followed by its own handler. The handlers of one page's tab take
  turns: a job's handler stays quiet (only its queue note in the tab's message line) while an
  earlier job of the same page and tab is still followed, so two handlers never fight over the
  progress bar, the gallery and the job id that Interrupt reads. A page is Gradio's session hash.
- The panel (`#atelier_my_queue`, one `[data-job-id]` row per job with its `data-state`) lists the
  caller's waiting and running jobs: place in the queue, wait estimate, what it is; an operator sees
  every user's jobs with their owner's name. Each row's Cancel takes a waiting job out of the queue
  and interrupts a running one, for the job's owner or an operator only (`cancel_job`). It is
  refreshed by a timer and when Generate is pressed. It exists only with `--multi-user`: a
  single-user page stays as A1111's.
"""

from __future__ import annotations

import html
import threading
from collections.abc import Iterable

import gradio as gr

from modules.serving.accounts import User, caller
from modules.serving.jobs import Job, JobState
from modules.ui.generation import queue_place, queue_standing

PANEL_ID = "atelier_my_queue"
REFRESH_SECONDS = 2.0
# Job kinds the panel lists: the generation and extras jobs users queue (a checkpoint switch or a
# merge is the operator's and shows in the model status line).
LISTED_KINDS = frozenset({"txt2img", "img2img", "img2img-batch", "extras"})


class PageJobs:
    """The jobs each page's tab is following, in submission order (see the module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._followed: dict[tuple[str | None, str], list[Job]] = {}

    def add(self, page: str | None, tab: str, job: Job) -> None:
        with self._lock:
            self._followed.setdefault((page, tab), []).append(job)

    def remove(self, page: str | None, tab: str, job: Job) -> None:
        with self._lock:
            jobs = self._followed.get((page, tab), [])
            if job in jobs:
                jobs.remove(job)
            if not jobs:
                self._followed.pop((page, tab), None)

    def earlier(self, page: str | None, tab: str, job: Job) -> list[Job]:
        """The page's jobs on `tab` followed before `job` and still followed."""
        with self._lock:
            jobs = self._followed.get((page, tab), [])
            return list(jobs[:jobs.index(job)]) if job in jobs else []


def page_of(request) -> str | None:
    """The page (Gradio session) a request comes from; None outside a browser (a direct call)."""
    return getattr(request, "session_hash", None) if request is not None else None


def queue_note_html(job: Job) -> str:
    """The message-line note of a job that waits for the page's earlier job: "Queued: 2nd in the
    queue, ~40 s". `data-atelier-notice` (the job id) lets the page show it once as a notice."""
    standing = queue_standing(job)
    if standing is not None:
        place, wait = standing
        text = f"Queued: {place} in the queue" + (f", {wait}" if wait else "")
    elif job.state is JobState.RUNNING:
        text = "Running; shown here when this tab's earlier job has finished"
    else:
        text = "Finished; shown here when this tab's earlier job has finished"
    return (f"<p class='job-note queue-note' data-atelier-notice='{html.escape(job.id, quote=True)}'>"
            f"{html.escape(text)}</p>")


# --- the panel -------------------------------------------------------------------------------------


def visible_jobs(context, user: User) -> list[Job]:
    """The running then waiting jobs `user` may see (their own; an operator: all), running first in
    start order, then the waiting ones in the order they will start."""
    queue = context.jobs
    jobs = [*queue.running_jobs(), *queue.waiting_jobs()]
    return [job for job in jobs if job.kind in LISTED_KINDS and user.owns(job.owner)]


def render_panel(context, user: User) -> str:
    """The panel's HTML (see the module docstring for its DOM)."""
    jobs = visible_jobs(context, user)
    show_owner = user.admin and context.accounts.multi_user
    if not jobs:
        return f"<div id='{PANEL_ID}_list' class='my-queue empty'><p class='job-note'>No jobs waiting or running.</p></div>"
    rows = "".join(_row(job, show_owner) for job in jobs)
    return f"<div id='{PANEL_ID}_list' class='my-queue'><table>{rows}</table></div>"


def _row(job: Job, show_owner: bool) -> str:
    state = job.state.value
    if job.state is JobState.QUEUED:
        where = f"waiting: {queue_place(job) or 'starting'}"
    elif job.total_steps:
        where = f"running: {job.progress * 100:.0f}%"
    else:
        where = "running"
    owner = f"<td class='owner'>{html.escape(job.owner or 'everyone')}</td>" if show_owner else ""
    job_id = html.escape(job.id, quote=True)
    label = "Cancel" if job.state is JobState.QUEUED else "Interrupt"
    return (f"<tr data-job-id='{job_id}' data-state='{html.escape(state, quote=True)}'>{owner}"
            f"<td class='where'>{html.escape(where)}</td><td class='what'>{html.escape(job.description or job.kind)}"
            f"</td><td><button class='my-queue-cancel' data-cancel='{job_id}'>{label}</button></td></tr>")


def cancel_job(context, user: User, job_id: str) -> bool:
    """Cancel a waiting job or interrupt a running one, if `user` owns it (or is an operator).
    False for an unknown job, another user's, or one already finished (nothing said about which)."""
    job = context.jobs.get(str(job_id or ""))
    if job is None or job.finished or job.kind not in LISTED_KINDS or not user.owns(job.owner):
        return False
    return context.jobs.interrupt(job.id)


CSS = """
#atelier_my_queue .my-queue table { width: 100%; font-size: 0.85em; border-collapse: collapse; }
#atelier_my_queue .my-queue td { padding: 0.15em 0.4em; vertical-align: middle; }
#atelier_my_queue .my-queue td.what { word-break: break-word; opacity: 0.85; }
#atelier_my_queue .my-queue-cancel { padding: 0.1em 0.6em; border-radius: 0.3em; cursor: pointer;
  border: 1px solid var(--border-color-primary); background: var(--button-secondary-background-fill); }
"""

# Rows are re-rendered every tick: one listener on the component's element catches their buttons.
_CANCEL_JS = """
element.addEventListener('click', (event) => {
  const button = event.target.closest && event.target.closest('[data-cancel]');
  if (button) trigger('click', {job_id: button.getAttribute('data-cancel')});
});
"""


def build(context) -> gr.HTML:
    """The panel, once per page (under the top bar, so it shows on every tab), refreshed every
    `REFRESH_SECONDS` while open (see also `wire_refresh`). Built only with `--multi-user`
    (modules.ui.app): a single-user page stays as it was."""
    with gr.Accordion("My queue", open=True, elem_id=f"{PANEL_ID}_accordion") as accordion:
        panel = gr.HTML(f"<div id='{PANEL_ID}_list' class='my-queue empty'></div>", elem_id=PANEL_ID,
                        js_on_load=_CANCEL_JS)
    timer = gr.Timer(REFRESH_SECONDS, active=True)
    refresh = _refresher(context)

    def on_cancel(event: gr.EventData, request: gr.Request | None = None):
        user = caller(context, request)
        data = getattr(event, "_data", None)
        cancel_job(context, user, str(data.get("job_id", "")) if isinstance(data, dict) else "")
        return render_panel(context, user)

    def on_open(request: gr.Request | None = None):
        return gr.Timer(active=True), refresh(request)

    timer.tick(refresh, outputs=panel, show_progress="hidden", queue=False)
    panel.click(on_cancel, outputs=panel, show_progress="hidden", queue=False)
    accordion.expand(on_open, outputs=[timer, panel], show_progress="hidden", queue=False)
    accordion.collapse(lambda: gr.Timer(active=False), outputs=timer, show_progress="hidden", queue=False)
    return panel


def wire_refresh(context, panel: gr.HTML, buttons: Iterable) -> None:
    """Refresh the panel when one of `buttons` (the tabs' Generate) is pressed. The job is queued by
    Generate's own handler a moment later, so the timer's next tick is what shows it for sure."""
    refresh = _refresher(context)
    for button in buttons:
        button.click(refresh, outputs=panel, show_progress="hidden", queue=False)


def _refresher(context):
    """The handler that renders the panel for the user behind its request."""
    def refresh(request: gr.Request | None = None) -> str:
        return render_panel(context, caller(context, request))

    return refresh
