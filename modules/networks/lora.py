"""LoRA networks: discovery, kohya-file conversion, and per-job attachment through PEFT adapters.

The path of one `<lora:NAME:TE:UNET>` tag:
  `lora_requests_from_params` (A1111's te/unet rules) → `LoraRegistry.resolve` (file stem, then the
  `ss_output_name` alias) → `LoraRegistry.load`: the kohya state dict (`lora_unet_*`, `lora_te*_*`,
  `.lora_down/.lora_up/.alpha`) renamed by diffusers' own converter (`lora_state_dict`, which also maps
  SDXL's sgm block names) and PEFT's key mapping, kept in a bounded cache → `apply_loras`: one PEFT
  LoRA adapter per request and component (`inject_adapter_in_model` + `set_peft_model_state_dict`),
  weights set per adapter (`set_scale`), and on exit the adapters removed again
  (`recurse_remove_peft_layers`), so the model holds its original modules and outputs are bit-identical.

Alphas are given to PEFT per module (`rank_pattern` / `alpha_pattern`) instead of through diffusers'
`network_alphas`: with per-module alphas (LoCon files, whose conv alpha differs from the linear one)
diffusers 0.42.1 maps most of them to the wrong layers (109 of 160 layers of a test file got the
wrong scale). Kohya's missing alpha means alpha = rank (scale 1), as in kohya and A1111.

Cost per job (2-core CPU, full-size SD1.5 shapes, rank-32 LoRA on 264 layers, 36 MiB fp16 file):
reading + converting ≈ 50–70 ms, paid once while the file stays in the registry's cache; attaching +
detaching ≈ 0.5–0.7 s, almost all of it PEFT building its wrapper layers (≈1.4 ms per layer), paid
every job. Unfused adapters add two small matmuls per adapted layer and step (within the noise of a
7 s CPU UNet step); `fuse=True` merges them into the weights for the job instead (≈ +1.9 s per job on
that CPU for the merge and the exact restore of a weight backup).

Network types beyond plain LoRA/LoCon (LoHa, LoKr, (IA)³, DoRA, OFT, full diffs, …) are refused with
`UnsupportedLoraError` naming the type and the file; `apply_loras` turns that into a warning for the
job's info unless `strict`.
"""

from __future__ import annotations

import collections
import difflib
import logging
import os
import re
import threading
import time
import types
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from modules.library.checkpoints import walk_sorted
from modules.library.hashes import (
    HashCache,
    addnet_hash_safetensors,
    read_safetensors_metadata,
    sha256_of_file,
)
from modules.library.safetensors_io import SafetensorsFormatError, SafetensorsReader

if TYPE_CHECKING:
    import torch

# torch is imported by the functions that use it: the registry lists LoRAs while the server starts,
# before torch is imported (tests/test_startup_imports.py).

logger = logging.getLogger(__name__)

LORA_EXTENSIONS = (".safetensors", ".pt", ".ckpt")
HASH_CACHE_PREFIX = "lora/"  # A1111's cache titles: `lora/<name>`
DEFAULT_CACHE_BYTES = 1 << 30
# PEFT adapter names: `atelier_lora_<index of the request>`, so two requests of one file stay apart.
ADAPTER_PREFIX = "atelier_lora_"
# Skip a LoRA when more than this share of its layers has no counterpart in the model: it was made
# for another base model (an SD1 LoRA on SDXL matches the CLIP-L text encoder and nothing else).
MAX_UNMATCHED_SHARE = 0.5

# kohya module-name prefixes: UNet, SD1/SD2 text encoder, SDXL's CLIP-L and CLIP-G.
_KOHYA_PREFIXES = ("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")
_LORA_SUFFIXES = frozenset({"lora_down.weight", "lora_up.weight", "alpha"})
# Suffixes of other LyCORIS/kohya network types, checked in this order; the first match names the type.
_OTHER_NETWORK_TYPES: tuple[tuple[str, str], ...] = (
    ("dora_scale", "DoRA (dora_scale)"),
    ("hada_", "LoHa (hada_*)"),
    ("lokr_", "LoKr (lokr_*)"),
    ("oft_", "OFT (oft_*)"),
    ("lora_mid.", "LoCon with CP decomposition (lora_mid)"),
    ("diff", "full weight difference (diff)"),
    ("on_input", "(IA)³ (on_input)"),
    ("w_norm", "norm layers (w_norm/b_norm)"),
    ("b_norm", "norm layers (w_norm/b_norm)"),
    ("a1.", "GLoRA (a1/a2/b1/b2)"),
    ("lora_up.bias", "LoRA with bias"),
    ("weight", "(IA)³ or full weights (weight)"),
)
# Textual-inversion embeddings some LoRA files carry; A1111 loads them, here they are skipped.
_BUNDLED_EMBEDDING_PREFIX = "bundle_emb."

_SHA256_RE = re.compile(r"^[0-9a-fA-F]{64}$")


