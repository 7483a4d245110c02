"""txt2img widgets <-> GenerationRequest: building a request from widget values, errors that name the
widget, and reading an A1111 infotext back into widget values (the paste button, PNG Info)."""

from __future__ import annotations

import pytest

from modules.serving.settings import Settings
from modules.ui.request_fields import (
    TXT2IMG_FIELDS,
    RequestError,
    build_request,
    parse_override_entries,
    paste_parameters,
)

SAMPLERS = ["DPM++ 2M", "Euler a", "Euler", "DDIM"]

# What the widgets hand over: sliders give floats or ints, an emptied number box gives None.
WIDGETS = {
    "prompt": "a cat", "negative_prompt": "blurry", "sampler_name": "Euler a", "scheduler": "Karras",
    "steps": 30.0, "width": 640, "height": 512.0, "n_iter": 2, "batch_size": 1, "cfg_scale": 6.5, "seed": None,
    "subseed": -1, "subseed_strength": 0, "seed_resize_from_w": 0, "seed_resize_from_h": 0, "enable_hr": False,
    "hr_upscaler": "Latent", "hr_second_pass_steps": 0, "denoising_strength": 0.7, "hr_scale": 2,
    "hr_resize_x": 0, "hr_resize_y": 0, "override_settings": [], "styles": [], "hr_sampler_name": "Use same sampler",
}

INFOTEXT = (
    "a (red:1.2) fox, forest\n"
    "Negative prompt: lowres\n"
    "Steps: 28, Sampler: Euler a, Schedule type: Karras, CFG scale: 6.5, Seed: 1234, Size: 512x768, "
    "Model hash: 0123456789, Model: other, Variation seed: 99, Variation seed strength: 0.25, "
    "Denoising strength: 0.55, Clip skip: 2, Hires upscale: 1.5, Hires steps: 10, Hires upscaler: Latent (bicubic), "
    "Version: v1.10.1"
)


def test_widget_names_are_request_fields():
    assert set(WIDGETS) == set(TXT2IMG_FIELDS)


def test_request_from_widget_values():
    request = build_request(WIDGETS)
    assert request.prompt == "a cat" and request.negative_prompt == "blurry"
    assert request.steps == 30 and isinstance(request.steps, int)
    assert (request.width, request.height) == (640, 512)
    assert request.seed == -1  # an empty seed box means random, as in A1111
    assert request.sampler_name == "Euler a" and request.scheduler == "Karras"
    assert request.n_iter == 2 and request.cfg_scale == 6.5
    assert request.override_settings == {}


def test_bad_width_names_the_widget_and_the_fix():
    with pytest.raises(RequestError) as error:
        build_request({**WIDGETS, "width": 500})
    message = str(error.value)
    assert message.startswith("Width:") and "multiple of 8" in message and "496" in message
    assert "Traceback" not in message and "Value error" not in message


def test_several_problems_are_listed_one_per_line():
    with pytest.raises(RequestError) as error:
        build_request({**WIDGETS, "width": 500, "steps": 0, "sampler_name": "Eulr"})
    lines = str(error.value).splitlines()
    assert len(lines) == 3
    assert any(line.startswith("Sampling steps:") for line in lines)
    assert any(line.startswith("Sampling method:") and "Did you mean" in line for line in lines)


def test_override_entries_become_typed_settings():
    assert parse_override_entries(["Clip skip: 2", "RNG: CPU", "ENSD: 31337"]) == {
        "CLIP_stop_at_last_layers": 2, "randn_source": "CPU", "eta_noise_seed_delta": 31337}
    assert build_request({**WIDGETS, "override_settings": ["Clip skip: 2"]}).override_settings == {
        "CLIP_stop_at_last_layers": 2}
    with pytest.raises(RequestError, match="Override settings: 'Hypernet: x'.*Clip skip"):
        build_request({**WIDGETS, "override_settings": ["Hypernet: x"]})
    with pytest.raises(ValueError, match="between 1 and 12"):
        parse_override_entries(["Clip skip: 40"])


