"""The txt2img tab offers exactly what a request accepts: every slider's range, step and default is
the `GenerationRequest` field's, and every widget starts at the request's default. Checked on the
built tab (the components Gradio serves), against the request model's JSON schema and against what
the model validates."""

from __future__ import annotations

import gradio as gr
import pytest
from pydantic import ValidationError

from modules.generation.engine import GenerationRequest
from modules.ui.shared import UiShared
from tests.ui_support import make_context


@pytest.fixture(scope="module")
def fields(tmp_path_factory):
    from modules.ui import txt2img

    context = make_context(tmp_path_factory.mktemp("bounds"), load=False)
    shared = UiShared()
    try:
        with gr.Blocks():
            txt2img.build(context, shared)
    finally:
        context.jobs.shutdown()
    return shared.txt2img_fields


def _schema(name: str) -> dict:
    prop = GenerationRequest.model_json_schema()["properties"][name]
    return next((option for option in prop.get("anyOf", ()) if option.get("type") != "null"), prop) | prop


def _sliders(fields) -> dict:
    return {name: component for name, component in fields.items() if isinstance(component, gr.Slider)}


def test_every_numeric_field_of_the_tab_is_a_slider_or_seed(fields):
    assert set(_sliders(fields)) >= {"steps", "cfg_scale", "width", "height", "n_iter", "batch_size",
                                     "hr_scale", "hr_resize_x", "hr_resize_y", "denoising_strength"}


def test_slider_ranges_steps_and_defaults_are_the_request_models(fields):
    for name, slider in _sliders(fields).items():
        schema = _schema(name)
        shown = (slider.minimum, slider.maximum, slider.step, slider.value)
        assert shown == (schema["minimum"], schema["maximum"], schema["ui_step"], schema["default"]), name


def test_the_ends_of_each_slider_are_valid_and_one_step_beyond_is_not(fields):
    for name, slider in _sliders(fields).items():
        for inside in (slider.minimum, slider.maximum):
            GenerationRequest(**{name: inside})
        for outside in (slider.minimum - slider.step, slider.maximum + slider.step):
            with pytest.raises(ValidationError):
                GenerationRequest(**{name: outside})


def test_other_widgets_start_at_the_request_defaults(fields):
    defaults = GenerationRequest()
    for name in ("sampler_name", "scheduler", "hr_upscaler", "enable_hr", "seed", "subseed"):
        assert fields[name].value == getattr(defaults, name), name
