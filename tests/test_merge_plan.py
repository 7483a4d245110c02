"""The merge plan: decided once per merge, then read by every key's stage (`merger.plan_merge`)."""

from __future__ import annotations

import dataclasses

import pytest
import safetensors.torch
import torch

from modules.library.checkpoints import CheckpointRegistry
from modules.library.hashes import HashCache
from modules.library.synthetic_checkpoints import write_checkpoint
from modules.merging import merger
from modules.merging.blocks import BLOCK_LAYOUTS
from modules.merging.merger import MergeRequest, Route, merge_checkpoints

# Keys of the tiny synthetic checkpoints and the block each belongs to, written out by hand from the
# rules in modules/merging/blocks.py's docstring (not computed by the code under test).
SD1_BLOCKS = {
    "cond_stage_model.transformer.text_model.encoder.layers.0.self_attn.k_proj.weight": "BASE",
    "first_stage_model.decoder.conv_in.weight": "BASE",
    "model.diffusion_model.time_embed.0.weight": "BASE",
    "model.diffusion_model.input_blocks.0.0.weight": "IN00",
    "model.diffusion_model.input_blocks.3.0.op.weight": "IN03",
    "model.diffusion_model.input_blocks.11.0.in_layers.0.weight": "IN11",
    "model.diffusion_model.middle_block.0.in_layers.0.weight": "M00",
    "model.diffusion_model.output_blocks.0.0.in_layers.0.weight": "OUT00",
    "model.diffusion_model.output_blocks.7.0.in_layers.0.weight": "OUT07",
    "model.diffusion_model.out.0.weight": "OUT11",
    "model_ema.decay": None,  # in no block: the plain multiplier
}
SDXL_BLOCKS = {
    "conditioner.embedders.0.transformer.text_model.encoder.layers.0.self_attn.k_proj.weight": "BASE",
    "model.diffusion_model.label_emb.0.0.weight": "BASE",
    "model.diffusion_model.input_blocks.8.0.in_layers.0.weight": "IN08",
    "model.diffusion_model.middle_block.0.in_layers.0.weight": "M00",
    "model.diffusion_model.output_blocks.4.0.in_layers.0.weight": "OUT04",
    "model.diffusion_model.out.0.weight": "OUT08",
}
MULTIPLIER = 0.9


@pytest.fixture
def planned(tmp_path, monkeypatch):
    """Run a merge through `merge_checkpoints` and keep every plan it builds."""
    plans = []
    real_plan_merge = merger.plan_merge

    def recording_plan_merge(*args, **kwargs):
        plan = real_plan_merge(*args, **kwargs)
        plans.append(plan)
        return plan

    monkeypatch.setattr(merger, "plan_merge", recording_plan_merge)

    def merge(family: str, dtype: torch.dtype, **fields):
        folder = tmp_path / family
        folder.mkdir()
        for seed, name in enumerate(("a", "b")):
            write_checkpoint(folder / f"{name}.safetensors", family, dtype=dtype, seed=seed)
        registry = CheckpointRegistry([folder], HashCache(tmp_path / f"{family}.json"))
        registry.refresh()
        reports = []
        control = type("Control", (), {"interrupted": False,
                                       "report": lambda self, step, total: reports.append((step, total))})()
        result = merge_checkpoints(MergeRequest(primary_model_name="a", secondary_model_name="b", **fields),
                                   registry, folder, control=control)
        tensors = {n: safetensors.torch.load_file(str(folder / f"{n}.safetensors")) for n in "ab"}
        return result, tensors, reports

    return plans, merge


@pytest.mark.parametrize("family, dtype, table", [("sd1", torch.float32, SD1_BLOCKS),
                                                  ("sdxl", torch.float16, SDXL_BLOCKS)])
def test_block_weights_give_each_key_its_blocks_weight(planned, family, dtype, table):
    plans, merge = planned
    layout = BLOCK_LAYOUTS[family]
    weights = tuple((i + 1) / 64 for i in range(len(layout)))  # every block a different weight
    result, tensors, _ = merge(family, dtype, multiplier=MULTIPLIER, block_weights=weights)
    (plan,) = plans
    out = safetensors.torch.load_file(str(result.path))
    tolerance = 2e-3 if dtype == torch.float16 else 1e-6
    for key, block in table.items():
        expected = MULTIPLIER if block is None else weights[layout.index(block)]
        assert plan.params_for(key).alpha == expected, key
        a, b = tensors["a"][key].float(), tensors["b"][key].float()
        assert torch.allclose(out[key].float(), a + (b - a) * expected, atol=tolerance), key


def test_the_plan_is_built_once_and_every_key_is_written_from_it(planned):
    plans, merge = planned
    result, tensors, reports = merge("sd1", torch.float32, multiplier=0.3, discard_weights=r"^first_stage_model\.")
    assert len(plans) == 1  # not once per key
    plan = plans[0]
    names = [planned_key.name for planned_key in plan.keys]
    out = safetensors.torch.load_file(str(result.path))
    # The plan's keys are the output, in A's order, with the discarded keys left out.
    assert names == list(out) == [k for k in tensors["a"] if not k.startswith("first_stage_model.")]
    assert reports == [(i + 1, len(names)) for i in range(len(names))]
    routes = {k.name: k.route for k in plan.keys}
    assert routes["cond_stage_model.transformer.text_model.embeddings.position_ids"] is Route.COPY  # integers
    assert routes["alphas_cumprod"] is Route.COPY  # no "model" in the name (A1111)
    assert routes["model.diffusion_model.out.0.weight"] is Route.BLOCKS  # Weighted sum is elementwise
    # Without block weights every key is merged with the same numbers.
    assert plan.params_for("model.diffusion_model.out.0.weight") is plan.params_for("model_ema.decay")
    assert plan.params.alpha == 0.3
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.params = plan.params  # type: ignore[misc]
