"""What the page gives extensions' JavaScript: A1111's globals, and `opts` read from the server.

`javascript/atelier.js` (at the install root) defines A1111's page globals (`gradioApp`, `onUiLoaded`,
`onUiUpdate`, `onAfterUiUpdate`, `onUiTabChange`, `onOptionsChanged`, `onOptionsAvailable`, `opts`,
`get_uiCurrentTab`, `get_uiCurrentTabContent`, `updateInput`, `selected_gallery_index`,
`switch_to_txt2img`, `uiElementIsVisible`, `executeCallbacks`). `page_head(context)` puts it inline
first in `<head>`, then the extensions' scripts (modules.ui.extensions_tab.extension_head), so their
top-level code finds those names. Gradio 6 re-creates the head's scripts in order (`async = false`);
an inline script runs as soon as it is added, before any `src` script after it. Gradio 6 mounts a
tab's content only when the tab is first opened, so before `onUiLoaded` the script opens each main
tab once and waits for the elements the page's config shows (A1111's page had every tab mounted).

`opts` is filled from `GET /atelier/opts.json` (behind the server's auth like every route): the
settings in effect, as the Settings tab shows them, read again after Settings or a quicksetting are
applied. A1111 reads a hidden `#settings_json` element instead; the values are the same.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import Response

from modules.serving.settings import redact_secrets
from modules.ui.extensions_tab import extension_head

log = logging.getLogger(__name__)

ATELIER_JS = Path(__file__).resolve().parents[2] / "javascript" / "atelier.js"
OPTIONS_ROUTE = "/atelier/opts.json"


def atelier_script() -> str:
    """The inline script element with A1111's page globals."""
    source = ATELIER_JS.read_text(encoding="utf-8").replace("</script", "<\\/script")
    return f'<script data-atelier="page-globals">\n{source}\n</script>'


def page_head(context) -> str:
    """The page's extra `<head>`: Atelier's globals, then each extension's scripts in A1111's order."""
    return "\n".join(filter(None, [atelier_script(), extension_head(context)]))


def options_json(context) -> str:
    """The settings in effect as a JSON object (the browser's `opts`). Values JSON cannot hold
    (NaN, objects) are written as null / text, so one odd value never breaks the whole object.
    Secret settings (tokens) are masked."""
    values: dict[str, Any] = {}
    for key, value in redact_secrets(context.settings.current(), context.settings.specs_by_key()).items():
        if isinstance(value, float) and not math.isfinite(value):
            value = None
        values[key] = value
    return json.dumps(values, default=str, ensure_ascii=False)


def install_options_route(app: FastAPI, context) -> None:
    """`GET /atelier/opts.json`. Call before Gradio is mounted at "/" (a route added after the mount
    would never be reached)."""

    @app.get(OPTIONS_ROUTE, include_in_schema=False)
    def page_options() -> Response:
        return Response(options_json(context), media_type="application/json",
                        headers={"Cache-Control": "no-store"})
