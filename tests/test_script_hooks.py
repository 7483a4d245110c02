"""The batch-level hooks of always-on scripts: before_hr, post_sample, postprocess_batch and
postprocess_batch_list are called in A1111's order with A1111's arguments, and what they change
reaches the result (images, seeds, infotexts); a change that cannot work is reported and ignored."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from PIL import ImageOps

from modules.generation.engine import GenerationRequest, generate
from modules.outputs.infotext import parse_generation_parameters
from tests.test_extensions import SMALL, DirectEngine, load, write_extension


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from modules.library.model_loader import load_checkpoint
    from modules.library.synthetic_checkpoints import write_checkpoint

    return load_checkpoint(write_checkpoint(tmp_path_factory.mktemp("hooks") / "tiny.safetensors", "sd1",
                                            dtype=torch.float32))


HOOKS_SCRIPT = '''
from modules import scripts

CALLS = []
MODE = {}  # set by the tests: what the hooks change


class Recorder(scripts.Script):
    def title(self):
        return "Hook recorder"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        return []

    def after_extra_networks_activate(self, p, *args, batch_number, prompts, seeds, subseeds, extra_network_data):
        if MODE.get("networks"):
            networks = {name: [params.items for params in value] for name, value in extra_network_data.items()}
            CALLS.append(("after_extra_networks_activate", batch_number, list(prompts), networks))

    def process_batch(self, p, *args, batch_number, prompts, seeds, subseeds):
        CALLS.append(("process_batch", batch_number))

    def process_before_every_sampling(self, p, *args, x, noise, c, uc, **kwargs):
        if MODE.get("sampling"):
            CALLS.append(("process_before_every_sampling", p.iteration, tuple(x.shape), noise is x))
            if p.iteration == 0 and "start" not in MODE:
                MODE["start"] = x.clone()
            elif p.iteration == 1 and x.shape == MODE["start"].shape:
                x.copy_(MODE["start"])  # batch 1's first pass starts from batch 0's noise

    def before_hr(self, p, *args):
        CALLS.append(("before_hr", p.iteration, p.enable_hr))

    def post_sample(self, p, ps, *args):
        assert isinstance(ps, scripts.PostSampleArgs)
        CALLS.append(("post_sample", p.iteration, tuple(ps.samples.shape)))
        if MODE.get("repeat_first_latents"):
            if p.iteration == 0:
                MODE["first"] = ps.samples.clone()
            else:
                ps.samples = MODE["first"]

    def postprocess_batch(self, p, *args, images, batch_number, **kwargs):
        CALLS.append(("postprocess_batch", batch_number, tuple(images.shape)))
        if MODE.get("invert"):
            images.mul_(-1).add_(1)

    def postprocess_batch_list(self, p, pp, *args, batch_number, **kwargs):
        assert isinstance(pp, scripts.PostprocessBatchListArgs)
        CALLS.append(("postprocess_batch_list", batch_number, len(pp.images)))
        if MODE.get("append_mirror"):
            pp.images.append(pp.images[0].flip(-1))
        if MODE.get("keep_first"):
            pp.images = pp.images[:1]
        if MODE.get("garbage"):
            pp.images = pp.images + ["not an image"]

    def postprocess_image(self, p, pp, *args):
        CALLS.append(("postprocess_image", p.batch_index))
'''


def run_with(data_dir, model, mode: dict, **fields):
    write_extension(data_dir / "extensions", "hooks", {"scripts/x.py": HOOKS_SCRIPT})
    runtime = load(data_dir)
    module = sys.modules["atelier_extensions.hooks.scripts.x"]
    module.MODE.update(mode)
    request = GenerationRequest(**{"prompt": "a cat", **SMALL, **fields})
    return runtime.scripts.generate(DirectEngine(model), request), module.CALLS, request


def pixels(image) -> np.ndarray:
    return np.asarray(image).astype(int)


def test_batch_hooks_in_order_and_their_edits_reach_the_images(tmp_path, model, caplog):
    result, calls, request = run_with(tmp_path, model, {"invert": True, "append_mirror": True}, batch_size=2, n_iter=2)
    assert "does not call yet" not in caplog.text
    per_batch = lambda n: [("process_batch", n), ("post_sample", n, (2, 4, 8, 8)),  # noqa: E731
                           ("postprocess_batch", n, (2, 3, 64, 64)), ("postprocess_batch_list", n, 2),
                           ("postprocess_image", 0), ("postprocess_image", 1), ("postprocess_image", 1)]
    assert calls == per_batch(0) + per_batch(1)

    plain = generate(model, request)
    assert len(result.images) == len(result.infotexts) == len(result.seeds) == len(result.prompts) == 6
    for got, original in ((0, 0), (1, 1), (3, 2), (4, 3)):  # postprocess_batch inverted the decoded batch
        assert np.abs(pixels(result.images[got]) - (255 - pixels(plain.images[original]))).max() <= 1
    for copy, source in ((2, 0), (5, 3)):  # postprocess_batch_list appended a mirrored copy of the first
        assert np.array_equal(np.asarray(result.images[copy]), np.asarray(ImageOps.mirror(result.images[source])))
    # The added image takes the batch's last seed and infotext; every image keeps one of each.
    s = plain.seeds
    assert result.seeds == [s[0], s[1], s[1], s[2], s[3], s[3]]
    assert [parse_generation_parameters(text)["Seed"] for text in result.infotexts] == [str(x) for x in result.seeds]
    assert result.warnings == []


def test_batch_list_may_drop_images(tmp_path, model):
    result, _, request = run_with(tmp_path, model, {"keep_first": True}, batch_size=2, n_iter=2)
    plain = generate(model, request)
    assert len(result.images) == len(result.infotexts) == 2
    assert result.seeds == [plain.seeds[0], plain.seeds[2]]
    for got, original in ((0, 0), (1, 2)):
        assert np.array_equal(np.asarray(result.images[got]), np.asarray(plain.images[original]))
        assert result.infotexts[got] == plain.infotexts[original]


def test_before_hr_once_per_batch_and_post_sample_replaces_latents(tmp_path, model):
    hires = dict(enable_hr=True, hr_scale=2.0, hr_upscaler="Latent", denoising_strength=0.5, hr_second_pass_steps=1)
    result, calls, request = run_with(tmp_path, model, {"repeat_first_latents": True}, n_iter=2, **hires)
    names = [call[0] for call in calls]
    assert names == ["process_batch", "before_hr", "post_sample", "postprocess_batch", "postprocess_batch_list",
                     "postprocess_image"] * 2
    assert [call for call in calls if call[0] == "before_hr"] == [("before_hr", 0, True), ("before_hr", 1, True)]
    assert ("post_sample", 1, (1, 4, 16, 16)) in calls  # the hires pass's latents
    plain = generate(model, request)
    assert not np.array_equal(np.asarray(plain.images[0]), np.asarray(plain.images[1]))
    # Batch 1 decoded batch 0's latents; seeds and infotexts stay batch 1's.
    assert np.array_equal(np.asarray(result.images[1]), np.asarray(plain.images[0]))
    assert np.array_equal(np.asarray(result.images[0]), np.asarray(plain.images[0]))
    assert result.infotexts == plain.infotexts


def test_networks_and_every_sampling_pass_reach_the_scripts(tmp_path, model):
    hires = dict(enable_hr=True, hr_scale=2.0, hr_upscaler="Latent", denoising_strength=0.5, hr_second_pass_steps=1)
    result, calls, request = run_with(tmp_path, model, {"networks": True, "sampling": True}, n_iter=2,
                                      **{**hires, "prompt": "a cat <hypernet:nowhere:0.5>"})
    names = [call[0] for call in calls]
    assert names == ["after_extra_networks_activate", "process_batch", "process_before_every_sampling",
                     "before_hr", "process_before_every_sampling", "post_sample", "postprocess_batch",
                     "postprocess_batch_list", "postprocess_image"] * 2
    assert calls[0] == ("after_extra_networks_activate", 0, ["a cat "], {"hypernet": [["nowhere", "0.5"]]})
    sampling = [call for call in calls if call[0] == "process_before_every_sampling"]
    assert sampling == [("process_before_every_sampling", n, shape, first)
                        for n in (0, 1) for shape, first in (((1, 4, 8, 8), True), ((1, 4, 16, 16), False))]
    # Euler is deterministic given its start: batch 1 started from batch 0's noise makes batch 0's
    # first pass; its hires pass draws batch 1's own noise, so compare without hires.
    plain_request = request.model_copy(update={"enable_hr": False})
    result, _, _ = run_with(tmp_path / "again", model, {"sampling": True}, n_iter=2, prompt="a cat")
    plain = generate(model, plain_request.model_copy(update={"prompt": "a cat"}))
    assert np.array_equal(np.asarray(result.images[1]), np.asarray(plain.images[0]))
    assert not np.array_equal(np.asarray(plain.images[1]), np.asarray(plain.images[0]))


def test_unusable_batch_list_is_reported_and_ignored(tmp_path, model):
    result, _, request = run_with(tmp_path, model, {"garbage": True}, batch_size=2)
    plain = generate(model, request)
    assert len(result.images) == 2
    for got, original in zip(result.images, plain.images):
        assert np.array_equal(np.asarray(got), np.asarray(original))
    [warning] = result.warnings
    assert "postprocess_batch_list" in warning and "pp.images[2]" in warning and "str" in warning


def test_script_facade_has_the_hook_argument_classes():
    from modules import scripts

    assert scripts.PostprocessBatchListArgs([1]).images == [1]
    assert scripts.PostSampleArgs("x").samples == "x"
    assert scripts.PostprocessImageArgs("i").image == "i"
