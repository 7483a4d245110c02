"""A1111's name for extensions: `modules.paths` (install, data, models and extension folders of
the running app). The code lives in `modules.extension_host.a1111_paths`."""

# ruff: noqa: F401
from modules.extension_host.a1111_paths import __dir__, __getattr__
