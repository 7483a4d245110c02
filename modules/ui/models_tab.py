"""The Models tab: look a model up on Civitai, Hugging Face or an https URL, download it into its folder
with its cards, follow and cancel downloads, fetch cards for files already here, and the checkpoint
tools (inspect, convert to safetensors, prune EMA, save as fp16).

A thin face over `context.model_sources` (modules.model_sources.service), which owns the downloads,
the folders and the write policy; the API's `/atelier/v1/models` routes call the same service. The
downloads live in the service, not in the page: a timer (1 s) redraws them from
`service.downloads()`, so a reload, a second browser or a download started through the API shows the
same list. Handlers are methods of `ModelsTabHandlers` (widget values in, HTML and `gr.update`s out),
so tests call them without a browser; the HTML comes from modules.ui.models_render.

Element ids: models_source, models_lookup, models_card, models_files, models_file, models_type,
models_download, models_message, models_access_note, models_downloads, models_cancel_id, models_cancel,
models_cards_kind, models_cards_file, models_cards_fetch, models_cards_result, models_tools_checkpoint,
models_inspect, models_convert, models_prune, models_fp16, models_tools_result.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from modules.library.checkpoints import CheckpointNotFoundError
from modules.model_sources.placement import MODEL_KINDS, TYPE_CHOICES
from modules.model_sources.types import ModelSourceError
from modules.serving.accounts import SHARED_USER, User, caller
from modules.ui import operators
from modules.ui.generation import error_html
from modules.ui.models_render import (ACTIVE_STATES, card_html, cancel_choices, cards_table_html, downloads_html,
                                      files_table_html, message_html, preview_data_uri, report_html,
                                      tool_result_text)

log = logging.getLogger(__name__)

KIND_LABELS = {"checkpoint": "Checkpoint", "lora": "LoRA", "embedding": "Embedding (textual inversion)",
               "hypernetwork": "Hypernetwork", "vae": "VAE"}
TYPE_LABELS = {"Checkpoint": "Checkpoint", "LORA": "LoRA", "TextualInversion": "Embedding (textual inversion)",
               "Hypernetwork": "Hypernetwork", "VAE": "VAE"}
# What the service raises for a source, a file or a checkpoint that is not what it should be (its
# ModelSourceError is a ValueError; a full disk an OSError): shown on the page with its message.
SHOWN_ERRORS = (ValueError, CheckpointNotFoundError, OSError)
ALL_FILES = "(all files)"
TOOLS = {"convert": "Convert to safetensors", "prune-ema": "Prune EMA", "fp16": "Save as fp16"}
POLL_SECONDS = 1.0
SOURCE_LABEL = "Hugging Face repo or URL, Civitai model/version id or URL, AIR, or https URL"
SOURCE_PLACEHOLDER = ("https://civitai.com/models/4201?modelVersionId=130072 · 4201@130072 · "
                      "urn:air:sd1:checkpoint:civitai:4201@130072 · stabilityai/stable-diffusion-xl-base-1.0 · "
                      "https://example.com/model.safetensors")
TAB_CSS = """
.models-card { display: flex; gap: 1em; align-items: flex-start; }
.models-card-preview img { max-width: 220px; max-height: 320px; border-radius: 0.4em; }
.models-preview-none { width: 160px; padding: 2em 0; text-align: center; opacity: 0.6;
                       border: 1px dashed var(--border-color-primary); border-radius: 0.4em; }
.models-card-body { flex: 1; min-width: 0; }
.models-card-table th, .models-files th, .models-report th, .models-cards-results th { text-align: left;
    padding-right: 1em; vertical-align: top; white-space: nowrap; }
