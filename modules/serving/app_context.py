"""The application context: every long-lived service, built once from the flags and passed around.

This is the only place that wires services together; nothing reaches them through module globals.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modules.common.atomic_files import remove_stale_temp_files
from modules.library.checkpoints import CheckpointInfo, CheckpointNotFoundError, CheckpointRegistry, NoLoadableCheckpointError
from modules.library.hashes import HashCache
from modules.networks.hypernetwork_files import HypernetworkRegistry
from modules.serving.accounts import Accounts
from modules.serving.jobs import JobQueue
from modules.serving.user_choices import FILE_NAME as USER_CHOICES_FILE, UserChoices
from modules.networks.lora import LoraRegistry
from modules.library.model_manager import ModelManager, configure_allocator, default_load_options
from modules.generation.engine import Txt2ImgEngine
from modules.networks.textual_inversion import EmbeddingDatabase
from modules.serving.paths import Paths
from modules.serving.settings import SettingsStore
from modules.serving.settings_policy import SettingsPolicy
from modules.library.vae_files import VaeRegistry
from modules.upscaling.registry import UpscalerRegistry
from modules.upscaling.service import Upscalers

if TYPE_CHECKING:
    from modules.extension_host.extensions import ExtensionRuntime
    from modules.model_sources.service import ModelSources
    from modules.generation.styles import StyleDatabase
    from modules.postprocessing.runner import Postprocessing
    from modules.extension_host.option_registry import ExtensionOptions
    from modules.library.model_loader import StableDiffusionModel

log = logging.getLogger(__name__)

DEMO_CHECKPOINT_NAME = "atelier-demo-RANDOM-WEIGHTS.safetensors"
# Settings that decide which VAE the loaded model uses: a change is applied to it at once.
VAE_SETTINGS = frozenset({"sd_vae", "sd_vae_overrides_per_model_preferences"})


def folders_written(paths: Paths, settings) -> list[tuple[Path, int]]:
    """(folder, depth) of every folder this server writes files into through a temp file, for the
    start-up sweep of temp files a killed run left (modules.common.atomic_files): config.json and
    cache.json, merged checkpoints and merge trials, model files and their cards from the Models tab,
    and the output folders (the ones in effect, with two levels of subfolders, and everything under
    outputs/: `outputs/<folder>/<date>`, with --multi-user `outputs/<user>/<folder>/<date>` and
    `<operator's folder>/<user>/<date>`)."""
    from modules.outputs.images import SaveOptions, txt2img_output_dirs

    # Merges are saved in a checkpoint folder (modules.merging.service), trials in merge_trials_dir
    # (X/Y/Z's in a subfolder of it).
    folders = [(paths.data_dir, 0), *[(d, 1) for d in paths.checkpoint_dirs], (paths.merge_trials_dir, 1),
               (paths.data_dir / "outputs", 3)]
    # Downloads and cards (modules.model_sources) land in every model folder, cards also beside
    # files in their subfolders.
    folders += [(folder, 1) for folder in (paths.lora_dir, paths.embeddings_dir, paths.hypernetwork_dir,
                                          paths.vae_dir, *([paths.extra_vae_dir] if paths.extra_vae_dir else []))]
    folders += [(folder, 2) for folder in txt2img_output_dirs(paths.data_dir, SaveOptions.from_settings(settings))]
    return folders


def upscalers_from_args(args: argparse.Namespace, paths: Paths, settings: SettingsStore) -> Upscalers:
    """The upscaler owner: files listed now (names only), the device decided at the first load
    (probing CUDA imports torch), pickles only through the safe unpickler unless
    --disable-safe-unpickle."""
    def device():
        from modules.upscaling.loader import UpscalerDevice

        return UpscalerDevice.from_args(args)

    registry = UpscalerRegistry(paths.upscaler_dirs, settings.current)
    return Upscalers(registry, settings.current, device=device, allow_unsafe_pickle=args.disable_safe_unpickle)


@dataclass(frozen=True)
class SkippedCheckpoint:
    """A checkpoint the default load passed over, and why (a few words; the log has the details)."""

    title: str
    reason: str


@dataclass
class ModelLoadState:
    """What the start-up load is doing, for the status page and the API."""

    loading: bool = False
    error: str | None = None
    skipped: tuple[SkippedCheckpoint, ...] = ()  # by the last default load that found no choice made
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    # One default load at a time (the start-up thread and a first job can both ask for one).
    default_load_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


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
    # The upscaler models (hires fix, Extras): listed at start-up without torch, loaded at first use.
    upscalers: Upscalers | None = None
    load_state: ModelLoadState = field(default_factory=ModelLoadState)
    # Loaded by webui.main after the context exists (scripts see the context); None in tests and
    # tools that run without extensions.
    extensions: "ExtensionRuntime | None" = None
    # The users of a shared server (--multi-user) and their own top-bar choices; without the flag
    # everyone is one shared user (modules.serving.accounts).
    accounts: Accounts = field(default_factory=Accounts)
    user_choices: UserChoices = field(default_factory=lambda: UserChoices(None))
    # The extensions' options (A1111's opts.add_option): their settings, onchange and Settings widgets.
    extension_options: "ExtensionOptions | None" = None
    # The Ray workers (`--ray-address`, `--ray-local`): a modules.cluster.pool.WorkerPool (not imported
    # here: the pool drives this context's services). Generation and merge jobs run there. None: the
    # embedded mode, jobs run on this process's queue worker.
    cluster: Any = None

    def __post_init__(self) -> None:
        if self.extension_options is None:
            from modules.extension_host.option_registry import ExtensionOptions

            self.extension_options = ExtensionOptions(self.settings)

    @classmethod
    def from_args(cls, args: argparse.Namespace, *, worker: bool = False) -> "AppContext":
        """The server's context from its flags. `worker`: a Ray worker's (modules.cluster.worker):
        its settings mirror the server's and are never written, and it leaves the temp files in the
        shared folders alone (the server's start-up sweeps them; another worker may be writing one)."""
        configure_allocator()
        paths = Paths.from_args(args)
        paths.ensure_dirs()
        settings = SettingsStore(paths.config_file, persist=not worker)
        if not worker:
            remove_stale_temp_files(folders_written(paths, settings.current()))
        hash_cache = HashCache(paths.cache_file)
        checkpoints = CheckpointRegistry(
            paths.checkpoint_dirs, hash_cache, hashing_enabled=not args.no_hashing, explicit_file=args.ckpt
        )
        vaes = VaeRegistry(
            checkpoint_dir=paths.checkpoints_dir, vae_dir=paths.vae_dir, ckpt_dir=paths.ckpt_dir,
            extra_vae_dir=paths.extra_vae_dir,
        )
        # Device, dtypes and the attention backend are decided at the first load (it imports torch
        # and probes the GPU): the server's start-up loads in the background after it answers.
        def load_options():
            return default_load_options(
                use_cpu=bool(args.use_cpu), no_half=args.no_half, precision=args.precision,
                no_half_vae=args.no_half_vae,
                device_name=f"cuda:{args.device_id}" if args.device_id is not None else None,
                allow_unsafe_pickle=args.disable_safe_unpickle,
            )

        def model_runtime(options):
            from modules.library.model_runtime import ModelRuntime

            return ModelRuntime(args, options.device)

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

        models = ModelManager(
            checkpoints, load_options, runtime=model_runtime,
            limit=lambda: settings.current()["sd_checkpoints_limit"],
            vae_resolver=resolve_vae,
            keep_in_cpu=lambda: settings.current()["sd_checkpoints_keep_in_cpu"],
        )
        unsafe = args.disable_safe_unpickle
        embeddings = EmbeddingDatabase([paths.embeddings_dir], hash_cache, hashing_enabled=not args.no_hashing,
                                       allow_unsafe_pickle=unsafe)
        hypernetworks = HypernetworkRegistry(paths.hypernetwork_dir, allow_unsafe_pickle=unsafe)
        loras = LoraRegistry([paths.lora_dir], hash_cache=hash_cache, allow_unsafe_pickle=unsafe)
        upscalers = upscalers_from_args(args, paths, settings)
        engine = Txt2ImgEngine(models, settings, embeddings, hypernetworks, loras, save_dir=str(paths.data_dir),
                               upscalers=upscalers)
        from modules.api.auth import AuthPolicy

        accounts = Accounts.from_args(args, AuthPolicy.from_args(args).user_names())
        jobs = JobQueue(order=lambda: settings.current()["queue_order"],
                        owner_limit=lambda: settings.current()["multi_user_queue_limit"])
        user_choices = UserChoices(paths.data_dir / USER_CHOICES_FILE if accounts.multi_user else None)
        return cls(args, paths, settings, hash_cache, checkpoints, vaes, models, embeddings, hypernetworks, loras,
                   jobs, engine, upscalers=upscalers, accounts=accounts, user_choices=user_choices)

    @property
    def settings_policy(self) -> SettingsPolicy:
        """What UI and API users may change in the settings on this server (from the flags)."""
        return SettingsPolicy.from_args(self.args, self.paths.data_dir)

    @functools.cached_property
    def postprocessing(self) -> "Postprocessing":
        """The Extras tab's steps (A1111's postprocessing scripts: the built-in Upscale and the
        extensions' ones) and their result cache; made at first use."""
        from modules.postprocessing.runner import Postprocessing

        return Postprocessing(self)

    @functools.cached_property
    def prompt_styles(self) -> "StyleDatabase":
        """The prompt styles of `styles.csv` (or the `--styles-file` files): A1111's
        `shared.prompt_styles`. Made at first use; the prompt_max_length setting caps a style's text."""
        from modules.generation.styles import StyleDatabase, configured_styles_paths

        return StyleDatabase(configured_styles_paths(getattr(self.args, "styles_file", None) or [],
                                                     self.paths.data_dir),
                             max_text_length=lambda: self.settings.current()["prompt_max_length"])

    @functools.cached_property
    def model_sources(self) -> "ModelSources":
        """Look-ups, downloads, cards and checkpoint tools of the Models tab and /atelier/v1/models:
        the owner of the downloads' state. Made at first use."""
        from modules.model_sources.service import ModelSources

        return ModelSources(self)

    def refresh(self) -> None:
        self.refresh_listings()
        self.embeddings.refresh()

    def refresh_listings(self) -> None:
        """The checkpoint, VAE, hypernetwork, LoRA and upscaler lists, from file names and headers: no file is
        read through torch, so the server's first page does not wait for it. Embeddings are read, not
        just listed (`embeddings.refresh()`, which the start-up runs in the background)."""
        self.checkpoints.refresh()
        self.vaes.refresh()
        self.hypernetworks.refresh()
        self.loras.refresh()
        if self.upscalers is not None:
            self.upscalers.registry.refresh()
        if self.cluster is not None:
            self.cluster.listings_changed()  # and on each Ray worker, before its next job

    def ensure_demo_checkpoint(self) -> Path | None:
        """With no checkpoint anywhere, write a tiny random-weights SD1 checkpoint so the whole flow
        can be tried. Its name and the log say loudly that it makes noise, not pictures."""
        if len(self.checkpoints) or self.args.no_demo_checkpoint:
            return None
        from modules.library.synthetic_checkpoints import write_checkpoint

        path = self.paths.checkpoints_dir / DEMO_CHECKPOINT_NAME
        write_checkpoint(path, "sd1", size="tiny", metadata={
            "atelier_demo": "true",
            "description": "Random weights generated by Atelier so the UI works with no model. It draws noise. "
                           "Put real checkpoints in models/Stable-diffusion or start with --ckpt-dir.",
        })
        log.warning("No checkpoints found in %s. Created a DEMO checkpoint with RANDOM weights: %s — it only "
                    "makes noise. Put .safetensors/.ckpt files in %s (or use --ckpt-dir to point at an A1111 "
                    "models/Stable-diffusion folder) and press refresh, or download one in the Models tab.",
                    ", ".join(str(d) for d in self.paths.checkpoint_dirs), path.name, self.paths.checkpoints_dir)
        self.checkpoints.refresh()
        return path

    def chosen_checkpoint(self) -> tuple[CheckpointInfo, str] | None:
        """The checkpoint the user chose to start with and where the choice comes from: `--ckpt`, else
        the saved `sd_model_checkpoint` setting. None when neither names a listed file."""
        if self.args.ckpt:
            explicit = Path(os.path.abspath(self.args.ckpt))
            for info in self.checkpoints.list():
                if info.filename == explicit:
                    return info, "--ckpt"
        wanted = self.settings.current()["sd_model_checkpoint"]
        if wanted:
            try:
                return self.checkpoints.find(wanted), "the saved sd_model_checkpoint setting"
            except CheckpointNotFoundError:
                log.warning("Checkpoint %s not found; loading the first listed checkpoint that loads", wanted)
        return None

    def startup_checkpoint_title(self) -> str | None:
        """What the start-up load picks: the chosen checkpoint (`chosen_checkpoint`), else the first
        listed one not known to be broken (A1111's order)."""
        chosen = self.chosen_checkpoint()
        if chosen is not None:
            return chosen[0].title
        loadable = self.checkpoints.loadable_titles()
        return loadable[0] if loadable else None

    def load_default_model(self) -> StableDiffusionModel:
        """The current model; with none, load the one the start-up picks (a request that names no
        checkpoint, A1111's load on first use).

        A checkpoint the user chose is never silently replaced: if it fails, the error names it and
        lists the others. With no choice made, the checkpoints are tried in A1111's order until one
        loads; the files passed over, and why, are logged and kept in `load_state.skipped` for the
        status line. Raises a ValueError (bad input for the API) when nothing can be loaded.
        """
        with self.load_state.default_load_lock:
            model = self.models.current()
            if model is not None:
                return model
            chosen = self.chosen_checkpoint()
            if chosen is not None:
                info, source = chosen
                try:
                    return self.models.load(info.title)
                except ValueError:
                    log.error("Checkpoint %s, chosen with %s, cannot be loaded; pick another one", info.title, source)
                    self.checkpoints.check_loadable(info)  # marked by the failure: raises naming the others
                    raise
            return self._load_first_loadable()

    def _load_first_loadable(self) -> StableDiffusionModel:
        skipped: list[SkippedCheckpoint] = []
        for info in self.checkpoints.list():
            try:
                model = self.models.load(info.title)
            except (ValueError, OSError) as error:  # the file's fault: try the next one
                marked = self.checkpoints.get(info.title) if info.title in self.checkpoints else info
                reason = marked.problem.summary if marked.problem else f"{type(error).__name__}: {error}"
                detail = marked.problem.detail if marked.problem else str(error)
                log.warning("Skipping checkpoint %s: %s", info.title, detail)
                skipped.append(SkippedCheckpoint(info.title, reason))
                continue
            if skipped:
                log.warning("Loaded %s after skipping %d checkpoint(s) that cannot be loaded: %s", info.title,
                            len(skipped), "; ".join(f"{s.title} ({s.reason})" for s in skipped))
            with self.load_state.lock:
                self.load_state.skipped = tuple(skipped)
            return model
        with self.load_state.lock:
            self.load_state.skipped = tuple(skipped)
        if not skipped:
            raise CheckpointNotFoundError("", folders=[str(folder) for folder in self.paths.checkpoint_dirs])
        raise NoLoadableCheckpointError([(s.title, s.reason) for s in skipped],
                                        [str(folder) for folder in self.paths.checkpoint_dirs])

    def load_startup_model(self) -> None:
        """The start-up load (on a background thread): `load_default_model`, its outcome kept in
        `load_state` for the status line; a failure is logged, never raised. With Ray workers the
        start-up checkpoint is loaded on one worker (this process loads none)."""
        if not len(self.checkpoints):
            log.warning("No checkpoint to load.")
            return
        with self.load_state.lock:
            self.load_state.loading, self.load_state.error = True, None
        try:
            if self.cluster is not None:
                self._warm_up_workers()
            else:
                self.load_default_model()
        except Exception as e:  # reported on the status page and the API; the server keeps running
            log.error("Loading the start-up checkpoint failed: %s", e)
            with self.load_state.lock:
                self.load_state.error = str(e)
        finally:
            with self.load_state.lock:
                self.load_state.loading = False

    def _warm_up_workers(self) -> None:
        title = self.startup_checkpoint_title()
        if title is None:
            return
        self.cluster.wait_ready(1)
        self.switch_checkpoint(title)

    def current_checkpoint_info(self) -> CheckpointInfo | None:
        """The checkpoint a generation that names none uses: the loaded one; with Ray workers, the
        selected one (the `sd_model_checkpoint` setting; workers load it when a job needs it)."""
        if self.cluster is None:
            return self.models.current_info()
        trial = self.cluster.trial_info()  # "merge and load" on a worker: what the next job uses
        if trial is not None:
            return trial
        title = self.settings.current()["sd_model_checkpoint"]
        if not title:
            return None
        try:
            return self.checkpoints.find(title)
        except CheckpointNotFoundError:
            return None

    def current_architecture(self):
        """The architecture (model_detection.Architecture) of the model generations use now, or None
        when unknown: the loaded model's; with Ray workers (nothing is loaded here), read from the
        selected checkpoint's safetensors header."""
        if self.cluster is None:
            model = self.models.current()
            return getattr(model, "architecture", None) if model is not None else None
        from modules.library.model_detection import architecture_of_file

        info = self.current_checkpoint_info()
        return architecture_of_file(info.filename) if info is not None else None

    def between_jobs(self, fn):
        """Run `fn` on the job worker after the jobs already queued (A1111's FIFO queue_lock), so a
        generation submitted earlier still sees the model it was submitted against; here when the
        queue is not started (tests, tools)."""
        return self.jobs.run_exclusive(fn) if self.jobs.running else fn()

    def applies_change(self, key: str) -> bool:
        """Whether storing a new value of `key` sets something off (`settings_changed`)."""
        return key in VAE_SETTINGS or self.extension_options.has_onchange(key)

    def settings_changed(self, changed) -> None:
        """What a saved change must set off now (A1111's onchange): a VAE setting re-applies the VAE
        to the loaded model, between jobs; an extension option runs its onchange. Raises what
        applying raised (the model keeps its VAE); users' changes come through
        modules.serving.settings_change, which then puts the previous value back."""
        if VAE_SETTINGS.intersection(changed) and self.cluster is not None:
            self.between_jobs(self.cluster.apply_settings)  # tried on a worker; the others apply it next job
        elif VAE_SETTINGS.intersection(changed) and self.models.current() is not None:
            self.between_jobs(self.models.refresh_vae)
        self.extension_options.run_onchange([key for key in changed if key not in VAE_SETTINGS], self)

    def switch_checkpoint(self, title: str) -> None:
        """Load `title`, make it current and remember it in config.json. With Ray workers it is loaded
        on one worker (the others load it when a job of theirs needs it)."""
        if self.cluster is not None:
            from modules.common.job_control import NullControl

            info = self.checkpoints.find(title)
            outcome = self.cluster.load_checkpoint(info.title, NullControl())
            sha256 = outcome.current_checkpoint[1] if outcome.current_checkpoint else (info.sha256 or "")
            with self.load_state.lock:
                self.load_state.skipped = ()
            self.settings.apply({"sd_model_checkpoint": info.title, "sd_checkpoint_hash": sha256})
            return
        model = self.models.load(title)
        with self.load_state.lock:
            self.load_state.skipped = ()  # the start-up's note is old news once the user has chosen
        info = self.models.current_info()
        self.settings.apply({"sd_model_checkpoint": info.title if info else model.name,
                             "sd_checkpoint_hash": (info.sha256 or "") if info else ""})
