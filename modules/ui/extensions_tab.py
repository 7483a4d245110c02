"""The Extensions tab, and the extension parts of the page (extension tabs, JavaScript, CSS).

The tab lists the extensions (enabled, disabled or failed at start-up, with the error), saves which
ones are enabled (A1111's `disabled_extensions` / `disable_all_extensions` in config.json; they take
effect at the next start), and installs an extension from a git URL into `extensions/`. Installing
is refused when the server listens beyond localhost unless `--enable-insecure-extension-access`
(A1111's rule; modules.extension_host.extensions.check_extension_access).

Page parts for modules.ui.app: `extension_tabs(context)` before the main Blocks is opened (A1111
builds extension tabs first) and `render_extension_tabs(tabs)` inside the Tabs; `extension_css` and
`extension_head` for `mount_gradio_app(css=..., head=...)`.
"""

from __future__ import annotations

import html
import logging
from typing import Any

import gradio as gr

from modules.extension_host.extensions import (
    DISABLE_ALL_CHOICES,
    ExtensionAccessError,
    ExtensionInstallError,
    check_extension_access,
    install_from_url,
    save_enabled_states,
)
from modules.serving.accounts import SHARED_USER, User, caller
from modules.ui import operators

log = logging.getLogger(__name__)


def _runtime(context):
    return getattr(context, "extensions", None)


# --- plain functions (tests call these without a browser) ----------------------------------------------


def extension_rows(context) -> list[dict[str, Any]]:
    runtime = _runtime(context)
    rows = []
    for ext in runtime.extensions if runtime is not None else []:
        git = ext.git_info()
        rows.append({"name": ext.name, "status": ext.status, "builtin": ext.is_builtin, "remote": git.remote,
                     "version": git.version, "branch": git.branch,
                     "error": ext.error.strip().splitlines()[-1] if ext.error else None, "traceback": ext.error})
    return rows


def extensions_table_html(context) -> str:
    rows = extension_rows(context)
    if not rows:
        folder = _runtime(context).folders.user if _runtime(context) is not None else "extensions/"
        return (f"<p class='extensions-empty'>No extensions. Put one in {html.escape(str(folder))} "
                "or install it below.</p>")
    body = []
    for row in rows:
        status = html.escape(row["status"])
        detail = ""
        if row["traceback"]:
            detail = (f"<details><summary>{html.escape(row['error'] or 'error')}</summary>"
                      f"<pre>{html.escape(row['traceback'])}</pre></details>")
        remote = html.escape(row["remote"] or ("built-in" if row["builtin"] else "local folder"))
        body.append(f"<tr class='extension-{status}'><td>{html.escape(row['name'])}</td><td>{status}{detail}</td>"
                    f"<td>{remote}</td><td>{html.escape(row['version'] or '')}</td>"
                    f"<td>{html.escape(row['branch'] or '')}</td></tr>")
    return ("<table class='extensions-table'><thead><tr><th>Extension</th><th>Status</th><th>URL</th>"
            "<th>Version</th><th>Branch</th></tr></thead><tbody>" + "".join(body) + "</tbody></table>")


def apply_enabled(context, enabled_names: list[str], disable_all: str, user: User = SHARED_USER) -> str:
    """Persist the checkboxes; the message says a restart applies them. Refused like installing when
    the server listens beyond localhost: enabling an extension runs its code at the next start; and
    with --multi-user, refused to a user who is not an operator (modules.ui.operators)."""
    refused = operators.refusal(user, "Enabling or disabling extensions") or install_allowed(context)
    if refused:
        return f"<p class='error'>{html.escape(refused)}</p>"
    runtime = _runtime(context)
    extensions = runtime.extensions if runtime is not None else []
    enabled = {ext.name: ext.name in set(enabled_names or ()) for ext in extensions}
    changed = save_enabled_states(context.settings, extensions, enabled, disable_all)
    if not changed:
        return "<p>Nothing changed.</p>"
    return "<p>Saved. Restart Atelier to load or unload extensions.</p>"


def saved_state(context) -> tuple[list[str], str]:
    """(names enabled in config.json, disable_all_extensions): what Apply saved, which a page opened
    after it must show (the running extensions change only at the next start)."""
    runtime = _runtime(context)
    settings = context.settings.current()
    disabled = set(settings.get("disabled_extensions") or ())
    names = [ext.name for ext in runtime.extensions] if runtime is not None else []
    return [name for name in names if name not in disabled], settings.get("disable_all_extensions", "none")


def install(context, url: str, branch: str = "", dirname: str = "", user: User = SHARED_USER) -> str:
    """Install from `url`; an HTML message for the tab (refusals and errors included)."""
    refused = operators.refusal(user, "Installing extensions")
    if refused:
        return f"<p class='error'>{html.escape(refused)}</p>"
    runtime = _runtime(context)
    if runtime is None:
        return "<p class='error'>Extensions are not loaded in this server.</p>"
    try:
        target = install_from_url(url, runtime.folders, context.args, dirname=dirname or None, branch=branch or None)
    except (ExtensionInstallError, ValueError) as error:
        return f"<p class='error'>{html.escape(str(error))}</p>"
    return (f"<p>Installed into {html.escape(str(target))}. Restart Atelier to load it.</p>")


