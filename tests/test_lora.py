"""LoRA: A1111 tag parsing, discovery, kohya conversion, attaching through PEFT and restoring (`modules/lora.py`).

The LoRA files are written here in kohya's layout for the tiny SD1/SDXL models, with key names derived
from the loaded models' own module names (and SDXL's sgm block names for a few layers), random
down/up weights and per-layer alphas.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from modules.library.hashes import HashCache, addnet_hash_safetensors
from modules.networks.lora import (
    IncompatibleLoraError,
    LoraError,
    LoraNotFoundError,
    LoraRegistry,
    LoraRequest,
    UnsupportedLoraError,
    apply_loras,
    lora_requests_from_params,
)
from modules.library.model_loader import load_checkpoint
from modules.library.safetensors_io import save_file
from modules.library.synthetic_checkpoints import write_checkpoint

RANK = 4


@dataclass
class Params:
    """Stands in for `modules.networks.syntax.ExtraNetworkParams` (duck-typed)."""

    positional: list[str]
    named: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, text: str) -> Params:
        items = text.split(":")
        return cls([i for i in items if "=" not in i], dict(i.split("=", 1) for i in items if "=" in i))


# --- building kohya files -------------------------------------------------------------------------


def _is_unet_target(name: str, module: torch.nn.Module) -> bool:
    # kohya's default LoRA targets: the linear (and SD1's 1x1 conv) layers inside the transformer blocks.
    return ".attentions." in name and isinstance(module, (torch.nn.Linear, torch.nn.Conv2d))


def _lora_pair(module: torch.nn.Module, rank: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(module, torch.nn.Linear):
        return torch.randn(rank, module.in_features, generator=gen), torch.randn(module.out_features, rank, generator=gen)
    kh, kw = module.kernel_size
    return (torch.randn(rank, module.in_channels, kh, kw, generator=gen) * 0.3,
            torch.randn(module.out_channels, rank, 1, 1, generator=gen) * 0.3)


def kohya_lora(model, *, seed: int = 0, unet: bool = True, te: bool = True, conv: bool = False,
               rank: int = RANK, extra_unet_modules: dict[str, str] | None = None) -> dict[str, torch.Tensor]:
    """A kohya LoRA for `model`, alphas varying by layer (and ranks too, every fifth layer)."""
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}

    def add(key: str, module: torch.nn.Module, index: int) -> None:
        r = rank + 2 if index % 5 == 4 else rank
        down, up = _lora_pair(module, r, gen)
        out[f"{key}.lora_down.weight"] = down * 0.2
        out[f"{key}.lora_up.weight"] = up * 0.2
        if index % 7 != 3:  # some layers without alpha: kohya's scale 1
            out[f"{key}.alpha"] = torch.tensor(float(1 + index % 3))

    index = 0
    if unet:
        for name, module in model.unet.named_modules():
            if _is_unet_target(name, module) or (conv and name.endswith("resnets.0.conv1")):
                add("lora_unet_" + name.replace(".", "_"), module, index)
                index += 1
    for kohya_name, module_name in (extra_unet_modules or {}).items():
        add(kohya_name, model.unet.get_submodule(module_name), index)
        index += 1
    if te:
        prefixes = ["lora_te_"] if len(model.text_encoders) == 1 else ["lora_te1_", "lora_te2_"]
        for prefix, encoder in zip(prefixes, model.text_encoders):
            for name, module in encoder.named_modules():
                if isinstance(module, torch.nn.Linear) and "projection" not in name:
                    # Real files always spell the `text_model.` level, whatever transformers does.
                    full = name if name.startswith("text_model.") else "text_model." + name
                    add(prefix + full.replace(".", "_"), module, index)
                    index += 1
    return out


def expected_layers(model, tensors: dict[str, torch.Tensor],
                    extra: dict[str, str] | None = None) -> dict[tuple[str, str], tuple[torch.Tensor, float]]:
    """`{(component, module name): (delta W at weight 1, ...)}` computed by hand: up @ down * alpha / rank."""
    names = {"unet": dict(model.unet.named_modules())}
    for i, encoder in enumerate(model.text_encoders):
        names["text_encoder" if i == 0 else f"text_encoder_{i + 1}"] = dict(encoder.named_modules())
    prefixes = {"lora_unet_": "unet", "lora_te_": "text_encoder", "lora_te1_": "text_encoder",
                "lora_te2_": "text_encoder_2"}
    result = {}
    for key, down in tensors.items():
        if not key.endswith(".lora_down.weight"):
            continue
        kohya = key.split(".")[0]
        up = tensors[f"{kohya}.lora_up.weight"]
        alpha = tensors.get(f"{kohya}.alpha", torch.tensor(float(down.shape[0]))).item()
        delta = (up.flatten(1).double() @ down.flatten(1).double()) * alpha / down.shape[0]
        prefix = next(p for p in prefixes if kohya.startswith(p))
        component = prefixes[prefix]
        if extra and kohya in extra:
            result[(component, extra[kohya])] = delta
            continue
        candidates = {n.replace(".", "_"): n for n in names[component]}
        flat = kohya[len(prefix):]
        name = candidates.get(flat) or candidates[flat.removeprefix("text_model_")]
        result[(component, name)] = delta
    return result


def component(model, name: str) -> torch.nn.Module:
    return model.modules()[name]


def check_layer_deltas(model, expected, weights: dict[str, float], atol: float = 1e-4) -> None:
    """Each adapted layer's output minus its base layer's output equals x @ delta.T * weight."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    gen = torch.Generator().manual_seed(5)
    for (comp, name), delta in expected.items():
        module = component(model, comp).get_submodule(name)
        weight = weights[comp]
        if weight == 0:
            assert not isinstance(module, BaseTunerLayer), name
            continue
        assert isinstance(module, BaseTunerLayer), f"{comp}.{name} not adapted"
        base = module.get_base_layer()
        with torch.no_grad():
            if isinstance(base, torch.nn.Linear):
                x = torch.randn(3, base.in_features, generator=gen)
                want = (x.double() @ delta.T * weight).float()
            else:
                x = torch.randn(1, base.in_channels, 6, 6, generator=gen)
                kernel = delta.reshape(base.out_channels, base.in_channels, *base.kernel_size)
                want = torch.nn.functional.conv2d(x.double(), kernel * weight, stride=base.stride,
                                                  padding=base.padding).float()
            got = module(x) - base(x)
        torch.testing.assert_close(got, want, atol=atol, rtol=1e-4, msg=f"{comp}.{name}")


