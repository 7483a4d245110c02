"""Which running app A1111's process-wide names (`modules.shared.opts`, `shared.state`,
`sd_models.checkpoints_list`, `scripts.scripts_data`, ...) mean.

A1111 keeps them in module globals. Atelier keeps no module globals: the app is a context variable,
set by the code that runs extension code on the app's behalf —
- the server, around building the app and for every ASGI call (`AppScopeMiddleware`), so
  extension routes, Gradio event handlers and Gradio's queue workers (started inside the ASGI
  lifespan call) see it;
- the job worker thread (started inside the scope; it copies the starting context);
- extension loading, callbacks and script hooks (`ExtensionRuntime` binds the app).
Two apps in one process (tests) each see their own. Code that runs elsewhere (a thread an
extension started itself) gets a RuntimeError that says so.
"""

from __future__ import annotations

import contextvars
from contextlib import contextmanager
from typing import Any, Iterator

# The AppContext (modules.serving.app_context), not imported here: the serving layer imports this one.
_current_app: contextvars.ContextVar[Any] = contextvars.ContextVar("atelier_app", default=None)


@contextmanager
def app_scope(context: Any) -> Iterator[None]:
    """Make `context` the app A1111's module-level names refer to, in this thread or task and what
    it starts (asyncio tasks and anyio worker threads copy the context). None: leave it as it is."""
    if context is None:
        yield
        return
    token = _current_app.set(context)
    try:
        yield
    finally:
        _current_app.reset(token)


def current_app_or_none() -> Any:
    return _current_app.get()


def current_app() -> Any:
    context = _current_app.get()
    if context is None:
        raise RuntimeError(
            "A1111's process-wide names (shared.opts, shared.state, shared.sd_model, sd_models.*, ...) were used "
            "outside a running Atelier app: from a thread the extension started itself, or from a script run "
            "without the server. Read them in a script hook, a callback, a Gradio event handler or a route, or "
            "copy the values you need before starting the thread.")
    return context


class AppScopeMiddleware:
    """ASGI middleware: every call into the app (HTTP, websocket, lifespan) runs in `app_scope`."""

    def __init__(self, app, context: Any):
        self.app = app
        self.context = context

    async def __call__(self, scope, receive, send):
        token = _current_app.set(self.context)
        try:
            await self.app(scope, receive, send)
        finally:
            _current_app.reset(token)
