"""Generation and merge workers on Ray (`--ray-address`, `--ray-local`): the web server keeps the UI,
the API, the settings and the queue; jobs run in worker actors, each with its own model manager and
engine (the same code as the embedded worker). Nothing here is imported in the embedded mode.
See docs/SCALING.md."""
