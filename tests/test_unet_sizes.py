"""Sizes that are not multiples of 64: the UNet's upsamplers double, convolve, then cut to the skip
connection's size (A1111's LDM order), instead of diffusers' resize-then-convolve."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.models.upsampling import Upsample2D

from modules.library.model_loader import load_checkpoint
from modules.generation.engine import GenerationRequest, generate
from modules.generation.sampling.unet_sizes import a1111_upsample_sizes
from modules.library.synthetic_checkpoints import write_checkpoint


def upsampler() -> Upsample2D:
    torch.manual_seed(0)
    module = Upsample2D(4, use_conv=True)
    torch.nn.init.normal_(module.conv.weight)
    return module


def test_odd_size_is_doubled_convolved_then_cut():
    """A 2x3 map asked up to 3x5: A1111 doubles it to 4x6, convolves, and nearest-resizes 4x6 to 3x5,
    which keeps rows 0-2 and columns 0-4 (index floor(i * 4/3) and floor(j * 6/5))."""
    module = upsampler()
    x = torch.randn(1, 4, 2, 3)
    with torch.no_grad():
        expected = module.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))[:, :, :3, :5]
        plain = module(x, (3, 5))
        with a1111_upsample_sizes(module):
            got = module(x, (3, 5))
        after = module(x, (3, 5))
    assert got.shape == (1, 4, 3, 5)
    assert torch.allclose(got, expected, atol=1e-6)
    assert not torch.allclose(plain, expected, atol=1e-3)  # diffusers' order differs at the border
    assert torch.equal(after, plain) and not module._forward_hooks and not module._forward_pre_hooks


def test_even_sizes_are_unchanged():
    module = upsampler()
    x = torch.randn(1, 4, 2, 3)
    with torch.no_grad():
        plain, doubled = module(x, (4, 6)), module(x)
        with a1111_upsample_sizes(module):
            assert torch.equal(module(x, (4, 6)), plain)
            assert torch.equal(module(x), doubled)


def test_generation_at_96x64_feeds_the_cut_upsample_to_the_next_block(tmp_path):
    """96 px = latent 12 → 6 → 3 → 2: the way up doubles 2 to 4 and must cut to 3. What the next
    up block receives is the A1111 result computed from what the upsampler was given."""
    model = load_checkpoint(write_checkpoint(tmp_path / "tiny.safetensors", "sd1", dtype=torch.float32))
    up = model.unet.up_blocks[0].upsamplers[0]  # 2 wide → the 3-wide skip connection
    given, received = [], []
    handles = [up.register_forward_pre_hook(lambda m, args: given.append(args[0].clone())),
               model.unet.up_blocks[1].register_forward_pre_hook(
                   lambda m, args, kwargs: received.append(kwargs["hidden_states"].clone()), with_kwargs=True)]
    try:
        result = generate(model, GenerationRequest(prompt="a cat", seed=3, steps=1, width=96, height=64,
                                                   sampler_name="Euler"))
    finally:
        for handle in handles:
            handle.remove()
    assert result.images[0].size == (96, 64)
    assert given and len(given) == len(received)
    for x, fed in zip(given, received):
        assert x.shape[-2:] == (1, 2) and fed.shape[-2:] == (2, 3)
        with torch.no_grad():
            expected = up.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))[..., :2, :3]
        assert torch.allclose(fed, expected, atol=1e-5)
    assert np.asarray(result.images[0]).std() > 0
