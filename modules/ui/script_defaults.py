"""The default arguments of an extension script: the values of its `ui()` components."""

from __future__ import annotations

import gradio as gr

from modules.extension_host.gradio3_compat import gradio3_compat


def read_default_args(script) -> tuple:
    """The values of `script.ui()`'s components, built in a detached Blocks that is never shown
    (for API requests when no page has built the script's controls). `ui()` runs with Gradio 3
    idioms translated, as on the page."""
    with gr.Blocks(analytics_enabled=False), gradio3_compat():
        components = script.ui(script.is_img2img) or []
    return tuple(getattr(component, "value", None) for component in components)
