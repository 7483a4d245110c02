"""A1111's CFG callbacks change the sampling: `on_cfg_denoiser` may replace the UNet's inputs,
`on_cfg_denoised` may edit its predictions in place, `on_cfg_after_cfg` may replace the combined
result. The tensors are in A1111's row layout; a replacement of the wrong shape is reported with the
extension's name and ignored. Each change is checked against the same change made another way
(a prompt equal to its negative prompt gives the image CFG gives when cond and uncond agree)."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from modules.generation.conditioning import ComposableScheduledPromptConditioning, MulticondLearnedConditioning
from modules.generation.cfg_step import CFGHooks
from modules.generation.engine import CFGDenoiser, GenerationRequest
from tests.test_cfg_denoiser import schedule, tokens
from tests.test_extensions import SMALL, DirectEngine, load, write_extension

CFG_SCRIPT = '''
from modules import script_callbacks

MODE = {}  # set by the tests
SEEN = []


def denoiser(params):
    SEEN.append(("denoiser", tuple(params.x.shape), tuple(params.sigma.shape), tuple(params.text_cond.shape),
                 tuple(params.text_uncond.shape), params.sampling_step, params.total_sampling_steps,
                 params.denoiser.p is not None))
    if MODE.get("cond_is_uncond"):
        params.text_cond = params.text_uncond
    if MODE.get("bad_x"):
        params.x = params.x[:1]
    if MODE.get("bad_text"):
        params.text_cond = params.text_cond[..., :3]


def denoised(params):
    SEEN.append(("denoised", tuple(params.x.shape)))
    if MODE.get("cond_pred_is_uncond_pred"):
        half = params.x.shape[0] // 2
        params.x[:half] = params.x[half:]  # in place, as A1111 requires
    if MODE.get("replace_denoised"):
        params.x = params.x * 0  # not in place: ignored, as in A1111


def after_cfg(params):
    SEEN.append(("after_cfg", tuple(params.x.shape)))
    if MODE.get("scale"):
        params.x = params.x * MODE["scale"]
    if MODE.get("x_none"):
        params.x = None


script_callbacks.on_cfg_denoiser(denoiser)
script_callbacks.on_cfg_denoised(denoised)
script_callbacks.on_cfg_after_cfg(after_cfg)
'''


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from modules.library.model_loader import load_checkpoint
    from modules.library.synthetic_checkpoints import write_checkpoint

    return load_checkpoint(write_checkpoint(tmp_path_factory.mktemp("cfg") / "tiny.safetensors", "sd1",
                                            dtype=torch.float32))


def run(data_dir, model, mode: dict | None, **fields):
    """One generation; with `mode` the sample CFG extension is installed and told what to change."""
    if mode is not None:
        write_extension(data_dir / "extensions", "cfgcb", {"scripts/cfgcb.py": CFG_SCRIPT})
    runtime = load(data_dir)
    if mode is not None:
        module = next(module for name, module in sys.modules.items()  # the module of the latest load
                      if name.startswith("atelier_extensions.cfgcb.") and name.endswith(".cfgcb"))
        module.MODE.clear()
        module.MODE.update(mode)
        module.SEEN.clear()
    request = GenerationRequest(**{"prompt": "a red cat", "negative_prompt": "blurry", "cfg_scale": 9.0,
                                   **SMALL, **fields})
    result = runtime.scripts.generate(DirectEngine(model), request)
    return result, (module.SEEN if mode is not None else None)


def pixels(result) -> np.ndarray:
    return np.asarray(result.images[0]).astype(int)


def test_callbacks_see_a1111s_rows_and_are_called_in_order(tmp_path, model):
    """Two images with two AND parts each: 4 cond rows, then 2 uncond rows."""
    result, seen = run(tmp_path, model, {}, prompt="a red cat AND a dog", batch_size=2)
    assert not result.warnings
    assert seen[:3] == [("denoiser", (6, 4, 8, 8), (6,), (4, 77, 64), (2, 77, 64), 0, 2, True),
                        ("denoised", (6, 4, 8, 8)), ("after_cfg", (2, 4, 8, 8))]
    assert [entry[0] for entry in seen] == ["denoiser", "denoised", "after_cfg"] * 2
    assert seen[3][5] == 1  # the second evaluation


def test_no_callback_means_no_cfg_hooks(tmp_path, model):
    from modules.extension_host.scripts import ScriptHooks

    runtime = load(tmp_path)
    hooks = ScriptHooks.__new__(ScriptHooks)
    hooks.callbacks = runtime.scripts.callbacks
    assert hooks.cfg_hooks(None, 2) is None


def test_replacing_text_cond_changes_the_image_as_an_equal_negative_would(tmp_path, model):
    plain, _ = run(tmp_path / "a", model, None)
    swapped, _ = run(tmp_path / "b", model, {"cond_is_uncond": True})
    # The same change made another way: prompt = negative prompt, no extension.
    same_prompts, _ = run(tmp_path / "c", model, None, prompt="blurry")
    assert not swapped.warnings
    assert np.abs(pixels(plain) - pixels(swapped)).max() > 0
    assert np.array_equal(pixels(swapped), pixels(same_prompts))


def test_in_place_edit_after_the_unet_counts_and_replacing_does_not(tmp_path, model):
    same_prompts, _ = run(tmp_path / "a", model, None, prompt="blurry")
    edited, _ = run(tmp_path / "b", model, {"cond_pred_is_uncond_pred": True})
    assert np.array_equal(pixels(edited), pixels(same_prompts))
    plain, _ = run(tmp_path / "c", model, None)
    replaced, _ = run(tmp_path / "d", model, {"replace_denoised": True})
    assert np.array_equal(pixels(replaced), pixels(plain))


def test_after_cfg_replacement_reaches_the_image(tmp_path, model):
    plain, _ = run(tmp_path / "a", model, None)
    scaled, _ = run(tmp_path / "b", model, {"scale": 0.5})
    unchanged, _ = run(tmp_path / "c", model, {"scale": 1.0})
    assert np.abs(pixels(plain) - pixels(scaled)).max() > 10
    assert np.array_equal(pixels(unchanged), pixels(plain))


@pytest.mark.parametrize(("mode", "words"), [
    ({"bad_x": True}, "x must keep the shape (2, 4, 8, 8), got (1, 4, 8, 8)"),
    ({"bad_text": True}, "text_cond must keep the shape (rows=1, tokens, width=64)"),
    ({"x_none": True}, "x must be a floating-point tensor"),
])
def test_wrong_replacement_is_reported_with_the_extension_and_ignored(tmp_path, model, mode, words, caplog):
    plain, _ = run(tmp_path / "a", model, None)
    bad, seen = run(tmp_path / "b", model, mode)
    assert len(seen) == 6  # both evaluations ran to the end
    assert np.array_equal(pixels(bad), pixels(plain))
    assert len(bad.warnings) == 1, bad.warnings
    assert "Extension cfgcb" in bad.warnings[0] and words in bad.warnings[0] and "ignored" in bad.warnings[0]


class Recorder(CFGHooks):
    def __init__(self, change=None):
        self.steps, self.change = [], change

    def before_unet(self, step):
        self.steps.append(step)
        if self.change:
            self.change(step)


def test_sdxl_contexts_are_dicts_and_their_replacement_reaches_the_unet():
    seen = []

    def inner(x, sigma, context, added):
        seen.append((context.flatten().tolist(), added["text_embeds"].flatten().tolist()))
        return x

    cond = MulticondLearnedConditioning((1,), ((ComposableScheduledPromptConditioning(
        schedule(tokens(1, 2), torch.tensor([[7.0]]))),),))
    uncond = [schedule(tokens(5, 6), torch.tensor([[8.0]]))]

    def swap(step):
        assert set(step.text_cond) == {"crossattn", "vector"}
        step.text_cond = step.text_uncond

    hooks = Recorder(swap)
    CFGDenoiser(inner, cond, uncond, 3.0, sdxl_vector=torch.zeros(1, 6), cfg_hooks=hooks)(
        torch.zeros(1, 1, 1, 1), torch.ones(1))
    assert seen == [([5, 6, 5, 6], [8.0, 8.0])]
