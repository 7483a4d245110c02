"""Atelier's composition root: parse flags, build the application context, serve."""

from __future__ import annotations

import logging
import sys


def main(argv: list[str] | None = None) -> None:
    from modules.cmd_args import parse_args

    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    import uvicorn

    from modules.api.server import create_app, start_background_load
    from modules.app_context import AppContext

    context = AppContext.from_args(args)
    context.refresh()
    context.ensure_demo_checkpoint()
    context.jobs.start()
    if not args.skip_load_model_at_start:
        start_background_load(context)
    host = args.server_name or ("0.0.0.0" if args.listen else "127.0.0.1")
    port = args.port or 7860
    print(f"Atelier running on http://{'127.0.0.1' if host == '0.0.0.0' else host}:{port}", flush=True)
    uvicorn.run(create_app(context), host=host, port=port, log_level="warning")


if __name__ == "__main__":
    main(sys.argv[1:])
