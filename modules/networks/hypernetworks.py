"""Hypernetworks in A1111's `.pt` format: loading, listing, and applying them to a diffusers UNet.

A hypernetwork is a set of small MLPs keyed by feature width. Wherever an attention layer reads a
context of width `dim` (text embeddings for cross-attention, the image tokens themselves for
self-attention), the hypernetwork's pair of MLPs for `dim` rewrites the context before the key and
value projections: `k = to_k(c + mlp_k(c) * m)`, `v = to_v(c + mlp_v(c) * m)`; the query is left
alone. Behaviour follows A1111.md §5.

How it is applied: A1111 replaces the forward of every attention class. Here nothing is patched:
`attach_hypernetworks` installs `HypernetworkAttnProcessor` through diffusers' attention-processor
seam (`Attention.set_processor`) on the attention layers whose context width the hypernetworks
cover, and puts the previous processor objects back in `finally`.

Deliberate differences from A1111, each named where it happens:
- a multiplier belongs to each `(hypernetwork, multiplier)` entry instead of being state on the
  shared modules, so one loaded hypernetwork can be used with different strengths at once (A1111
  applies a name given twice with its last multiplier; the caller decides which to pass);
- a file that cannot be used raises `HypernetworkLoadError` naming the file and the problem
  (A1111 prints a traceback and skips it);
- `layer_structure: None` in a file means the default `[1, 2, 1]` (A1111 fails on it), an
  activation name is matched case-insensitively, and `.pt` is matched case-insensitively when
  listing (A1111's glob is case-sensitive on Linux, case-insensitive on Windows);
- a file without any per-width layers is an error (A1111 loads it as a hypernetwork that does
  nothing; such a file is almost always a textual-inversion embedding in the wrong folder);
- the `<file>.optim` optimizer sidecar is ignored: it only matters for training.
"""

from __future__ import annotations

import contextlib
import difflib
import inspect
import logging
import math
import operator
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.models import attention_processor as diffusers_attention
from diffusers.models.attention_processor import Attention

from modules.library.safe_unpickle import load_pickled_checkpoint

logger = logging.getLogger(__name__)

DEFAULT_LAYER_STRUCTURE: tuple[float, ...] = (1, 2, 1)
# A1111's `parse_dropout_structure` uses this probability for every hidden layer with dropout.
DEFAULT_DROPOUT_P = 0.3

# Names A1111 maps explicitly; `None` means no activation module at all.
_NAMED_ACTIVATIONS: Mapping[str, type[torch.nn.Module] | None] = MappingProxyType({
    "linear": None,
    "relu": torch.nn.ReLU,
    "leakyrelu": torch.nn.LeakyReLU,
    "elu": torch.nn.ELU,
    "swish": torch.nn.Hardswish,  # A1111's "swish" is Hardswish, not SiLU; files depend on it
    "tanh": torch.nn.Tanh,
    "sigmoid": torch.nn.Sigmoid,
})


def _activation_table() -> Mapping[str, type[torch.nn.Module] | None]:
    """A1111's table: the named ones plus every class of `torch.nn.modules.activation`, lower-cased."""
    table: dict[str, type[torch.nn.Module] | None] = dict(_NAMED_ACTIVATIONS)
    for class_name, cls in inspect.getmembers(torch.nn.modules.activation, inspect.isclass):
        if cls.__module__ == "torch.nn.modules.activation":
            table[class_name.lower()] = cls
    return MappingProxyType(table)


ACTIVATIONS: Mapping[str, type[torch.nn.Module] | None] = _activation_table()

# Files from before the MLP became a Sequential name its two Linears `linear1`/`linear2`.
_LEGACY_KEY_RENAMES: Mapping[str, str] = MappingProxyType({
    "linear1.weight": "linear.0.weight",
    "linear1.bias": "linear.0.bias",
    "linear2.weight": "linear.1.weight",
    "linear2.bias": "linear.1.bias",
})


@dataclass(frozen=True)
class _Fail:
    """Builds the load errors for one file, so that each names the file before the problem."""

    where: str
    path: Path | None

    def __call__(self, problem: str) -> HypernetworkLoadError:
        return HypernetworkLoadError(f"Cannot load hypernetwork {self.where}: {problem}", self.path)