# --- fixtures --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sd1(tmp_path_factory):
    path = write_checkpoint(tmp_path_factory.mktemp("sd1") / "sd1.safetensors", "sd1", dtype=torch.float32, seed=3)
    return load_checkpoint(path)


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory):
    path = write_checkpoint(tmp_path_factory.mktemp("sdxl") / "sdxl.safetensors", "sdxl", dtype=torch.float32, seed=4)
    return load_checkpoint(path)


@pytest.fixture
def lora_dir(tmp_path):
    folder = tmp_path / "Lora"
    folder.mkdir()
    return folder


def write_lora(folder: Path, name: str, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
    path = folder / f"{name}.safetensors"
    save_file(tensors, path, metadata=metadata, overwrite=True)
    return path


def registry_with(folder: Path, **kwargs) -> LoraRegistry:
    registry = LoraRegistry([folder], **kwargs)
    registry.refresh()
    return registry


def unet_out(model) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    config = model.unet.config
    sample = torch.randn(1, config.in_channels, 8, 8, generator=gen)
    context = torch.randn(1, 7, config.cross_attention_dim, generator=gen)
    kwargs = {}
    if config.addition_embed_type == "text_time":
        kwargs["added_cond_kwargs"] = {
            "text_embeds": torch.randn(1, config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim,
                                       generator=gen),
            "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]]),
        }
    with torch.no_grad():
        return model.unet(sample, torch.tensor([500]), encoder_hidden_states=context, **kwargs).sample


def te_outs(model) -> list[torch.Tensor]:
    ids = torch.randint(0, 49408, (1, 77), generator=torch.Generator().manual_seed(2))
    outs = []
    with torch.no_grad():
        for encoder in model.text_encoders:
            result = encoder(ids, output_hidden_states=True)
            outs.append(result.hidden_states[-1])
            if getattr(result, "text_embeds", None) is not None:
                outs.append(result.text_embeds)
    return outs


def snapshot(model) -> dict:
    """Everything restoring must bring back: module classes, tensor objects, outputs."""
    structure = {name: [(n, type(m)) for n, m in module.named_modules()] for name, module in model.modules().items()}
    tensors = {name: {n: id(t) for n, t in module.state_dict(keep_vars=True).items()}
               for name, module in model.modules().items()}
    return {"structure": structure, "tensors": tensors, "unet": unet_out(model), "te": te_outs(model),
            "attrs": {name: sorted(vars(module)) for name, module in model.modules().items()}}


def assert_restored(model, before: dict) -> None:
    after = snapshot(model)
    assert after["structure"] == before["structure"]
    assert after["tensors"] == before["tensors"]
    assert after["attrs"] == before["attrs"]
    assert torch.equal(after["unet"], before["unet"])
    assert all(torch.equal(a, b) for a, b in zip(after["te"], before["te"]))


# --- parsing ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("tag, expected", [
    ("a", LoraRequest("a", 1.0, 1.0)),
    ("a:0.5", LoraRequest("a", 0.5, 0.5)),
    ("a:0.5:0.25", LoraRequest("a", 0.5, 0.25)),
    ("a:0.5:0.25:8", LoraRequest("a", 0.5, 0.25, dyn=8)),
    ("a:te=0.3", LoraRequest("a", 0.3, 0.3)),  # unet defaults to te after the te= override
    ("a:0.5:te=0.3", LoraRequest("a", 0.3, 0.3)),
    ("a:0.5:unet=0", LoraRequest("a", 0.5, 0.0)),
    ("a:0.5:0.7:unet=0.1:te=2", LoraRequest("a", 2.0, 0.1)),
    ("a:1:1:dyn=16", LoraRequest("a", 1.0, 1.0, dyn=16)),
    ("my_lora_v2:-1.5", LoraRequest("my_lora_v2", -1.5, -1.5)),
])
def test_requests_follow_a1111_rules(tag, expected):
    assert lora_requests_from_params([Params.of(tag)]) == [expected]