def test_paste_reads_a1111_infotext_into_fields():
    pasted = paste_parameters(INFOTEXT, Settings({}), available_samplers=SAMPLERS, current_model_hash="aaaaaaaaaa")
    values = pasted.values
    assert values["prompt"] == "a (red:1.2) fox, forest" and values["negative_prompt"] == "lowres"
    assert values["steps"] == 28 and values["cfg_scale"] == 6.5 and values["seed"] == 1234
    assert (values["width"], values["height"]) == (512, 768)
    assert values["sampler_name"] == "Euler a" and values["scheduler"] == "Karras"
    assert values["subseed"] == 99 and values["subseed_strength"] == 0.25
    assert values["enable_hr"] is True
    assert values["hr_scale"] == 1.5 and values["hr_second_pass_steps"] == 10
    assert values["hr_upscaler"] == "Latent (bicubic)" and values["denoising_strength"] == 0.55
    # Clip skip differs from the setting (1): it becomes an override, as A1111 does.
    assert values["override_settings"] == ["Clip skip: 2"]
    # The checkpoint is not switched, but the user is told.
    assert any("other [0123456789]" in note for note in pasted.notes)
    # Everything pasted makes a valid request.
    request = build_request({**WIDGETS, **values})
    assert request.override_settings == {"CLIP_stop_at_last_layers": 2} and request.enable_hr


def test_paste_skips_overrides_equal_to_the_settings_and_leaves_unmentioned_fields():
    text = "a cat\nSteps: 20, Sampler: DPM++ 2M, CFG scale: 7, Seed: 1, Size: 512x512, Clip skip: 2"
    pasted = paste_parameters(text, Settings({"CLIP_stop_at_last_layers": 2}), available_samplers=SAMPLERS)
    assert pasted.values["override_settings"] == []
    assert pasted.values["enable_hr"] is False
    assert "batch_size" not in pasted.values and "subseed" not in pasted.values


def test_paste_old_sampler_names_and_unavailable_samplers():
    old = paste_parameters("x\nSteps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 1, Size: 512x512",
                           Settings({}), available_samplers=SAMPLERS)
    # Karras is DPM++ 2M's own schedule, so A1111 shows it as Automatic.
    assert (old.values["sampler_name"], old.values["scheduler"]) == ("DPM++ 2M", "Automatic")
    euler = paste_parameters("x\nSteps: 20, Sampler: Euler a Karras, CFG scale: 7, Seed: 1, Size: 512x512",
                             Settings({}), available_samplers=SAMPLERS)
    # The parser fills in "Schedule type: Automatic"; the scheduler named in the old sampler name wins.
    assert (euler.values["sampler_name"], euler.values["scheduler"]) == ("Euler a", "Karras")
    missing = paste_parameters("x\nSteps: 20, Sampler: DPM fast, CFG scale: 7, Seed: 1, Size: 512x512",
                               Settings({}), available_samplers=SAMPLERS)
    assert "sampler_name" not in missing.values
    assert any("DPM fast" in note and "not available" in note for note in missing.notes)


def test_paste_plain_prompt_sets_only_the_prompt_fields():
    pasted = paste_parameters("just a prompt, no parameters", Settings({}), available_samplers=SAMPLERS)
    assert pasted.values["prompt"] == "just a prompt, no parameters"
    assert "steps" not in pasted.values and "seed" not in pasted.values


def test_paste_skips_numbers_that_are_not_finite():
    """`inf`/`nan` in a pasted infotext (hand-edited or damaged) are noted, never turned into a request."""
    pasted = paste_parameters("x\nSteps: inf, Sampler: Euler, CFG scale: nan, Seed: 1, Size: 512x512, ENSD: inf",
                              Settings({}), available_samplers=SAMPLERS)
    assert "steps" not in pasted.values and "cfg_scale" not in pasted.values
    assert any(note.startswith("Steps: 'inf'") for note in pasted.notes)
    assert "eta_noise_seed_delta" not in str(pasted.values.get("override_settings", []))
    build_request({**WIDGETS, **pasted.values})  # what was kept still makes a valid request


def test_settings_refuse_numbers_that_are_not_finite():
    from modules.serving.settings import validate_changes

    for value in (float("nan"), float("inf"), float("-inf")):
        with pytest.raises(ValueError, match="must be a finite number"):
            validate_changes({"eta_ancestral": value})
        with pytest.raises(ValueError, match="must be a finite number"):
            validate_changes({"eta_noise_seed_delta": value})