.models-description { max-height: 16em; overflow-y: auto; font-size: 0.9em; margin-top: 0.5em; }
.models-trigger-word { padding: 0 0.3em; border-radius: 0.3em; background: var(--block-background-fill); }
.models-refusal, .models-danger { color: #d33; }
.models-download { margin: 0.5em 0; }
.models-download-title { font-size: 0.9em; }
.models-progress { width: 100%; height: 0.8em; accent-color: var(--color-accent); }
.models-download-line { font-size: 0.85em; opacity: 0.85; word-break: break-all; }
.models-download.state-failed .models-download-line { color: #d33; opacity: 1; }
.models-report pre { margin: 0; font-size: 0.85em; max-height: 12em; overflow: auto; }
"""


@dataclass
class DownloadsView:
    """What one page last showed of the downloads, so a timer tick sends only what changed, and knows
    when a download has just finished (then the file lists are refreshed)."""

    html: str = ""
    active: tuple[str, ...] = ()
    finished: frozenset[str] = field(default_factory=frozenset)


@dataclass(frozen=True)
class LookedUp:
    """The last look-up of a page: the source text it was for and whether the type can be chosen."""

    source: str
    choose_type: bool


class ModelsTabHandlers:
    """The tab's event handlers, bound to the app context (no gradio components inside)."""

    def __init__(self, context, *, list_updates: int = 0):
        self.context = context
        # Other tabs' components refreshed after a download or a tool wrote a file: the top bar's
        # checkpoint dropdown, when there is one (their updates are appended to some outputs).
        self.list_updates = list_updates

    @property
    def service(self):
        service = getattr(self.context, "model_sources", None)
        if service is None:
            raise ModelSourceError("model sources are not available on this server", status=503)
        return service

    # -- access ---------------------------------------------------------------------------------

    def write_refusal(self) -> str | None:
        """Why this server refuses downloads and conversions; None when it allows them."""
        try:
            self.service.check_write_access()
        except ModelSourceError as e:
            return str(e)
        return None

    # -- look-up and download -------------------------------------------------------------------

    def lookup(self, source: str) -> list:
        """Look up: (card, files table, file dropdown, type dropdown, message, looked-up state)."""
        source = (source or "").strip()
        if not source:
            return self._lookup_failed("Paste a model's address or id first: " + SOURCE_LABEL + ".")
        try:
            result = self.service.lookup(source)
        except SHOWN_ERRORS as e:
            return self._lookup_failed(str(e))
        remote = result.remote
        names = [f.name for f in remote.files]
        choose_type = remote.source == "url" or remote.model_type is None
        message = ""
        if result.existing:
            message = "\n".join(f"{name} is already here: {path}" for name, path in result.existing.items())
        return [card_html(result, self._preview(result.preview_url)), files_table_html(result),
                gr.update(choices=names, value=result.default_file, interactive=bool(names)),
                gr.update(visible=choose_type, value=remote.model_type if remote.model_type in TYPE_CHOICES else None),
                message_html(message) if message else "", LookedUp(source, choose_type)]

    def _lookup_failed(self, message: str) -> list:
        return ["", "", gr.update(choices=[], value=None), gr.update(visible=False, value=None),
                error_html(message), None]

    def _preview(self, url: str | None) -> str | None:
        """The preview as a `data:` URI, fetched by the server through the service's guarded client;
        None when there is none or it cannot be fetched (the card says "no preview")."""
        fetch = getattr(self.service, "preview_bytes", None)
        if not url or fetch is None:
            return None
        try:
            data = fetch(url)
        except SHOWN_ERRORS as e:
            log.info("Preview not shown: %s", e)
            return None
        return preview_data_uri(data)

    def download(self, looked_up: LookedUp | None, source: str, file_name: str | None, model_type: str | None,
                 view: DownloadsView | None, user: User = SHARED_USER) -> list:
        """Download: (message, downloads, cancel dropdown, view). The file and type chosen on the card
        of the last look-up; without a look-up (or after the address was changed), the source's default
        file. `model_type` is a type name (TYPE_CHOICES), sent only where the type can be chosen."""
        source = (source or "").strip()
        if looked_up is None or looked_up.source != source:
            file_name = None
            model_type = None
        elif not looked_up.choose_type:
            model_type = None
        refused = operators.refusal(user, "Downloading models")
        if refused:
            return [error_html(refused), *self._downloads_outputs(view, force=True)[:3]]
        if not source:
            message = error_html("Paste a model's address or id first, then Look up.")
            return [message, *self._downloads_outputs(view, force=True)[:3]]
        try:
            status = self.service.start_download(source, file_name=file_name or None, model_type=model_type or None)
        except SHOWN_ERRORS as e:
            return [error_html(str(e)), *self._downloads_outputs(view, force=True)[:3]]
        if status.state == "exists":
            message = message_html(f"{status.file_name} is already here: {status.destination}")
        else:
            message = message_html(f"Downloading {status.file_name} ({status.kind}); its progress is under Downloads.")
        return [message, *self._downloads_outputs(view, force=True)[:3]]

    # -- the downloads panel ------------------------------------------------------------------------

    def _downloads_outputs(self, view: DownloadsView | None, *, force: bool = False) -> list:
        """(downloads HTML, cancel dropdown, view, lists changed): each `gr.skip()` when the page shows
        it already. `lists changed` is True when a download finished since the page last looked."""
        try:
            downloads = self.service.downloads()
        except ModelSourceError as e:
            return [error_html(str(e)), gr.skip(), view, False]
        view = view or DownloadsView()
        text = downloads_html(downloads)
        active = tuple(d.id for d in downloads if d.state in ACTIVE_STATES)
        finished = frozenset(d.id for d in downloads if d.state in ("done",))
        new = DownloadsView(text, active, finished)
        html_update = text if force or text != view.html else gr.skip()
        # The dropdown changes only when the set of running downloads does, so a tick never closes
        # it under the user's pointer.
        cancel_update = (gr.update(choices=cancel_choices(downloads), value=active[0] if active else None)
                         if force or active != view.active else gr.skip())
        return [html_update, cancel_update, new, bool(finished - view.finished) and bool(view.html)]

    def poll(self, view: DownloadsView | None) -> list:
        """The timer: (downloads, cancel dropdown, view, cards file dropdown, tools dropdown[, top bar
        dropdown]); the file lists are refreshed only when a download just finished."""
        html_update, cancel_update, new, lists_changed = self._downloads_outputs(view)
        return [html_update, cancel_update, new, *self._list_refresh(lists_changed)]

    def cancel(self, download_id: str | None, view: DownloadsView | None, user: User = SHARED_USER) -> list:
        """Cancel: (message, downloads, cancel dropdown, view)."""
        refused = operators.refusal(user, "Cancelling a model download")
        if refused:
            return [error_html(refused), *self._downloads_outputs(view)[:3]]
        if not download_id:
            return [error_html("Choose the download to cancel."), *self._downloads_outputs(view)[:3]]
        try:
            status = self.service.cancel(download_id)
        except KeyError:
            return [error_html(f"No download with id {download_id!r} (it may be over)."),
                    *self._downloads_outputs(view, force=True)[:3]]
        except ModelSourceError as e:
            return [error_html(str(e)), *self._downloads_outputs(view, force=True)[:3]]
        text = f"{status.file_name}: {status.state}" + (f" — {status.message}" if status.message else "")
        return [message_html(text), *self._downloads_outputs(view, force=True)[:3]]

    # -- files already here -----------------------------------------------------------------------

    def _local_files(self, kind: str) -> list[str]:
        try:
            return self.service.local_files(kind)
        except ModelSourceError as e:
            log.info("No %s files listed: %s", kind, e)
            return []

    def card_file_choices(self, kind: str) -> dict:
        return gr.update(choices=[ALL_FILES, *self._local_files(kind)], value=ALL_FILES)

    def fetch_cards(self, kind: str, name: str | None, user: User = SHARED_USER) -> str:
        refused = operators.refusal(user, "Fetching model cards (they are written beside the models)")
        if refused:
            return error_html(refused)
        if kind not in MODEL_KINDS:
            return error_html(f"Choose what kind of files to look up: one of {', '.join(MODEL_KINDS)}.")
        try:
            results = self.service.fetch_cards(kind, None if not name or name == ALL_FILES else name)
        except SHOWN_ERRORS as e:
            return error_html(str(e))
        return cards_table_html(results)

    def inspect(self, name: str | None) -> str:
        if not name:
            return error_html("Choose a checkpoint to inspect.")
        try:
            return report_html(name, self.service.inspect(name))
        except SHOWN_ERRORS as e:
            return error_html(str(e))

    def run_tool(self, tool: str, name: str | None, user: User = SHARED_USER) -> list:
        """A tool button: (result line, tools dropdown, cards file dropdown[, top bar dropdown])."""
        refused = operators.refusal(user, f"{TOOLS.get(tool, tool)} (a checkpoint tool)")
        if refused:
            return [error_html(refused), *[gr.skip()] * (2 + self.list_updates)]
        if not name:
            return [error_html(f"Choose a checkpoint to {TOOLS[tool].lower()}."),
                    *[gr.skip()] * (2 + self.list_updates)]
        try:
            result = self.service.run_tool(tool, name)
        except SHOWN_ERRORS as e:
            return [error_html(str(e)), *[gr.skip()] * (2 + self.list_updates)]
        tools_update, *top = self._list_refresh(True)[1:]
        return [message_html(f"{TOOLS[tool]}: {tool_result_text(result)}"), tools_update, gr.skip(), *top]

    def _list_refresh(self, changed: bool) -> list:
        """(cards file dropdown, tools dropdown[, top bar dropdown]) after files were added."""
        if not changed:
            return [gr.skip()] * (2 + self.list_updates)
        updates = [gr.skip(), gr.update(choices=self._local_files("checkpoint"))]
        if self.list_updates:
            from modules.ui.top_bar import checkpoint_choices  # the model in use stays a choice (a merge trial)

            updates.append(gr.update(choices=checkpoint_choices(self.context)))
        return updates

    # -- page load ------------------------------------------------------------------------------

    def on_page_load(self) -> list:
        """(downloads, cancel dropdown, view, access note, download button, cards button, 3 tool
        buttons, cards file dropdown, tools dropdown): the page as the server's state is now."""
        html_update, cancel_update, view, _ = self._downloads_outputs(None, force=True)
        refusal = self.write_refusal()
        note = error_html(f"Downloads, cards and conversions are off on this server: {refusal}") if refusal else ""
        button = gr.update(interactive=refusal is None)
        return [html_update, cancel_update, view, note, *[button] * 5,
                gr.update(choices=[ALL_FILES, *self._local_files("checkpoint")]),
                gr.update(choices=self._local_files("checkpoint"))]


@dataclass
class _Controls:
    source: Any
    lookup: Any
    card: Any
    files: Any
    file: Any
    kind: Any
    download: Any
    message: Any
    access_note: Any
    downloads: Any
    cancel_id: Any
    cancel: Any
    cards_kind: Any
    cards_file: Any
    cards_fetch: Any
    cards_result: Any
    tools_checkpoint: Any
    inspect: Any
    tool_buttons: dict[str, Any]
    tools_result: Any
    looked_up: Any
    view: Any
    timer: Any


def build(context, shared) -> None:
    """Build the tab inside the current `gr.Tab` (element ids: see the module docstring)."""
    top_bar = [shared.checkpoint_dropdown] if shared.checkpoint_dropdown is not None else []
    handlers = ModelsTabHandlers(context, list_updates=len(top_bar))
    c = _build_layout()
    _wire(handlers, shared, c, top_bar)


def _build_layout() -> _Controls:
    access_note = gr.HTML(elem_id="models_access_note")
    with gr.Row(equal_height=False):
        with gr.Column(scale=3):
            with gr.Row():
                source = gr.Textbox(label=SOURCE_LABEL, placeholder=SOURCE_PLACEHOLDER, elem_id="models_source",
                                    max_lines=1, scale=5)
                lookup = gr.Button("Look up", variant="secondary", elem_id="models_lookup", scale=1, min_width=100)
            card = gr.HTML(elem_id="models_card")
            files = gr.HTML(elem_id="models_files")
            with gr.Row():
                file = gr.Dropdown([], value=None, label="File", elem_id="models_file", interactive=True, scale=3)
                kind = gr.Dropdown([(TYPE_LABELS[t], t) for t in TYPE_CHOICES], value=None,
                                   label="Type (the source does not say)",
                                   elem_id="models_type", visible=False, scale=2)
                download = gr.Button("Download", variant="primary", elem_id="models_download", scale=1, min_width=100)
            message = gr.HTML(elem_id="models_message")
        with gr.Column(scale=2):
            gr.Markdown("### Downloads")
            downloads = gr.HTML(elem_id="models_downloads")
            with gr.Row():
                cancel_id = gr.Dropdown([], value=None, label="Running download", elem_id="models_cancel_id", scale=3)
                cancel = gr.Button("Cancel", elem_id="models_cancel", scale=1, min_width=80)
    with gr.Accordion("Cards for files you have (looked up on Civitai by sha256)", open=False,
                      elem_id="models_cards_accordion"):
        with gr.Row():
            cards_kind = gr.Dropdown([(KIND_LABELS[k], k) for k in MODEL_KINDS], value="checkpoint", label="Kind",
                                     elem_id="models_cards_kind", scale=1)
            cards_file = gr.Dropdown([ALL_FILES], value=ALL_FILES, label="File", elem_id="models_cards_file", scale=2)
            cards_fetch = gr.Button("Look up on Civitai", elem_id="models_cards_fetch", scale=1, min_width=100)
        cards_result = gr.HTML(elem_id="models_cards_result")
    with gr.Accordion("Checkpoint tools", open=False, elem_id="models_tools_accordion"):
        with gr.Row():
            tools_checkpoint = gr.Dropdown([], value=None, label="Checkpoint", elem_id="models_tools_checkpoint", scale=3)
            inspect = gr.Button("Inspect", elem_id="models_inspect", scale=1, min_width=80)
        with gr.Row():
            tool_buttons = {"convert": gr.Button(TOOLS["convert"], elem_id="models_convert"),
                            "prune-ema": gr.Button(TOOLS["prune-ema"], elem_id="models_prune"),
                            "fp16": gr.Button(TOOLS["fp16"], elem_id="models_fp16")}
        tools_result = gr.HTML(elem_id="models_tools_result")
    looked_up = gr.State(None)
    view = gr.State(None)
    timer = gr.Timer(POLL_SECONDS)
    return _Controls(source, lookup, card, files, file, kind, download, message, access_note, downloads, cancel_id,
                     cancel, cards_kind, cards_file, cards_fetch, cards_result, tools_checkpoint, inspect, tool_buttons,
                     tools_result, looked_up, view, timer)


def _wire(handlers: ModelsTabHandlers, shared, c: _Controls, top_bar: list) -> None:
    private = {"api_visibility": "private"}
    lookup_outputs = [c.card, c.files, c.file, c.kind, c.message, c.looked_up]
    gr.on([c.lookup.click, c.source.submit], handlers.lookup, inputs=[c.source], outputs=lookup_outputs,
          concurrency_limit=None, **private)
    downloads_outputs = [c.downloads, c.cancel_id, c.view]
    context = handlers.context

    def on_download(looked_up, source, file_name, model_type, view, request: gr.Request | None = None):
        return handlers.download(looked_up, source, file_name, model_type, view,
                                 user=caller(context, request))

    def on_cancel(download_id, view, request: gr.Request | None = None):
        return handlers.cancel(download_id, view, user=caller(context, request))

    def on_fetch_cards(kind, name, request: gr.Request | None = None):
        return handlers.fetch_cards(kind, name, user=caller(context, request))

    c.download.click(on_download, inputs=[c.looked_up, c.source, c.file, c.kind, c.view],
                     outputs=[c.message, *downloads_outputs], concurrency_limit=None, **private)
    c.cancel.click(on_cancel, inputs=[c.cancel_id, c.view], outputs=[c.message, *downloads_outputs],
                   concurrency_limit=None, **private)
    list_outputs = [c.cards_file, c.tools_checkpoint, *top_bar]
    c.timer.tick(handlers.poll, inputs=[c.view], outputs=[*downloads_outputs, *list_outputs],
                 show_progress="hidden", concurrency_limit=None, **private)
    c.cards_kind.change(handlers.card_file_choices, inputs=[c.cards_kind], outputs=[c.cards_file], **private)
    c.cards_fetch.click(on_fetch_cards, inputs=[c.cards_kind, c.cards_file], outputs=[c.cards_result],
                        concurrency_limit=None, **private)
    c.inspect.click(handlers.inspect, inputs=[c.tools_checkpoint], outputs=[c.tools_result],
                    concurrency_limit=None, **private)
    for tool, button in c.tool_buttons.items():
        def on_tool(name, request: gr.Request | None = None, tool=tool):
            return handlers.run_tool(tool, name, user=caller(context, request))

        button.click(on_tool, inputs=[c.tools_checkpoint],
                     outputs=[c.tools_result, c.tools_checkpoint, c.cards_file, *top_bar], **private)
    shared.page_loads.append((handlers.on_page_load, [
        *downloads_outputs, c.access_note, c.download, c.cards_fetch, *c.tool_buttons.values(),
        c.cards_file, c.tools_checkpoint]))