# Metadata keys of the file's top-level dict; integer keys are the per-width layers, and other
# keys are unknown (kept in `Hypernetwork.extra`, otherwise ignored, as in A1111).
_KNOWN_KEYS = frozenset({
    "layer_structure", "activation_func", "is_layer_norm", "use_dropout", "last_layer_dropout",
    "dropout_structure", "activate_output", "weight_initialization", "name", "step",
    "sd_checkpoint", "sd_checkpoint_name", "optional_info",
})


class HypernetworkLoadError(ValueError):
    """A hypernetwork file exists but cannot be used. `path` is the file (None for a dict)."""

    def __init__(self, message: str, path: str | os.PathLike[str] | None = None) -> None:
        super().__init__(message)
        self.path = None if path is None else os.fspath(path)


# --------------------------------------------------------------------------------------------
# The layer layout a file describes


@dataclass(frozen=True)
class HypernetworkSettings:
    """The fields of an A1111 hypernetwork file that decide which modules each MLP has.

    Validated on construction (`ValueError` naming the bad value). `dropout_structure=None`
    derives it from `use_dropout`/`last_layer_dropout` as A1111's `parse_dropout_structure` does.
    """

    layer_structure: tuple[float, ...] = DEFAULT_LAYER_STRUCTURE
    activation_func: str | None = None  # lower-case key of ACTIVATIONS; None or "linear": none
    is_layer_norm: bool = False
    use_dropout: bool = False
    last_layer_dropout: bool = False
    # One probability per entry of layer_structure; entry i+1 is the dropout after layer i.
    dropout_structure: tuple[float, ...] | None = None
    activate_output: bool = True  # A1111's default when loading (False when creating)
    weight_initialization: str = "Normal"  # how training initialised it; informational here

    def __post_init__(self) -> None:
        structure = self.layer_structure
        if (not isinstance(structure, tuple) or len(structure) < 2
                or not all(_is_real(x) and x > 0 for x in structure)):
            shown = list(structure) if isinstance(structure, tuple) else structure
            raise ValueError(f"layer_structure {shown!r} must be a list of positive numbers such as [1, 2, 1]")
        if structure[0] != 1 or structure[-1] != 1:
            raise ValueError(f"layer_structure {list(structure)} must start and end with 1 (e.g. [1, 2, 1]): "
                             "the MLP maps a context back to its own width")
        if self.activation_func is not None and self.activation_func not in ACTIVATIONS:
            close = difflib.get_close_matches(self.activation_func, list(ACTIVATIONS), n=3, cutoff=0.6)
            hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            raise ValueError(f"unsupported activation_func {self.activation_func!r}.{hint} Supported: "
                             f"{', '.join(sorted(ACTIVATIONS))}")
        dropout = self.dropout_structure
        if dropout is None:
            # Frozen dataclass: the derived value is set once, here, before anyone can see it.
            object.__setattr__(self, "dropout_structure",
                               parse_dropout_structure(structure, self.use_dropout, self.last_layer_dropout))
        elif (not isinstance(dropout, tuple) or len(dropout) != len(structure)
              or not all(_is_real(p) and 0 <= p < 1 for p in dropout)):
            example = list(parse_dropout_structure(structure, True, True))
            shown = list(dropout) if isinstance(dropout, tuple) else dropout
            raise ValueError(f"dropout_structure {shown!r} must hold one probability in [0, 1) per entry "
                             f"of layer_structure {list(structure)}, e.g. {example}")


def parse_dropout_structure(layer_structure: Sequence[float] | None, use_dropout: bool,
                            last_layer_dropout: bool) -> tuple[float, ...]:
    """A1111's derivation of the dropout probabilities for files that do not store them.

    No dropout before the first layer or after the output; 0.3 after every hidden layer except the
    last hidden one, which gets 0.3 only with `last_layer_dropout`. For `[1, 2, 1]` that means no
    dropout at all unless `last_layer_dropout`.
    """
    structure = DEFAULT_LAYER_STRUCTURE if layer_structure is None else tuple(layer_structure)
    if not use_dropout:
        return (0.0,) * len(structure)
    hidden = [DEFAULT_DROPOUT_P] * (len(structure) - 3)
    last_hidden = DEFAULT_DROPOUT_P if last_layer_dropout else 0.0
    return (0.0, *hidden, last_hidden, 0.0)


