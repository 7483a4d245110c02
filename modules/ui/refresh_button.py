"""A1111's `create_refresh_button` (`modules.ui_common`, re-exported by `modules.ui`): the 🔄 tool
button extensions put beside a dropdown whose choices they re-read.

    create_refresh_button(dropdown, refresh_method, lambda: {"choices": names()}, "my_refresh")

On click: `refresh_method()` runs, then `refreshed_args` (a dict, or a function returning one) is
evaluated, its items are set as attributes of the component (or of each component of a list) and
sent to the browser as `gr.update(**args)` per component, as A1111 does.
"""

from __future__ import annotations

from typing import Any, Callable

import gradio as gr

from modules.ui.extension_components import ToolButton
from modules.ui.icons import ICONS


def _as_attribute(key: str, value):
    """The attribute as the component's constructor would store it: Gradio keeps a choice list as
    `(label, value)` pairs, and builds the page's config from the attribute."""
    if key == "choices" and isinstance(value, (list, tuple)):
        return [tuple(c) if isinstance(c, (tuple, list)) else (str(c), c) for c in value]
    return value


def create_refresh_button(refresh_component, refresh_method: Callable[[], Any],
                          refreshed_args: dict | Callable[[], dict], elem_id: str | None) -> ToolButton:
    components = list(refresh_component) if isinstance(refresh_component, (list, tuple)) else [refresh_component]
    label = next((getattr(component, "label", None) for component in components if getattr(component, "label", None)),
                 None)

    def refresh():
        refresh_method()
        args = refreshed_args() if callable(refreshed_args) else refreshed_args
        if not isinstance(args, dict):
            raise TypeError(f"create_refresh_button: refreshed_args must be a dict or return one, got "
                            f"{type(args).__name__}")
        for component in components:
            for key, value in args.items():
                setattr(component, key, _as_attribute(key, value))
        updates = [gr.update(**args) for _ in components]
        return updates if isinstance(refresh_component, (list, tuple)) else updates[0]

    button = ToolButton(value=ICONS["refresh"].glyph, elem_id=elem_id,
                        tooltip=f"{label}: refresh" if label else "Refresh")
    button.click(fn=refresh, inputs=[], outputs=components)
    return button