# --- errors --------------------------------------------------------------------------------------


class LoraError(ValueError):
    """A LoRA cannot be used; the message names the file or name and what to do."""


class LoraNotFoundError(LoraError):
    """No LoRA file has the requested name."""


class UnsupportedLoraError(LoraError):
    """The file holds a network type or layout this loader does not handle."""


class IncompatibleLoraError(LoraError):
    """The LoRA's layers do not fit the loaded model (it was trained for another base model)."""


class LoraRestoreError(RuntimeError):
    """Removing the adapters did not give the original modules back; the model must be reloaded."""


# --- requests --------------------------------------------------------------------------------------


class NetworkParams(Protocol):
    """What `modules.networks.syntax.ExtraNetworkParams` holds for one `<lora:…>` tag."""

    positional: Sequence[str]
    named: Mapping[str, str]


@dataclass(frozen=True)
class LoraRequest:
    """One LoRA for one job. `dyn` (DyLoRA rank truncation) is carried only to be reported as ignored."""

    name: str
    te_weight: float = 1.0
    unet_weight: float = 1.0
    dyn: int | None = None


def _number(text: Any, what: str, tag: str) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        raise LoraError(f"{tag}: {what} {text!r} is not a number; write it like 0.8") from None


def lora_requests_from_params(params_list: Iterable[NetworkParams]) -> list[LoraRequest]:
    """A1111's reading of `<lora:NAME[:TE[:UNET[:DYN]]]>`, one request per tag, in prompt order.

    te = positional[1] or 1.0, then `te=`; unet = positional[2] or te, then `unet=`; dyn = positional[3]
    or `dyn=` (kept, not applied). A missing name or a weight that is not a number raises `LoraError`.
    """
    requests = []
    for params in params_list:
        # Items from code (scripts building params) may be numbers rather than strings.
        positional = list(params.positional)
        named = dict(params.named)
        tag = "<lora:" + ":".join([str(p) for p in positional] + [f"{k}={v}" for k, v in named.items()]) + ">"
        if not positional or not str(positional[0]).strip():
            raise LoraError(f"{tag}: no LoRA name; write it as <lora:NAME:WEIGHT>")
        te = _number(positional[1], "text-encoder weight", tag) if len(positional) > 1 else 1.0
        te = _number(named["te"], "te=", tag) if "te" in named else te
        unet = _number(positional[2], "UNet weight", tag) if len(positional) > 2 else te
        unet = _number(named["unet"], "unet=", tag) if "unet" in named else unet
        dyn_text = named.get("dyn", positional[3] if len(positional) > 3 else None)
        dyn = int(_number(dyn_text, "dyn", tag)) if dyn_text is not None else None
        requests.append(LoraRequest(str(positional[0]), te_weight=te, unet_weight=unet, dyn=dyn))
    return requests


# --- discovery -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoraInfo:
    """One LoRA file as listed."""

    name: str  # file stem: what `<lora:NAME>` uses
    path: Path
    alias: str  # `ss_output_name` from the metadata (the name it was trained as), else the name
    metadata: Mapping[str, Any]  # decoded safetensors `__metadata__`; empty for pickles
    mtime: float
    size: int

    @property
    def is_safetensors(self) -> bool:
        return self.path.suffix.lower() == ".safetensors"

    @property
    def cache_title(self) -> str:
        return HASH_CACHE_PREFIX + self.name


@dataclass(frozen=True)
class LoraLayer:
    """One adapted layer: `W' = W + up @ down * alpha / rank * weight` (kohya's definition)."""

    down: torch.Tensor  # (rank, in) or (rank, in, kh, kw)
    up: torch.Tensor  # (out, rank) or (out, rank, 1, 1)
    alpha: float

    @property
    def rank(self) -> int:
        return self.down.shape[0]


@dataclass(frozen=True)
class ConvertedLora:
    """A LoRA file in PEFT module names, per component (`unet`, `text_encoder`, `text_encoder_2`).

    Text-encoder names have no `text_model.` level (transformers ≥ 5.6 CLIPTextModel spelling); it is
    added back for encoders that keep it. `notes` are facts about the file worth a job warning.
    """

    info: LoraInfo
    components: Mapping[str, Mapping[str, LoraLayer]]
    notes: tuple[str, ...]
    nbytes: int

    @property
    def layer_count(self) -> int:
        return sum(len(layers) for layers in self.components.values())