def build_layers(dim: int, settings: HypernetworkSettings) -> torch.nn.Sequential:
    """The `Sequential` A1111 builds for one width: its indices are the file's `linear.<i>` keys.

    For each step `i` of `layer_structure`: Linear(dim*ls[i] -> dim*ls[i+1]); the activation,
    except after the last Linear unless `activate_output`; LayerNorm if `is_layer_norm`; Dropout
    if `dropout_structure[i+1] > 0`. Modules are created where the current default device says
    (the loader uses "meta" so that nothing is randomly initialised before the file's weights).
    """
    structure = settings.layer_structure
    dropout = settings.dropout_structure
    assert dropout is not None  # derived in HypernetworkSettings.__post_init__
    # Validated by HypernetworkSettings; "linear" maps to None (no module), as in A1111.
    activation = ACTIVATIONS[settings.activation_func] if settings.activation_func else None
    last = len(structure) - 2
    layers: list[torch.nn.Module] = []
    for i in range(len(structure) - 1):
        width_in, width_out = int(dim * structure[i]), int(dim * structure[i + 1])
        layers.append(torch.nn.Linear(width_in, width_out))
        if activation is not None and (i < last or settings.activate_output):
            try:
                layers.append(activation())
            except TypeError as exc:
                # e.g. Threshold or MultiheadAttention need arguments; A1111 fails on them too.
                raise ValueError(
                    f"activation_func {settings.activation_func!r} cannot be built without arguments "
                    f"({exc}); hypernetworks support activations such as relu, leakyrelu, elu, swish, "
                    "tanh, sigmoid, silu, gelu"
                ) from None
        if settings.is_layer_norm:
            layers.append(torch.nn.LayerNorm(width_out))
        dropout_p = dropout[i + 1]
        if dropout_p > 0:
            # Inert in eval mode; it is here so that the indices of later modules match the file.
            layers.append(torch.nn.Dropout(p=dropout_p))
    return torch.nn.Sequential(*layers)


class HypernetworkModule(torch.nn.Module):
    """One MLP (the k or the v side for one width): `x + linear(x) * multiplier`.

    Its state dict is `linear.<i>.weight/bias`, exactly the keys of A1111's files. The multiplier is
    an argument, not state, so one loaded module can be used with several strengths at once.
    """

    def __init__(self, linear: torch.nn.Sequential) -> None:
        super().__init__()
        self.linear = linear

    def forward(self, x: torch.Tensor, multiplier: float = 1.0) -> torch.Tensor:
        weight_dtype = next(self.linear.parameters()).dtype
        if x.dtype == weight_dtype:
            return x + self.linear(x) * multiplier
        # A1111 runs hypernetworks in float even when the UNet is half precision (its
        # cond_cast_float/cond_cast_unet); here they run in whatever dtype they were loaded in.
        h = x.to(weight_dtype)
        return (h + self.linear(h) * multiplier).to(x.dtype)


