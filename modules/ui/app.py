"""The web UI: one `gr.Blocks` in A1111's shape, mounted at "/" of the server's FastAPI app.

    top bar     checkpoint, SD VAE, clip skip, model status        modules.ui.top_bar
                workers line (Ray mode only)                       modules.ui.workers_status
    tabs        txt2img | img2img | Extras | PNG Info | Checkpoint Merger | Models | <extension tabs> | Settings | Extensions
                                                                    one builder each

Phones and tablets get the same page, rearranged by CSS in the page's head (modules.ui.mobile:
results under the Generate row on narrow screens, touch-sized targets); a running job also shows on
its Generate button (modules.ui.progress_display).

Each tab builder is `build(context, shared)`, called inside its `gr.Tab`; `UiShared` carries the
components one tab needs from another (modules.ui.shared). Authentication is not Gradio's: the
server installs one HTTP Basic middleware for every route (modules.api.auth), so nothing is passed
to Gradio's `auth`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import gradio as gr

from modules.ui import (
    extensions_tab,
    extras_tab,
    footer,
    img2img,
    merger_tab,
    models_tab,
    my_queue,
    paste_buttons,
    pnginfo,
    progress_display,
    settings_tab,
    top_bar,
    txt2img,
    workers_status,
)
from modules.serving.accounts import is_multi_user
from modules.ui.file_route import install_file_route
from modules.ui.file_rules import apply_file_rules, prepare_gradio_cache
from modules.ui.user_file_guard import install_user_file_guard
from modules.ui.icons import icon_css, tooltip_js
from modules.ui.mobile import mobile_css
from modules.ui.page_script import install_options_route, page_head
from modules.ui.prompt_drop import prompt_drop_js
from modules.ui.shortcuts import shortcuts_js
from modules.ui.shared import UiShared

log = logging.getLogger(__name__)

TAB_IDS = {"txt2img": "txt2img", "img2img": "img2img", "Extras": extras_tab.TAB_ID, "PNG Info": "pnginfo", "Checkpoint Merger": "modelmerger", "Models": "models",
           "Settings": "settings", "Extensions": "extensions"}

CSS = """
#quicksettings { align-items: flex-end; gap: 0.5em; }
.tool { max-width: 3em; min-width: 2.5em !important; align-self: flex-end; }
#model_status { min-height: 1.5em; font-size: 0.9em; padding: 0 0.25em; }
.model-status.loading::before { content: '⏳ '; }
.model-status.demo { color: var(--color-accent); font-weight: 600; }
.prompt-box { position: relative; }
.token-counter-box { position: absolute; top: 0.3em; right: 0.6em; width: auto !important; z-index: 2; }
.token-counter { font-size: 0.8em; opacity: 0.75; padding: 0 0.4em; border-radius: 0.4em;
                 background: var(--block-background-fill); }
.token-counter.over { color: var(--color-accent); opacity: 1; }
#txt2img_generate, #img2img_generate { min-height: 4.5em; font-size: 1.2em; }
#extras_generate { min-height: 3em; font-size: 1.2em; }
.progress-bar { position: relative; height: 1.6em; border-radius: 0.4em; overflow: hidden;
                background: var(--block-background-fill); border: 1px solid var(--border-color-primary); }
.progress-fill { height: 100%; background: var(--color-accent); opacity: 0.55; transition: width 0.2s; }
.progress-text { position: absolute; inset: 0; display: flex; align-items: center; justify-content: center;
                 font-size: 0.85em; }
#html_info_txt2img .infotext, #html_info_img2img .infotext, #html_info_extras .infotext { font-family: var(--font-mono); font-size: 0.85em; white-space: pre-wrap;
                               word-break: break-word; }
