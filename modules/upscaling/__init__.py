"""The upscaler library: model files found by family (`registry`), read and identified through
spandrel (`loader`), run in tiles (`tiling`), and the one owner of loaded upscaler models
(`service.Upscalers`, `context.upscalers`). `synthetic` writes random state dicts in the real key
layouts for tests and benchmarks.

Only `registry` is light (no torch): listing upscalers must not slow the server's start."""
