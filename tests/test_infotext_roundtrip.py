"""An image's infotext read back makes the request that made it, through every reader: the paste
button (and PNG Info's "Send to txt2img", which pastes), the API's `infotext` field, and both agree.
The infotexts are written by real generations on a tiny real-layout model, with every field Atelier
writes the way A1111 does (variation seed, seed resize, hires fix by scale and by size, Clip skip,
ENSD, RNG, Emphasis, Eta and Eta DDIM)."""

from __future__ import annotations

import pytest

from modules.api.schemas import Txt2ImgApiRequest
from modules.api.txt2img import apply_infotext, prepare
from modules.generation.engine import GenerationRequest
from modules.outputs.infotext import parse_generation_parameters
from modules.serving.generation_service import GenerationSubmission
from modules.ui.generation import follow_until_done
from modules.ui.request_fields import build_request, paste_parameters
from tests.ui_support import make_context

BASE = {"width": 64, "height": 64, "steps": 2, "seed": 1234, "batch_size": 2}

REQUESTS = {
    "ancestral, hires by scale": GenerationRequest(
        **BASE, prompt="a (red:1.2) fox", negative_prompt="blurry", sampler_name="Euler a", scheduler="Karras",
        cfg_scale=5.5, subseed=77, subseed_strength=0.3, seed_resize_from_w=128, seed_resize_from_h=64,
        enable_hr=True, hr_scale=1.5, hr_second_pass_steps=1, hr_upscaler="Latent (bicubic)",
        denoising_strength=0.45,
        override_settings={"CLIP_stop_at_last_layers": 2, "eta_noise_seed_delta": 31337, "randn_source": "CPU",
                           "eta_ancestral": 0.5, "emphasis": "No norm"}),
    "hires by size": GenerationRequest(
        **BASE, prompt="a house", sampler_name="Euler", enable_hr=True, hr_resize_x=96, hr_resize_y=128,
        denoising_strength=0.6, hr_upscaler="Latent (nearest-exact)"),
    "DDIM with eta": GenerationRequest(
        **BASE, prompt="a boat", sampler_name="DDIM", cfg_scale=8, override_settings={"eta_ddim": 0.25}),
}

# Fields an infotext does not carry (A1111 writes no batch size or count), or carries as settings.
NOT_RECORDED = {"n_iter", "batch_size", "styles", "clip_skip", "eta", "tiling", "override_settings"}


@pytest.fixture(scope="module")
def context(tmp_path_factory):
    context = make_context(tmp_path_factory.mktemp("roundtrip"))
    yield context
    context.jobs.shutdown()


@pytest.fixture(scope="module")
def infotexts(context):
    made = {}
    for name, request in REQUESTS.items():
        outcome = follow_until_done(context, GenerationSubmission(request))
        assert outcome.error is None, outcome.error
        made[name] = outcome.infotexts[-1]  # the second image: its own seed and variation seed
    return made


def _expected(request: GenerationRequest) -> dict:
    """The request of the second image of the batch: the seed advances by one per image, or with a
    variation strength the variation seed does (A1111's rule)."""
    fields = request.model_dump(exclude=NOT_RECORDED)
    if request.subseed_strength:
        fields["subseed"] = request.subseed + 1
    else:
        fields["seed"] = request.seed + 1
    if not (request.hr_resize_x or request.hr_resize_y):
        fields["hr_resize_x"] = fields["hr_resize_y"] = 0
    return fields


def _from_paste(context, text: str) -> GenerationRequest:
    pasted = paste_parameters(text, context.settings.current())
    assert not pasted.notes, pasted.notes
    return build_request(pasted.values)


def _from_api(context, text: str) -> GenerationRequest:
    return prepare(Txt2ImgApiRequest(infotext=text), context).generation


