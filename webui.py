"""Atelier's composition root: parse flags, build the application context, mount UI and API, guard
them with auth, serve.

Start-up order, so that the first page waits only for Gradio's import: `compose` builds everything
the page needs without importing torch, diffusers or transformers (tests/test_startup_imports.py
keeps it so); the server listens; then `start_model_stack` imports the model stack and loads the
start-up checkpoint on a background thread (docs/BENCHMARKS.md, "Start-up").
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading

log = logging.getLogger(__name__)


def build_app(args: argparse.Namespace, context):
    """The served app: the web UI at `/` (unless `--nowebui`), `/sdapi/v1` with `--api` or
    `--nowebui`, the extensions' routes (on_app_started), and HTTP Basic auth in front of all of it."""
    from modules.api.auth import install_auth
    from modules.api.request_guards import install_request_guards, max_body_bytes
    from modules.api.server import create_app

    app = create_app(context, api=args.api or args.nowebui, ui=not args.nowebui)
    blocks = None
    if not args.nowebui:
        # Imported only when the UI is wanted: importing gradio takes seconds.
        from modules.ui.app import mount_ui

        blocks = mount_ui(app, context, max_upload_bytes=max_body_bytes(args))
    if context.extensions is not None:
        context.extensions.app_started(blocks, app)
    install_request_guards(app, args)
    install_auth(app, args)
    return app


def load_extensions(context, args: argparse.Namespace) -> None:
    """Load the enabled extensions into `context`: their scripts see the context, and their
    on_model_loaded callbacks hear every checkpoint load."""
    from modules.extension_host.extensions import load_extensions as load

    runtime = load(context.settings, args)
    runtime.scripts.bind_app(context)
    context.models.add_load_listener(runtime.callbacks.model_loaded)
    context.extensions = runtime


def compose(args: argparse.Namespace):
    """Everything the first page needs, in start-up order: the context with its file lists (names and
    headers; no file is read through torch), the extensions, the job worker, the app. Returns
    (context, app). The embeddings and the start-up checkpoint wait for `start_model_stack`."""
    from modules.serving.app_context import AppContext
    from modules.serving.console_progress import install_console_progress

    context = AppContext.from_args(args)
    context.refresh_listings()
    context.ensure_demo_checkpoint()
    load_extensions(context, args)
    context.jobs.start()
    install_console_progress(context.jobs)
    return context, build_app(args, context)


def start_model_stack(context, args: argparse.Namespace) -> threading.Thread:
    """What the first page does not need, on a background thread: the embeddings scan (reading an
    embedding imports torch), then the start-up checkpoint load (diffusers, transformers). Started
    once the server listens: importing torch beside Gradio's import slows both (docs/BENCHMARKS.md)."""
    from modules.api.server import start_background_load

    def run() -> None:
        try:
            context.embeddings.refresh()
        except Exception:  # a bug, not a bad file (those are listed as errors); the load still runs
            log.exception("Scanning the embeddings failed")
        if not args.skip_load_model_at_start:
            start_background_load(context)

    thread = threading.Thread(target=run, name="startup-model-stack", daemon=True)
    thread.start()
    return thread


def main(argv: list[str] | None = None) -> None:
    from modules.serving.cmd_args import parse_args
    from modules.extension_host.extensions import parser_with_preloads
    from modules.serving.listen import TlsFiles, listen_address, local_url, plain_http_warning, serve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    # The extensions' preload.py add their flags before the command line is parsed (A1111's order).
    args = parse_args(argv, parser=parser_with_preloads(argv))
    tls = TlsFiles.from_args(args)  # parse_args has checked the files
    warning = plain_http_warning(args, tls)
    if warning:
        log.warning(warning)
    context, app = compose(args)
    host, port = listen_address(args)

    def on_listening() -> None:
        print(f"Atelier running on {local_url(host, port, tls)}", flush=True)
        start_model_stack(context, args)

    serve(app, host, port, tls, on_listening)


if __name__ == "__main__":
    main(sys.argv[1:])