def test_requests_keep_prompt_order_and_reject_bad_numbers():
    assert [r.name for r in lora_requests_from_params([Params.of("b"), Params.of("a:2")])] == ["b", "a"]
    with pytest.raises(LoraError, match=r"'x' is not a number"):
        lora_requests_from_params([Params.of("a:x")])
    with pytest.raises(LoraError, match="no LoRA name"):
        lora_requests_from_params([Params([], {"te": "1"})])
    # Scripts may build params from code, with numbers instead of strings.
    assert lora_requests_from_params([Params(["a", 0.5, 2])]) == [LoraRequest("a", 0.5, 2.0)]


# --- discovery -------------------------------------------------------------------------------------


def test_registry_lists_recursively_with_aliases(lora_dir, tmp_path, sd1):
    tensors = kohya_lora(sd1, te=False)
    write_lora(lora_dir, "style10", tensors, {"ss_output_name": "my_style"})
    (lora_dir / "sub").mkdir()
    write_lora(lora_dir / "sub", "style2", tensors)
    write_lora(lora_dir / "sub", "style10", tensors)  # same stem: the first one found wins
    (lora_dir / "notes.txt").write_text("not a LoRA")
    extra = tmp_path / "extra"
    extra.mkdir()
    write_lora(extra, "other", tensors, {"ss_output_name": "style2"})  # alias that is also a file name: ignored

    registry = LoraRegistry([extra, lora_dir])
    assert registry.names() == []  # nothing until refresh
    registry.refresh()
    assert registry.names() == ["other", "style10", "style2"]
    assert registry.resolve("style10").path == lora_dir / "style10.safetensors"
    assert registry.resolve("my_style").name == "style10"
    assert registry.resolve("style2").path == lora_dir / "sub" / "style2.safetensors"
    assert registry.resolve("style10").metadata["ss_output_name"] == "my_style"
    with pytest.raises(LoraNotFoundError, match="did you mean style10"):
        registry.resolve("style1O")

    write_lora(lora_dir, "new", tensors)
    assert "new" not in registry
    registry.refresh()
    assert "new" in registry