@pytest.mark.parametrize("name", REQUESTS)
@pytest.mark.parametrize("reader", [_from_paste, _from_api], ids=["paste", "api"])
def test_every_recorded_field_comes_back(context, infotexts, name, reader):
    request = REQUESTS[name]
    again = reader(context, infotexts[name])
    got, expected = again.model_dump(exclude=NOT_RECORDED), _expected(request)
    if not request.enable_hr:
        # Nothing of hires fix is recorded: the reader leaves those fields at their defaults.
        for field in ("hr_scale", "hr_upscaler", "hr_second_pass_steps", "denoising_strength"):
            got.pop(field), expected.pop(field)
    assert got == expected
    overrides = {k: v for k, v in again.override_settings.items() if k != "override_settings_restore_afterwards"}
    assert overrides == request.override_settings


def test_every_key_written_is_one_a_reader_knows(infotexts):
    """A key Atelier writes but no reader maps would be lost on paste; these are the known ones
    that describe the image rather than the request."""
    from modules.generation.infotext_fields import OVERRIDE_SETTINGS, REQUEST_FIELDS

    read = set(REQUEST_FIELDS) | set(OVERRIDE_SETTINGS) | {"Sampler", "Schedule type", "Hires upscaler"}
    descriptive = {"Model", "Model hash", "Version", "Size", "Seed resize from", "Hires resize"}
    for text in infotexts.values():
        written = set(parse_generation_parameters(text, auto_backcompat=False)) - {"Size-1", "Size-2"}
        # The parser also fills in A1111's defaults for absent keys; only keys in the text count.
        written = {key for key in written if f"{key.rsplit('-', 1)[0]}:" in text}
        assert written - descriptive <= read, written - descriptive - read


def test_paste_and_api_make_the_same_request(context, infotexts):
    for text in infotexts.values():
        # What the infotext leaves out takes each caller's own default (A1111's API and UI differ:
        # denoising strength 0.75 and 0.7).
        unrecorded = NOT_RECORDED | ({"denoising_strength"} if "Denoising strength" not in text else set())
        pasted, sent = _from_paste(context, text), _from_api(context, text)
        assert pasted.model_dump(exclude=unrecorded) == sent.model_dump(exclude=unrecorded)
        assert pasted.override_settings == {k: v for k, v in sent.override_settings.items()
                                            if k != "override_settings_restore_afterwards"}


def test_the_api_reads_hires_resize_eta_and_batch_size_as_the_paste_button(context):
    """The disagreements issue 20 found: the API's hires rule ignored `Hires resize-1`, and it did not
    read `Eta` or `Batch size`."""
    text = ("a cat\nSteps: 2, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 64x64, Batch size: 2, "
            "Denoising strength: 0.5, Hires resize: 128x128, Eta: 0.5")
    body = apply_infotext(Txt2ImgApiRequest(infotext=text), context.settings.current())
    assert body.enable_hr is True and (body.hr_resize_x, body.hr_resize_y) == (128, 128)
    assert body.batch_size == 2 and body.override_settings == {"eta_ancestral": 0.5}
    pasted = build_request(paste_parameters(text, context.settings.current()).values)
    assert pasted.enable_hr and pasted.batch_size == 2 and pasted.override_settings == {"eta_ancestral": 0.5}


def test_the_request_wins_over_its_infotext(context):
    text = "a cat\nSteps: 2, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 64x64, Clip skip: 2, Batch size: 2"
    body = apply_infotext(Txt2ImgApiRequest(infotext=text, steps=3, batch_size=1,
                                            override_settings={"CLIP_stop_at_last_layers": 3}),
                          context.settings.current())
    assert (body.steps, body.batch_size, body.prompt) == (3, 1, "a cat")
    assert body.override_settings == {"CLIP_stop_at_last_layers": 3}


def test_an_unusable_infotext_value_is_a_422_naming_the_key(context):
    from modules.api.errors import ApiError

    text = "a cat\nSteps: many, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 64x64"
    with pytest.raises(ApiError) as error:
        apply_infotext(Txt2ImgApiRequest(infotext=text), context.settings.current())
    assert error.value.status_code == 422 and "Steps: 'many'" in error.value.detail
