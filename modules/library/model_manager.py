"""The model manager: the single owner of loaded checkpoints.

Everything that needs a model asks this object; nothing else loads, caches or frees one. Loaded
checkpoints are kept in an LRU of at most `sd_checkpoints_limit` entries, the current one included
(A1111 keeps one more than the setting says). Switching to a cached checkpoint touches no file.
Evicting one drops every reference and hands the freed memory back to the OS, so RSS does not creep
up over repeated switches.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import hashlib
import logging
import os
import threading
import weakref
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

from modules.library.model_detection import detect_architecture, normalize_keys

if TYPE_CHECKING:
    import torch

    from modules.library.model_loader import LoadOptions, StableDiffusionModel

# The loader (torch, diffusers, transformers) is imported by the methods that load: the server makes
# its model manager while it starts, before torch is imported (tests/test_startup_imports.py).

log = logging.getLogger(__name__)

# glibc's malloc: freed large blocks are returned at once only while they are above its mmap
# threshold, and glibc raises that threshold (up to 32 MiB) every time such a block is freed, so
# after the first unload the next model's tensors land in the heap, where a free leaves RSS high.
# Pinning the threshold keeps tensors mmapped; malloc_trim returns what the heap still holds.
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_BYTES = 1 << 20


def _libc():
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt  # noqa: B018 - glibc only
        libc.malloc_trim  # noqa: B018
        return libc
    except (OSError, AttributeError):
        return None


def configure_allocator() -> None:
    """Pin glibc's mmap threshold (see above). Harmless elsewhere; called once at start-up."""
    libc = _libc()
    if libc is not None:
        libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES)


def release_memory(device: torch.device | None = None, *, collect: bool = True) -> None:
    """Hand freed memory back to the OS. `collect`: run a full garbage collection first (≈0.4 s once
    torch and diffusers are imported: it walks every object), for memory held by reference cycles."""
    if collect:
        gc.collect()
    if device is not None and device.type == "cuda":
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