def test_registry_reads_metadata_through_the_hash_cache(lora_dir, sd1, tmp_path):
    write_lora(lora_dir, "a", kohya_lora(sd1, te=False), {"ss_output_name": "alias_a"})
    cache = HashCache(tmp_path / "cache.json")
    registry = registry_with(lora_dir, hash_cache=cache)
    assert registry.resolve("alias_a").name == "a"
    info = registry.resolve("a")
    assert registry.shorthash(info) == addnet_hash_safetensors(info.path)[:12]
    assert cache.cached_addnet_sha256("lora/a", info.path) == addnet_hash_safetensors(info.path)
    assert (tmp_path / "cache.json").exists()


# --- attaching -------------------------------------------------------------------------------------


def test_sd1_lora_matches_hand_computation_and_restores(sd1, lora_dir):
    tensors = kohya_lora(sd1, conv=True)
    write_lora(lora_dir, "style", tensors)
    registry = registry_with(lora_dir)
    expected = expected_layers(sd1, tensors)
    before = snapshot(sd1)

    with apply_loras(sd1, [LoraRequest("style", te_weight=0.7, unet_weight=1.3)], registry) as applied:
        assert applied.warnings == []
        assert [item.info.name for item in applied.loaded] == ["style"]
        check_layer_deltas(sd1, expected, {"unet": 1.3, "text_encoder": 0.7})
        assert not torch.allclose(unet_out(sd1), before["unet"])
        assert not torch.allclose(te_outs(sd1)[0], before["te"][0])
    assert_restored(sd1, before)


def test_weight_scales_the_change_and_zero_changes_nothing(sd1, lora_dir):
    write_lora(lora_dir, "style", kohya_lora(sd1))
    registry = registry_with(lora_dir)
    base = unet_out(sd1)
    base_te = te_outs(sd1)[0]
    deltas = {}
    for weight in (0.5, 1.0):
        with apply_loras(sd1, [LoraRequest("style", weight, weight)], registry):
            deltas[weight] = te_outs(sd1)[0] - base_te
    # The first text-encoder layer is linear in the weight; deeper layers are not, so compare loosely.
    assert deltas[1.0].abs().max() > 0
    ratio = deltas[0.5].norm() / deltas[1.0].norm()
    assert 0.3 < ratio < 0.7

    with apply_loras(sd1, [LoraRequest("style", 0.0, 0.0)], registry) as applied:
        assert [item.info.name for item in applied.loaded] == ["style"]  # still listed for the infotext
        assert torch.equal(unet_out(sd1), base)
        assert torch.equal(te_outs(sd1)[0], base_te)


def test_te_zero_leaves_the_text_encoder_untouched(sd1, lora_dir):
    from peft.tuners.tuners_utils import BaseTunerLayer

    tensors = kohya_lora(sd1)
    write_lora(lora_dir, "style", tensors)
    registry = registry_with(lora_dir)
    before = snapshot(sd1)
    with apply_loras(sd1, lora_requests_from_params([Params.of("style:0:1")]), registry):
        assert not any(isinstance(m, BaseTunerLayer) for m in sd1.text_encoders[0].modules())
        assert all(torch.equal(a, b) for a, b in zip(te_outs(sd1), before["te"]))
        assert not torch.allclose(unet_out(sd1), before["unet"])
        check_layer_deltas(sd1, expected_layers(sd1, tensors), {"unet": 1.0, "text_encoder": 0.0})
    assert_restored(sd1, before)


