"""A1111's name for extensions: `modules.upscaler` (`Upscaler`, `UpscalerData`, ...). The code lives in
`modules.extension_host.a1111_upscaler`; the upscaler core is `modules.upscaling` (docs/ARCHITECTURE.md)."""

# ruff: noqa: F401
from modules.extension_host.a1111_upscaler import (
    LANCZOS,
    NEAREST,
    Upscaler,
    UpscalerData,
    UpscalerLanczos,
    UpscalerNearest,
    UpscalerNone,
)
