"""A1111's component hooks, fired from Atelier's own builders.

A1111 patches Gradio's component constructor so that every component built in the txt2img or the
img2img tab runs, in this order (A1111.md §15.5):

  1. the tab's scripts' `on_before_component(elem_id=...)` callbacks, then each of their `before_component`
  2. the `script_callbacks.on_before_component` callbacks
  3. the component is created
  4. the `script_callbacks.on_after_component` callbacks
  5. the tab's scripts' `on_after_component(elem_id=...)` callbacks, then each of their `after_component`

The scripts are the tab's own instances (A1111 makes one per tab; `ScriptRunner.tab(is_img2img)`):
`ComponentHooks.for_context(context, is_img2img=True)` gives the img2img tab's hooks. The
`script_callbacks` ones are the app's, the same for both tabs.

Gradio 6 has no creation hook and Atelier does not patch Gradio, so the tabs' builders create their
components through `ComponentHooks.create(gr.Slider, ..., elem_id="txt2img_width")`. Components an
extension makes in an after hook land in the layout block being built, right after the component
(aspect-ratio buttons after `txt2img_width`). Before creation there is no component yet: A1111 passes
the object before its `__init__` ran; here it is a `PendingComponent` whose attributes are the
keyword arguments (`elem_id`, `label`, `value`, ...).

Components created by an extension script's `ui()` cannot be seen while they are made; once `ui()`
has returned, `fire_after_for_new_blocks` runs the after hooks for each of them in creation order,
with the component's constructor arguments (their before hooks are not fired). What those hooks add
is placed after the script's controls.

Every hook runs in its extension's callback scope and in the Gradio 3 compatibility context
(modules.extension_host.gradio3_compat: `_js=`, `X.update`, `gr.Box` work there); one that raises is
logged with the extension's name and the page is still built.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)


class PendingComponent:
    """The component about to be created, as the before hooks see it: its keyword arguments as
    attributes, and `component_class` (the Gradio class)."""

    elem_id: str | None = None
    label: str | None = None

    def __init__(self, component_class: type, kwargs: dict[str, Any]):
        self.__dict__.update(kwargs)
        self.component_class = component_class

    def __repr__(self) -> str:
        return f"PendingComponent({self.component_class.__name__}, elem_id={self.elem_id!r})"


def extension_ui_scope():
    """The context extension UI code runs in: Gradio 3 idioms translated
    (modules.extension_host.gradio3_compat; re-entrant)."""
    from modules.extension_host.gradio3_compat import gradio3_compat

    return gradio3_compat()


@dataclass
class ComponentHooks:
    """The hooks of one app's extensions for one tab: its callback registry and that tab's scripts
    (either may be None)."""

    callbacks: Any = None  # modules.extension_host.callbacks.CallbackRegistry
    # The tab's scripts: a modules.extension_host.scripts.ScriptTab (anything with
    # has_component_hooks, before_component and after_component).
    runner: Any = None

    @classmethod
    def for_context(cls, context, *, is_img2img: bool = False) -> "ComponentHooks":
        """The hooks fired while the txt2img tab (or, with `is_img2img`, the img2img tab) is built."""
        runtime = getattr(context, "extensions", None)
        if runtime is None:
            return cls()
        scripts = getattr(runtime, "scripts", None)
        tab = scripts.tab(is_img2img) if scripts is not None else None
        return cls(getattr(runtime, "callbacks", None), tab)

    @property
    def active(self) -> bool:
        """Whether any hook could run (without extensions, creating a component costs nothing extra)."""
        has_callbacks = self.callbacks is not None and (self.callbacks.has("before_component")
                                                       or self.callbacks.has("after_component"))
        return has_callbacks or bool(self.runner is not None and self.runner.has_component_hooks())

    def create(self, component_class: type, *args: Any, **kwargs: Any):
        """`component_class(*args, **kwargs)` with the before and after hooks around it (A1111 passes
        only the keyword arguments to the hooks; so does this)."""
        if not self.active:
            return component_class(*args, **kwargs)
        self.before(PendingComponent(component_class, kwargs), kwargs)
        component = component_class(*args, **kwargs)
        self.after(component, kwargs)
        return component

    def before(self, component, kwargs: dict[str, Any]) -> None:
        with extension_ui_scope():
            if self.runner is not None:
                self.runner.before_component(component, **kwargs)
            if self.callbacks is not None:
                self.callbacks.before_component(component, **kwargs)

    def after(self, component, kwargs: dict[str, Any]) -> None:
        with extension_ui_scope():
            if self.callbacks is not None:
                self.callbacks.after_component(component, **kwargs)
            if self.runner is not None:
                self.runner.after_component(component, **kwargs)

    def fire_after_for_new_blocks(self, first_id: int) -> int:
        """Run the after hooks for every component created since the block id `first_id` (see
        `next_block_id`), in creation order; returns how many. For components built by code Atelier
        does not control (an extension script's `ui()`)."""
        if not self.active:
            return 0
        import gradio as gr
        from gradio.context import Context

        root = Context.root_block
        if root is None:
            return 0
        created = sorted((block for block_id, block in list(root.blocks.items()) if block_id >= first_id
                          and isinstance(block, gr.components.Component)), key=lambda block: block._id)
        for component in created:
            self.after(component, dict(getattr(component, "constructor_args", None) or {}))
        return len(created)


def next_block_id() -> int:
    """The id Gradio gives the next block: pass it to `fire_after_for_new_blocks` afterwards."""
    from gradio.context import Context

    return Context.id
