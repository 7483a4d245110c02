"""Live previews follow A1111's "Live previews" settings: the period in steps, on/off, the method, and a
batch shown whole as a grid (modules.generation.live_preview, wired into the engine's step callback)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from modules.generation.engine import EngineSettings, GenerationRequest, generate
from modules.generation.live_preview import LivePreviewOptions, PreviewSchedule, approx_cheap, preview_image
from modules.library.model_detection import ModelFamily
from modules.library.model_loader import load_checkpoint
from modules.library.synthetic_checkpoints import write_checkpoint
from modules.serving.settings import SCHEMA_BY_KEY, Settings

LATENT = 8  # a 64 px image has 8×8 latents


class AskingControl:
    """A job control whose client asks for a preview at every step: it records (step, preview)."""

    interrupted = False

    def __init__(self):
        self.previews = []

    def report(self, step, total, preview_factory=None):
        if preview_factory is not None:
            self.previews.append((step, preview_factory()))

    def consume_skip(self):
        return False

    def add_info(self, line):
        pass


@pytest.fixture(scope="module")
def sd1(tmp_path_factory):
    return load_checkpoint(write_checkpoint(tmp_path_factory.mktemp("lp") / "tiny.safetensors", "sd1",
                                            dtype=torch.float32))


def run_with(model, steps=4, batch_size=1, request_fields=None, **options):
    """(step, preview) pairs of one generation whose client asks for a preview at every step."""
    control = AskingControl()
    settings = EngineSettings(live_preview=LivePreviewOptions(**options))
    request = GenerationRequest(**{"prompt": "a cat", "seed": 7, "width": 64, "height": 64, "steps": steps,
                                   "batch_size": batch_size, "sampler_name": "Euler", **(request_fields or {})})
    generate(model, request, settings, control)
    return control.previews


def test_settings_have_a1111_keys_and_defaults():
    defaults = {key: SCHEMA_BY_KEY[key].default for key in (
        "show_progressbar", "live_previews_enable", "live_previews_image_format", "show_progress_grid",
        "show_progress_every_n_steps", "show_progress_type", "live_preview_content", "live_preview_refresh_period",
        "live_preview_fast_interrupt", "extra_networks_default_multiplier")}
    assert defaults == {
        "show_progressbar": True, "live_previews_enable": True, "live_previews_image_format": "png",
        "show_progress_grid": True, "show_progress_every_n_steps": 10, "show_progress_type": "Approx NN",
        "live_preview_content": "Prompt", "live_preview_refresh_period": 1000, "live_preview_fast_interrupt": False,
        "extra_networks_default_multiplier": 1.0}
    assert {spec.section for key, spec in SCHEMA_BY_KEY.items() if key.startswith(("live_preview", "show_progress"))} \
        == {"live-previews"}
    # What Atelier cannot honour says so instead of pretending.
    for key in ("live_previews_image_format", "live_preview_fast_interrupt"):
        assert "Not used by Atelier" in SCHEMA_BY_KEY[key].info, key
    assert "Approx cheap" in SCHEMA_BY_KEY["show_progress_type"].info


def test_options_read_from_settings():
    settings = Settings({"live_previews_enable": False, "show_progress_every_n_steps": 3,
                         "show_progress_type": "Full", "show_progress_grid": False, "n_rows": 2,
                         "live_preview_content": "Negative prompt"})
    assert LivePreviewOptions.from_settings(settings) == LivePreviewOptions(
        enabled=False, every_n_steps=3, method="Full", grid=False, n_rows=2, prevent_empty_spots=False,
        content="Negative prompt")
    assert EngineSettings.from_settings(settings).live_preview.every_n_steps == 3


def test_schedule_waits_the_period_counted_from_the_last_preview_made():
    schedule = PreviewSchedule(LivePreviewOptions(every_n_steps=3))
    assert [schedule.factory(step, lambda: "p") is None for step in (1, 2)] == [True, True]
    factory = schedule.factory(3, lambda: "p3")
    assert factory is not None
    # Nobody called the factory (no client asked): the period does not start again.
    assert schedule.factory(4, lambda: "p4") is not None
    assert schedule.factory(4, lambda: "p4")() == "p4"
    assert [schedule.factory(step, lambda: "p") is None for step in (5, 6, 7)] == [True, True, False]


def test_schedule_every_step_with_0_and_never_with_minus_1_or_disabled():
    every = PreviewSchedule(LivePreviewOptions(every_n_steps=0))
    assert all(every.factory(step, lambda: "p") is not None for step in (1, 1, 2))
    for options in (LivePreviewOptions(every_n_steps=-1), LivePreviewOptions(enabled=False, every_n_steps=0)):
        schedule = PreviewSchedule(options)
        assert all(schedule.factory(step, lambda: "p") is None for step in range(1, 40))


def constant_latents(values):
    """A batch of 2×2 latents, image i holding the 4 channel values values[i] everywhere."""
    return torch.tensor(values, dtype=torch.float32)[:, :, None, None].expand(-1, -1, 2, 2).clone()


def cheap_colour(channels):
    # Approx cheap by hand: RGB = Σ channel × its row of A1111's SD1 table, then [-1, 1] → [0, 255].
    table = [(0.298, 0.207, 0.208), (0.187, 0.286, 0.173), (-0.158, 0.189, 0.264), (-0.184, -0.271, -0.473)]
    rgb = [sum(c * row[k] for c, row in zip(channels, table)) for k in range(3)]
    return tuple(round(min(max((v + 1) / 2, 0), 1) * 255) for v in rgb)


def test_a_batch_is_shown_as_a_grid_of_every_image():
    values = [[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1.0]]
    image = preview_image(constant_latents(values), ModelFamily.SD1, LivePreviewOptions())
    assert image.size == (4, 4)  # 4 images: round(sqrt(4)) = 2 rows of 2, each 2×2
    cells = [image.getpixel((x, y)) for y in (0, 2) for x in (0, 2)]  # left to right, top to bottom
    assert cells == [cheap_colour(v) for v in values]


def test_without_the_grid_setting_only_the_first_image_is_shown():
    values = [[0.5, 0, 0, 0], [0, 0, 0, 1.0]]
    image = preview_image(constant_latents(values), ModelFamily.SD1, LivePreviewOptions(grid=False))
    assert image.size == (2, 2) and image.getpixel((1, 1)) == cheap_colour(values[0])


def test_grid_rows_follow_the_n_rows_setting():
    latents = constant_latents([[0.0] * 4] * 4)
    assert preview_image(latents, ModelFamily.SD1, LivePreviewOptions(n_rows=1)).size == (8, 2)
    assert preview_image(latents, ModelFamily.SD1, LivePreviewOptions(n_rows=4)).size == (2, 8)


def test_full_decodes_with_the_vae_and_the_other_methods_are_approx_cheap():
    latents = constant_latents([[1.0, 0, 0, 0], [0, 1.0, 0, 0]])
    seen = []

    def decode(batch):
        seen.append(batch.shape[0])
        return torch.full((batch.shape[0], 3, 16, 16), 0.5)

    full = preview_image(latents, ModelFamily.SD1, LivePreviewOptions(method="Full"), decode=decode)
    assert seen == [2] and full.size == (32, 16) and full.getpixel((20, 3)) == (128, 128, 128)
    expected = np.asarray(preview_image(latents, ModelFamily.SD1, LivePreviewOptions(method="Approx cheap")))
    for method in ("Approx NN", "TAESD"):
        image = preview_image(latents, ModelFamily.SD1, LivePreviewOptions(method=method), decode=decode)
        assert np.array_equal(np.asarray(image), expected), method
    assert seen == [2]  # the VAE ran for "Full" only


def test_sdxl_latents_use_sdxl_colours():
    latents = constant_latents([[1.0, 0, 0, 0]])
    assert not torch.equal(approx_cheap(latents, ModelFamily.SDXL), approx_cheap(latents, ModelFamily.SD1))


def test_engine_previews_every_n_steps_of_the_whole_job(sd1):
    previews = run_with(sd1, steps=4, every_n_steps=2)
    assert [step for step, _ in previews] == [2, 4]
    assert [step for step, _ in run_with(sd1, steps=4, every_n_steps=0)] == [1, 2, 3, 4]
    assert run_with(sd1, steps=4, every_n_steps=10) == []  # A1111's default: none in a 4-step job
    assert run_with(sd1, steps=4, enabled=False, every_n_steps=0) == []


def test_engine_preview_of_a_batch_is_a_grid_of_the_batch(sd1):
    (_, grid), = run_with(sd1, steps=1, batch_size=3, every_n_steps=1)
    assert grid.size == (2 * LATENT, 2 * LATENT)  # round(sqrt(3)) = 2 rows, so 2 columns
    (_, single), = run_with(sd1, steps=1, batch_size=3, every_n_steps=1, grid=False)
    assert single.size == (LATENT, LATENT)
    # The first cell of the grid is the first image's own preview.
    assert np.array_equal(np.asarray(grid)[:LATENT, :LATENT], np.asarray(single))


def test_engine_full_preview_is_image_sized(sd1):
    (_, full), = run_with(sd1, steps=1, batch_size=2, every_n_steps=1, method="Full")
    assert full.size == (2 * 64, 64)


def test_per_request_override_reaches_the_previews():
    settings = Settings({}).with_overrides({"show_progress_every_n_steps": 0, "show_progress_grid": False})
    options = EngineSettings.from_settings(settings).live_preview
    assert dataclasses.astuple(options)[:4] == (True, 0, "Approx NN", False)


def last_prediction(model, monkeypatch, content, sampler="Euler", **fields):
    """The latents the last preview of a 3-step job is made from, shown by `content`."""
    from modules.generation import engine

    monkeypatch.setattr(engine, "_preview", lambda run, latents: latents.clone())
    previews = run_with(model, steps=3, every_n_steps=0, content=content,
                        request_fields={"sampler_name": sampler, "negative_prompt": "blurry", **fields})
    return previews[-1][1]


@pytest.mark.parametrize("sampler", ["Euler", "DDIM"])  # x0 from the UNet, and from eps (DDIM)
def test_preview_subject_prompt_negative_or_combined(sd1, monkeypatch, sampler):
    def latents(content, **fields):
        return last_prediction(sd1, monkeypatch, content, sampler, **fields)

    combined, prompt, negative = (latents(content, cfg_scale=7)
                                  for content in ("Combined", "Prompt", "Negative prompt"))
    # Guidance: combined = negative + 7·(prompt − negative), so combined − prompt = 6·(prompt − negative).
    torch.testing.assert_close(combined - prompt, 6 * (prompt - negative), atol=1e-4, rtol=1e-3)
    assert (prompt - negative).abs().max() > 1e-3  # the two predictions differ
    # CFG 1: the combined result is the prompt's own prediction.
    torch.testing.assert_close(latents("Combined", cfg_scale=1), latents("Prompt", cfg_scale=1), atol=1e-4, rtol=1e-3)


def test_instruct_pix2pix_previews_the_part_asked_for(tmp_path, monkeypatch):
    """Image CFG evaluates (prompt, image), (negative, image), (negative, no image): "Prompt" shows
    the first group's prediction, "Negative prompt" the third's (A1111's rows for the uncond)."""
    from modules.generation import engine
    from modules.generation.cfg_step import CFGHooks
    from modules.generation.engine import GenerationHooks
    from modules.generation.requests import Img2ImgRequest
    from PIL import Image

    model = load_checkpoint(write_checkpoint(tmp_path / "p2p.safetensors", "sd1-pix2pix", dtype=torch.float32))

    class Outputs(CFGHooks):
        def __init__(self):
            self.last = None

        def after_unet(self, step, out):
            self.last = out.clone()

    class Hooks(GenerationHooks):
        def __init__(self):
            self.outputs = Outputs()

        def cfg_hooks(self, plan, total_steps):
            return self.outputs

    monkeypatch.setattr(engine, "_preview", lambda run, latents: latents.clone())
    picture = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    for content, group in (("Prompt", 0), ("Negative prompt", 2)):
        control, hooks = AskingControl(), Hooks()
        request = Img2ImgRequest(init_images=[picture], width=64, height=64, steps=2, prompt="a cat", seed=7,
                                 sampler_name="Euler", image_cfg_scale=1.5)
        generate(model, request, EngineSettings(live_preview=LivePreviewOptions(every_n_steps=0, content=content)),
                 control, hooks=hooks)
        torch.testing.assert_close(control.previews[-1][1], hooks.outputs.last.chunk(3)[group])
