"""The default arguments of an extension script: the values of its `ui()` components."""

from __future__ import annotations

import gradio as gr


def read_default_args(script) -> tuple:
    """The values of `script.ui()`'s components, built in a detached Blocks that is never shown
    (for API requests when no page has built the script's controls)."""
    with gr.Blocks(analytics_enabled=False):
        components = script.ui(script.is_img2img) or []
    return tuple(getattr(component, "value", None) for component in components)
