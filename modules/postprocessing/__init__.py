"""The Extras tab's core: postprocessing steps, their runner, the Extras request and job (no Gradio).

- `scripts`: A1111's `ScriptPostprocessing` and `PostprocessedImage` (what extensions subclass);
- `upscale`: the built-in Upscale step (and A1111's Simple Upscale) over `context.upscalers`;
- `runner`: the app's steps in their preferred order (`postprocessing_scripts`), a run over an image;
- `extras`: `ExtrasRequest`, `submit_extras` (a job of kind "extras"), `ExtrasResult`, saving;
- `a1111`: A1111's `run_postprocessing`, `run_extras`, `run_postprocessing_webui` for extensions.

The package keeps A1111's module name `modules.postprocessing`, so those three functions are also
reachable here by name, as extensions import them (a module `modules/postprocessing.py` could not sit
beside this package).
"""

from __future__ import annotations

from typing import Any

A1111_NAMES = ("run_postprocessing", "run_extras", "run_postprocessing_webui")


def __getattr__(name: str) -> Any:
    # Imported on first use: the core's own imports of this package's modules stay light.
    if name in A1111_NAMES:
        from modules.postprocessing import a1111

        return getattr(a1111, name)
    raise AttributeError(f"module 'modules.postprocessing' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *A1111_NAMES])
