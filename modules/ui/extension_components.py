"""A1111's `modules.ui_components` on Gradio 6: the small component classes extensions build their
controls from (`ToolButton`, `FormRow`, `InputAccordion`, ...). Extensions import them as
`modules.ui_components`; only that façade and Atelier's UI import this module.

Each class is the Gradio class it extends, with A1111's defaults and CSS classes. Gradio picks the
browser widget from a block's class name, so each one says which Gradio widget it renders as
(`_RendersAs`); an extension's `ToolButton` reaches the browser as a `button`.

`InputAccordion` differs from A1111 in one visible way, on purpose: A1111 hides its checkbox and
draws one in the accordion's header with its own JavaScript. Atelier keeps the checkbox visible as
the accordion's first row, labelled "Enabled", and keeps both in step with ordinary Gradio events
(opening the accordion checks it, closing unchecks it, and setting the checkbox, as a paste does,
opens or closes the accordion), so it works without any page script.
"""

from __future__ import annotations

import inspect
from typing import Any

import gradio as gr
from gradio.context import get_blocks_context
from gradio.layouts.form import Form


class FormComponent:
    """Mixin: Gradio packs adjacent blocks that expect a `Form` parent into one form block, which
    draws them as one bordered group (A1111's `FormComponent`)."""

    def get_expected_parent(self):
        return Form


class _RendersAs:
    """Mixin for a subclass of a Gradio class: the browser draws it as `_gradio_class`, and its config
    lists that class's parameters (Gradio reads both from the concrete class otherwise)."""

    _gradio_class: type

    def get_block_name(self) -> str:
        return self._gradio_class.__name__.lower()

    def get_block_class(self) -> str:
        return self._gradio_class.__name__.lower()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__:
            # Gradio sends the browser the attributes named in `__init__`'s signature; a subclass that
            # takes `**kwargs` would send none of them, so it shows its Gradio class's signature.
            cls.__init__.__signature__ = inspect.signature(cls._gradio_class.__init__)


def _with_class(kwargs: dict[str, Any], *names: str) -> dict[str, Any]:
    """`kwargs` with `names` added to the caller's `elem_classes` (a string or a list)."""
    given = kwargs.get("elem_classes") or []
    classes = [given] if isinstance(given, str) else list(given)
    return {**kwargs, "elem_classes": classes + [name for name in names if name not in classes]}


class ToolButton(_RendersAs, FormComponent, gr.Button):
    """A small square button holding one symbol, e.g. `ToolButton(value="🔄", elem_id=..., tooltip=...)`.

    `tooltip` is kept as an attribute: Gradio 6's Button has no tooltip of its own."""

    _gradio_class = gr.Button

    def __init__(self, value: str = "", *args, tooltip: str | None = None, **kwargs):
        self.tooltip = tooltip
        super().__init__(value, *args, **_with_class(kwargs, "tool"))


class ResizeHandleRow(_RendersAs, gr.Row):
    """A row whose columns A1111 lets the user resize; here a plain row with A1111's class."""

    _gradio_class = gr.Row

    def __init__(self, **kwargs):
        super().__init__(**_with_class(kwargs, "resize-handle-row"))


class FormRow(_RendersAs, FormComponent, gr.Row):
    _gradio_class = gr.Row


class FormColumn(_RendersAs, FormComponent, gr.Column):
    _gradio_class = gr.Column


class FormGroup(_RendersAs, FormComponent, gr.Group):
    _gradio_class = gr.Group


class FormHTML(_RendersAs, FormComponent, gr.HTML):
    _gradio_class = gr.HTML


class FormColorPicker(_RendersAs, FormComponent, gr.ColorPicker):
    _gradio_class = gr.ColorPicker


class DropdownMulti(_RendersAs, FormComponent, gr.Dropdown):
    """A dropdown where several choices can be picked; its value is a list."""

    _gradio_class = gr.Dropdown

    def __init__(self, **kwargs):
        super().__init__(**{**kwargs, "multiselect": True})


class DropdownEditable(_RendersAs, FormComponent, gr.Dropdown):
    """A dropdown that also takes a value typed in that is not among its choices."""

    _gradio_class = gr.Dropdown

    def __init__(self, **kwargs):
        super().__init__(**{**kwargs, "allow_custom_value": True})


def _default_accordion_id() -> str:
    """A1111's `input-accordion-N`, numbered within the Blocks being built (not process-wide)."""
    config = get_blocks_context()
    count = sum(isinstance(block, InputAccordion) for block in config.blocks.values()) if config else 0
    return f"input-accordion-{count}"


class InputAccordion(_RendersAs, gr.Checkbox):
    """An accordion whose "enabled" state is this checkbox's value (a bool), as in A1111:

        with InputAccordion(False, label="My extension") as enabled:
            with enabled.extra():
                ToolButton("🔄")
            strength = gr.Slider(...)
        return [enabled, strength]

    The object is the checkbox (an input like any other); `with` enters `.accordion`, which has the
    given `elem_id` (default `input-accordion-N`) and the class `input-accordion`; the checkbox's id
    is `<elem_id>-checkbox`. See the module docstring for how it differs from A1111."""

    _gradio_class = gr.Checkbox

    def __init__(self, value: bool = False, *, label: str = "Accordion", elem_id: str | None = None,
                 visible: bool = True, elem_classes: list[str] | str | None = None, **checkbox_kwargs):
        self.accordion_id = elem_id or _default_accordion_id()
        self.accordion = gr.Accordion(label=label, open=bool(value), visible=visible, elem_id=self.accordion_id,
                                      **_with_class({"elem_classes": elem_classes}, "input-accordion"))
        with self.accordion:
            super().__init__(bool(value), label="Enabled", elem_id=f"{self.accordion_id}-checkbox",
                             **_with_class(checkbox_kwargs, "input-accordion-checkbox"))
        # queue=False: these only mirror one widget into the other and must not wait behind a generation.
        self.change(lambda checked: gr.update(open=bool(checked)), inputs=self, outputs=self.accordion,
                    queue=False, show_progress="hidden", api_visibility="private")
        self.accordion.expand(lambda: True, outputs=self, queue=False, show_progress="hidden", api_visibility="private")
        self.accordion.collapse(lambda: False, outputs=self, queue=False, show_progress="hidden", api_visibility="private")

    def extra(self) -> gr.Column:
        """A column for extra controls next to the checkbox (A1111 puts it in the header); use it as
        `with accordion.extra():` inside the accordion."""
        return gr.Column(elem_id=f"{self.accordion_id}-extra", elem_classes=["input-accordion-extra"], min_width=0)

    def __enter__(self):
        self.accordion.__enter__()
        return self

    def __exit__(self, exc_type, *args):
        self.accordion.__exit__(exc_type, *args)
