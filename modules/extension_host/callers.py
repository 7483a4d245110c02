"""On whose behalf extension code calls A1111's process-wide names (`shared.opts`, `shared.state`,
`sd_models.reload_model_weights`, ...) on a server shared with `--multi-user`.

A1111 has one user, so its facades act on "the" job and "the" settings. With several users an
extension's script runs inside one user's job, and what it does through the facades must stay that
user's: their own choices, their own job. The caller is found from where the code runs:
- on a job thread of the app's queue: that job, for its owner (a job without an owner is the
  server's own, e.g. an operator's merge: acting as today);
- in a Gradio event (an extension's own button): the page's logged-in user, no job;
- anywhere else (start-up code, a thread of its own, an extension's FastAPI route): unknown.
Without `--multi-user` nothing of this applies: `ExtensionCaller.multi_user` is False and the
facades behave exactly as A1111's.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

from modules.serving.accounts import User, caller, is_multi_user


@dataclass(frozen=True)
class ExtensionCaller:
    """`job`: the job whose thread calls (None outside any job). `user`: who the call is for (None:
    unknown, or a job of the server's own)."""

    multi_user: bool
    job: Any = None
    user: User | None = None

    @property
    def restricted(self) -> bool:
        """A --multi-user user who is not an operator: acts on their own choices and jobs only."""
        return self.multi_user and self.user is not None and not self.user.admin

    @property
    def operator(self) -> bool:
        """Known to be an operator (`--admin-users`), or a single-user server's one user."""
        return not self.multi_user or (self.user is not None and self.user.admin)


def extension_caller(context) -> ExtensionCaller:
    """Who calls, as the module docstring says."""
    if not is_multi_user(context):
        return ExtensionCaller(False)
    jobs = getattr(context, "jobs", None)
    job = jobs.job_of_current_thread() if jobs is not None else None
    if job is not None:
        return ExtensionCaller(True, job, context.accounts.user(job.owner) if job.owner is not None else None)
    request = _gradio_request()
    return ExtensionCaller(True, None, caller(context, request) if request is not None else None)


def _gradio_request():
    """The `gr.Request` of the Gradio event this thread handles, or None. Gradio is not imported here
    (it is not loaded in tools and Ray workers; where it is not loaded there is no event)."""
    gradio_context = sys.modules.get("gradio.context")
    if gradio_context is None:
        return None
    return gradio_context.LocalContext.request.get(None)


def extension_name() -> str:
    """The extension whose callback or script method runs now, for log lines ("an extension" when
    that is not known, e.g. in an extension's own Gradio handler)."""
    from modules.extension_host.callbacks import current_scope_or_none

    scope = current_scope_or_none()
    return f"extension {scope.extension!r}" if scope is not None else "an extension"
