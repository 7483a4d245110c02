"""A1111's X/Y/Z axis API for extensions: `AxisOption` and its helpers, as the built-in X/Y/Z script
module exposes them (extensions-builtin/xyz-grid/scripts/xyz_grid.py), and their conversion to
Atelier's `AxisType`.

Extensions add an axis the A1111 way (A1111.md §15.5):

    xyz = [x for x in scripts.scripts_data if x.script_class.__module__ == "xyz_grid.py"][0].module
    xyz.axis_options.extend([xyz.AxisOption("My value", float, xyz.apply_field("my_value"))])

`apply(p, x, xs)` runs on A1111's `p` (modules.extension_host.processing_objects); the planner
(modules.extension_host.xyz.plan) keeps the request fields it set and the other attributes, and the
cell's always-on scripts see both. `format_value(p, opt, x)`, `confirm(p, xs)` and `choices()` keep
A1111's signatures.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from modules.extension_host.xyz.axes import IMG2IMG, TXT2IMG, AxisType
from modules.extension_host.xyz.values import AxisValueError, str_permutations


def _show(value: Any) -> Any:
    return round(value, 8) if isinstance(value, float) else value


def apply_field(field: str) -> Callable:
    """A1111's `apply_field`: `setattr(p, field, x)`."""
    def fun(p, x, xs):
        setattr(p, field, x)
    return fun


def apply_override(field: str, boolean: bool = False) -> Callable:
    """A1111's `apply_override`: `p.override_settings[field] = x` ("True"/"False" → bool with `boolean`)."""
    def fun(p, x, xs):
        if boolean:
            x = str(x).lower() == "true"
        p.override_settings[field] = x
    return fun


def boolean_choice(reverse: bool = False) -> Callable[[], list[str]]:
    """A1111's `boolean_choice`: the choices "True", "False" (reversed with `reverse`)."""
    def choice():
        return ["False", "True"] if reverse else ["True", "False"]
    return choice


def format_value_add_label(p, opt, x) -> str:
    return f"{opt.label}: {_show(x)}"


def format_value(p, opt, x) -> str:
    return str(_show(x))


def format_value_join_list(p, opt, x) -> str:
    return ", ".join(str(item) for item in x)


def format_nothing(p, opt, x) -> str:
    return ""


def format_remove_path(p, opt, x) -> str:
    import os

    return os.path.basename(str(x))


def do_nothing(p, x, xs) -> None:
    pass


class AxisOption:
    """A1111's `AxisOption(label, type, apply, format_value=format_value_add_label, confirm=None,
    cost=0.0, choices=None, prepare=None)`; `type` is int, float, str or `str_permutations` (the
    values are every ordering of the items). `prepare` (A1111's hook to
    rewrite the parsed values) is kept but not called."""

    def __init__(self, label, type, apply, format_value=format_value_add_label, confirm=None, cost=0.0,
                 choices=None, prepare=None):
        self.label = label
        self.type = type
        self.apply = apply
        self.format_value = format_value
        self.confirm = confirm
        self.cost = cost
        self.prepare = prepare
        self.choices = choices


class AxisOptionImg2Img(AxisOption):
    """An axis for img2img only: not offered in txt2img (A1111's `is_img2img = True`)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.is_img2img = True


class AxisOptionTxt2Img(AxisOption):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.is_img2img = False


def processing_for(request):
    """A1111's `p` for `request`: the img2img one for an `Img2ImgRequest`, else txt2img's."""
    from modules.extension_host.processing_objects import (
        StableDiffusionProcessingImg2Img,
        StableDiffusionProcessingTxt2Img,
    )
    from modules.generation.requests import Img2ImgRequest

    if isinstance(request, Img2ImgRequest):
        return StableDiffusionProcessingImg2Img.from_request(request)
    return StableDiffusionProcessingTxt2Img.from_request(request)


def extension_axis_types(options: Sequence[Any]) -> tuple[AxisType, ...]:
    """The axes among `options` (an `axis_options` list: Atelier's own `AxisType`s, which are
    skipped, and the `AxisOption`s extensions appended), as `AxisType`s: an `AxisOptionImg2Img` is
    offered in img2img's list only, an `AxisOptionTxt2Img` in txt2img's only (their `tab`). An
    entry that is not an axis option is skipped with an error in the log naming its type."""
    log = logging.getLogger(__name__)
    axes = []
    for option in options:
        if isinstance(option, AxisType):
            continue
        if not (hasattr(option, "label") and callable(getattr(option, "apply", None))):
            log.error("X/Y/Z plot: axis_options holds %r, not an AxisOption(label, type, apply); left out", option)
            continue
        if getattr(option, "type", None) not in (int, float, str, str_permutations):
            log.error("X/Y/Z plot: axis %r has type %r; Atelier parses int, float, str and str_permutations "
                      "values; left out",
                      option.label, getattr(option, "type", None))
            continue
        axes.append(_to_axis_type(option))
    return tuple(axes)


def _to_axis_type(option) -> AxisType:
    def label_of(axis, value):
        from modules.extension_host.processing_objects import StableDiffusionProcessingTxt2Img

        formatter = option.format_value or format_value_add_label
        try:
            return str(formatter(StableDiffusionProcessingTxt2Img(), option, value))
        except (Exception, SystemExit):  # the extension's formatter: the legend falls back to A1111's default
            logging.getLogger(__name__).exception("X/Y/Z plot: format_value of axis %r failed", option.label)
            return format_value_add_label(None, option, value)

    confirm = None
    if option.confirm is not None:
        def confirm(values, context, request):
            try:
                option.confirm(processing_for(request), list(values))
            except (Exception, SystemExit) as e:  # A1111's confirm raises anything for a bad value
                raise AxisValueError(f"{option.label}: {e}") from None

    choices = None
    if option.choices is not None:
        def choices(services):
            return [str(choice) for choice in option.choices()]

    def not_on_request(request, value, context):  # never called: the planner uses p_apply
        raise AssertionError("extension axes apply on p")

    tab = None
    if hasattr(option, "is_img2img"):  # A1111's AxisOptionImg2Img / AxisOptionTxt2Img
        tab = IMG2IMG if option.is_img2img else TXT2IMG
    return AxisType(str(option.label), option.type, not_on_request, label_of, confirm=confirm, choices=choices,
                    cost=float(option.cost or 0.0), p_apply=option.apply, tab=tab)


__all__ = [
    "AxisOption", "AxisOptionImg2Img", "AxisOptionTxt2Img", "apply_field", "apply_override", "boolean_choice",
    "do_nothing", "extension_axis_types", "processing_for", "format_nothing", "format_remove_path", "format_value",
    "format_value_add_label", "format_value_join_list", "str_permutations",
]