def install_allowed(context) -> str | None:
    """None when installing is allowed, else the reason."""
    try:
        check_extension_access(context.args)
    except ExtensionAccessError as error:
        return str(error)
    return None


# --- page parts ----------------------------------------------------------------------------------------


def extension_tabs(context) -> list[tuple[Any, str, str, str]]:
    """The `on_ui_tabs` tabs as `(blocks, title, elem_id, extension)`; call before the main
    `gr.Blocks` is opened."""
    runtime = _runtime(context)
    return runtime.callbacks.ui_tabs() if runtime is not None else []


def render_extension_tabs(tabs: list[tuple[Any, str, str, str]]) -> None:
    """Inside `gr.Tabs`: one tab per extension tab, between Checkpoint Merger and Settings. A tab
    that cannot be rendered says so in its place; the page is still built."""
    for blocks, title, elem_id, extension in tabs:
        with gr.Tab(title, id=elem_id, elem_id=f"tab_{elem_id}", render_children=True):
            try:
                blocks.render()
            except Exception as error:
                log.exception("Extension %s: its tab %r cannot be shown", extension, title)
                gr.HTML(f"<p class='error'>Extension {html.escape(extension)}: this tab cannot be shown "
                        f"({html.escape(type(error).__name__)}: {html.escape(str(error))}); see the console.</p>")


def extension_css(context) -> str:
    """Each extension's style.css in load order, then `<data-dir>/user.css` if present (A1111's
    order; the caller puts Atelier's own CSS first)."""
    runtime = _runtime(context)
    paths = list(runtime.stylesheets()) if runtime is not None else []
    user_css = context.paths.data_dir / "user.css"
    if user_css.is_file():
        paths.append(user_css)
    parts = []
    for path in paths:
        try:
            parts.append(f"/* {path} */\n{path.read_text(encoding='utf-8')}")
        except OSError as error:
            log.warning("Cannot read %s: %s", path, error)
    return "\n".join(parts)


def extension_head(context) -> str:
    """A1111's order: every extension's javascript/*.js (extensions in load order, files by name),
    then their *.mjs as modules, each as `<script src="file=...?<mtime>">` (modules.ui.file_route
    serves them). Gradio re-creates these in order with `async = false`, so they run one after the
    other, after Atelier's inline globals (modules.ui.page_script)."""
    from modules.ui.file_route import file_url

    runtime = _runtime(context)
    files = runtime.javascript_files() if runtime is not None else []
    ordered = [path for path in files if path.suffix == ".js"] + [path for path in files if path.suffix == ".mjs"]
    parts = []
    for path in ordered:
        kind = ' type="module"' if path.suffix == ".mjs" else ""
        parts.append(f'<script{kind} src="{html.escape(file_url(path))}" '
                     f'data-extension-file="{html.escape(path.name)}"></script>')
    return "\n".join(parts)


# --- the tab -------------------------------------------------------------------------------------------


def build(context, shared=None) -> None:
    runtime = _runtime(context)
    extensions = runtime.extensions if runtime is not None else []
    current = context.settings.current()
    refused = install_allowed(context)
    table = gr.HTML(extensions_table_html(context), elem_id="extensions_table")
    if refused:
        gr.HTML(f"<p class='error'>{html.escape(refused)}</p>")
    with gr.Row():
        enabled = gr.CheckboxGroup([ext.name for ext in extensions], value=saved_state(context)[0],
                                   label="Enabled extensions", elem_id="extensions_enabled",
                                   interactive=refused is None)
        disable_all = gr.Radio(list(DISABLE_ALL_CHOICES), value=current.get("disable_all_extensions", "none"),
                               label="Disable all extensions", elem_id="extensions_disable_all",
                               interactive=refused is None)
    apply = gr.Button("Apply (takes effect at the next start)", elem_id="extensions_apply", variant="primary",
                      interactive=refused is None)
    apply_result = gr.HTML("", elem_id="extensions_apply_result")
    def on_apply(names, mode, request: gr.Request | None = None):
        return apply_enabled(context, names, mode, user=caller(context, request))

    apply.click(on_apply, inputs=[enabled, disable_all], outputs=apply_result, show_progress="hidden")

    with gr.Accordion("Install from URL", open=False, elem_id="extensions_install"):
        url = gr.Textbox(label="URL for extension's git repository", elem_id="extensions_install_url",
                         interactive=refused is None)
        with gr.Row():
            branch = gr.Textbox(label="Specific branch name", placeholder="leave empty for default main branch",
                                elem_id="extensions_install_branch", interactive=refused is None)
            dirname = gr.Textbox(label="Local directory name", placeholder="leave empty for auto",
                                 elem_id="extensions_install_dirname", interactive=refused is None)
        install_button = gr.Button("Install", elem_id="extensions_install_button", interactive=refused is None)
        install_result = gr.HTML("", elem_id="extensions_install_result")
    def on_install(url_text, branch_name, folder_name, request: gr.Request | None = None):
        user = caller(context, request)
        return install(context, url_text, branch_name, folder_name, user=user), extensions_table_html(context)

    install_button.click(on_install, inputs=[url, branch, dirname], outputs=[install_result, table])
    if shared is not None:
        # A page opened after Apply shows what was saved, so a second Apply does not undo it.
        shared.page_loads.append((lambda: (extensions_table_html(context), *saved_state(context)),
                                  [table, enabled, disable_all]))
