"""The workers line under the top bar's model status, in Ray mode only: "3 workers, 2 busy", with one
line per worker on hover (id, node, state, device, job, checkpoints, last error).

The embedded (default) mode shows nothing and builds no component, so its page is what it was before
Ray mode existed. The line is read from the pool's last report (`context.cluster.describe()`, no
round trip to the workers) when a page opens and every few seconds after.

On a server shared with `--multi-user` each page sees the workers as its user may
(modules.cluster.visibility): a non-operator sees no other user's job id or last error.

Everything shown is escaped: node ids come from Ray, checkpoint titles from file names, and an error
can quote anything (a prompt, a path, a remote traceback).
"""

from __future__ import annotations

import html

import gradio as gr

from modules.cluster.types import WorkerInfo, workers_summary
from modules.cluster.visibility import workers_as_seen_by
from modules.serving.accounts import SHARED_USER, User, caller
from modules.ui.shared import UiShared

POLL_SECONDS = 3.0
# A tooltip, not a log: one error line is cut here (the full text is in GET /atelier/v1/workers).
MAX_ERROR_CHARS = 200
CSS = "#workers_status { font-size: 0.9em; padding: 0 0.25em; }"


def worker_line(worker: WorkerInfo) -> str:
    """One worker as plain text (not escaped), for the hover text."""
    parts = [f"{worker.id} on {worker.node or '?'}: {worker.state}"]
    if worker.device:
        parts.append(worker.device)
    if worker.current_job:
        parts.append(f"job {worker.current_job}")
    parts.append(f"{worker.jobs_done} done")
    if worker.loaded_checkpoints:
        parts.append("holds " + ", ".join(worker.loaded_checkpoints))
    line = ", ".join(parts)
    if worker.last_error:
        error = " ".join(worker.last_error.split())  # one line: a traceback's newlines would split the tooltip
        if len(error) > MAX_ERROR_CHARS:
            error = error[:MAX_ERROR_CHARS - 1] + "…"
        line += f"; last error: {error}"
    return line


def workers_status_html(context, user: User = SHARED_USER) -> str:
    """The status line's HTML: empty in the embedded mode (no `context.cluster`). `user`: who reads
    it (with `--multi-user` a non-operator sees no other user's job id or error)."""
    cluster = getattr(context, "cluster", None)
    if cluster is None:
        return ""
    # One snapshot for both the words and the hover text.
    workers = workers_as_seen_by(cluster.describe(), context, user)
    details = "\n".join(worker_line(worker) for worker in workers) or "no workers yet"
    return (f"<span class='workers-status' title=\"{html.escape(details, quote=True)}\">"
            f"{html.escape(workers_summary(workers))}</span>")


def build(context, shared: UiShared) -> gr.HTML | None:
    """The workers line, refreshed on page load and every `POLL_SECONDS`; nothing in the embedded mode
    (returns None)."""
    if getattr(context, "cluster", None) is None:
        return None
    def for_page(request: gr.Request | None = None) -> str:
        return workers_status_html(context, caller(context, request))

    # Built into the page every user loads: as an unknown caller sees it (everything without --multi-user).
    status = gr.HTML(for_page(), elem_id="workers_status")
    timer = gr.Timer(POLL_SECONDS)
    # Not queued behind generations (concurrency_limit None) and not part of the public API.
    timer.tick(for_page, outputs=[status], show_progress="hidden", concurrency_limit=None, api_visibility="private")
    shared.page_loads.append((for_page, [status]))
    return status