class LoraRegistry:
    """The LoRA files under `dirs` (`--lora-dir`, `models/Lora`), and a bounded cache of converted files.

    Nothing is scanned until `refresh()`. Names are file stems; a second file with the same stem in
    another folder is ignored with a warning (A1111 lets the last one win, silently). Converted files
    stay in memory up to `cache_bytes` (least recently used first out; 0 disables), so a LoRA used in
    consecutive jobs is read and converted once. Thread-safe.
    """

    def __init__(
        self,
        dirs: Sequence[str | os.PathLike],
        *,
        hash_cache: HashCache | None = None,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        allow_unsafe_pickle: bool = False,
    ):
        self._dirs = list(dict.fromkeys(os.path.abspath(d) for d in dirs))
        self._hash_cache = hash_cache
        self._cache_bytes = cache_bytes
        self._allow_unsafe_pickle = allow_unsafe_pickle  # --disable-safe-unpickle
        self._lock = threading.RLock()
        self._by_name: dict[str, LoraInfo] = {}
        self._by_alias: dict[str, LoraInfo] = {}
        self._converted: collections.OrderedDict[tuple, ConvertedLora] = collections.OrderedDict()
        self._converted_bytes = 0
        self._hashes: dict[tuple[Path, float], str] = {}  # when there is no HashCache

    @property
    def dirs(self) -> list[str]:
        return list(self._dirs)

    def refresh(self) -> None:
        """Rescan the folders; metadata of unchanged files comes from the hash cache when there is one."""
        previous = {info.path: info for info in self.list()}
        by_name: dict[str, LoraInfo] = {}
        visited: set[str] = set()
        for root in self._dirs:
            for folder, filenames in walk_sorted(root, visited=visited):
                for filename in filenames:
                    stem, ext = os.path.splitext(filename)
                    if ext.lower() not in LORA_EXTENSIONS:
                        continue
                    path = Path(folder, filename)
                    if stem in by_name:
                        logger.warning("LoRA %s has the same name as %s and is not listed; rename one of them",
                                       path, by_name[stem].path)
                        continue
                    info = self._describe(stem, path, previous.get(path))
                    if info is not None:
                        by_name[stem] = info
        # An alias resolves only when exactly one file claims it and no file is named so.
        claims = collections.Counter(info.alias for info in by_name.values())
        by_alias = {info.alias: info for info in by_name.values()
                    if info.alias != info.name and claims[info.alias] == 1 and info.alias not in by_name}
        with self._lock:
            self._by_name, self._by_alias = by_name, by_alias
        if self._hash_cache is not None:
            self._hash_cache.flush()
        logger.info("Found %d LoRA files in %s", len(by_name), ", ".join(self._dirs))

    def _describe(self, name: str, path: Path, previous: LoraInfo | None) -> LoraInfo | None:
        try:
            stat = path.stat()
        except OSError as e:
            logger.warning("Cannot read LoRA %s (%s); it is not listed", path, e.strerror)
            return None
        if previous is not None and previous.mtime == stat.st_mtime and previous.size == stat.st_size \
                and previous.name == name:
            return previous
        metadata: Mapping[str, Any] = {}
        if path.suffix.lower() == ".safetensors":
            try:
                if self._hash_cache is not None:
                    metadata = self._hash_cache.safetensors_metadata(HASH_CACHE_PREFIX + name, path,
                                                                     mtime=stat.st_mtime)
                else:
                    metadata = read_safetensors_metadata(path)
            except (SafetensorsFormatError, OSError) as e:
                # Listed anyway: using it then gives the same error in the job's info, where it is seen.
                logger.warning("Cannot read the header of LoRA %s: %s", path, e)
        alias = metadata.get("ss_output_name")
        alias = alias.strip() if isinstance(alias, str) and alias.strip() else name
        return LoraInfo(name=name, path=path, alias=alias, metadata=metadata, mtime=stat.st_mtime, size=stat.st_size)

    def list(self) -> list[LoraInfo]:
        with self._lock:
            return list(self._by_name.values())

    def names(self) -> list[str]:
        with self._lock:
            return list(self._by_name)

    def __contains__(self, name: object) -> bool:
        with self._lock:
            return name in self._by_name or name in self._by_alias

    def resolve(self, name: str) -> LoraInfo:
        """The file for `<lora:name>`: by file stem, else by a unique `ss_output_name` alias."""
        with self._lock:
            info = self._by_name.get(name) or self._by_alias.get(name)
            known = list(self._by_name)
        if info is not None:
            return info
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else \
            f"; put the file in {self._dirs[0] if self._dirs else 'models/Lora'} and refresh the list"
        raise LoraNotFoundError(f"LoRA {name!r} not found{hint}")

    # --- hashes

    def shorthash(self, info: LoraInfo) -> str:
        """The 12-hex hash in `Lora hashes`: kohya's `sshs_model_hash` when the file records one (as in
        A1111), else the addnet hash (safetensors) or the sha256 (pickles), cached by mtime."""
        try:
            return self._shorthash(info)
        except OSError as e:
            raise LoraError(f"Cannot read LoRA {info.path}: {e.strerror or e}; refresh the LoRA list") from e

    def _shorthash(self, info: LoraInfo) -> str:
        recorded = info.metadata.get("sshs_model_hash")
        if isinstance(recorded, str) and _SHA256_RE.match(recorded):
            return recorded[:12].lower()
        if self._hash_cache is not None:
            if info.is_safetensors:
                value = self._hash_cache.addnet_sha256(info.cache_title, info.path)
            else:
                value = self._hash_cache.sha256(info.cache_title, info.path)
            assert value is not None  # compute=True always gives a value
            self._hash_cache.flush()
            return value[:12]
        key = (info.path, info.mtime)
        with self._lock:
            value = self._hashes.get(key)
        if value is None:
            value = addnet_hash_safetensors(info.path) if info.is_safetensors else sha256_of_file(info.path)
            with self._lock:
                self._hashes[key] = value
        return value[:12]

    # --- loading

    def load(self, info: LoraInfo, *, dtype: torch.dtype | None = None, layers_per_block: int = 2) -> ConvertedLora:
        """The converted file, from the cache when the file is unchanged. Tensors are on the CPU in
        `dtype` (default float32). `layers_per_block` of the UNet maps SDXL's sgm block numbers (2 for
        every SD UNet)."""
        import torch

        dtype = torch.float32 if dtype is None else dtype
        key = (info.path, info.mtime, info.size, dtype, layers_per_block)
        with self._lock:
            cached = self._converted.get(key)
            if cached is not None:
                self._converted.move_to_end(key)
                return cached
        try:
            converted = convert_lora_file(info, dtype=dtype, layers_per_block=layers_per_block,
                                          allow_unsafe_pickle=self._allow_unsafe_pickle)
        except OSError as e:
            raise LoraError(f"Cannot read LoRA {info.path}: {e.strerror or e}; refresh the LoRA list") from e
        with self._lock:
            if converted.nbytes <= self._cache_bytes and key not in self._converted:
                self._converted[key] = converted
                self._converted_bytes += converted.nbytes
                while self._converted_bytes > self._cache_bytes:
                    _, dropped = self._converted.popitem(last=False)
                    self._converted_bytes -= dropped.nbytes
        return converted

    def clear_cache(self) -> None:
        with self._lock:
            self._converted.clear()
            self._converted_bytes = 0

    @property
    def cached_bytes(self) -> int:
        with self._lock:
            return self._converted_bytes


