"""Atelier's composition root: parse flags, build the application context, mount UI and API, guard
them with auth, serve.

Start-up order, so that the first page waits only for Gradio's import: `compose` builds everything
the page needs without importing torch, diffusers or transformers (tests/test_startup_imports.py
keeps it so); the server listens; after its first response (or MODEL_STACK_IDLE_START_S without
one), `start_model_stack` imports the model stack and loads the start-up checkpoint on background
threads (docs/BENCHMARKS.md, "Start-up").
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading

log = logging.getLogger(__name__)

# With no request this long after the server listens, the model stack starts anyway, so that a page
# opened later or an API client finds the checkpoint loaded or loading.
MODEL_STACK_IDLE_START_S = 2.0


def build_app(args: argparse.Namespace, context):
    """The served app: the web UI at `/` (unless `--nowebui`), `/sdapi/v1` with `--api` or
    `--nowebui`, the extensions' routes (on_app_started), and HTTP Basic auth in front of all of it."""
    from modules.api.auth import install_auth
    from modules.api.request_guards import install_request_guards, max_body_bytes
    from modules.api.server import create_app

    from modules.extension_host.environment import AppScopeMiddleware, app_scope

    app = create_app(context, api=args.api or args.nowebui, ui=not args.nowebui)
    blocks = None
    with app_scope(context):  # extensions' UI code and on_app_started read shared.opts & co.
        if not args.nowebui:
            # Imported only when the UI is wanted: importing gradio takes seconds.
            from modules.ui.app import mount_ui

            blocks = mount_ui(app, context, max_upload_bytes=max_body_bytes(args))
        if context.extensions is not None:
            context.extensions.app_started(blocks, app)
    # Routes, Gradio's handlers and its queue workers run extension code that reads shared.opts & co.
    app.add_middleware(AppScopeMiddleware, context=context)
    install_request_guards(app, args)
    install_auth(app, args)
    accounts = context.accounts
    if accounts.multi_user:
        log.info("--multi-user: %d users kept apart (%s); operators: %s", len(accounts.names), ", ".join(accounts.names),
                 ", ".join(sorted(accounts.admins)) or "none (global settings change only in config.json)")
    return app


def load_extensions(context, args: argparse.Namespace) -> None:
    """Load the enabled extensions into `context`: their scripts see the context, and their
    on_model_loaded callbacks hear every checkpoint load."""
    from modules.extension_host.extensions import load_extensions as load

    from modules.extension_host.a1111_models import model_view

    runtime = load(context.settings, args)
    runtime.scripts.bind_app(context)
    # A1111's on_model_loaded callbacks read sd_checkpoint_info & co.: they get shared.sd_model's view.
    context.models.add_load_listener(lambda model: runtime.callbacks.model_loaded(model_view(context, model)))
    context.extensions = runtime
    # on_ui_settings runs now, not when the Settings tab is built: the extensions' options have their
    # defaults from the start, API-only runs included.
    context.extension_options.collect(runtime.callbacks)


def compose(args: argparse.Namespace):
    """Everything the first page needs, in start-up order: the context with its file lists (names and
    headers; no file is read through torch), the extensions, the job worker, the app. Returns
    (context, app). The embeddings and the start-up checkpoint wait for `start_model_stack`."""
    from modules.serving.app_context import AppContext
    from modules.serving.console_progress import install_console_progress

    context = AppContext.from_args(args)
    from modules.extension_host.environment import app_scope

    context.refresh_listings()
    context.ensure_demo_checkpoint()
    with app_scope(context):  # extensions read shared.opts at import; the job worker inherits the scope
        load_extensions(context, args)
        if args.ray_address or args.ray_local:  # generation and merges on Ray workers (docs/SCALING.md)
            from modules.cluster.startup import start_workers

            start_workers(context, args)
        context.jobs.start()
    install_console_progress(context.jobs)
    return context, build_app(args, context)


def start_model_stack(context, args: argparse.Namespace) -> threading.Thread:
    """What the first page does not need, on background threads: the start-up checkpoint load (it
    imports torch, diffusers and transformers), then the embeddings scan (reading an embedding needs
    torch). webui.main starts it after the server's first response: importing torch beside Gradio's
    import, or beside the first page, slows both on two cores (docs/BENCHMARKS.md). The load goes
    first: its thread marks the model as loading at once, which the page's status line shows.
    Returns the scan's thread."""
    from modules.api.server import start_background_load

    load = None if args.skip_load_model_at_start else start_background_load(context)

    def scan() -> None:
        if load is not None:
            load.join()  # one thread imports the model stack; a generation scans first if it comes sooner
        try:
            context.embeddings.refresh()
        except Exception:  # a bug, not a bad file (bad files are listed with their reason)
            log.exception("Scanning the embeddings failed")

    thread = threading.Thread(target=scan, name="startup-embeddings-scan", daemon=True)
    thread.start()
    return thread


def main(argv: list[str] | None = None) -> None:
    from modules.serving.cmd_args import parse_args
    from modules.extension_host.extensions import parser_with_preloads
    from modules.serving.listen import TlsFiles, listen_address, local_url, plain_http_warning, serve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    install_root = os.path.dirname(os.path.abspath(__file__))
    if os.path.realpath(os.getcwd()) != os.path.realpath(install_root):
        # launch.py changes folder as A1111's webui.sh does; run directly, webui.py does not.
        log.warning("The working folder is %s, not the Atelier folder %s: extensions that open relative paths "
                    "(extensions/<name>/..., models/...) will not find their files. Start from the Atelier "
                    "folder, or with launch.py.", os.getcwd(), install_root)
    # The extensions' preload.py add their flags before the command line is parsed (A1111's order).
    args = parse_args(argv, parser=parser_with_preloads(argv))
    tls = TlsFiles.from_args(args)  # parse_args has checked the files
    warning = plain_http_warning(args, tls)
    if warning:
        log.warning(warning)
    context, app = compose(args)
    host, port = listen_address(args)
    start_once = _once(lambda: start_model_stack(context, args))

    def on_listening() -> None:
        print(f"Atelier running on {local_url(host, port, tls)}", flush=True)
        idle_start = threading.Timer(MODEL_STACK_IDLE_START_S, start_once)
        idle_start.daemon = True
        idle_start.start()

    # The model stack starts once the first response is out: torch's import holds the GIL for long
    # stretches (loading its libraries), and the first page would wait for it (docs/BENCHMARKS.md).
    serve(app, host, port, tls, on_listening=on_listening, on_first_response=start_once)


def _once(fn):
    """`fn` wrapped to run on the first call only, whichever thread makes it."""
    lock = threading.Lock()
    pending = [fn]

    def call() -> None:
        with lock:
            todo = pending.pop() if pending else None
        if todo is not None:
            todo()

    return call


if __name__ == "__main__":
    main(sys.argv[1:])