class ModelManager:
    """Loads, caches, switches and unloads checkpoints. Thread-safe: one lock around every change.

    `registry` finds checkpoints by title/alias (modules.library.checkpoints.CheckpointRegistry);
    `vae_resolver(info)` returns the VAE file to use for a checkpoint or None for its own VAE;
    `limit()` returns the current `sd_checkpoints_limit`.

    `options` (device and dtypes) and `runtime` (a modules.library.model_runtime.ModelRuntime: attention
    backend and offload) may be given as functions, `options()` and `runtime(options)`, called once
    when first needed: deciding the device imports torch and probes the GPU, which the server's
    start-up leaves to its background load so that the first page does not wait for it.
    """

    def __init__(
        self,
        registry,
        options: LoadOptions | Callable[[], LoadOptions],
        limit: Callable[[], int] = lambda: 1,
        vae_resolver: Callable[[object], Path | None] = lambda info: None,
        keep_in_cpu: Callable[[], bool] = lambda: True,
        runtime=None,
    ):
        self.registry = registry
        self._options_source = options
        self._runtime_source = runtime
        self._device_setup: tuple[LoadOptions, object] | None = None
        self._setup_lock = threading.Lock()
        self._limit = limit
        self._vae_resolver = vae_resolver
        self._keep_in_cpu = keep_in_cpu
        self._lock = threading.RLock()
        self._loaded: OrderedDict[str, StableDiffusionModel] = OrderedDict()  # filename → model, LRU first
        self._current_key: str | None = None
        self._infos: dict[str, object] = {}
        self._load_listeners: list[Callable[[StableDiffusionModel], None]] = []

    # --- queries ---------------------------------------------------------------------------------

    def _setup(self) -> tuple[LoadOptions, object]:
        setup = self._device_setup
        if setup is None:
            with self._setup_lock:
                if self._device_setup is None:
                    source = self._options_source
                    options = source() if callable(source) else source
                    runtime = self._runtime_source(options) if callable(self._runtime_source) else self._runtime_source
                    self._device_setup = (options, runtime)
                setup = self._device_setup
        return setup

    @property
    def options(self) -> LoadOptions:
        return self._setup()[0]

    @property
    def _runtime(self):
        return self._setup()[1]

    @property
    def lock(self) -> threading.RLock:
        """Held by a job while it uses the current model, so a switch waits for the job to finish."""
        return self._lock

    # The two queries below read without the lock: a job holds it for a whole generation and a load
    # for the whole load, and status lines (the UI's top bar, the API's options) must not wait that
    # long. Each read is one reference and one dict lookup, atomic in CPython; during a switch a
    # reader sees the old model, the new one, or briefly None.

    def current(self) -> StableDiffusionModel | None:
        key = self._current_key
        return self._loaded.get(key) if key else None

    def current_info(self):
        key = self._current_key
        return self._infos.get(key) if key else None

    def require_current(self) -> StableDiffusionModel:
        model = self.current()
        if model is None:
            raise RuntimeError("no checkpoint is loaded; pick one in the checkpoint dropdown or the API")
        return model

    def loaded_names(self) -> list[str]:
        """Loaded checkpoints, least recently used first."""
        with self._lock:
            return [model.name for model in self._loaded.values()]

    def loaded_titles(self) -> list[str]:
        """Titles of the loaded checkpoints, most recently used first. Read without the lock, like
        `current_info` (a worker reports its cache between jobs and to status queries)."""
        keys = list(self._loaded)  # one C-level copy: safe against a concurrent load
        infos = self._infos
        return [infos[key].title for key in reversed(keys) if key in infos]

    def add_load_listener(self, listener: Callable[[StableDiffusionModel], None]) -> None:
        """Call `listener(model)` after each checkpoint read from disk (A1111's on_model_loaded); not
        when a cached one becomes current. It runs on the loading thread, with the lock held."""
        self._load_listeners.append(listener)

    def _notify_loaded(self, model: StableDiffusionModel) -> None:
        for listener in self._load_listeners:
            try:
                listener(model)
            except Exception:  # a listener's fault must not turn a good load into a failed one
                log.exception("a model-loaded listener failed for %s", model.name)

    # --- changes ---------------------------------------------------------------------------------

    def load(self, title: str) -> StableDiffusionModel:
        """Make the checkpoint named `title` (any alias) current, loading it if it is not cached.

        A checkpoint that fails to load leaves the previous one current (reloading it from disk if
        it had to be evicted to make room) and re-raises the error. A failure that is the file's
        fault (a ValueError: truncated, not a checkpoint, refused pickle) marks it in the registry,
        and asking for it again raises `BrokenCheckpointError` at once, until the file changes.
        """
        info = self.registry.find(title)
        key = str(info.filename)
        with self._lock:
            if key in self._loaded:
                return self._activate(key)
            info = self.registry.check_loadable(info)
            try:
                self._preflight(info)
            except ValueError as error:
                self.registry.mark_broken(info, error)
                raise
            limit = max(1, int(self._limit()))
            previous_info = self._infos.get(self._current_key) if self._current_key else None
            evicted_current = False
            while len(self._loaded) >= limit:
                evicted_key = next(iter(self._loaded))
                evicted_current |= evicted_key == self._current_key
                self._evict(evicted_key)
            try:
                model, info = self._load_from_disk(info)
            except Exception as error:
                if isinstance(error, ValueError):
                    self.registry.mark_broken(info, error)
                if evicted_current and previous_info is not None:
                    log.warning("loading %s failed; reloading the previous checkpoint %s", info.name,
                                previous_info.name)
                    try:
                        model, previous_info = self._load_from_disk(previous_info)
                        previous_key = str(previous_info.filename)
                        self._loaded[previous_key], self._infos[previous_key] = model, previous_info
                        self._current_key = previous_key
                    except Exception:  # the original error is the one to report
                        log.exception("reloading the previous checkpoint failed too")
                raise
            self._loaded[key] = model
            self._infos[key] = info
            activated = self._activate(key)
            self._notify_loaded(activated)
            return activated

    def use_temporary(self, path: Path, title: str, sha256: str | None = None) -> StableDiffusionModel:
        """`load_temporary`, unless this very file (same sha256) is loaded already: then it is made
        current as it is (a Ray worker asked for the merge trial every job uses)."""
        key = str(Path(path))
        with self._lock:
            info = self._infos.get(key)
            if key in self._loaded and info is not None and sha256 and info.sha256 == sha256:
                return self._activate(key)
        return self.load_temporary(path, title, sha256)

    def load_temporary(self, path: Path, title: str, sha256: str | None = None) -> StableDiffusionModel:
        """Load a file that is not in the checkpoint list (a merge trial) and make it current. It takes a
        place in the LRU like any checkpoint; loading it again reads the file again."""
        from modules.library.checkpoints import CheckpointInfo
        from modules.library.hashes import legacy_model_hash

        path = Path(path)
        stat = path.stat()
        info = CheckpointInfo(filename=path, name=title, hash=legacy_model_hash(path), sha256=sha256,
                              size_bytes=stat.st_size, mtime=stat.st_mtime)
        from modules.library.model_loader import load_checkpoint

        key = str(path)
        with self._lock:
            if key in self._loaded:
                self._evict(key)  # a new trial overwrote the file: never serve the old weights
            limit = max(1, int(self._limit()))
            while len(self._loaded) >= limit:
                self._evict(next(iter(self._loaded)))
            model = load_checkpoint(path, self.options, name=title)
            if self._runtime is not None:
                self._runtime.attach(model)
            log.info("%s", model.load_summary)
            self._loaded[key] = model
            self._infos[key] = info
            activated = self._activate(key)
            self._notify_loaded(activated)
            return activated

    def _preflight(self, info) -> None:
        """Fail fast, before anything is evicted: header, detection and config only (no tensors)."""
        if not Path(info.filename).suffix.lower() == ".safetensors":
            return  # a pickle has no separate header; the full load validates it
        from modules.library.model_config import build_model_config
        from modules.library.model_loader import TensorSource

        with TensorSource(Path(info.filename)) as source:
            canonical = normalize_keys(list(source.shapes), source.shapes)
            shapes = {c: source.shapes[f] for c, f in canonical.items()}
            detection = detect_architecture(shapes, source=str(info.filename))
            build_model_config(detection.architecture, shapes, user_yaml=info.config_path)

    def _load_from_disk(self, info):
        """Load `info`'s file; returns the model and the info with its sha256 (A1111 hashes on load,
        so the title gains its `[hash]`; `--no-hashing` leaves it as is)."""
        import torch

        from modules.library.model_loader import LoadOptions, load_checkpoint

        info = self.registry.ensure_hash(info, compute=False)  # a cached hash; never a read of its own
        # Not cached: computed in the same pass as the tensor reads, so a first load reads the file once.
        digest = hashlib.sha256() if info.sha256 is None and self.registry.hashing_enabled else None
        mtime = os.stat(info.filename).st_mtime
        options = self.options
        if self._runtime is not None and self._runtime.may_offload:
            # Offloaded models wait in RAM; reading them straight into VRAM would need all of it at once.
            options = LoadOptions(torch.device("cpu"), options.dtype, options.vae_dtype, options.allow_unsafe_pickle)
        model = load_checkpoint(Path(info.filename), options, config_path=info.config_path, name=info.title,
                                digest=digest)
        log.info("%s", model.load_summary)
        if digest is not None:
            log.info("sha256 of %s, computed while loading it: %s", info.name, digest.hexdigest())
            info = self.registry.record_hash(info, digest.hexdigest(), mtime)
            model.name = info.title
        self._apply_vae(model, info)
        if self._runtime is not None:
            self._runtime.attach(model)
        if model.device != self.options.device and not self._offloaded(model):
            model.to(self.options.device)
        return model, info

    def _activate(self, key: str) -> StableDiffusionModel:
        model = self._loaded[key]
        self._loaded.move_to_end(key)
        if self._current_key != key:
            previous = self._loaded.get(self._current_key) if self._current_key else None
            if (previous is not None and self.options.device.type != "cpu" and self._keep_in_cpu()
                    and not self._offloaded(previous)):
                import torch

                previous.to(torch.device("cpu"))
            if model.device != self.options.device and not self._offloaded(model):
                model.to(self.options.device)
            self._current_key = key
        return model

    def _offloaded(self, model: StableDiffusionModel) -> bool:
        return self._runtime is not None and self._runtime.is_offloaded(model)

    def _evict(self, key: str) -> None:
        model = self._loaded.pop(key)
        self._infos.pop(key, None)
        if self._runtime is not None:
            self._runtime.detach(model)
        if self._current_key == key:
            self._current_key = None
        log.info("unloaded %s", model.name)
        survivors = [weakref.ref(module) for module in model.modules().values()]
        del model
        # A loaded model holds no reference cycles: the last reference gone, its tensors are freed
        # at once. The full collection, which costs more than a cached switch, runs only when
        # something still holds a part of it.
        release_memory(self.options.device, collect=any(ref() is not None for ref in survivors))

    def unload_file(self, path: Path) -> bool:
        """Free the model loaded from `path` (a merge trial about to be deleted), unless it is the
        current one. Returns whether it was freed."""
        key = str(path)
        with self._lock:
            if key not in self._loaded or key == self._current_key:
                return False
            self._evict(key)
            return True

    def loaded_files(self) -> list[Path]:
        with self._lock:
            return [Path(key) for key in self._loaded]

    def unload_all(self) -> None:
        with self._lock:
            for key in list(self._loaded):
                self._evict(key)

    def reload_current(self) -> StableDiffusionModel:
        """Drop the current checkpoint from the cache and read it again from disk."""
        with self._lock:
            info = self.current_info()
            if info is None:
                raise RuntimeError("no checkpoint is loaded to reload")
            self._evict(str(info.filename))
            return self.load(info.title)

    def refresh_vae(self) -> None:
        """Re-apply the VAE choice to the current model (after the VAE setting changed)."""
        with self._lock:
            model, info = self.current(), self.current_info()
            if model is not None:
                self._apply_vae(model, info)

    @contextmanager
    def temporary_vae(self, vae_file: Path | None) -> Iterator[StableDiffusionModel]:
        """Use `vae_file` (None: the checkpoint's own VAE) on the current model inside the block, then
        put back the VAE the settings choose for it (the X/Y/Z plot's VAE axis). Holds the lock."""
        with self._lock:
            model, info = self.require_current(), self.current_info()
            self._set_vae(model, vae_file)
            try:
                yield model
            finally:
                self._apply_vae(model, info)

    def _apply_vae(self, model: StableDiffusionModel, info) -> None:
        self._set_vae(model, self._vae_resolver(info))

    def _set_vae(self, model: StableDiffusionModel, vae_file: Path | None) -> None:
        if vae_file == model.vae_file:
            return
        # A loaded model's runtime (offload hooks, processors) was set up for its old VAE: redo it.
        loaded = self._runtime is not None and any(m is model for m in self._loaded.values())
        if loaded:
            self._runtime.detach(model)
        try:
            if vae_file is None:
                model.vae = model.builtin_vae
            else:
                from modules.library.model_loader import load_vae_file

                model.vae = load_vae_file(vae_file, model, self.options.allow_unsafe_pickle)
                log.info("VAE %s applied to %s", Path(vae_file).name, model.name)
            model.vae_file = vae_file
        finally:
            # Also when the VAE file fails to load: the model keeps its VAE and needs its hooks back.
            if loaded:
                self._runtime.attach(model)
        release_memory(model.device)


def default_load_options(use_cpu: bool, no_half: bool, precision: str, no_half_vae: bool = False,
                         device_name: str | None = None, allow_unsafe_pickle: bool = False,
                         cuda_available: bool | None = None) -> LoadOptions:
    """A1111's device/precision flags → LoadOptions: fp16 on CUDA, fp32 on CPU unless told otherwise."""
    import torch

    from modules.library.model_loader import LoadOptions

    if cuda_available is None:
        cuda_available = torch.cuda.is_available()
    device = torch.device(device_name or "cuda") if cuda_available and not use_cpu else torch.device("cpu")
    half = device.type == "cuda" and not no_half and precision != "full"
    dtype = torch.float16 if half else torch.float32
    vae_dtype = torch.float32 if no_half_vae else dtype
    return LoadOptions(device=device, dtype=dtype, vae_dtype=vae_dtype, allow_unsafe_pickle=allow_unsafe_pickle)