# --- conversion --------------------------------------------------------------------------------------


def _split_key(key: str) -> tuple[str, str]:
    module, _, suffix = key.partition(".")
    return module, suffix


def check_network_type(keys: Iterable[str], path: Path) -> None:
    """Raise `UnsupportedLoraError` unless every key is a kohya LoRA/LoCon key (bundled embeddings aside)."""
    keys = [k for k in keys if not k.startswith(_BUNDLED_EMBEDDING_PREFIX)]
    if not keys:
        raise UnsupportedLoraError(f"{path}: the file holds no LoRA layers; it is not a LoRA")
    foreign = [k for k in keys if not k.startswith(_KOHYA_PREFIXES)]
    if foreign:
        if any(".lora_A." in k or ".lora.down." in k or k.startswith(("unet.", "text_encoder.", "transformer."))
               for k in foreign):
            layout = "diffusers/PEFT layout"
        else:
            layout = "layout"
        raise UnsupportedLoraError(
            f"Unsupported LoRA {layout} in {path} (key {foreign[0]!r}): only kohya-style files "
            "(lora_unet_*, lora_te_*, lora_te1_*/lora_te2_*) are supported; convert it with kohya's "
            "sd-scripts, or check that it is an SD1/SD2/SDXL LoRA")
    other = [k for k in keys if _split_key(k)[1] not in _LORA_SUFFIXES]
    if other:
        suffixes = [_split_key(k)[1] for k in other]
        for marker, network_type in _OTHER_NETWORK_TYPES:
            if any(s.startswith(marker) for s in suffixes):
                break
        else:
            network_type = f"unknown (key {other[0]!r})"
        raise UnsupportedLoraError(
            f"Unsupported LoRA type {network_type} in {path}: only LoRA and LoCon "
            "(lora_down/lora_up/alpha) are supported; use a plain LoRA version of this network")