.job-note { font-size: 0.85em; opacity: 0.85; margin: 0.2em 0; }
.error { border: 1px solid #d33; border-radius: 0.4em; padding: 0.4em 0.6em; color: #d33; margin: 0.3em 0; }
.extra-network-section h4 { margin: 0.4em 0 0.2em; }
.extra-network-cards { display: flex; flex-wrap: wrap; gap: 0.4em; }
.extra-network-item { display: flex; flex-direction: column; align-items: flex-start; cursor: pointer;
                      padding: 0.35em 0.6em; border-radius: 0.4em; border: 1px solid var(--border-color-primary);
                      background: var(--button-secondary-background-fill); }
.extra-network-item:hover { border-color: var(--color-accent); }
.extra-network-item .description { font-size: 0.75em; opacity: 0.7; }
.extra-network-item { max-width: 12em; text-align: left; }
.extra-network-item img.preview { width: 100%; max-height: 10em; object-fit: cover; border-radius: 0.3em;
                                  margin-bottom: 0.25em; }
.extra-network-item .about { font-size: 0.75em; opacity: 0.85; display: -webkit-box; -webkit-line-clamp: 3;
                             -webkit-box-orient: vertical; overflow: hidden; }
.extra-network-item .trigger-words { font-size: 0.75em; font-family: var(--font-mono); opacity: 0.85; }
.extra-network-empty, .extra-network-note { font-size: 0.85em; opacity: 0.7; margin: 0.2em 0; }
.extra-network-skipped-list { font-size: 0.85em; margin-top: 0.3em; }
.extra-network-skipped { opacity: 0.75; }
.pnginfo-table th { text-align: left; padding-right: 1em; vertical-align: top; white-space: nowrap; }
.pnginfo-table td { word-break: break-word; }
#img2img_outpaint { align-self: center; }
/* The brush paints with pointer events: without this a finger on the canvas scrolls the page instead. */
#img2maskimg canvas, #inpaint_sketch canvas, #img2img_sketch canvas { touch-action: none; }
"""

# The page's load script: keyboard shortcuts and PNG drop (modules.ui.shortcuts, modules.ui.prompt_drop),
# tooltips, progress.
JS = """
() => {
    %SHORTCUTS%
    %TOOLTIPS%
    %PROGRESS%
}
"""


def build_ui(context) -> gr.Blocks:
    """The whole UI for `context` (an AppContext). Builds quickly: no model, tokenizer or scan is
    touched here; what changes later is refreshed when a page opens (`UiShared.page_loads`)."""
    shared = UiShared()
    callbacks = context.extensions.callbacks if getattr(context, "extensions", None) is not None else None
    if callbacks is not None:
        callbacks.before_ui()
    # The extensions' options were registered when they loaded (webui.load_extensions); an app built
    # without that step registers them now, before the quicksettings row may show one.
    context.extension_options.collect(callbacks)
    # A1111 builds the extensions' tabs before the page, each in a Blocks of its own.
    extension_tabs = extensions_tab.extension_tabs(context)
    with gr.Blocks(title="Atelier", analytics_enabled=False) as blocks:
        top_bar.build(context, shared)
        workers_status.build(context, shared)  # Ray mode only: nothing in the embedded mode
        multi_user = is_multi_user(context)
        queue_panel = my_queue.build(context) if multi_user else None  # the user's jobs, on every tab
        with gr.Tabs(elem_id="tabs") as tabs:
            shared.tabs = tabs
            with gr.Tab("txt2img", id=TAB_IDS["txt2img"], elem_id="tab_txt2img", render_children=True):
                txt2img.build(context, shared)
            with gr.Tab("img2img", id=TAB_IDS["img2img"], elem_id="tab_img2img", render_children=True):
                img2img.build(context, shared)
            img2img.wire_send_from_txt2img(context, shared)
            with gr.Tab("Extras", id=TAB_IDS["Extras"], elem_id="tab_extras", render_children=True):
                extras_tab.build(context, shared)
            extras_tab.wire_send_from_generation_tabs(shared)
            with gr.Tab("PNG Info", id=TAB_IDS["PNG Info"], elem_id="tab_pnginfo", render_children=True):
                pnginfo.build(context, shared)
            with gr.Tab("Checkpoint Merger", id=TAB_IDS["Checkpoint Merger"], elem_id="tab_modelmerger", render_children=True):
                merger_tab.build(context, shared)
            with gr.Tab("Models", id=TAB_IDS["Models"], elem_id="tab_models", render_children=True):
                models_tab.build(context, shared)
            extensions_tab.render_extension_tabs(extension_tabs)
            with gr.Tab("Settings", id=TAB_IDS["Settings"], elem_id="tab_settings", render_children=True):
                settings_tab.build(context, shared)
            with gr.Tab("Extensions", id=TAB_IDS["Extensions"], elem_id="tab_extensions", render_children=True):
                extensions_tab.build(context, shared)
        if queue_panel is not None:
            generate = [block for block in blocks.blocks.values()
                        if getattr(block, "elem_id", None) in ("txt2img_generate", "img2img_generate", "extras_generate")]
            my_queue.wire_refresh(context, queue_panel, generate)
        paste_buttons.connect_bindings(context, shared)  # the extensions' "Send to" buttons
        footer.build(context)  # A1111's footer links and versions, in place of Gradio's
        for load, outputs in shared.page_loads:
            blocks.load(load, outputs=outputs, show_progress="hidden", queue=False)
    # Gradio's queue is on from the start, one run at a time per event (default_concurrency_limit 1,
    # A1111's order). No `blocks.queue(...)` call: it would rebuild Gradio's whole route table once
    # more (~0.3 s of start-up) to set what is already set.
    return blocks


def mount_ui(app, context, *, max_upload_bytes: int | None = None) -> gr.Blocks:
    """Build the UI, mount it at "/" of `app` (the server's FastAPI app) and return the Blocks (the
    `demo` of the extensions' on_app_started).

    No Gradio `auth`: the server's own middleware guards every route (see the module docstring).
    Gradio's file rules are turned on (modules.ui.file_rules) and exception texts stay in the log:
    `show_error=False` shows the page only what a handler raises as `gr.Error` (our tabs render their
    own errors), never a message that names server paths.
    """
    cache_dir = prepare_gradio_cache(context.paths.data_dir)
    # --multi-user: each user's images and gallery files only to them (the auth middleware, added
    # later, sits outside and tells it who asks).
    install_user_file_guard(app, context, cache_dir)
    # Before the mount at "/", which would otherwise answer these paths itself.
    install_file_route(app, context)
    install_options_route(app, context)
    blocks = build_ui(context)
    css = "\n".join(filter(None, [CSS, workers_status.CSS, models_tab.TAB_CSS, icon_css(), footer.CSS,
                                   my_queue.CSS if is_multi_user(context) else "",
                                   extensions_tab.extension_css(context)]))
    js = (JS.replace("%SHORTCUTS%", shortcuts_js() + prompt_drop_js()).replace("%TOOLTIPS%", tooltip_js())
          .replace("%PROGRESS%", progress_display.progress_js(is_multi_user(context))))
    gr.mount_gradio_app(app, blocks, path="/", css=css, js=js, head=page_head(context) + layout_style(),
                        ssr_mode=False, footer_links=[], run_history=False, show_error=False,
                        max_file_size=max_upload_bytes)
    apply_file_rules(blocks, blocked=_private_files(context))
    return blocks


def layout_style() -> str:
    """The narrow-screen, touch and progress rules as a `<style>` for the page's head. Not in Gradio's
    `css`: Gradio scopes that to the app's content (`.gradio-container .contain ...`), and these rules
    also reach the page margins, the theme's text sizes and the progress strip outside the app."""
    return f"<style data-atelier='layout'>{progress_display.CSS}{mobile_css()}</style>"


def _private_files(context) -> list:
    """Files no Gradio event may read or serve, even from an allowed folder: settings, hashes, the
    auth file."""
    paths = context.paths
    private = [paths.config_file, paths.cache_file, paths.data_dir / "ui-config.json"]
    auth_file = getattr(context.args, "gradio_auth_path", None)
    if auth_file:
        private.append(Path(auth_file).expanduser().resolve())
    return private