def test_two_loras_add_up(sd1, lora_dir):
    first, second = kohya_lora(sd1, seed=1), kohya_lora(sd1, seed=2, rank=2)
    write_lora(lora_dir, "first", first)
    write_lora(lora_dir, "second", second)
    registry = registry_with(lora_dir)
    e1, e2 = expected_layers(sd1, first), expected_layers(sd1, second)
    before = snapshot(sd1)
    requests = [LoraRequest("first", 0.5, 1.0), LoraRequest("second", 2.0, -0.5)]
    with apply_loras(sd1, requests, registry) as applied:
        assert [item.adapter_name for item in applied.loaded] == ["atelier_lora_0", "atelier_lora_1"]
        # Both files cover the same layers: delta = d1 * w1 + d2 * w2, per component.
        combined_unet = {k: e1[k] * 1.0 + e2[k] * -0.5 for k in e1 if k[0] == "unet"}
        combined_te = {k: e1[k] * 0.5 + e2[k] * 2.0 for k in e1 if k[0] == "text_encoder"}
        check_layer_deltas(sd1, combined_unet, {"unet": 1.0})
        check_layer_deltas(sd1, combined_te, {"text_encoder": 1.0})
    assert_restored(sd1, before)


def test_same_lora_twice_counts_twice(sd1, lora_dir):
    tensors = kohya_lora(sd1, te=False)
    write_lora(lora_dir, "style", tensors)
    registry = registry_with(lora_dir)
    with apply_loras(sd1, [LoraRequest("style", 1, 0.5), LoraRequest("style", 1, 0.25)], registry):
        check_layer_deltas(sd1, expected_layers(sd1, tensors), {"unet": 0.75})


def test_exception_inside_still_restores(sd1, lora_dir):
    write_lora(lora_dir, "style", kohya_lora(sd1))
    registry = registry_with(lora_dir)
    before = snapshot(sd1)
    with pytest.raises(KeyboardInterrupt), apply_loras(sd1, [LoraRequest("style")], registry):
        unet_out(sd1)
        raise KeyboardInterrupt  # an interrupted job
    assert_restored(sd1, before)


def test_nested_use_is_refused(sd1, lora_dir):
    write_lora(lora_dir, "style", kohya_lora(sd1))
    registry = registry_with(lora_dir)
    before = snapshot(sd1)
    with apply_loras(sd1, [LoraRequest("style")], registry):  # noqa: SIM117 - the nesting is the test
        with pytest.raises(LoraError, match="already carries adapters"):
            with apply_loras(sd1, [LoraRequest("style")], registry):
                pass
    assert_restored(sd1, before)


def test_unknown_name_is_a_warning_and_the_rest_applies(sd1, lora_dir):
    tensors = kohya_lora(sd1, te=False)
    write_lora(lora_dir, "style", tensors)
    registry = registry_with(lora_dir)
    with apply_loras(sd1, [LoraRequest("stlye"), LoraRequest("style", 1, 1, dyn=8)], registry) as applied:
        assert [item.info.name for item in applied.loaded] == ["style"]
        assert any("'stlye' not found; did you mean style?" in w for w in applied.warnings)
        assert any("dyn=8 is not supported" in w for w in applied.warnings)
        check_layer_deltas(sd1, expected_layers(sd1, tensors), {"unet": 1.0})
    with pytest.raises(LoraNotFoundError), apply_loras(sd1, [LoraRequest("stlye")], registry, strict=True):
        pass


def test_infotext_hashes(sd1, lora_dir):
    tensors = kohya_lora(sd1, te=False)
    path = write_lora(lora_dir, "style", tensors)
    recorded = "ABCDEF0123456789" * 4
    write_lora(lora_dir, "trained", tensors, {"sshs_model_hash": recorded})
    registry = registry_with(lora_dir)
    with apply_loras(sd1, [LoraRequest("style", 0.5), LoraRequest("trained", 0, 0)], registry) as applied:
        assert applied.infotext_hashes() == f"style: {addnet_hash_safetensors(path)[:12]}, trained: abcdef012345"


