"""A1111's name for extensions: `modules.extras` (`run_pnginfo`). The code lives in
`modules.extension_host.a1111_extras` (docs/ARCHITECTURE.md)."""

# ruff: noqa: F401
from modules.extension_host.a1111_extras import run_pnginfo
