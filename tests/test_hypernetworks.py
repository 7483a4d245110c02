"""Tests for modules/hypernetworks.py: A1111 `.pt` hypernetworks loaded, listed and applied to a
tiny SD1 UNet through diffusers' attention processors, and taken off again without a trace."""

from __future__ import annotations

import math
import os
import time
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import (
    Attention,
    AttnProcessor,
    AttnProcessor2_0,
)

from modules.networks.hypernetworks import (
    ACTIVATIONS,
    Hypernetwork,
    HypernetworkAttnProcessor,
    HypernetworkLoadError,
    HypernetworkModule,
    HypernetworkSettings,
    apply_hypernetworks,
    attach_hypernetworks,
    parse_dropout_structure,
)
from modules.library.model_loader import StableDiffusionModel, load_checkpoint
from modules.networks.hypernetwork_files import HypernetworkNotFoundError, HypernetworkRegistry
from modules.library.safe_unpickle import UnsafeCheckpointError
from modules.library.synthetic_checkpoints import write_checkpoint

# ---------------------------------------------------------------------------------------------
# Writing files the way A1111 does


def make_state_dict(dim: int, layout: Sequence[str], structure: Sequence[float], seed: int,
                    scale: float = 0.2) -> OrderedDict[str, torch.Tensor]:
    """Weights for a Sequential with modules `layout` (written out by hand in each test).

    'linear' takes the next step of `structure`; 'layernorm' and 'prelu' have parameters;
    activations and 'dropout' have none but still take an index, as in A1111's Sequential.
    """
    gen = torch.Generator().manual_seed(seed)
    state: OrderedDict[str, torch.Tensor] = OrderedDict()
    step, width = 0, dim
    for index, kind in enumerate(layout):
        if kind == "linear":
            width_in, width = int(dim * structure[step]), int(dim * structure[step + 1])
            step += 1
            state[f"linear.{index}.weight"] = torch.randn(width, width_in, generator=gen) * scale
            state[f"linear.{index}.bias"] = torch.randn(width, generator=gen) * scale
        elif kind == "layernorm":
            state[f"linear.{index}.weight"] = 1 + torch.randn(width, generator=gen) * scale
            state[f"linear.{index}.bias"] = torch.randn(width, generator=gen) * scale
        elif kind == "prelu":
            state[f"linear.{index}.weight"] = torch.full((1,), 0.1)
    assert step == len(structure) - 1, "layout must have one linear per step of the structure"
    return state


def save_a1111(path: Path, layers: dict[int, tuple[dict, dict]], *, layer_structure=(1, 2, 1),
               activation_func=None, is_layer_norm=False, use_dropout=False, activate_output=False,
               last_layer_dropout=False, dropout_structure="absent", name="from-file", step=1200,
               omit: Sequence[str] = (), **extra) -> Path:
    """`torch.save` of the dict A1111's `Hypernetwork.save` builds, in its key order."""
    data: dict = {dim: (sd_k, sd_v) for dim, (sd_k, sd_v) in layers.items()}
    data["step"] = step
    data["name"] = name
    data["layer_structure"] = list(layer_structure) if isinstance(layer_structure, tuple) else layer_structure
    data["activation_func"] = activation_func
    data["is_layer_norm"] = is_layer_norm
    data["weight_initialization"] = "Normal"
    data["sd_checkpoint"] = "1a2b3c4d"
    data["sd_checkpoint_name"] = "tiny-sd1"
    data["activate_output"] = activate_output
    data["use_dropout"] = use_dropout
    if dropout_structure != "absent":  # newer A1111 versions store it, older ones do not
        data["dropout_structure"] = dropout_structure
    data["last_layer_dropout"] = last_layer_dropout
    data["optional_info"] = None
    data.update(extra)
    for key in omit:
        del data[key]
    torch.save(data, path)
    return path


def relu_hypernetwork_file(path: Path, dims: Sequence[int], seed: int = 0, **kwargs) -> Path:
    """[1, 2, 1], relu, no output activation: layers Linear(0) ReLU(1) Linear(2)."""
    layout = ["linear", "relu", "linear"]
    layers = {dim: (make_state_dict(dim, layout, (1, 2, 1), seed + 2 * i),
                    make_state_dict(dim, layout, (1, 2, 1), seed + 2 * i + 1))
              for i, dim in enumerate(dims)}
    return save_a1111(path, layers, activation_func="relu", **kwargs)


# ---------------------------------------------------------------------------------------------
# The tiny model


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> StableDiffusionModel:
    path = write_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny-sd1.safetensors", "sd1", size="tiny",
                            dtype=torch.float32)
    return load_checkpoint(path)


