"""The application context: every long-lived service, built once from the flags and passed around.

This is the only place that wires services together; nothing reaches them through module globals.
"""

from __future__ import annotations

import argparse
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from modules.checkpoints import CheckpointNotFoundError, CheckpointRegistry
from modules.hashes import HashCache
from modules.hypernetworks import HypernetworkRegistry
from modules.jobs import JobQueue
from modules.lora import LoraRegistry
from modules.model_manager import ModelManager, configure_allocator, default_load_options
from modules.processing import Txt2ImgEngine
from modules.textual_inversion import EmbeddingDatabase
from modules.paths import Paths
from modules.settings import SettingsStore
from modules.vae_files import VaeRegistry

if TYPE_CHECKING:
    from modules.extensions import ExtensionRuntime

log = logging.getLogger(__name__)

DEMO_CHECKPOINT_NAME = "atelier-demo-RANDOM-WEIGHTS.safetensors"
# Settings that decide which VAE the loaded model uses: a change is applied to it at once.
VAE_SETTINGS = frozenset({"sd_vae", "sd_vae_overrides_per_model_preferences"})


@dataclass
class ModelLoadState:
    """What the start-up load is doing, for the status page and the API."""

    loading: bool = False
    error: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


@dataclass
class AppContext:
    args: argparse.Namespace
    paths: Paths
    settings: SettingsStore
    hash_cache: HashCache
    checkpoints: CheckpointRegistry
    vaes: VaeRegistry
    models: ModelManager
    embeddings: EmbeddingDatabase
    hypernetworks: HypernetworkRegistry
    loras: LoraRegistry
    jobs: JobQueue
    engine: Txt2ImgEngine
    load_state: ModelLoadState = field(default_factory=ModelLoadState)
    # Loaded by webui.main after the context exists (scripts see the context); None in tests and
    # tools that run without extensions.
    extensions: "ExtensionRuntime | None" = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "AppContext":
        configure_allocator()
        paths = Paths.from_args(args)
        paths.ensure_dirs()
        settings = SettingsStore(paths.config_file)
        hash_cache = HashCache(paths.cache_file)
        checkpoints = CheckpointRegistry(
            paths.checkpoint_dirs, hash_cache, hashing_enabled=not args.no_hashing, explicit_file=args.ckpt
        )
        vaes = VaeRegistry(
            checkpoint_dir=paths.checkpoints_dir, vae_dir=paths.vae_dir, ckpt_dir=paths.ckpt_dir,
            extra_vae_dir=paths.extra_vae_dir,
        )
        options = default_load_options(
            use_cpu=bool(args.use_cpu), no_half=args.no_half, precision=args.precision,
            no_half_vae=args.no_half_vae,
            device_name=f"cuda:{args.device_id}" if args.device_id is not None else None,
            allow_unsafe_pickle=args.disable_safe_unpickle,
        )
        if args.disable_safe_unpickle:
            log.warning("--disable-safe-unpickle: .ckpt/.pt files will be loaded with full pickle, which runs "
                        "any code they contain. Use it only for files you trust.")

        def resolve_vae(info) -> Path | None:
            current = settings.current()
            choice = vaes.resolve_vae(
                info, current["sd_vae"], current["sd_vae_overrides_per_model_preferences"],
                Path(args.vae_path) if args.vae_path else None,
            )
            return choice.path

        from modules.model_runtime import ModelRuntime

        models = ModelManager(
            checkpoints, options, runtime=ModelRuntime(args, options.device),
            limit=lambda: settings.current()["sd_checkpoints_limit"],
            vae_resolver=resolve_vae,
            keep_in_cpu=lambda: settings.current()["sd_checkpoints_keep_in_cpu"],
        )
        unsafe = args.disable_safe_unpickle
        embeddings = EmbeddingDatabase([paths.embeddings_dir], hash_cache, hashing_enabled=not args.no_hashing,
                                       allow_unsafe_pickle=unsafe)
        hypernetworks = HypernetworkRegistry(paths.hypernetwork_dir, allow_unsafe_pickle=unsafe)
        loras = LoraRegistry([paths.lora_dir], hash_cache=hash_cache, allow_unsafe_pickle=unsafe)
        engine = Txt2ImgEngine(models, settings, embeddings, hypernetworks, loras, save_dir=str(paths.data_dir))
        return cls(args, paths, settings, hash_cache, checkpoints, vaes, models, embeddings, hypernetworks, loras,
                   JobQueue(), engine)

    def refresh(self) -> None:
        self.checkpoints.refresh()
        self.vaes.refresh()
        self.embeddings.refresh()
        self.hypernetworks.refresh()
        self.loras.refresh()

    def ensure_demo_checkpoint(self) -> Path | None:
        """With no checkpoint anywhere, write a tiny random-weights SD1 checkpoint so the whole flow
        can be tried. Its name and the log say loudly that it makes noise, not pictures."""
        if len(self.checkpoints) or self.args.no_demo_checkpoint:
            return None
        from modules.synthetic_checkpoints import write_checkpoint

        path = self.paths.checkpoints_dir / DEMO_CHECKPOINT_NAME
        write_checkpoint(path, "sd1", size="tiny", metadata={
            "atelier_demo": "true",
            "description": "Random weights generated by Atelier so the UI works with no model. It draws noise. "
                           "Put real checkpoints in models/Stable-diffusion or start with --ckpt-dir.",
        })
        log.warning("No checkpoints found in %s. Created a DEMO checkpoint with RANDOM weights: %s — it only "
                    "makes noise. Put .safetensors/.ckpt files in %s (or use --ckpt-dir to point at an A1111 "
                    "models/Stable-diffusion folder) and press refresh.",
                    ", ".join(str(d) for d in self.paths.checkpoint_dirs), path.name, self.paths.checkpoints_dir)
        self.checkpoints.refresh()
        return path

    def startup_checkpoint_title(self) -> str | None:
        """`--ckpt`, else the `sd_model_checkpoint` setting, else the first listed (A1111's order)."""
        listed = self.checkpoints.list()
        if not listed:
            return None
        if self.args.ckpt:
            return self.checkpoints.list()[0].title
        wanted = self.settings.current()["sd_model_checkpoint"]
        if wanted:
            try:
                return self.checkpoints.find(wanted).title
            except CheckpointNotFoundError:
                log.warning("Checkpoint %s not found; loading fallback %s", wanted, listed[0].title)
        return listed[0].title

    def load_startup_model(self) -> None:
        title = self.startup_checkpoint_title()
        if title is None:
            log.warning("No checkpoint to load.")
            return
        with self.load_state.lock:
            self.load_state.loading, self.load_state.error = True, None
        try:
            self.models.load(title)
        except Exception as e:  # reported on the status page and the API; the server keeps running
            log.error("Loading %s failed: %s", title, e)
            with self.load_state.lock:
                self.load_state.error = f"{title}: {e}"
        finally:
            with self.load_state.lock:
                self.load_state.loading = False

    def between_jobs(self, fn):
        """Run `fn` on the job worker after the jobs already queued (A1111's FIFO queue_lock), so a
        generation submitted earlier still sees the model it was submitted against; here when the
        queue is not started (tests, tools)."""
        return self.jobs.run_exclusive(fn) if self.jobs.running else fn()

    def settings_changed(self, changed) -> None:
        """What a saved change must set off now (A1111's onchange): a VAE setting re-applies the VAE
        to the loaded model, between jobs. Raises what applying raised; the setting stays saved."""
        if VAE_SETTINGS.intersection(changed) and self.models.current() is not None:
            self.between_jobs(self.models.refresh_vae)

    def switch_checkpoint(self, title: str) -> None:
        """Load `title`, make it current and remember it in config.json."""
        model = self.models.load(title)
        info = self.models.current_info()
        self.settings.apply({"sd_model_checkpoint": info.title if info else model.name,
                             "sd_checkpoint_hash": (info.sha256 or "") if info else ""})