def _read_tensors(info: LoraInfo, dtype: torch.dtype,
                  allow_unsafe_pickle: bool) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The file's LoRA tensors in `dtype` (alphas stay float32), and notes; the network type is
    checked from the key names before any tensor data is read."""
    import torch

    notes = []
    if info.is_safetensors:
        try:
            with SafetensorsReader(info.path) as reader:
                keys = reader.keys()
                check_network_type(keys, info.path)
                tensors = {k: reader.read(k, dtype=torch.float32 if k.endswith(".alpha") else dtype)
                           for k in keys if not k.startswith(_BUNDLED_EMBEDDING_PREFIX)}
        except SafetensorsFormatError as e:
            raise LoraError(f"{e}. Re-download the LoRA file.") from e
    else:
        from modules.library.safe_unpickle import (
            PickledCheckpointError,
            load_pickled_checkpoint,
            unwrap_state_dict,
        )

        try:
            raw = unwrap_state_dict(load_pickled_checkpoint(info.path, allow_unsafe=allow_unsafe_pickle), info.path)
        except PickledCheckpointError as e:
            raise LoraError(str(e)) from e
        keys = list(raw)
        check_network_type(keys, info.path)
        tensors = {k: v.to(torch.float32 if k.endswith(".alpha") else dtype)
                   for k, v in raw.items() if not k.startswith(_BUNDLED_EMBEDDING_PREFIX)}
    embeddings = sorted({k.split(".")[1] for k in keys if k.startswith(_BUNDLED_EMBEDDING_PREFIX)})
    if embeddings:
        notes.append(f"LoRA {info.name}: bundled embeddings {', '.join(embeddings)} are not supported and were "
                     "ignored; put them in embeddings/ as separate files")
    return tensors, notes


def convert_lora_file(info: LoraInfo, *, dtype: torch.dtype | None = None, layers_per_block: int = 2,
                      allow_unsafe_pickle: bool = False) -> ConvertedLora:
    """Read a kohya LoRA file and rename its layers to the diffusers/transformers module names
    (tensors in `dtype`, default float32)."""
    import torch

    dtype = torch.float32 if dtype is None else dtype
    started = time.perf_counter()
    tensors, notes = _read_tensors(info, dtype, allow_unsafe_pickle)
    components = convert_kohya_state_dict(tensors, info.path, layers_per_block=layers_per_block)
    nbytes = sum(layer.down.nbytes + layer.up.nbytes for layers in components.values() for layer in layers.values())
    converted = ConvertedLora(info=info, components=components, notes=tuple(notes), nbytes=nbytes)
    logger.debug("Read LoRA %s: %d layers, %.1f MiB in %.2f s", info.path, converted.layer_count, nbytes / 2**20,
                 time.perf_counter() - started)
    return converted


def convert_kohya_state_dict(tensors: Mapping[str, torch.Tensor], path: Path, *,
                             layers_per_block: int = 2) -> dict[str, dict[str, LoraLayer]]:
    """kohya keys → `{component: {module name: LoraLayer}}` through diffusers' converters.

    diffusers' `lora_state_dict` renames kohya's underscore names (and SDXL's sgm block numbers, given
    the UNet's `layers_per_block`) and `convert_*_to_peft` gives PEFT's `lora_A`/`lora_B`. The tensors
    pass through unchanged, so each converted `lora_A` is matched back to its kohya module by identity
    to pick up the alpha, which diffusers' own alpha handling would misplace.
    """
    from diffusers.loaders import StableDiffusionLoraLoaderMixin
    from diffusers.utils import convert_unet_state_dict_to_peft
    from diffusers.utils.state_dict_utils import (
        StateDictType,
        convert_state_dict_to_peft,
    )

    modules: dict[str, dict[str, torch.Tensor]] = collections.defaultdict(dict)
    for key, tensor in tensors.items():
        module, suffix = _split_key(key)
        modules[module][suffix] = tensor
    kohya: dict[str, torch.Tensor] = {}
    alpha_of: dict[int, float] = {}
    for module, parts in modules.items():
        if "lora_down.weight" not in parts or "lora_up.weight" not in parts:
            missing = "lora_up" if "lora_down.weight" in parts else "lora_down"
            raise LoraError(f"{path}: layer {module} has no {missing} weight; the file is damaged, re-download it")
        down, up = parts["lora_down.weight"], parts["lora_up.weight"]
        if down.shape[0] != up.shape[1] or down.ndim not in (2, 4) or up.ndim != down.ndim:
            raise LoraError(f"{path}: layer {module} has lora_down {list(down.shape)} and lora_up "
                            f"{list(up.shape)}, which do not multiply; the file is damaged")
        kohya[f"{module}.lora_down.weight"] = down
        kohya[f"{module}.lora_up.weight"] = up
        alpha = parts.get("alpha")
        # No alpha: kohya trained at scale 1 (alpha = rank); A1111 reads it the same way.
        alpha_of[id(down)] = float(alpha.item()) if alpha is not None else float(down.shape[0])

    # diffusers' sgm block mapping reads only `layers_per_block` from the UNet config.
    unet_config = types.SimpleNamespace(layers_per_block=layers_per_block)
    try:
        converted, _ = StableDiffusionLoraLoaderMixin.lora_state_dict(dict(kohya), unet_config=unet_config)
    except (ValueError, KeyError, IndexError) as e:
        raise UnsupportedLoraError(f"{path}: diffusers cannot read its layer names ({e}); it is probably not "
                                   "an SD1/SD2/SDXL LoRA") from e

    components: dict[str, dict[str, LoraLayer]] = {}
    for component in ("unet", "text_encoder", "text_encoder_2"):
        part = {k[len(component) + 1:]: v for k, v in converted.items() if k.startswith(component + ".")}
        if not part:
            continue
        if component == "unet":
            peft_keys = convert_unet_state_dict_to_peft(part)
        else:
            peft_keys = convert_state_dict_to_peft(part, original_type=StateDictType.DIFFUSERS_OLD)
        layers: dict[str, LoraLayer] = {}
        for key, down in peft_keys.items():
            key = key.replace(".lora.down.weight", ".lora_A.weight")  # text_projection keeps diffusers' spelling
            if not key.endswith(".lora_A.weight"):
                continue
            name = key[: -len(".lora_A.weight")]
            up_key = next((k for k in (f"{name}.lora_B.weight", f"{name}.lora.up.weight") if k in peft_keys), None)
            if up_key is None or id(down) not in alpha_of:
                raise UnsupportedLoraError(f"{path}: diffusers renamed layer {name} in an unexpected way; "
                                           "this file layout is not supported")
            if component != "unet":
                name = name.removeprefix("text_model.")
            layers[name] = LoraLayer(down=down, up=peft_keys[up_key], alpha=alpha_of[id(down)])
        components[component] = layers
    converted_count = sum(len(v) for v in components.values())
    if converted_count != len(modules):
        raise UnsupportedLoraError(f"{path}: {len(modules) - converted_count} of {len(modules)} layers could not "
                                   "be renamed to model layers; this file layout is not supported")
    return components


# --- attaching -------------------------------------------------------------------------------------------


@dataclass
class LoadedLora:
    request: LoraRequest
    info: LoraInfo
    shorthash: str
    adapter_name: str


@dataclass
class AppliedLoras:
    """What `apply_loras` did for one job: the LoRAs in effect, and warnings for the job's info."""

    loaded: list[LoadedLora] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def infotext_hashes(self) -> str:
        """The `Lora hashes` value: `name: 12hex, …`, names as written in the prompt, with `:` and `,`
        removed so the list stays parseable (A1111's rule)."""
        return ", ".join(f"{item.request.name.replace(':', '').replace(',', '')}: {item.shorthash}"
                         for item in self.loaded)


def _fit_layer(layer: LoraLayer, module: torch.nn.Module) -> LoraLayer | None:
    """`layer` shaped for `module` (kohya stores 1x1 convs and linears either way), or None if it does not fit."""
    import torch

    down, up = layer.down, layer.up
    if isinstance(module, torch.nn.Linear):
        if down.ndim == 4 and down.shape[2:] == (1, 1) and up.shape[2:] == (1, 1):
            down, up = down.flatten(1), up.flatten(1)
        if down.ndim == 2 and down.shape[1] == module.in_features and up.shape[0] == module.out_features:
            return LoraLayer(down, up, layer.alpha)
        return None
    if isinstance(module, torch.nn.Conv2d) and module.groups == 1:
        if down.ndim == 2:  # a linear-shaped layer for a 1x1 conv; the kernel check below rejects others
            down = down[:, :, None, None]
        if up.ndim == 2:
            up = up[:, :, None, None]
        if (down.shape[1] == module.in_channels and tuple(down.shape[2:]) == module.kernel_size
                and up.shape[0] == module.out_channels and tuple(up.shape[2:]) == (1, 1)):
            return LoraLayer(down, up, layer.alpha)
    return None


def _lora_config(layers: Mapping[str, LoraLayer]):
    """A PEFT LoraConfig targeting exactly `layers`, with each layer's own rank and alpha."""
    from peft import LoraConfig

    (rank, alpha), _ = collections.Counter((l.rank, l.alpha) for l in layers.values()).most_common(1)[0]
    # `^` + escaped name: PEFT matches pattern keys as `(.*\.)?(key)$`, so this matches only that module.
    rank_pattern = {f"^{re.escape(n)}": l.rank for n, l in layers.items() if l.rank != rank}
    alpha_pattern = {f"^{re.escape(n)}": l.alpha for n, l in layers.items() if l.alpha != alpha}
    return LoraConfig(r=rank, lora_alpha=alpha, target_modules=sorted(layers), rank_pattern=rank_pattern,
                      alpha_pattern=alpha_pattern, lora_dropout=0.0, bias="none", inference_mode=True)


class _Attachment:
    """PEFT adapters on the components of one model, and how to take them off again."""

    def __init__(self, model: Any):
        self.components: dict[str, torch.nn.Module] = {
            name: module for name, module in model.modules().items() if name == "unet" or name.startswith("text_encoder")
        }
        for name, module in self.components.items():
            existing = getattr(module, "peft_config", None)
            if existing:
                raise LoraError(
                    f"The model's {name} already carries adapters ({', '.join(existing)}): LoRAs are being applied "
                    "twice (nested apply_loras?) or by another add-on; finish that job first")
        # What must come back: every parameter and buffer, as the same tensor objects.
        self._snapshot = {name: _tensors_of(module) for name, module in self.components.items()}
        self._touched: set[str] = set()
        self.adapters: dict[str, list[tuple[str, float]]] = collections.defaultdict(list)
        # (weight, its value before merging) for fused layers; copied back on removal, since PEFT's
        # unmerge subtracts the delta again and is not bit-exact.
        self._backups: list[tuple[torch.Tensor, torch.Tensor]] = []

    def add(self, component: str, adapter_name: str, layers: Mapping[str, LoraLayer], weight: float) -> None:
        from peft import inject_adapter_in_model, set_peft_model_state_dict

        module = self.components[component]
        device = next(module.parameters()).device
        state_dict: dict[str, torch.Tensor] = {}
        for name, layer in layers.items():
            # No copy when the cache already holds the model's dtype on its device (the CPU case).
            state_dict[f"{name}.lora_A.weight"] = layer.down.to(device)
            state_dict[f"{name}.lora_B.weight"] = layer.up.to(device)
        self._touched.add(component)
        # Meta-device init + assign: no random init of weights about to be overwritten, no copy.
        with warnings.catch_warnings():
            # PEFT warns on every adapter after the first ("multiple adapters"): that is the point here.
            warnings.filterwarnings("ignore", message="Already found a `peft_config`", category=UserWarning)
            inject_adapter_in_model(_lora_config(layers), module, adapter_name=adapter_name, low_cpu_mem_usage=True)
        result = set_peft_model_state_dict(module, state_dict, adapter_name=adapter_name, low_cpu_mem_usage=True)
        missing = [k for k in result.missing_keys if adapter_name in k]
        if result.unexpected_keys or missing:
            raise LoraError(f"PEFT did not take all layers of adapter {adapter_name} (unexpected "
                            f"{result.unexpected_keys[:3]}, missing {missing[:3]})")
        self.adapters[component].append((adapter_name, weight))

    def discard(self, adapter_name: str) -> None:
        """Take one half-attached adapter off again (its wrapped layers go in `remove`)."""
        from peft.tuners.tuners_utils import BaseTunerLayer

        for component in self._touched:
            module = self.components[component]
            for layer in module.modules():
                if isinstance(layer, BaseTunerLayer) and adapter_name in getattr(layer, "lora_A", {}):
                    layer.delete_adapter(adapter_name)
            getattr(module, "peft_config", {}).pop(adapter_name, None)
            self.adapters[component] = [a for a in self.adapters[component] if a[0] != adapter_name]

    def activate(self) -> None:
        """Make every adapter active with its weight (PEFT's scale = weight * alpha / rank)."""
        from peft.tuners.tuners_utils import BaseTunerLayer

        for component, adapters in self.adapters.items():
            names = [name for name, _ in adapters]
            for layer in self.components[component].modules():
                if isinstance(layer, BaseTunerLayer):
                    layer.set_adapter(names, inference_mode=True)
                    for name, weight in adapters:
                        layer.set_scale(name, weight)
                    if any(p.is_meta for p in layer.parameters()):
                        raise LoraError(f"PEFT left {component} LoRA weights on the meta device")

    def fuse(self) -> None:
        """Merge the active adapters into the base weights (PEFT's `merge`), keeping a copy of each weight."""
        from peft.tuners.tuners_utils import BaseTunerLayer

        for component, adapters in self.adapters.items():
            names = [name for name, _ in adapters]
            for layer in self.components[component].modules():
                if isinstance(layer, BaseTunerLayer):
                    present = [name for name in names if name in getattr(layer, "lora_A", {})]
                    if present:
                        weight = layer.get_base_layer().weight
                        self._backups.append((weight, weight.detach().clone()))
                        layer.merge(adapter_names=present)

    def remove(self) -> None:
        """Put the original modules back; raise `LoraRestoreError` if anything differs from before."""
        import torch
        from diffusers.utils import recurse_remove_peft_layers

        with torch.no_grad():
            for weight, original in reversed(self._backups):
                weight.copy_(original)
        self._backups.clear()
        for component in self._touched:
            module = self.components[component]
            recurse_remove_peft_layers(module)
            if "peft_config" in vars(module):
                del module.peft_config
        changed = [name for name in self._touched if _tensors_of(self.components[name]) != self._snapshot[name]]
        self._touched.clear()
        if changed:
            raise LoraRestoreError(f"Removing LoRAs did not restore the model's {', '.join(changed)}; reload the "
                                   "checkpoint before the next job")


def _tensors_of(module: torch.nn.Module) -> dict[str, int]:
    # Identity, not values: removal swaps the original modules back in (values only change when fused,
    # and those are copied back from the backup first); comparing ids costs microseconds, values seconds.
    return {name: id(t) for name, t in list(module.named_parameters()) + list(module.named_buffers())}


def _base_layer(module: torch.nn.Module) -> torch.nn.Module:
    # A layer an earlier request of the same job already wrapped: fit against the original inside.
    get_base_layer = getattr(module, "get_base_layer", None)
    return get_base_layer() if callable(get_base_layer) else module


def _module_name(names: Mapping[str, torch.nn.Module], name: str) -> str | None:
    # CLIPTextModelWithProjection keeps the `text_model.` level that transformers ≥ 5.6 CLIPTextModel drops.
    for candidate in (name, "text_model." + name):
        if candidate in names:
            return candidate
    return None


def _fit_to_component(converted: ConvertedLora, component: str,
                      module: torch.nn.Module) -> tuple[dict[str, LoraLayer], list[str]]:
    """The LoRA's layers for `component` under the module's own names, and the names that did not fit."""
    named = dict(module.named_modules())
    fitted, unmatched = {}, []
    for name, layer in converted.components.get(component, {}).items():
        target = _module_name(named, name)
        fit = _fit_layer(layer, _base_layer(named[target])) if target is not None else None
        if fit is None:
            unmatched.append(f"{component}.{name}")
        else:
            fitted[target] = fit
    return fitted, unmatched


def _attach_one(attachment: _Attachment, index: int, request: LoraRequest,
                converted: ConvertedLora) -> tuple[str, list[str]]:
    """Adapters for one request; returns its adapter name and warnings for the job. Raises `LoraError`
    (`IncompatibleLoraError` when the LoRA was made for another base model)."""
    adapter_name = f"{ADAPTER_PREFIX}{index}"
    plan: list[tuple[str, dict[str, LoraLayer], float]] = []
    unmatched: list[str] = []
    total = 0
    for component in converted.components:
        weight = request.unet_weight if component == "unet" else request.te_weight
        module = attachment.components.get(component)
        layers = converted.components[component]
        total += len(layers)
        if module is None:
            unmatched.extend(f"{component}.{name}" for name in layers)
            continue
        fitted, missing = _fit_to_component(converted, component, module)
        unmatched.extend(missing)
        if weight != 0 and fitted:  # weight 0 leaves the component untouched, bit for bit
            plan.append((component, fitted, weight))
    if total and len(unmatched) > MAX_UNMATCHED_SHARE * total:
        raise IncompatibleLoraError(
            f"LoRA {request.name} ({converted.info.path}) does not fit this model: {len(unmatched)} of {total} "
            f"layers have no matching layer (e.g. {unmatched[0]}); it was probably trained for another base "
            "model (SD1 vs SD2 vs SDXL). Pick a LoRA made for this checkpoint's family")
    notes = list(converted.notes)
    if unmatched:
        notes.append(f"LoRA {request.name}: {len(unmatched)} of {total} layers have no matching layer in this "
                        f"model and were skipped (e.g. {unmatched[0]})")
    try:
        for component, fitted, weight in plan:
            attachment.add(component, adapter_name, fitted, weight)
    except (ValueError, RuntimeError, KeyError) as e:  # PEFT's and torch's refusals; the job goes on without it
        attachment.discard(adapter_name)
        raise LoraError(f"LoRA {request.name} ({converted.info.path}) could not be attached: {e}") from e
    return adapter_name, notes


@contextmanager
def apply_loras(model: Any, requests: Sequence[LoraRequest], registry: LoraRegistry, *,
                strict: bool = False, fuse: bool = False) -> Iterator[AppliedLoras]:
    """Attach `requests` to `model` (a `StableDiffusionModel`) for one job; detach on exit, in `finally`.

    Each request becomes one PEFT adapter on the UNet (weighted `unet_weight`) and on each text encoder
    (`te_weight`); a weight of 0 attaches nothing there. Several requests add up, the same name twice
    counts twice (as in A1111). A LoRA that is unknown, unsupported or made for another model is
    skipped with an entry in `.warnings` (raised as `LoraError` when `strict`). On exit the model holds
    its own modules again: outputs are bit-identical to those before. Not re-entrant for one model.

    `fuse` merges the adapters into the weights for the job (PEFT's `merge`): no extra work per
    forward pass, at the price of the merge and a copy of every adapted weight (≈ 1.4 GB for a
    typical SD1.5 LoRA in fp32), written back on exit because PEFT's unmerge is not bit-exact. Worth
    it where unfused adapters cost more per step than that (measure on the device; see module doc).
    """
    applied = AppliedLoras()
    if not requests:
        yield applied
        return
    attachment = _Attachment(model)
    layers_per_block = int(getattr(getattr(model.unet, "config", None), "layers_per_block", 2))
    try:
        for index, request in enumerate(requests):
            try:
                info = registry.resolve(request.name)
                converted = registry.load(info, dtype=model.dtype, layers_per_block=layers_per_block)
                shorthash = registry.shorthash(info)
                adapter_name, notes = _attach_one(attachment, index, request, converted)
            except LoraError as e:
                if strict:
                    raise
                logger.warning("%s", e)
                applied.warnings.append(str(e))
                continue
            if request.dyn is not None:
                notes.append(f"LoRA {request.name}: dyn={request.dyn} is not supported and was ignored")
            applied.warnings.extend(notes)
            applied.loaded.append(LoadedLora(request, info, shorthash, adapter_name))
        attachment.activate()
        if fuse:
            attachment.fuse()
        yield applied
    finally:
        attachment.remove()