UNSUPPORTED = {
    "LoHa": {"lora_unet_x.hada_w1_a": torch.zeros(2, 4), "lora_unet_x.hada_w1_b": torch.zeros(4, 2)},
    "LoKr": {"lora_unet_x.lokr_w1": torch.zeros(2, 2), "lora_unet_x.lokr_w2": torch.zeros(2, 2)},
    "DoRA": {"lora_unet_x.lora_down.weight": torch.zeros(2, 4), "lora_unet_x.lora_up.weight": torch.zeros(4, 2),
             "lora_unet_x.dora_scale": torch.zeros(1, 4)},
    "(IA)³": {"lora_unet_x.weight": torch.zeros(4), "lora_unet_x.on_input": torch.zeros(())},
    "CP decomposition": {"lora_unet_x.lora_down.weight": torch.zeros(2, 4, 1, 1),
                         "lora_unet_x.lora_up.weight": torch.zeros(4, 2, 1, 1),
                         "lora_unet_x.lora_mid.weight": torch.zeros(2, 2, 3, 3)},
    "diffusers/PEFT layout": {"unet.x.lora_A.weight": torch.zeros(2, 4), "unet.x.lora_B.weight": torch.zeros(4, 2)},
}


@pytest.mark.parametrize("kind", list(UNSUPPORTED))
def test_unsupported_types_are_named(sd1, lora_dir, kind):
    path = write_lora(lora_dir, "odd", UNSUPPORTED[kind])
    registry = registry_with(lora_dir)
    with pytest.raises(UnsupportedLoraError) as excinfo:
        registry.load(registry.resolve("odd"))
    assert kind in str(excinfo.value) and str(path) in str(excinfo.value)
    before = snapshot(sd1)
    with apply_loras(sd1, [LoraRequest("odd")], registry) as applied:
        assert applied.loaded == []
        assert len(applied.warnings) == 1 and kind in applied.warnings[0]
    assert_restored(sd1, before)


def test_damaged_file_is_reported(sd1, lora_dir):
    write_lora(lora_dir, "half", {"lora_unet_x.lora_down.weight": torch.zeros(2, 4)})
    registry = registry_with(lora_dir)
    with pytest.raises(LoraError, match="has no lora_up weight"):
        registry.load(registry.resolve("half"))


def test_bundled_embeddings_are_skipped_with_a_note(sd1, lora_dir):
    tensors = kohya_lora(sd1, te=False)
    tensors["bundle_emb.mytoken.string_to_param.*"] = torch.zeros(1, 64)
    write_lora(lora_dir, "bundle", tensors)
    registry = registry_with(lora_dir)
    with apply_loras(sd1, [LoraRequest("bundle")], registry) as applied:
        assert len(applied.loaded) == 1
        assert any("bundled embeddings mytoken" in w for w in applied.warnings)


def test_pickled_lora_loads_through_the_safe_unpickler(sd1, lora_dir):
    tensors = kohya_lora(sd1, te=False)
    torch.save(tensors, lora_dir / "old.pt")
    registry = registry_with(lora_dir)
    with apply_loras(sd1, [LoraRequest("old")], registry) as applied:
        assert applied.warnings == []
        check_layer_deltas(sd1, expected_layers(sd1, tensors), {"unet": 1.0})


def test_converted_files_are_cached_and_bounded(sd1, lora_dir):
    a = write_lora(lora_dir, "a", kohya_lora(sd1, seed=1))
    write_lora(lora_dir, "b", kohya_lora(sd1, seed=2))
    registry = registry_with(lora_dir)
    first = registry.load(registry.resolve("a"))
    assert registry.load(registry.resolve("a")) is first
    assert registry.cached_bytes == first.nbytes
    assert registry.load(registry.resolve("a"), dtype=torch.bfloat16) is not first  # per dtype

    small = registry_with(lora_dir, cache_bytes=int(first.nbytes * 1.5))
    small.load(small.resolve("a"))
    small.load(small.resolve("b"))
    assert small.cached_bytes <= int(first.nbytes * 1.5)

    # A rewritten file (new mtime) is read again.
    old = registry.resolve("a")
    write_lora(lora_dir, "a", kohya_lora(sd1, seed=3))
    os.utime(a, (old.mtime + 10, old.mtime + 10))
    registry.refresh()
    assert registry.load(registry.resolve("a")) is not first