@pytest.fixture(scope="module")
def widths(tiny_model: StableDiffusionModel) -> dict[str, int]:
    """The context width of cross-attention and a block width that only self-attention reads."""
    config = tiny_model.unet.config
    context = int(config.cross_attention_dim)
    self_only = [int(c) for c in config.block_out_channels if int(c) != context]
    assert self_only, "the tiny UNet needs a block width different from its context width"
    return {"context": context, "self_only": self_only[0]}


@pytest.fixture(scope="module")
def unet_inputs(widths: dict[str, int], tiny_model: StableDiffusionModel) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(123)
    config = tiny_model.unet.config
    return {
        "sample": torch.randn(2, config.in_channels, 8, 8, generator=gen),
        "timestep": torch.tensor(10),
        "encoder_hidden_states": torch.randn(2, 5, widths["context"], generator=gen),
    }


def run_unet(model: StableDiffusionModel, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model.unet(**inputs).sample


def processors_by_name(unet: torch.nn.Module) -> dict[str, object]:
    return dict(unet.attn_processors)


# ---------------------------------------------------------------------------------------------
# Loading


def test_round_trip_loads_bit_identical_weights_and_metadata(tmp_path: Path, widths: dict[str, int]):
    dims = [widths["context"], widths["self_only"]]
    path = relu_hypernetwork_file(tmp_path / "style.pt", dims, optional_info="trained on cats")
    saved = torch.load(path, weights_only=True)

    hypernetwork = Hypernetwork.from_file(path)

    assert hypernetwork.dims == tuple(dims)
    assert hypernetwork.name == "from-file"  # the file's `name` field wins over the file name
    assert hypernetwork.filename == path
    assert hypernetwork.step == 1200
    assert hypernetwork.sd_checkpoint == "1a2b3c4d"
    assert hypernetwork.sd_checkpoint_name == "tiny-sd1"
    assert hypernetwork.optional_info == "trained on cats"
    assert hypernetwork.settings.layer_structure == (1, 2, 1)
    assert hypernetwork.settings.activation_func == "relu"
    assert hypernetwork.dtype == torch.float32 and hypernetwork.device == torch.device("cpu")
    for dim in dims:
        for module, file_state in zip(hypernetwork.layers_for(dim), saved[dim]):
            assert isinstance(module, HypernetworkModule)
            assert not module.training
            assert all(not p.requires_grad for p in module.parameters())
            state = module.state_dict()
            assert list(state) == list(file_state)
            for key, tensor in file_state.items():
                assert state[key].dtype == tensor.dtype
                assert torch.equal(state[key], tensor), key
    assert hypernetwork.layers_for(12345) is None


def test_dtype_is_applied_on_load(tmp_path: Path):
    path = relu_hypernetwork_file(tmp_path / "h.pt", [32])
    hypernetwork = Hypernetwork.from_file(path, dtype=torch.bfloat16)
    assert hypernetwork.dtype == torch.bfloat16
    saved = torch.load(path, weights_only=True)
    assert torch.equal(hypernetwork.layers_for(32)[0].linear[0].weight, saved[32][0]["linear.0.weight"].bfloat16())
    with pytest.raises(ValueError, match="floating-point"):
        Hypernetwork.from_file(path, dtype=torch.int64)


@pytest.mark.parametrize("stored_name", [None, ""])
def test_file_name_is_used_when_the_file_has_no_name(tmp_path: Path, stored_name):
    path = relu_hypernetwork_file(tmp_path / "my-style.pt", [32], name=stored_name)
    assert Hypernetwork.from_file(path).name == "my-style"
    path = relu_hypernetwork_file(tmp_path / "other.pt", [32], omit=["name"])
    assert Hypernetwork.from_file(path).name == "other"


def test_legacy_linear1_linear2_keys(tmp_path: Path):
    """Files from before the Sequential: `linear1.*`/`linear2.*`, no layout fields at all."""
    dim = 32
    gen = torch.Generator().manual_seed(5)

    def legacy_state() -> OrderedDict[str, torch.Tensor]:
        return OrderedDict([
            ("linear1.weight", torch.randn(2 * dim, dim, generator=gen)),
            ("linear1.bias", torch.randn(2 * dim, generator=gen)),
            ("linear2.weight", torch.randn(dim, 2 * dim, generator=gen)),
            ("linear2.bias", torch.randn(dim, generator=gen)),
        ])

    k, v = legacy_state(), legacy_state()
    path = tmp_path / "old.pt"
    torch.save({dim: (k, v), "step": 100, "name": "old"}, path)

    hypernetwork = Hypernetwork.from_file(path)

    assert hypernetwork.settings.layer_structure == (1, 2, 1)
    assert hypernetwork.settings.activation_func is None
    for module, legacy in zip(hypernetwork.layers_for(dim), (k, v)):
        assert [type(m).__name__ for m in module.linear] == ["Linear", "Linear"]
        state = module.state_dict()
        assert sorted(state) == ["linear.0.bias", "linear.0.weight", "linear.1.bias", "linear.1.weight"]
        assert torch.equal(state["linear.0.weight"], legacy["linear1.weight"])
        assert torch.equal(state["linear.1.bias"], legacy["linear2.bias"])
    # The file's own dicts are not renamed in place (the loader works on copies).
    assert "linear1.weight" in k


# Each case: the file's layout fields, and the Sequential A1111 builds from them, by hand.
LAYOUT_CASES = {
    "no activation": ({"activation_func": None}, (1, 2, 1), ["linear", "linear"]),
    "linear means none": ({"activation_func": "linear", "activate_output": True}, (1, 2, 1), ["linear", "linear"]),
    "relu hidden only": ({"activation_func": "relu"}, (1, 2, 1), ["linear", "relu", "linear"]),
    "relu activate_output": ({"activation_func": "relu", "activate_output": True}, (1, 2, 1),
                             ["linear", "relu", "linear", "relu"]),
    # activate_output missing from the file: A1111 loads it as True.
    "swish is hardswish, output default": ({"activation_func": "swish", "omit": ["activate_output"]}, (1, 2, 1),
                                           ["linear", "hardswish", "linear", "hardswish"]),
    "layer norm": ({"activation_func": "leakyrelu", "is_layer_norm": True}, (1, 2, 1),
                   ["linear", "leakyrelu", "layernorm", "linear", "layernorm"]),
    # [1, 2, 1] with use_dropout but no last_layer_dropout has no dropout at all (A1111).
    "dropout on 3 layers": ({"activation_func": "relu", "use_dropout": True}, (1, 2, 1), ["linear", "relu", "linear"]),
    "dropout [1,2,2,1]": ({"activation_func": "tanh", "use_dropout": True}, (1, 2, 2, 1),
                          ["linear", "tanh", "dropout", "linear", "tanh", "linear"]),
    "dropout last layer + norm": ({"activation_func": "elu", "use_dropout": True, "last_layer_dropout": True,
                                       "is_layer_norm": True}, (1, 2, 2, 1),
                                  ["linear", "elu", "layernorm", "dropout", "linear", "elu", "layernorm", "dropout",
                                   "linear", "layernorm"]),
    "stored dropout_structure": ({"activation_func": "sigmoid", "activate_output": True, "use_dropout": False,
                                      "dropout_structure": [0, 0.1, 0.2, 0]}, (1, 1.5, 2, 1),
                                 ["linear", "sigmoid", "dropout", "linear", "sigmoid", "dropout", "linear", "sigmoid"]),
    # Any torch.nn.modules.activation class, by lower-cased name; PReLU carries a weight.
    "prelu from torch": ({"activation_func": "prelu"}, (1, 2, 1), ["linear", "prelu", "linear"]),
    "silu any case": ({"activation_func": "SiLU"}, (1, 2, 1), ["linear", "silu", "linear"]),
}


@pytest.mark.parametrize("case", list(LAYOUT_CASES))
def test_layouts_give_a1111_module_indices(tmp_path: Path, case: str):
    fields, structure, layout = LAYOUT_CASES[case]
    dim = 32
    k, v = make_state_dict(dim, layout, structure, 1), make_state_dict(dim, layout, structure, 2)
    path = save_a1111(tmp_path / "h.pt", {dim: (k, v)}, layer_structure=structure, **fields)

    hypernetwork = Hypernetwork.from_file(path)

    for module, file_state in zip(hypernetwork.layers_for(dim), (k, v)):
        assert [type(m).__name__.lower() for m in module.linear] == layout
        state = module.state_dict()
        assert list(state) == list(file_state)
        assert all(torch.equal(state[key], file_state[key]) for key in file_state)
        dropouts = [m.p for m in module.linear if isinstance(m, torch.nn.Dropout)]
        assert len(dropouts) == layout.count("dropout")
        assert all(0 < p < 1 for p in dropouts)
        # Eval mode: dropout is inert, so the MLP is deterministic.
        x = torch.randn(3, 4, dim)
        assert torch.equal(module(x), module(x))
    if case == "stored dropout_structure":
        assert [m.p for m in hypernetwork.layers_for(dim)[0].linear if isinstance(m, torch.nn.Dropout)] == [0.1, 0.2]
        assert hypernetwork.settings.use_dropout  # derived from the stored structure, as A1111 does
    if "dropout [1,2,2,1]" in case:
        assert hypernetwork.settings.dropout_structure == (0, 0.3, 0, 0)


def test_parse_dropout_structure_matches_a1111():
    assert parse_dropout_structure([1, 2, 1], False, False) == (0, 0, 0)
    assert parse_dropout_structure([1, 2, 1], True, False) == (0, 0, 0)
    assert parse_dropout_structure([1, 2, 1], True, True) == (0, 0.3, 0)
    assert parse_dropout_structure([1, 2, 2, 1], True, False) == (0, 0.3, 0, 0)
    assert parse_dropout_structure([1, 2, 4, 2, 1], True, True) == (0, 0.3, 0.3, 0.3, 0)
    assert parse_dropout_structure(None, True, True) == (0, 0.3, 0)


def test_activation_table_covers_a1111_names():
    assert ACTIVATIONS["swish"] is torch.nn.Hardswish
    assert ACTIVATIONS["linear"] is None
    for name in ("relu", "leakyrelu", "elu", "tanh", "sigmoid", "gelu", "silu", "mish", "softplus", "prelu"):
        assert name in ACTIVATIONS
    with pytest.raises(ValueError, match="'swish'"):
        HypernetworkSettings(activation_func="swishh")


MALFORMED = {
    "not a dict": (lambda p: torch.save(torch.zeros(3), p), "holds a torch.Tensor"),
    "structure not starting with 1": (
        lambda p: relu_hypernetwork_file(p, [32], layer_structure=(2, 2, 1)), r"must start and end with 1"),
    "structure not ending with 1": (
        lambda p: relu_hypernetwork_file(p, [32], layer_structure=(1, 2, 2)), r"must start and end with 1"),
    "structure not a list": (
        lambda p: relu_hypernetwork_file(p, [32], layer_structure="1,2,1"), r"layer_structure '1,2,1'"),
    "unknown activation": (
        lambda p: save_a1111(p, {32: (make_state_dict(32, ["linear", "linear"], (1, 2, 1), 0),) * 2},
                             activation_func="relux"),
        r"unsupported activation_func 'relux'\. Did you mean 'relu'"),
    "activation needing arguments": (
        lambda p: save_a1111(p, {32: (make_state_dict(32, ["linear", "linear"], (1, 2, 1), 0),) * 2},
                             activation_func="threshold"),
        r"'threshold' cannot be built without arguments"),
    "entry not a pair": (
        lambda p: torch.save({32: make_state_dict(32, ["linear", "linear"], (1, 2, 1), 0)}, p),
        r"entry 32 must be a pair"),
    "layers do not match settings": (
        # Saved with a relu between the Linears (keys linear.0, linear.2) but the file says none.
        lambda p: save_a1111(p, {32: (make_state_dict(32, ["linear", "relu", "linear"], (1, 2, 1), 0),) * 2},
                             activation_func=None),
        r"missing \['linear.1.weight', 'linear.1.bias'\], unexpected \['linear.2.weight', 'linear.2.bias'\]"),
    "wrong shape": (
        lambda p: save_a1111(p, {32: (make_state_dict(16, ["linear", "linear"], (1, 2, 1), 0),) * 2}),
        r"'linear.0.weight' for width 32 has shape \[32, 16\], expected \[64, 32\]"),
    "no layers (an embedding)": (
        lambda p: torch.save({"string_to_param": {"*": torch.zeros(1, 32)}, "name": "emb"}, p),
        r"no per-width layers.*textual-inversion embedding"),
    "dropout structure too short": (
        lambda p: relu_hypernetwork_file(p, [32], dropout_structure=[0, 0.3]), r"dropout_structure \[0, 0.3\]"),
    "dropout probability 1": (
        lambda p: relu_hypernetwork_file(p, [32], dropout_structure=[0, 1.0, 0]), r"probability in \[0, 1\)"),
    "flag not a bool": (
        lambda p: relu_hypernetwork_file(p, [32], is_layer_norm="yes"), r"is_layer_norm 'yes' must be true or false"),
    "non-tensor weight": (
        lambda p: save_a1111(p, {32: ({"linear.0.weight": [1.0]}, {})}), r"non-tensor entry 'linear.0.weight'"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_files_raise_errors_naming_file_and_problem(tmp_path: Path, case: str):
    write, pattern = MALFORMED[case]
    path = tmp_path / "broken.pt"
    write(path)

    with pytest.raises(HypernetworkLoadError, match=pattern) as info:
        Hypernetwork.from_file(path)

    assert str(path) in str(info.value)
    assert info.value.path == str(path)
    assert isinstance(info.value, ValueError)


def test_malicious_pt_is_refused_by_the_safe_unpickler(tmp_path: Path):
    canary = tmp_path / "canary"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {canary}",)

    (tmp_path / "models").mkdir()
    layers = {32: (make_state_dict(32, ["linear", "linear"], (1, 2, 1), 0),) * 2}
    path = save_a1111(tmp_path / "models" / "evil.pt", layers, optional_info=Payload())

    with pytest.raises(UnsafeCheckpointError) as info:
        Hypernetwork.from_file(path)
    assert str(path) in str(info.value)
    assert not canary.exists(), "the payload ran"

    registry = HypernetworkRegistry(tmp_path / "models")
    registry.refresh()
    with pytest.raises(UnsafeCheckpointError):
        registry.load("evil")
    assert not canary.exists(), "the payload ran"


# ---------------------------------------------------------------------------------------------
# Registry


def test_registry_lists_recursively_sorted_with_a1111_rules(tmp_path: Path):
    root = tmp_path / "hypernetworks"
    for relative in ["b.pt", "A.pt", "E.PT", "sub/c.pt", "sub/deeper/a.pt", "None.pt", "notes.txt", "x.safetensors",
                     ".hidden/h.pt", "z/.secret.pt"]:
        target = root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(b"")
    registry = HypernetworkRegistry(root)
    assert registry.names() == []  # nothing is scanned before refresh()

    registry.refresh()

    # Sorted by lower-cased path: A.pt, b.pt, E.PT, sub/c.pt, sub/deeper/a.pt. `a` (sub/deeper)
    # replaces nothing: names are case-sensitive, "A" and "a" are two names.
    assert registry.names() == ["A", "b", "E", "c", "a"]
    assert "None" not in registry
    assert registry.path("a") == root / "sub" / "deeper" / "a.pt"
    assert len(registry) == 5


def test_registry_last_file_with_a_name_wins(tmp_path: Path):
    root = tmp_path / "h"
    (root / "one").mkdir(parents=True)
    (root / "two").mkdir()
    relu_hypernetwork_file(root / "one" / "style.pt", [32], seed=1)
    relu_hypernetwork_file(root / "two" / "style.pt", [32], seed=2)
    registry = HypernetworkRegistry(root)
    registry.refresh()
    assert registry.names() == ["style"]
    assert registry.path("style") == root / "two" / "style.pt"


def test_unknown_name_is_a_key_error_with_close_matches(tmp_path: Path):
    registry = HypernetworkRegistry(tmp_path)
    with pytest.raises(HypernetworkNotFoundError, match="no hypernetworks are listed"):
        registry.load("anything")

    relu_hypernetwork_file(tmp_path / "anime-style.pt", [32])
    relu_hypernetwork_file(tmp_path / "photo.pt", [32])
    registry.refresh()
    with pytest.raises(KeyError) as info:
        registry.load("anime_style")
    error = info.value
    assert isinstance(error, HypernetworkNotFoundError)
    assert error.closest == ["anime-style"]
    assert "Did you mean 'anime-style'?" in str(error)
    assert "'photo'" in str(error)
    assert str(tmp_path) in str(error)
    with pytest.raises(HypernetworkNotFoundError):
        registry.find_closest("landscape")
    assert registry.find_closest("ANIME") == "anime-style"


def test_registry_cache_is_keyed_by_file_version_device_and_dtype(tmp_path: Path):
    path = relu_hypernetwork_file(tmp_path / "style.pt", [32], seed=1)
    registry = HypernetworkRegistry(tmp_path, cache_size=2)
    registry.refresh()

    first = registry.load("style")
    assert registry.load("style", "cpu", torch.float32) is first
    half = registry.load("style", dtype=torch.float16)
    assert half is not first and half.dtype == torch.float16

    # A new version of the file (new mtime) is read again.
    relu_hypernetwork_file(path, [32], seed=7)
    stamp = time.time() + 5
    os.utime(path, (stamp, stamp))
    reloaded = registry.load("style")
    assert reloaded is not first
    assert not torch.equal(reloaded.layers_for(32)[0].linear[0].weight, first.layers_for(32)[0].linear[0].weight)

    # Another registry shares nothing: the cache belongs to the registry.
    other = HypernetworkRegistry(tmp_path)
    other.refresh()
    assert other.load("style") is not reloaded


# ---------------------------------------------------------------------------------------------
# Application to the UNet


def test_attached_hypernetwork_changes_output_and_is_removed_without_a_trace(
        tmp_path: Path, tiny_model: StableDiffusionModel, widths: dict[str, int], unet_inputs):
    unet = tiny_model.unet
    hypernetwork = Hypernetwork.from_file(
        relu_hypernetwork_file(tmp_path / "h.pt", [widths["context"], widths["self_only"]]))
    before = processors_by_name(unet)
    base = run_unet(tiny_model, unet_inputs)

    with attach_hypernetworks(unet, [(hypernetwork, 1.0)]) as changed:
        full = run_unet(tiny_model, unet_inputs)
        assert all(isinstance(p, HypernetworkAttnProcessor) for name, p in unet.attn_processors.items()
                   if name.removesuffix(".processor") in changed)
    with attach_hypernetworks(unet, [(hypernetwork, 0.5)]):
        half = run_unet(tiny_model, unet_inputs)
    with attach_hypernetworks(unet, [(hypernetwork, 0.0)]):
        off = run_unet(tiny_model, unet_inputs)
    after = run_unet(tiny_model, unet_inputs)

    # Every attention layer reads a context of one of the two widths: all of them are changed.
    assert len(changed) == len(before)
    assert not torch.allclose(full, base, atol=1e-4)
    assert not torch.allclose(half, base, atol=1e-4)
    assert not torch.allclose(half, full, atol=1e-4)
    assert torch.equal(off, base)  # x + mlp(x) * 0 is x
    assert torch.equal(after, base)
    restored = processors_by_name(unet)
    assert restored.keys() == before.keys()
    assert all(restored[name] is before[name] for name in before)


def test_self_attention_only_width(tmp_path: Path, tiny_model: StableDiffusionModel, widths: dict[str, int],
                                   unet_inputs):
    """A width that only image tokens have: only self-attention (attn1) layers of that width change."""
    unet = tiny_model.unet
    hypernetwork = Hypernetwork.from_file(relu_hypernetwork_file(tmp_path / "h.pt", [widths["self_only"]]))
    base = run_unet(tiny_model, unet_inputs)
    expected = sorted(name for name, module in unet.named_modules()
                      if isinstance(module, Attention) and module.to_k.in_features == widths["self_only"])
    assert expected and all(name.endswith("attn1") for name in expected)

    with attach_hypernetworks(unet, [(hypernetwork, 1.0)]) as changed:
        out = run_unet(tiny_model, unet_inputs)

    assert sorted(changed) == expected
    assert not torch.allclose(out, base, atol=1e-4)


def test_width_the_model_lacks_changes_nothing(tmp_path: Path, tiny_model: StableDiffusionModel, unet_inputs):
    unet = tiny_model.unet
    hypernetwork = Hypernetwork.from_file(relu_hypernetwork_file(tmp_path / "h.pt", [48]))
    before = processors_by_name(unet)
    base = run_unet(tiny_model, unet_inputs)
    with attach_hypernetworks(unet, [(hypernetwork, 1.0)]) as changed:
        assert changed == ()
        assert all(unet.attn_processors[n] is before[n] for n in before)
        out = run_unet(tiny_model, unet_inputs)
    assert torch.equal(out, base)


def test_exception_inside_the_block_still_restores(tmp_path: Path, tiny_model: StableDiffusionModel,
                                                   widths: dict[str, int], unet_inputs):
    unet = tiny_model.unet
    hypernetwork = Hypernetwork.from_file(relu_hypernetwork_file(tmp_path / "h.pt", [widths["context"]]))
    before = processors_by_name(unet)
    base = run_unet(tiny_model, unet_inputs)

    with pytest.raises(RuntimeError, match="interrupted"), attach_hypernetworks(unet, [(hypernetwork, 1.0)]):
        assert any(isinstance(p, HypernetworkAttnProcessor) for p in unet.attn_processors.values())
        raise RuntimeError("interrupted")

    assert all(unet.attn_processors[n] is before[n] for n in before)
    assert torch.equal(run_unet(tiny_model, unet_inputs), base)


def test_stacking_order_and_repeats(tmp_path: Path, tiny_model: StableDiffusionModel, widths: dict[str, int],
                                    unet_inputs):
    unet = tiny_model.unet
    dims = [widths["context"], widths["self_only"]]
    a = Hypernetwork.from_file(relu_hypernetwork_file(tmp_path / "a.pt", dims, seed=1))
    b = Hypernetwork.from_file(relu_hypernetwork_file(tmp_path / "b.pt", dims, seed=50))
    before = processors_by_name(unet)

    with attach_hypernetworks(unet, [(a, 1.0)]):
        once = run_unet(tiny_model, unet_inputs)
    with attach_hypernetworks(unet, [(a, 1.0), (a, 1.0)]):
        twice = run_unet(tiny_model, unet_inputs)
    # Nested blocks stack in order: the inner one applies after the outer one.
    with attach_hypernetworks(unet, [(a, 1.0)]):
        with attach_hypernetworks(unet, [(a, 1.0)]):
            nested = run_unet(tiny_model, unet_inputs)
        assert torch.equal(run_unet(tiny_model, unet_inputs), once)
    with attach_hypernetworks(unet, [(a, 1.0), (b, 0.7)]):
        ab = run_unet(tiny_model, unet_inputs)
    with attach_hypernetworks(unet, [(b, 0.7), (a, 1.0)]):
        ba = run_unet(tiny_model, unet_inputs)

    assert not torch.allclose(twice, once, atol=1e-4)  # the same one twice applies twice (A1111)
    assert torch.equal(nested, twice)
    assert not torch.allclose(ab, ba, atol=1e-6)  # prompt order matters
    assert all(unet.attn_processors[n] is before[n] for n in before)


def test_apply_hypernetworks_is_a1111s_formula(tmp_path: Path):
    dim = 32
    a = Hypernetwork.from_file(relu_hypernetwork_file(tmp_path / "a.pt", [dim], seed=1))
    b = Hypernetwork.from_file(relu_hypernetwork_file(tmp_path / "b.pt", [dim], seed=9))
    context = torch.randn(2, 7, dim)

    with torch.no_grad():
        k, v = apply_hypernetworks([(a, 1.0), (b, 0.25)], context)
        (ak, av), (bk, bv) = a.layers_for(dim), b.layers_for(dim)
        expected_k = context + ak.linear(context) * 1.0
        expected_k = expected_k + bk.linear(expected_k) * 0.25
        expected_v = context + av.linear(context) * 1.0
        expected_v = expected_v + bv.linear(expected_v) * 0.25
        assert torch.equal(k, expected_k)
        assert torch.equal(v, expected_v)
        # Another width is passed through untouched, as the same tensor.
        other = torch.randn(2, 7, 48)
        k2, v2 = apply_hypernetworks([(a, 1.0)], other)
        assert k2 is other and v2 is other


def test_processor_maps_only_key_and_value(tmp_path: Path):
    """Reference computation by hand: q from the hidden states, k/v from the mapped contexts."""
    torch.manual_seed(0)
    attn = Attention(query_dim=32, cross_attention_dim=48, heads=2, dim_head=16).eval()
    hypernetwork = Hypernetwork.from_file(relu_hypernetwork_file(tmp_path / "h.pt", [48]))
    hidden = torch.randn(2, 10, 32)
    context = torch.randn(2, 6, 48)

    with torch.no_grad():
        attn.set_processor(HypernetworkAttnProcessor([(hypernetwork, 0.8)]))
        out = attn(hidden, encoder_hidden_states=context)

        mlp_k, mlp_v = hypernetwork.layers_for(48)
        q = attn.to_q(hidden)
        k = attn.to_k(context + mlp_k.linear(context) * 0.8)
        v = attn.to_v(context + mlp_v.linear(context) * 0.8)

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(2, -1, 2, 16).transpose(1, 2)

        expected = F.scaled_dot_product_attention(heads(q), heads(k), heads(v))
        expected = attn.to_out[0](expected.transpose(1, 2).reshape(2, -1, 32))

    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


# Attention layers with the optional parts AttnProcessor2_0 handles: group norm, residual, output
# rescale, 4-D input, spatial norm, cross norm, attention mask, q/k norms.
ATTENTION_VARIANTS = {
    "cross with mask": ({"query_dim": 32, "cross_attention_dim": 48, "heads": 4, "dim_head": 8}, "3d", True),
    "self-attention": ({"query_dim": 32, "heads": 4, "dim_head": 8}, "3d", False),
    "group norm + residual + rescale (VAE style)": (
        {"query_dim": 32, "heads": 1, "dim_head": 32, "norm_num_groups": 8, "residual_connection": True,
             "rescale_output_factor": 2.0, "bias": True, "upcast_softmax": True, "_from_deprecated_attn_block": True}, "4d", False),
    "spatial norm": ({"query_dim": 32, "heads": 2, "dim_head": 16, "spatial_norm_dim": 8, "residual_connection": True}, "4d", False),
    "cross norm + qk norm": ({"query_dim": 32, "cross_attention_dim": 48, "heads": 2, "dim_head": 16,
                                  "cross_attention_norm": "layer_norm", "qk_norm": "layer_norm"}, "3d", False),
}


@pytest.mark.parametrize(("variant", "reference"), [
    (variant, reference) for variant in ATTENTION_VARIANTS for reference in (AttnProcessor2_0, AttnProcessor)
    # The classic AttnProcessor has no q/k norm.
    if not (reference is AttnProcessor and ATTENTION_VARIANTS[variant][0].get("qk_norm"))
])
def test_processor_without_hypernetworks_matches_diffusers(variant: str, reference):
    kwargs, ndim, with_mask = ATTENTION_VARIANTS[variant]
    torch.manual_seed(1)
    attn = Attention(**kwargs).eval()
    with torch.no_grad():  # random norms, so that they are not identities
        for module in attn.modules():
            if isinstance(module, (torch.nn.GroupNorm, torch.nn.LayerNorm)) and module.weight is not None:
                module.weight.normal_(1, 0.2)
                module.bias.normal_(0, 0.2)
    hidden = torch.randn(2, 32, 4, 4) if ndim == "4d" else torch.randn(2, 9, 32)
    call: dict = {}
    if kwargs.get("cross_attention_dim"):
        call["encoder_hidden_states"] = torch.randn(2, 6, kwargs["cross_attention_dim"])
    if with_mask:
        mask = torch.zeros(2, 1, 6)
        mask[..., -2:] = -10000.0  # additive (batch, 1, keys) mask, as diffusers pipelines pass it
        call["attention_mask"] = mask
    if kwargs.get("spatial_norm_dim"):
        call["temb"] = torch.randn(2, 8, 2, 2)

    with torch.no_grad():
        attn.set_processor(reference())
        expected = attn(hidden, **call)
        attn.set_processor(HypernetworkAttnProcessor())
        out = attn(hidden, **call)

    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_processor_without_hypernetworks_matches_default_on_the_unet(tiny_model: StableDiffusionModel,
                                                                     unet_inputs):
    unet = tiny_model.unet
    before = processors_by_name(unet)
    assert all(type(p) is AttnProcessor2_0 for p in before.values())  # diffusers' default on torch 2
    base = run_unet(tiny_model, unet_inputs)
    try:
        unet.set_attn_processor(HypernetworkAttnProcessor())
        ours = run_unet(tiny_model, unet_inputs)
    finally:
        unet.set_attn_processor(dict(before))
    torch.testing.assert_close(ours, base, rtol=1e-5, atol=1e-5)
    assert torch.equal(run_unet(tiny_model, unet_inputs), base)


def test_other_processors_are_not_silently_replaced(tmp_path: Path, tiny_model: StableDiffusionModel,
                                                    widths: dict[str, int]):
    class IPAdapterLike:
        def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None):
            return AttnProcessor2_0()(attn, hidden_states, encoder_hidden_states, attention_mask, temb)

    unet = tiny_model.unet
    hypernetwork = Hypernetwork.from_file(relu_hypernetwork_file(tmp_path / "h.pt", [widths["context"]]))
    before = processors_by_name(unet)
    name, target = next((n, m) for n, m in unet.named_modules() if isinstance(m, Attention) and n.endswith("attn2"))
    custom = IPAdapterLike()
    target.set_processor(custom)
    try:
        with (pytest.raises(TypeError, match=rf"{name}: its attention processor .*IPAdapterLike"),
              attach_hypernetworks(unet, [(hypernetwork, 1.0)])):
            pytest.fail("must not be entered")
        # Refused before anything changed.
        assert target.get_processor() is custom
        assert all(p is before[n] for n, p in unet.attn_processors.items() if not n.startswith(name + "."))
    finally:
        target.set_processor(before[f"{name}.processor"])


def test_bad_entries_are_refused(tmp_path: Path, tiny_model: StableDiffusionModel):
    hypernetwork = Hypernetwork.from_file(relu_hypernetwork_file(tmp_path / "h.pt", [32]))
    with pytest.raises(ValueError, match="multiplier nan"), attach_hypernetworks(tiny_model.unet, [(hypernetwork, math.nan)]):
        pass
    with pytest.raises(TypeError, match=r"hypernetworks\[0\]"), attach_hypernetworks(tiny_model.unet, [hypernetwork]):  # type: ignore[list-item]
        pass
    with attach_hypernetworks(tiny_model.unet, []) as changed:
        assert changed == ()


def test_module_runs_in_its_own_dtype_and_returns_the_callers(tmp_path: Path):
    hypernetwork = Hypernetwork.from_file(relu_hypernetwork_file(tmp_path / "h.pt", [32]))
    module = hypernetwork.layers_for(32)[0]
    x = torch.randn(2, 5, 32)
    with torch.no_grad():
        out = module(x.bfloat16(), 1.0)
        assert out.dtype == torch.bfloat16
        expected = (x.bfloat16().float() + module.linear(x.bfloat16().float())).bfloat16()
        assert torch.equal(out, expected)
