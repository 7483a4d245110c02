"""Merge methods on tiny hand-computed tensors, and block-weight mapping on real SD1/SDXL key sets."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

from modules.merging.blocks import (
    BLOCK_LAYOUTS,
    SD_PRESETS,
    block_names,
    block_of,
    block_weights_for,
    sd_preset,
)
from modules.merging.methods import (
    MERGE_METHODS,
    MergeOptions,
    MergeParams,
    dare_seed,
    get_method,
    merge_tensor,
    ties_merge_deltas,
)
from modules.library.synthetic_checkpoints import checkpoint_shapes

# The shared example: a=[1,2], b=[3,6], c=[1,1].
A = torch.tensor([1.0, 2.0])
B = torch.tensor([3.0, 6.0])
C = torch.tensor([1.0, 1.0])
OPTS = MergeOptions()


def merge(name: str, a, b=None, c=None, *, alpha=0.5, beta=0.0, options=OPTS, key="k") -> torch.Tensor:
    return merge_tensor(get_method(name), a, b, c, MergeParams(alpha, beta, options), key=key)


# ---------------------------------------------------------------- hand-computed values


@pytest.mark.parametrize(
    ("name", "alpha", "beta", "expected"),
    [
        ("No interpolation", 0.5, 0.0, [1.0, 2.0]),
        # [1·0.5 + 3·0.5, 2·0.5 + 6·0.5]
        ("Weighted sum", 0.5, 0.0, [2.0, 4.0]),
        ("Weighted sum", 0.25, 0.0, [1.5, 3.0]),
        # a + 0.5·(b − c) = [1 + 0.5·2, 2 + 0.5·5]
        ("Add difference", 0.5, 0.0, [2.0, 4.5]),
        # b−c=[2,5], |b−a|=[2,4], |b−c|=[2,5] → ratio [2/4, 4/9]; 1.8·0.5 = 0.9;
        # a + 0.9·[2·0.5, 5·4/9] = [1 + 0.9, 2 + 2]
        ("Train difference", 0.5, 0.0, [1.9, 4.0]),
        # a·(1−0.5−0.25) + b·0.5 + c·0.25 = [0.25+1.5+0.25, 0.5+3+0.25]
        ("Triple sum", 0.5, 0.25, [2.0, 3.75]),
        # ([2,4])·0.75 + c·0.25 = [1.5+0.25, 3+0.25]
        ("Sum twice", 0.5, 0.25, [1.75, 3.25]),
        # density 1, one task vector: plain add difference
        ("Add difference (TIES)", 0.5, 0.0, [2.0, 4.5]),
    ],
)
def test_methods_on_hand_computed_values(name, alpha, beta, expected):
    opts = MergeOptions(ties_density=1.0)
    out = merge(name, A, B, C, alpha=alpha, beta=beta, options=opts)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, torch.tensor(expected))


def test_train_difference_where_all_three_agree_is_a():
    # element 0: a=b=c → 0/0 ratio → 0; element 1: b=c → no delta
    a, b = torch.tensor([2.0, 5.0]), torch.tensor([2.0, 7.0])
    out = merge("Train difference", a, b, b.clone(), alpha=1.0)
    torch.testing.assert_close(out, torch.tensor([2.0, 5.0]))


def test_half_precision_inputs_compute_and_return_float32():
    out = merge("Weighted sum", A.half(), B.bfloat16(), alpha=0.5)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, torch.tensor([2.0, 4.0]))


# ---------------------------------------------------------------- SLERP


def test_slerp_endpoints_are_a_and_b():
    a, b = torch.tensor([1.0, 2.0, -1.0]), torch.tensor([0.5, -3.0, 2.0])
    torch.testing.assert_close(merge("SLERP", a, b, alpha=0.0), a)
    torch.testing.assert_close(merge("SLERP", a, b, alpha=1.0), b)


def test_slerp_hand_values():
    # Orthogonal unit vectors: the midpoint is at 45°.
    h = math.sqrt(0.5)
    torch.testing.assert_close(merge("SLERP", torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])), torch.tensor([h, h]))
    # |a|=2, |b|=4 at 90°; M=1/3 → 30° from a, norm 2 + (4−2)/3 = 8/3.
    out = merge("SLERP", torch.tensor([2.0, 0.0]), torch.tensor([0.0, 4.0]), alpha=1 / 3)
    r = 8 / 3
    torch.testing.assert_close(out, torch.tensor([r * math.cos(math.pi / 6), r * math.sin(math.pi / 6)]))


def test_slerp_norm_is_interpolated_linearly():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(64, generator=g), 3 * torch.randn(64, generator=g)
    for m in (0.1, 0.5, 0.9):
        out = merge("SLERP", a, b, alpha=m)
        expected_norm = ((1 - m) * a.norm() + m * b.norm()).item()
        assert torch.linalg.vector_norm(out).item() == pytest.approx(expected_norm, rel=1e-5)
    # Equal norms stay on the sphere, where a weighted sum would cut inside it.
    b_same = b / b.norm() * a.norm()
    assert merge("SLERP", a, b_same).norm().item() == pytest.approx(a.norm().item(), rel=1e-5)
    assert merge("Weighted sum", a, b_same).norm().item() < a.norm().item()


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ([1.0, 2.0], [2.0, 4.0]),  # parallel
        ([1.0, 2.0], [-1.0, -2.0]),  # opposite
        ([0.0, 0.0], [1.0, 3.0]),  # zero norm
        ([3.0], [5.0]),  # a scalar-like tensor is always parallel
    ],
)
def test_slerp_falls_back_to_weighted_sum(a, b):
    a, b = torch.tensor(a), torch.tensor(b)
    torch.testing.assert_close(merge("SLERP", a, b, alpha=0.3), merge("Weighted sum", a, b, alpha=0.3))


# ---------------------------------------------------------------- TIES


def test_ties_trims_to_the_largest_changes():
    a = torch.zeros(5)
    b = torch.tensor([4.0, -1.0, 3.0, -2.0, 0.5])
    # density 0.4 of 5 elements keeps 2: |4| and |3|.
    out = merge("Add difference (TIES)", a, b, torch.zeros(5), alpha=0.5, options=MergeOptions(ties_density=0.4))
    torch.testing.assert_close(out, torch.tensor([2.0, 0.0, 1.5, 0.0, 0.0]))


def test_ties_sign_election_and_disjoint_mean_with_two_task_vectors():
    d1 = torch.tensor([2.0, -3.0, 1.0, 5.0])
    d2 = torch.tensor([-1.0, -1.0, 4.0, -5.0])
    # sums [1, −4, 5, 0] elect [+, −, +, none]; means over agreeing values: [2, (−3−1)/2, (1+4)/2, 0]
    torch.testing.assert_close(ties_merge_deltas([d1, d2], density=1.0), torch.tensor([2.0, -2.0, 2.5, 0.0]))


def test_ties_keeps_at_least_one_element_of_small_tensors():
    out = merge("Add difference (TIES)", torch.zeros(1), torch.tensor([0.7]), torch.zeros(1), alpha=1.0)
    torch.testing.assert_close(out, torch.tensor([0.7]))


# ---------------------------------------------------------------- DARE


def test_dare_without_drops_is_add_difference():
    out = merge("Add difference (DARE)", A, B, C, options=MergeOptions(dare_drop_rate=0.0))
    torch.testing.assert_close(out, torch.tensor([2.0, 4.5]))


def test_dare_keeps_or_drops_each_element_and_rescales_survivors():
    a, b, c = torch.zeros(1000), torch.ones(1000), torch.zeros(1000)
    out = merge("Add difference (DARE)", a, b, c, alpha=0.5, options=MergeOptions(dare_drop_rate=0.75))
    # each element is either dropped (A) or 0.5·1/(1−0.75) = 2
    assert set(out.unique().tolist()) == {0.0, 2.0}


def test_dare_rescaling_preserves_the_expected_delta():
    n = 200_000
    out = merge("Add difference (DARE)", torch.zeros(n), torch.ones(n), torch.zeros(n), alpha=1.0,
                options=MergeOptions(dare_drop_rate=0.5, seed=3))
    # mean of n values 0 or 2: expectation 1, standard error 1/sqrt(n) ≈ 0.002
    assert out.mean().item() == pytest.approx(1.0, abs=0.02)
    assert (out == 0).float().mean().item() == pytest.approx(0.5, abs=0.01)


def test_dare_is_seeded_per_key_not_per_call_order():
    g = torch.Generator().manual_seed(1)
    tensors = {k: tuple(torch.randn(300, generator=g) for _ in range(3)) for k in ("k1", "k2")}
    opts = MergeOptions(seed=42, dare_drop_rate=0.5)

    def run(order):
        return {k: merge("Add difference (DARE)", *tensors[k], options=opts, key=k) for k in order}

    first, reversed_order = run(["k1", "k2"]), run(["k2", "k1"])
    for k in tensors:
        torch.testing.assert_close(first[k], reversed_order[k], rtol=0, atol=0)
    same_inputs = tensors["k1"]
    other_key = merge("Add difference (DARE)", *same_inputs, options=opts, key="k2")
    other_opts = MergeOptions(seed=43, dare_drop_rate=0.5)
    other_seed = merge("Add difference (DARE)", *same_inputs, options=other_opts, key="k1")
    assert not torch.equal(first["k1"], other_key)
    assert not torch.equal(first["k1"], other_seed)
    assert dare_seed(42, "k1") == dare_seed(42, "k1") != dare_seed(42, "k2")


# ---------------------------------------------------------------- validation and registry


@pytest.mark.parametrize("name", list(MERGE_METHODS))
def test_integer_tensors_are_rejected(name):
    ids = torch.arange(2, dtype=torch.int64)
    with pytest.raises(TypeError, match="position_ids"):
        merge(name, ids, ids, ids, key="cond_stage_model.transformer.text_model.embeddings.position_ids")
    with pytest.raises(TypeError, match="model A holds a torch.bool"):
        merge(name, torch.ones(2, dtype=torch.bool), B, C)


@pytest.mark.parametrize("name", list(MERGE_METHODS))
def test_missing_operands_are_named(name):
    method = get_method(name)
    if method.needs_b:
        with pytest.raises(ValueError, match="needs model B"):
            merge(name, A, None, C)
    if method.needs_c:
        with pytest.raises(ValueError, match="needs model C"):
            merge(name, A, B, None)
    if not method.needs_b and not method.needs_c:
        merge(name, A)


def test_shape_mismatch_names_the_key_and_shapes():
    with pytest.raises(ValueError, match=r"unet\.w: shapes differ: A \(2,\) vs B \(3,\)"):
        merge("Weighted sum", A, torch.ones(3), key="unet.w")


def test_registry_rows():
    expected = {
        "No interpolation": (False, False, False),
        "Weighted sum": (True, False, False),
        "Add difference": (True, True, False),
        "SLERP": (True, False, False),
        "Train difference": (True, True, False),
        "Add difference (TIES)": (True, True, False),
        "Add difference (DARE)": (True, True, False),
        "Triple sum": (True, True, True),
        "Sum twice": (True, True, True),
    }
    assert {m.name: (m.needs_b, m.needs_c, m.uses_beta) for m in MERGE_METHODS.values()} == expected
    for name, method in MERGE_METHODS.items():
        assert method.name == name and method.description
        assert method.fn.__doc__, f"{name} has no docstring naming its source"
    with pytest.raises(TypeError):
        MERGE_METHODS["x"] = MERGE_METHODS["SLERP"]  # type: ignore[index]


def test_unknown_method_lists_valid_names():
    with pytest.raises(ValueError, match=r"'Weighted sun'.*Did you mean 'Weighted sum'.*'No interpolation'"):
        get_method("Weighted sun")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ties_density": 0.0}, r"ties_density must be in \(0, 1\]"),
        ({"ties_density": 1.5}, r"ties_density must be in \(0, 1\]"),
        ({"dare_drop_rate": 1.0}, r"dare_drop_rate must be in \[0, 1\)"),
        ({"dare_drop_rate": -0.1}, r"dare_drop_rate must be in \[0, 1\)"),
        ({"dare_drop_rate": "0.5"}, "dare_drop_rate must be a number"),
        ({"seed": 1.5}, "seed must be an integer"),
        ({"seed": True}, "seed must be an integer"),
        ({"density": 0.5}, "unknown merge option.*'density'; valid options: seed, ties_density, dare_drop_rate"),
    ],
)
def test_options_are_validated(kwargs, message):
    # wrong types raise TypeError, wrong values ValueError
    with pytest.raises((TypeError, ValueError), match=message):
        MergeOptions.from_mapping(kwargs)


def test_options_from_mapping():
    assert MergeOptions.from_mapping({"seed": 7, "ties_density": 1}) == MergeOptions(seed=7, ties_density=1)
    assert MergeOptions.from_mapping({}) == MergeOptions()


# ---------------------------------------------------------------- block weights

# Keys per block, counted by hand from the LDM UNet layout: ResBlock 10 keys (+2 for a skip conv
# when channels change, always in output blocks); SpatialTransformer 6 + 20 per transformer block;
# down/upsample conv 2; input conv 2; `out.` 4; time_embed 4 and SDXL's label_emb 4 in BASE.
SD1_UNET_COUNTS = {
    "BASE": 4,
    "IN00": 2, "IN01": 36, "IN02": 36, "IN03": 2, "IN04": 38, "IN05": 36,
    "IN06": 2, "IN07": 38, "IN08": 36, "IN09": 2, "IN10": 10, "IN11": 10,
    "M00": 46,
    "OUT00": 12, "OUT01": 12, "OUT02": 14, "OUT03": 38, "OUT04": 38, "OUT05": 40,
    "OUT06": 38, "OUT07": 38, "OUT08": 40, "OUT09": 38, "OUT10": 38, "OUT11": 42,
}
# SDXL: no attention at the first level, transformer depth 2 at the second and 10 at the third.
SDXL_UNET_COUNTS = {
    "BASE": 8,
    "IN00": 2, "IN01": 10, "IN02": 10, "IN03": 2, "IN04": 58, "IN05": 56,
    "IN06": 2, "IN07": 218, "IN08": 216,
    "M00": 226,
    "OUT00": 218, "OUT01": 218, "OUT02": 220, "OUT03": 58, "OUT04": 58, "OUT05": 60,
    "OUT06": 12, "OUT07": 12, "OUT08": 16,
}


@pytest.mark.parametrize(("family", "expected"), [("sd1", SD1_UNET_COUNTS), ("sdxl", SDXL_UNET_COUNTS)])
def test_every_unet_key_maps_to_one_block(family, expected):
    keys = checkpoint_shapes(family, "full")
    unet = [k for k in keys if k.startswith("model.diffusion_model.")]
    counts = Counter(block_of(family, k) for k in unet)
    assert counts == expected
    assert sum(counts.values()) == len(unet)


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl", "sdxl-refiner"])
def test_every_block_is_used_and_other_keys_go_to_base_or_none(family):
    keys = checkpoint_shapes(family, "full")
    blocks = {k: block_of(family, k) for k in keys}
    assert set(blocks.values()) - {None} == set(block_names(family))
    for k, block in blocks.items():
        if k.startswith(("cond_stage_model.", "conditioner.embedders.", "first_stage_model.")):
            assert block == "BASE", k
        elif not k.startswith("model.diffusion_model."):
            assert block is None, k  # noise-schedule buffers, model_ema scalars


@pytest.mark.parametrize(
    ("family", "key", "block"),
    [
        ("sd1", "model.diffusion_model.time_embed.0.weight", "BASE"),
        ("sd1", "model.diffusion_model.input_blocks.0.0.weight", "IN00"),
        ("sd1", "model.diffusion_model.input_blocks.11.0.out_layers.3.bias", "IN11"),
        ("sd1", "model.diffusion_model.middle_block.1.proj_in.weight", "M00"),
        ("sd1", "model.diffusion_model.output_blocks.5.2.conv.weight", "OUT05"),
        ("sd1", "model.diffusion_model.out.2.weight", "OUT11"),
        ("sd2", "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight", "BASE"),
        ("sdxl", "model.diffusion_model.label_emb.0.0.weight", "BASE"),
        ("sdxl", "model.diffusion_model.out.0.bias", "OUT08"),
        ("sdxl", "conditioner.embedders.1.model.ln_final.weight", "BASE"),
        ("sdxl", "first_stage_model.decoder.conv_out.weight", "BASE"),
        ("sd1", "alphas_cumprod", None),
        ("sd1", "model_ema.decay", None),
    ],
)
def test_block_of_named_keys(family, key, block):
    assert block_of(family, key) == block


def test_unet_key_outside_the_family_layout_raises():
    with pytest.raises(ValueError, match=r"in no sdxl UNet block; blocks are BASE, IN00"):
        block_of("sdxl", "model.diffusion_model.input_blocks.11.0.emb_layers.1.weight")
    with pytest.raises(ValueError, match="known families: sd1, sd2, sdxl, sdxl-refiner"):
        block_of("flux", "model.diffusion_model.x")


def test_block_weights_for_returns_each_blocks_weight():
    weights = [i / 100 for i in range(26)]
    weight_of = block_weights_for("sd1", weights)
    assert weight_of("model.diffusion_model.time_embed.2.bias") == 0.0
    assert weight_of("model.diffusion_model.input_blocks.4.1.proj_out.weight") == 0.05
    assert weight_of("model.diffusion_model.middle_block.2.skip_connection.weight") == pytest.approx(0.13)
    assert weight_of("model.diffusion_model.out.0.weight") == 0.25
    assert weight_of("cond_stage_model.transformer.text_model.final_layer_norm.weight") == 0.0
    assert weight_of("betas") is None


@pytest.mark.parametrize(("family", "count"), [("sd1", 26), ("sd2", 26), ("sdxl", 20)])
def test_wrong_weight_count_names_expected_count_and_blocks(family, count):
    assert len(BLOCK_LAYOUTS[family]) == count
    for wrong in (count - 1, count + 1, 25):
        if wrong == count:
            continue
        with pytest.raises(ValueError, match=rf"needs {count} weights, got {wrong}; in this order: BASE, IN00, IN01"):
            block_weights_for(family, [0.5] * wrong)


def test_presets():
    assert all(len(w) == 26 for w in SD_PRESETS.values())
    grad_v = sd_preset("GRAD_V")
    assert grad_v[:3] == (0.0, 1.0, pytest.approx(11 / 12))  # BASE, IN00, IN01
    assert grad_v[13] == 0.0 and grad_v[-1] == 1.0  # M00, OUT11
    assert sd_preset("GRAD_A")[13] == 1.0
    assert sd_preset("FLAT_25") == (0.0,) + (0.25,) * 25
    assert sd_preset("WRAP08") == (0.0,) + (1.0,) * 4 + (0.0,) * 17 + (1.0,) * 4
    # ALL_B takes every network key from B, time_embed included.
    weight_of = block_weights_for("sd1", sd_preset("ALL_B"))
    assert {weight_of(k) for k in checkpoint_shapes("sd1", "full") if weight_of(k) is not None} == {1.0}
    with pytest.raises(ValueError, match="presets: GRAD_V, GRAD_A"):
        sd_preset("GRAD_X")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.5, 0.7, 1.0, -0.25, 1.75])
def test_same_dtype_kernels_equal_float32_maths_then_one_rounding(dtype, alpha):
    """A method's same-dtype kernel is only a shortcut: bit-identical to `fn` then a cast."""
    generator = torch.Generator().manual_seed(7)
    a, b, c = (torch.randn(100_003, generator=generator).mul(scale).to(dtype) for scale in (0.05, 2.0, 0.5))
    options = MergeOptions()
    with_kernel = [m for m in MERGE_METHODS.values() if m.same_dtype_kernel is not None]
    assert with_kernel  # Weighted sum at least
    for method in with_kernel:
        assert method.elementwise
        params = MergeParams(alpha, 0.2, options)
        expected = method.fn(a, b, c, params=params, key="k").to(dtype)
        out = torch.empty_like(a)
        method.same_dtype_kernel(a, b, c, params, out)
        assert torch.equal(out.view(torch.int16), expected.view(torch.int16)), method.name


def test_elementwise_methods_merge_slices_as_they_merge_wholes():
    generator = torch.Generator().manual_seed(3)
    a, b, c = (torch.randn(1000, generator=generator) for _ in range(3))
    options = MergeOptions()
    for method in MERGE_METHODS.values():
        params = MergeParams(0.4, 0.3, options)
        whole = method.fn(a, b, c, params=params, key="k")
        parts = torch.cat([method.fn(a[i:i + 77], b[i:i + 77], c[i:i + 77], params=params, key="k")
                           for i in range(0, 1000, 77)])
        if method.elementwise:
            assert torch.equal(whole, parts), method.name