@dataclass(frozen=True, eq=False)
class Hypernetwork:
    """A loaded hypernetwork: per-width `(k, v)` MLPs in eval mode, plus the file's metadata.

    Treat it as read-only: the registry's cache hands the same object to every caller.
    """

    name: str  # the file's `name` field when it has one, else the file name without extension
    layers: Mapping[int, tuple[HypernetworkModule, HypernetworkModule]]
    settings: HypernetworkSettings
    filename: Path | None = None
    step: int | None = None
    sd_checkpoint: str | None = None  # short hash of the checkpoint it was trained on
    sd_checkpoint_name: str | None = None
    optional_info: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict, repr=False)  # other metadata keys

    @property
    def dims(self) -> tuple[int, ...]:
        """Context widths this hypernetwork has layers for, e.g. (768, 320, 640, 1280)."""
        return tuple(self.layers)

    @property
    def device(self) -> torch.device:
        return next(self._parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self._parameters()).dtype

    def layers_for(self, dim: int) -> tuple[HypernetworkModule, HypernetworkModule] | None:
        """The `(k, v)` modules for a context of width `dim`, or None: that width is left alone."""
        return self.layers.get(dim)

    def modules(self) -> Iterator[HypernetworkModule]:
        for pair in self.layers.values():
            yield from pair

    def _parameters(self) -> Iterator[torch.nn.Parameter]:
        for module in self.modules():
            yield from module.parameters()

    def __repr__(self) -> str:
        return (f"Hypernetwork(name={self.name!r}, dims={list(self.dims)}, "
                f"layer_structure={list(self.settings.layer_structure)}, "
                f"activation_func={self.settings.activation_func!r}, filename={self.filename})")

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], *, device: str | torch.device = "cpu",
                  dtype: torch.dtype = torch.float32, allow_unsafe_pickle: bool = False) -> Hypernetwork:
        """Load an A1111 `.pt` hypernetwork through the restricted unpickler.

        Raises `HypernetworkLoadError` for a file that is not a usable hypernetwork, and
        `safe_unpickle`'s `UnsafeCheckpointError`/`CorruptCheckpointError` for a file the safe
        loader refuses or cannot read; all are `ValueError`s naming the file.
        """
        path = Path(path)
        # No mmap: cached hypernetworks live long, and a mapped file must not be rewritten under
        # them (e.g. by training saving a new step to the same name).
        data = load_pickled_checkpoint(path, allow_unsafe=allow_unsafe_pickle, mmap=False, map_location="cpu")
        return cls.from_dict(data, name=path.stem, filename=path, device=device, dtype=dtype)

    @classmethod
    def from_dict(cls, data: object, *, name: str, filename: Path | None = None,
                  device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> Hypernetwork:
        """Build from the dict A1111's `Hypernetwork.save` writes (see the module docstring)."""
        fail = _Fail(str(filename) if filename is not None else f"hypernetwork {name!r}", filename)

        if not dtype.is_floating_point:
            raise ValueError(f"dtype {dtype} is not a floating-point dtype; use torch.float32, "
                             "torch.float16 or torch.bfloat16")
        device = torch.device(device)
        if not isinstance(data, Mapping):
            raise fail(f"the file holds a {type(data).__module__}.{type(data).__qualname__}, not the "
                       "dict of per-width layers A1111 saves")
        settings = _parse_settings(data, fail)
        per_dim = [(key, value) for key, value in data.items() if type(key) is int]  # exact type: a bool key is not a width
        if not per_dim:
            hint = (" It looks like a textual-inversion embedding; put it in the embeddings folder."
                    if "string_to_param" in data else "")
            keys = ", ".join(repr(k) for k in list(data)[:10]) or "none"
            raise fail(f"it has no per-width layers (integer keys such as 768 or 320; keys found: {keys})."
                       f"{hint}")

        layers: dict[int, tuple[HypernetworkModule, HypernetworkModule]] = {}
        for dim, pair in per_dim:
            if dim <= 0:
                raise fail(f"layer width {dim} is not positive")
            if not isinstance(pair, (tuple, list)) or len(pair) != 2 or not all(isinstance(s, Mapping) for s in pair):
                raise fail(f"entry {dim} must be a pair (state dict for k, state dict for v), "
                           f"got {type(pair).__name__}")
            built = tuple(_load_module(dim, side, state, settings, device, dtype, fail)
                          for side, state in zip(("k", "v"), pair))
            layers[dim] = (built[0], built[1])

        file_name = data.get("name")
        return cls(
            # The stored name wins (A1111); old files store None, and then the file name is used.
            name=file_name if isinstance(file_name, str) and file_name else name,
            layers=MappingProxyType(layers),
            settings=settings,
            filename=filename,
            step=_optional_int(data.get("step")),
            sd_checkpoint=_optional_str(data.get("sd_checkpoint")),
            sd_checkpoint_name=_optional_str(data.get("sd_checkpoint_name")),
            optional_info=_optional_str(data.get("optional_info")),
            extra=MappingProxyType({k: v for k, v in data.items() if isinstance(k, str) and k not in _KNOWN_KEYS}),
        )


def _parse_settings(data: Mapping[Any, Any], fail: _Fail) -> HypernetworkSettings:
    """The layout fields of a file, with A1111's defaults for the ones it lacks."""
    raw_structure = data.get("layer_structure", None)
    structure = DEFAULT_LAYER_STRUCTURE if raw_structure is None else raw_structure
    if not isinstance(structure, (list, tuple)):
        raise fail(f"layer_structure {raw_structure!r} must be a list of numbers such as [1, 2, 1]")

    activation = data.get("activation_func", None)
    if activation is not None and not isinstance(activation, str):
        raise fail(f"activation_func {activation!r} must be a name such as 'relu' or None")
    activation = None if activation is None else activation.lower()

    last_layer_dropout = _flag(data, "last_layer_dropout", False, fail)
    use_dropout = _flag(data, "use_dropout", False, fail)
    dropout = data.get("dropout_structure", None)
    if dropout is not None:
        if not isinstance(dropout, (list, tuple)):
            raise fail(f"dropout_structure {dropout!r} must be a list of probabilities")
        if len(dropout) > len(structure):
            # A1111 reads only the first len(layer_structure) entries.
            logger.warning("%s: dropout_structure %r is longer than layer_structure %r; the rest is ignored",
                           fail.where, list(dropout), list(structure))
            dropout = dropout[:len(structure)]
        dropout = tuple(dropout)
        # A1111 derives the flag from a stored structure; it only matters for display.
        use_dropout = use_dropout or any(_is_real(p) and p > 0 for p in dropout)

    weight_init = data.get("weight_initialization", "Normal")
    try:
        return HypernetworkSettings(
            layer_structure=tuple(structure),
            activation_func=None if activation == "linear" else activation,
            is_layer_norm=_flag(data, "is_layer_norm", False, fail),
            use_dropout=use_dropout,
            last_layer_dropout=last_layer_dropout,
            dropout_structure=dropout,
            activate_output=_flag(data, "activate_output", True, fail),
            weight_initialization=weight_init if isinstance(weight_init, str) else "Normal",
        )
    except ValueError as exc:
        raise fail(str(exc)) from None


def _load_module(dim: int, side: str, state: Mapping[Any, Any], settings: HypernetworkSettings,
                 device: torch.device, dtype: torch.dtype, fail: _Fail) -> HypernetworkModule:
    """One MLP with the file's weights; built on meta so nothing is randomly initialised first."""
    try:
        with torch.device("meta"):
            module = HypernetworkModule(build_layers(dim, settings))
    except ValueError as exc:
        raise fail(str(exc)) from None

    tensors: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise fail(f"the {side} state dict for width {dim} has a non-tensor entry {key!r} "
                       f"({type(value).__name__})")
        # A1111's fix for files from before layers became a Sequential; the caller's dict is a copy.
        tensors[_LEGACY_KEY_RENAMES.get(key, key)] = value.detach()

    expected = module.state_dict()
    missing = [k for k in expected if k not in tensors]
    unexpected = [k for k in tensors if k not in expected]
    if missing or unexpected:
        raise fail(
            f"the {side} layers for width {dim} do not match the file's settings "
            f"(layer_structure={list(settings.layer_structure)}, activation_func={settings.activation_func!r}, "
            f"is_layer_norm={settings.is_layer_norm}, activate_output={settings.activate_output}, "
            f"dropout_structure={list(settings.dropout_structure)}): these settings give keys "
            f"{sorted(expected)}; missing {missing or 'none'}, unexpected {unexpected or 'none'}. "
            "The file was saved with different settings than it records, or it is damaged."
        )
    for key, param in expected.items():
        if tuple(tensors[key].shape) != tuple(param.shape):
            raise fail(f"{side} layer {key!r} for width {dim} has shape {list(tensors[key].shape)}, expected "
                       f"{list(param.shape)} for layer_structure {list(settings.layer_structure)}")
        if not tensors[key].is_floating_point():
            raise fail(f"{side} layer {key!r} for width {dim} holds {tensors[key].dtype} values, not floats")

    module.load_state_dict(tensors, strict=True, assign=True)
    module.to(device=device, dtype=dtype)
    module.requires_grad_(False)
    # Inference only: eval mode makes the Dropout modules (kept for the key indices) identity.
    module.eval()
    return module


def _is_real(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _flag(data: Mapping[Any, Any], key: str, default: bool, fail: _Fail) -> bool:
    value = data.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or (isinstance(value, int) and value in (0, 1)):
        return bool(value)
    raise fail(f"{key} {value!r} must be true or false")


def _optional_int(value: object) -> int | None:
    if value is None:
        return None
    try:
        return operator.index(value)  # also numpy and 0-d tensor integers
    except TypeError:
        logger.debug("Ignoring non-integer step %r", value)
        return None


def _optional_str(value: object) -> str | None:
    return value if isinstance(value, str) else None


# --------------------------------------------------------------------------------------------
# Application


HypernetworkEntry = tuple[Hypernetwork, float]


def apply_hypernetworks(hypernetworks: Sequence[HypernetworkEntry],
                        context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The key and value contexts for one attention call (A1111's `apply_hypernetworks`).

    Each hypernetwork with layers for `context.shape[-1]` rewrites both contexts in turn, in list
    order: `c_k = c_k + mlp_k(c_k) * m`, `c_v = c_v + mlp_v(c_v) * m`. The same hypernetwork twice
    is applied twice. Returns `(context, context)` when none applies.
    """
    context_k = context_v = context
    dim = context.shape[-1]
    for hypernetwork, multiplier in hypernetworks:
        pair = hypernetwork.layers_for(dim)
        if pair is None:
            continue
        context_k = pair[0](context_k, multiplier)
        context_v = pair[1](context_v, multiplier)
    return context_k, context_v


class HypernetworkAttnProcessor:
    """Scaled-dot-product attention whose key and value read hypernetwork-mapped contexts.

    The same computation as diffusers' `AttnProcessor2_0` (spatial norm, 4-D inputs, attention
    mask, group norm, cross norm, q/k norms, SDPA, output projection, residual, output rescale);
    the only change is `to_k`/`to_v` reading `apply_hypernetworks(...)` of the context. With no
    hypernetworks it matches `AttnProcessor2_0`. Like that processor it ignores `attn.scale`
    (SDPA's default 1/sqrt(head_dim)), so a model behaves the same with either.
    """

    def __init__(self, hypernetworks: Sequence[HypernetworkEntry] = ()) -> None:
        self.hypernetworks: tuple[HypernetworkEntry, ...] = tuple(hypernetworks)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({[(h.name, m) for h, m in self.hypernetworks]})"

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> torch.Tensor:
        # Extra positional/keyword arguments (the deprecated `scale`) are ignored, as in diffusers.
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)

        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)

        batch_size, sequence_length, _ = (
            hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
        )
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            # SDPA wants (batch, heads, query length, key length).
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])

        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)

        if encoder_hidden_states is None:
            # Self-attention: the context is the (normed) image tokens, so a hypernetwork with a
            # layer for this block's width changes it too (A1111).
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)

        context_k, context_v = apply_hypernetworks(self.hypernetworks, encoder_hidden_states)
        key = attn.to_k(context_k)
        value = attn.to_v(context_v)

        inner_dim = key.shape[-1]
        head_dim = inner_dim // attn.heads
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)

        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        hidden_states = F.scaled_dot_product_attention(
            query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False
        )
        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)

        hidden_states = attn.to_out[0](hidden_states)  # output projection
        hidden_states = attn.to_out[1](hidden_states)  # dropout (identity in eval)

        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def _replaceable_processor_types() -> tuple[type, ...]:
    """Processors that compute plain attention from to_q/to_k/to_v, so ours can stand in for them.

    Anything else (IP-Adapter, custom or trained processors) carries behaviour ours would drop.
    """
    names = ("AttnProcessor", "AttnProcessor2_0", "XFormersAttnProcessor", "SlicedAttnProcessor",
             "AttnProcessorNPU", "FusedAttnProcessor2_0")
    found = tuple(getattr(diffusers_attention, n) for n in names if hasattr(diffusers_attention, n))
    return (*found, HypernetworkAttnProcessor)


def _validate_entries(hypernetworks: Sequence[HypernetworkEntry]) -> tuple[HypernetworkEntry, ...]:
    entries: list[HypernetworkEntry] = []
    for i, entry in enumerate(hypernetworks):
        if not isinstance(entry, (tuple, list)) or len(entry) != 2 or not isinstance(entry[0], Hypernetwork):
            raise TypeError(f"hypernetworks[{i}] is {entry!r}; pass (Hypernetwork, multiplier) pairs, e.g. "
                            "[(registry.load(name), 1.0)]")
        hypernetwork, multiplier = entry
        if not _is_real(multiplier):
            raise ValueError(f"multiplier {multiplier!r} for hypernetwork {hypernetwork.name!r} must be a "
                             "finite number (1.0 is full strength, 0 turns it off)")
        entries.append((hypernetwork, float(multiplier)))
    return tuple(entries)


def _same_device(a: torch.device, b: torch.device) -> bool:
    """cuda and cuda:0 are the same device when 0 is the current one."""
    a, b = torch.device(a), torch.device(b)
    if a.type != b.type:
        return False
    if a.type == "cuda" and (a.index is None or b.index is None):
        current = torch.cuda.current_device() if torch.cuda.is_available() else 0
        return (a.index if a.index is not None else current) == (b.index if b.index is not None else current)
    return a.index == b.index


@contextlib.contextmanager
def attach_hypernetworks(unet: torch.nn.Module, hypernetworks: Sequence[HypernetworkEntry],
                         device: torch.device | str | None = None) -> Iterator[tuple[str, ...]]:
    """Apply `(hypernetwork, multiplier)` pairs, in order, to `unet`'s attention while the block runs.

    Installs `HypernetworkAttnProcessor` on every `Attention` layer whose context width (the
    input width of `to_k`) one of the hypernetworks has layers for; other layers keep their
    processor. Yields the names of the layers changed. On exit, normal or not, every changed
    layer gets its previous processor object back. A changed layer computes SDPA attention for the
    duration even if it had xformers or sliced attention before (same result, other kernel). Nested blocks stack (inner hypernetworks apply
    after outer ones). Not for concurrent use on one UNet: processors are per model, so two
    generations sharing a model must take turns (the job queue's single worker does).

    Raises before changing anything: `ValueError` for a hypernetwork on another device than the
    layer it would modify, `TypeError` for a layer whose processor is not plain attention (e.g.
    IP-Adapter), which this processor would silently replace.
    """
    entries = _validate_entries(hypernetworks)
    dims = {dim for hypernetwork, _ in entries for dim in hypernetwork.dims}
    replaceable = _replaceable_processor_types()

    plan: list[tuple[str, Attention, Any]] = []
    for name, module in unet.named_modules():
        if not isinstance(module, Attention) or not isinstance(getattr(module, "to_k", None), torch.nn.Linear):
            continue
        context_dim = module.to_k.in_features
        if context_dim not in dims:
            continue
        previous = module.get_processor()
        if not isinstance(previous, replaceable):
            raise TypeError(
                f"Cannot apply hypernetworks to {name}: its attention processor "
                f"{type(previous).__module__}.{type(previous).__qualname__} is not plain attention and "
                "would be replaced. Detach whatever installed it first, or leave hypernetworks out."
            )
        # Where the layer runs: its weights' device, unless the caller says (offloaded weights wait in
        # RAM and run on the GPU).
        runs_on = torch.device(device) if device is not None else module.to_k.weight.device
        for hypernetwork, _ in entries:
            if context_dim in hypernetwork.layers and not _same_device(hypernetwork.device, runs_on):
                raise ValueError(
                    f"Hypernetwork {hypernetwork.name!r} is on {hypernetwork.device} but {name} runs on "
                    f"{runs_on}; load it with device={str(runs_on)!r}"
                )
        plan.append((name, module, previous))

    if entries and not plan:
        logger.info("No attention layer of this model has a context width in %s (hypernetworks %s); "
                    "they have no effect on it", sorted(dims), [h.name for h, _ in entries])

    # One processor per distinct previous processor: ours over ours stacks, any other is replaced.
    replacements: dict[int, HypernetworkAttnProcessor] = {}
    installed: list[tuple[str, Attention, Any, HypernetworkAttnProcessor]] = []
    try:
        for name, module, previous in plan:
            new = replacements.get(id(previous))
            if new is None:
                inherited = previous.hypernetworks if isinstance(previous, HypernetworkAttnProcessor) else ()
                new = replacements[id(previous)] = HypernetworkAttnProcessor((*inherited, *entries))
            module.set_processor(new)
            installed.append((name, module, previous, new))
        yield tuple(name for name, _, _ in plan)
    finally:
        for name, module, previous, new in reversed(installed):
            if module.get_processor() is not new:
                logger.warning("The attention processor of %s was replaced while hypernetworks were "
                               "attached; restoring the one from before them", name)
            module.set_processor(previous)
