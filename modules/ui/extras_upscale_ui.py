"""The widgets of the Extras tab's built-in Upscale step (A1111.md §14.5), in A1111's layout, labels
and element ids. The step itself has no gradio in it (modules.postprocessing); `build` returns the
widgets keyed by the step's `process()` keyword names, as an extension script's `ui()` returns its
dict, so the tab maps them to `script_args["Upscale"]` the same way for both.

    InputAccordion #extras_upscale (on)
      Upscaler 1 #extras_upscaler_1            Upscaler 2 #extras_upscaler_2, visibility #extras_upscaler_2_visibility
      Tabs #extras_resize_mode
        Scale by #extras_scale_by_tab: Resize #extras_upscaling_resize, Max side length #extras_upscale_max_side_length
        Scale to #extras_scale_to_tab: Width/Height #extras_upscaling_resize_w/_h, swap #upscaling_res_switch_btn,
                                       Crop to fit #extras_upscaling_crop
"""

from __future__ import annotations

import re
from typing import Any

import gradio as gr

from modules.ui.icons import icon_label

SCALE_BY, SCALE_TO = 0, 1  # `upscale_mode`: the open resize tab
# The built-ins every registry lists first; a context without an upscaler owner (a bare test
# context) still gets a working choice list.
BUILT_IN_UPSCALERS = ("None", "Lanczos", "Nearest")
DEFAULTS = {
    "upscale_enabled": True,
    "upscale_mode": SCALE_BY,
    "upscale_by": 4.0,
    "max_side_length": 0,
    "upscale_to_width": 512,
    "upscale_to_height": 512,
    "upscale_crop": True,
    "upscaler_1_name": "None",
    "upscaler_2_name": "None",
    "upscaler_2_visibility": 0.0,
}
# A digit next to an x in an upscaler's name: "4x-UltraSharp", "R-ESRGAN 2x+", "SwinIR x4".
_SCALE_IN_NAME = re.compile(r"(\d)[xX]|[xX](\d)")


def upscaler_names(context) -> list[str]:
    """The Upscaler 1/2 choices: the registry's names, in A1111's order (None, Lanczos, Nearest, then
    the rest by lower-cased name)."""
    upscalers = getattr(context, "upscalers", None)
    if upscalers is None:
        return list(BUILT_IN_UPSCALERS)
    return list(upscalers.registry.names())


def scale_in_name(name: str | None) -> int | None:
    """The scale an upscaler's name states ("4x-UltraSharp" → 4), for `set_scale_by_when_changing_upscaler`;
    None when the name states none."""
    match = _SCALE_IN_NAME.search(name or "")
    if match is None:
        return None
    return int(match.group(1) or match.group(2))


def build(context) -> dict[str, Any]:
    """Create the Upscale step's widgets in the current layout; returns them by `process()` keyword."""
    from modules.ui.extension_components import InputAccordion

    names = upscaler_names(context)
    with InputAccordion(DEFAULTS["upscale_enabled"], label="Upscale", elem_id="extras_upscale") as enabled:
        with gr.Row():
            upscaler_1 = gr.Dropdown(label="Upscaler 1", choices=names, value=DEFAULTS["upscaler_1_name"],
                                     elem_id="extras_upscaler_1")
        with gr.Row():
            upscaler_2 = gr.Dropdown(label="Upscaler 2", choices=names, value=DEFAULTS["upscaler_2_name"],
                                     elem_id="extras_upscaler_2")
            visibility = gr.Slider(minimum=0.0, maximum=1.0, step=0.001, value=DEFAULTS["upscaler_2_visibility"],
                                   label="Upscaler 2 visibility", elem_id="extras_upscaler_2_visibility")
        with gr.Tabs(elem_id="extras_resize_mode"):
            with gr.Tab("Scale by", elem_id="extras_scale_by_tab") as scale_by_tab:
                with gr.Row():
                    upscale_by = gr.Slider(minimum=1.0, maximum=8.0, step=0.05, value=DEFAULTS["upscale_by"],
                                           label="Resize", elem_id="extras_upscaling_resize", scale=4)
                    max_side = gr.Number(value=DEFAULTS["max_side_length"], label="Max side length", precision=0,
                                         minimum=0, step=8, min_width=160, scale=1,
                                         info="A side longer than this is scaled down to fit; 0 = no limit.",
                                         elem_id="extras_upscale_max_side_length")
            with gr.Tab("Scale to", elem_id="extras_scale_to_tab") as scale_to_tab:
                with gr.Row(equal_height=True):
                    with gr.Column(scale=4, elem_id="upscaling_column_size"):
                        width = gr.Slider(minimum=64, maximum=8192, step=8, value=DEFAULTS["upscale_to_width"],
                                          label="Width", elem_id="extras_upscaling_resize_w")
                        height = gr.Slider(minimum=64, maximum=8192, step=8, value=DEFAULTS["upscale_to_height"],
                                           label="Height", elem_id="extras_upscaling_resize_h")
                    with gr.Column(scale=1, min_width=120, elem_id="upscaling_dimensions_row"):
                        swap = gr.Button(value=icon_label("upscaling_res_switch_btn"),
                                         elem_id="upscaling_res_switch_btn", elem_classes=["tool"], size="sm",
                                         min_width=40)
                        crop = gr.Checkbox(value=DEFAULTS["upscale_crop"], label="Crop to fit",
                                           elem_id="extras_upscaling_crop")
    # A1111 keeps the open tab in a hidden number, passed to the step as `upscale_mode`.
    mode = gr.Number(value=DEFAULTS["upscale_mode"], precision=0, visible=False, elem_id="extras_upscale_mode")
    scale_by_tab.select(lambda: SCALE_BY, outputs=mode, show_progress="hidden", queue=False)
    scale_to_tab.select(lambda: SCALE_TO, outputs=mode, show_progress="hidden", queue=False)
    swap.click(lambda w, h: (h, w), inputs=[width, height], outputs=[width, height], show_progress="hidden",
               queue=False)

    def on_upscaler(name: str):
        # Read at each change, as A1111 does: the setting applies without a reload.
        if not context.settings.current()["set_scale_by_when_changing_upscaler"]:
            return gr.skip()
        scale = scale_in_name(name)
        return gr.skip() if scale is None else scale

    upscaler_1.change(on_upscaler, inputs=upscaler_1, outputs=upscale_by, show_progress="hidden", queue=False)
    return {
        "upscale_enabled": enabled,
        "upscale_mode": mode,
        "upscale_by": upscale_by,
        "max_side_length": max_side,
        "upscale_to_width": width,
        "upscale_to_height": height,
        "upscale_crop": crop,
        "upscaler_1_name": upscaler_1,
        "upscaler_2_name": upscaler_2,
        "upscaler_2_visibility": visibility,
    }


def is_upscale_controls(controls: dict[str, Any]) -> bool:
    """Whether `controls` are the ones `build` made (keyed by the Upscale step's arguments)."""
    return set(controls) == set(DEFAULTS)


def refresh_choices(context, widgets: dict[str, Any]) -> tuple[Any, list]:
    """`(function, outputs)` for `UiShared.page_loads`: the upscaler folders are scanned again when a
    page opens (file names only: cheap), so a model file added since shows in both dropdowns."""
    def refresh():
        if getattr(context, "upscalers", None) is not None:
            context.upscalers.registry.refresh()
        names = upscaler_names(context)
        return gr.update(choices=names), gr.update(choices=names)

    return refresh, [widgets["upscaler_1_name"], widgets["upscaler_2_name"]]
