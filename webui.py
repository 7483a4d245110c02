"""Atelier's composition root: parse flags, build the application context, mount UI and API, guard
them with auth, serve."""

from __future__ import annotations

import argparse
import logging
import sys

API_ONLY_PORT = 7861  # A1111's default with --nowebui
UI_PORT = 7860


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
    from modules.extensions import load_extensions as load

    runtime = load(context.settings, args)
    runtime.scripts.bind_app(context)
    context.models.add_load_listener(runtime.callbacks.model_loaded)
    context.extensions = runtime


def main(argv: list[str] | None = None) -> None:
    from modules.cmd_args import parse_args
    from modules.extensions import parser_with_preloads

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    # The extensions' preload.py add their flags before the command line is parsed (A1111's order).
    args = parse_args(argv, parser=parser_with_preloads(argv))
    import uvicorn

    from modules.api.server import start_background_load
    from modules.app_context import AppContext
    from modules.console_progress import install_console_progress

    context = AppContext.from_args(args)
    context.refresh()
    context.ensure_demo_checkpoint()
    load_extensions(context, args)
    context.jobs.start()
    install_console_progress(context.jobs)
    if not args.skip_load_model_at_start:
        start_background_load(context)
    app = build_app(args, context)
    host = args.server_name or ("0.0.0.0" if args.listen else "127.0.0.1")
    port = args.port or (API_ONLY_PORT if args.nowebui else UI_PORT)
    print(f"Atelier running on http://{'127.0.0.1' if host == '0.0.0.0' else host}:{port}", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")


if __name__ == "__main__":
    main(sys.argv[1:])