# --- SDXL ------------------------------------------------------------------------------------------

# kohya trains SDXL on the sgm UNet, so real files name its blocks input_blocks/middle_block/output_blocks.
SGM_NAMES = {
    "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q": "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q",
    "lora_unet_middle_block_1_proj_in": "mid_block.attentions.0.proj_in",
    "lora_unet_output_blocks_1_1_transformer_blocks_1_attn2_to_k": "up_blocks.0.attentions.1.transformer_blocks.1.attn2.to_k",
}


def test_sdxl_lora_with_both_text_encoders_and_sgm_names(sdxl, lora_dir):
    diffusers_named = kohya_lora(sdxl)
    sgm_named = kohya_lora(sdxl, seed=7, unet=False, te=False, extra_unet_modules=SGM_NAMES)
    write_lora(lora_dir, "xl", diffusers_named)
    write_lora(lora_dir, "xl_sgm", sgm_named)
    registry = registry_with(lora_dir)
    before = snapshot(sdxl)
    with apply_loras(sdxl, [LoraRequest("xl", 0.8, 1.1)], registry) as applied:
        assert applied.warnings == []
        check_layer_deltas(sdxl, expected_layers(sdxl, diffusers_named),
                           {"unet": 1.1, "text_encoder": 0.8, "text_encoder_2": 0.8})
        assert not torch.allclose(unet_out(sdxl), before["unet"])
        outs = te_outs(sdxl)
        assert not torch.allclose(outs[0], before["te"][0]) and not torch.allclose(outs[1], before["te"][1])
    assert_restored(sdxl, before)

    with apply_loras(sdxl, [LoraRequest("xl_sgm", 1, 0.6)], registry) as applied:
        assert applied.warnings == []
        check_layer_deltas(sdxl, expected_layers(sdxl, sgm_named, extra=SGM_NAMES), {"unet": 0.6})
    assert_restored(sdxl, before)


def test_lora_for_another_family_is_skipped(sd1, sdxl, lora_dir):
    write_lora(lora_dir, "sd1_style", kohya_lora(sd1))
    registry = registry_with(lora_dir)
    before = snapshot(sdxl)
    with apply_loras(sdxl, [LoraRequest("sd1_style")], registry) as applied:
        assert applied.loaded == []
        assert "does not fit this model" in applied.warnings[0] and "another base model" in applied.warnings[0]
    assert_restored(sdxl, before)
    with pytest.raises(IncompatibleLoraError), apply_loras(sdxl, [LoraRequest("sd1_style")], registry, strict=True):
        pass


def test_fused_matches_unfused_and_restores_exactly(sd1, lora_dir):
    from peft.tuners.tuners_utils import BaseTunerLayer

    write_lora(lora_dir, "first", kohya_lora(sd1, seed=1, conv=True))
    write_lora(lora_dir, "second", kohya_lora(sd1, seed=2, te=False))
    registry = registry_with(lora_dir)
    requests = [LoraRequest("first", 0.6, 0.9), LoraRequest("second", 1.0, -0.4)]
    before = snapshot(sd1)
    with apply_loras(sd1, requests, registry):
        unfused = unet_out(sd1), te_outs(sd1)[0]
    with apply_loras(sd1, requests, registry, fuse=True):
        layers = [m for m in sd1.unet.modules() if isinstance(m, BaseTunerLayer)]
        assert layers and all(layer.merged for layer in layers)
        torch.testing.assert_close(unet_out(sd1), unfused[0], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(te_outs(sd1)[0], unfused[1], atol=1e-4, rtol=1e-4)
    assert_restored(sd1, before)
    with pytest.raises(RuntimeError, match="interrupted"), apply_loras(sd1, requests, registry, fuse=True):
        raise RuntimeError("interrupted")
    assert_restored(sd1, before)
