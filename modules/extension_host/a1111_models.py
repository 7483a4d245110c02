"""A1111's `modules.sd_models` for extensions: the running app's checkpoint list (its
CheckpointRegistry) and model switching (its ModelManager), with A1111's names.

`checkpoints_list` (title → CheckpointInfo), `checkpoint_aliases` (and A1111's misspelt
`checkpoint_alisases`) are read on each access from the app in scope
(modules.extension_host.environment). The CheckpointInfo values carry A1111's attributes
(`filename` as a string, `name`, `name_for_extra`, `model_name`, `title`, `short_title`, `hash`,
`sha256`, `shorthash`, `metadata`, `ids`); hashing goes through the app's registry and hash cache.

Differences from A1111:
- `reload_model_weights(info=...)` loads only files in the app's checkpoint list: a file outside
  the checkpoint folders is refused with a ValueError (A1111 loads any path an info names). The
  switch runs between jobs (after the jobs already queued; at once from inside a job), like a
  change of the checkpoint setting, and is remembered in config.json unless inside
  `SkipWritingToConfig()`.
- on a server shared with `--multi-user`, for a user who is not an operator
  (modules.extension_host.callers): `reload_model_weights` inside their job loads the checkpoint
  for that job only (config.json unchanged), outside a job it is refused (logged, the current model
  returned); `unload_model_weights` is refused (logged). Operators: as above.
- `select_checkpoint()` raises FileNotFoundError when there is no checkpoint (A1111 exits).
- the model returned and `model_data.sd_model` are what `shared.sd_model` gives (A1111's names over
  Atelier's model), not A1111's LatentDiffusion.
"""

from __future__ import annotations

import contextvars
import logging
import os
from typing import Any

from modules.extension_host.callers import extension_caller, extension_name
from modules.extension_host.environment import current_app

log = logging.getLogger(__name__)

_skip_writing_to_config: contextvars.ContextVar[bool] = contextvars.ContextVar("atelier_skip_writing_to_config",
                                                                                default=False)


class CheckpointInfo:
    """One listed checkpoint with A1111's attribute names (a view of Atelier's CheckpointInfo).

    `CheckpointInfo(filename)`, as A1111 extensions build one, gives the listed checkpoint of that
    file; a file outside the checkpoint list is refused (ValueError): Atelier lists and loads only
    the checkpoint folders' files. `register()` has nothing to do (the file is listed already)."""

    __slots__ = ("info",)

    def __init__(self, info):
        if isinstance(info, (str, os.PathLike)):
            info = _listed_file(current_app(), info, "sd_models.CheckpointInfo")
        object.__setattr__(self, "info", info)

    def __setattr__(self, name, value):
        raise AttributeError(f"CheckpointInfo is read-only ({name}); its values come from the checkpoint list")

    def register(self) -> None:
        pass

    filename = property(lambda self: str(self.info.filename))
    name = property(lambda self: self.info.name)
    name_for_extra = property(lambda self: self.info.name_for_extra)
    model_name = property(lambda self: self.info.model_name)
    title = property(lambda self: self.info.title)
    short_title = property(lambda self: self.info.short_title)
    hash = property(lambda self: self.info.hash)
    sha256 = property(lambda self: self.info.sha256)
    shorthash = property(lambda self: self.info.shorthash)
    metadata = property(lambda self: dict(self.info.metadata))
    ids = property(lambda self: list(self.info.aliases))
    is_safetensors = property(lambda self: self.info.is_safetensors)

    def calculate_shorthash(self) -> str | None:
        """Hash the file (through the app's hash cache) and return its short hash; this view's
        `sha256`, `title` & co. then show it, as the checkpoint list does."""
        object.__setattr__(self, "info", current_app().checkpoints.ensure_hash(self.info))
        return self.info.shorthash

    def __eq__(self, other) -> bool:
        return isinstance(other, CheckpointInfo) and self.info.filename == other.info.filename

    def __hash__(self) -> int:
        return hash(self.info.filename)

    def __repr__(self) -> str:
        return f"CheckpointInfo({self.title!r}, filename={self.filename!r})"


class SkipWritingToConfig:
    """`with sd_models.SkipWritingToConfig():` model loads inside do not change the
    `sd_model_checkpoint` setting (X/Y/Z-style scripts that switch and restore)."""

    def __enter__(self):
        self._token = _skip_writing_to_config.set(True)
        return self

    def __exit__(self, *exc_info) -> None:
        _skip_writing_to_config.reset(self._token)


def _view(info) -> CheckpointInfo:
    return CheckpointInfo(info)


def list_models() -> None:
    """Rescan the checkpoint folders."""
    current_app().checkpoints.refresh()


def checkpoint_tiles(use_short: bool = False) -> list[str]:
    return [info.short_title if use_short else info.title for info in current_app().checkpoints.list()]


def get_closet_checkpoint_match(search_string: str) -> CheckpointInfo | None:
    """A1111's (misspelt) lookup: an exact alias, else the shortest title containing the text."""
    from modules.library.checkpoints import CheckpointNotFoundError

    if not search_string:
        return None
    try:
        return _view(current_app().checkpoints.find(search_string))
    except CheckpointNotFoundError:
        return None


def model_hash(filename: str | os.PathLike) -> str:
    """A1111's old 8-hex hash of a file (64 KiB at 1 MiB); "NOFILE" when it cannot be read."""
    from modules.library.hashes import legacy_model_hash

    try:
        return legacy_model_hash(filename)
    except OSError:
        return "NOFILE"


def select_checkpoint() -> CheckpointInfo:
    """The checkpoint the app loads when asked for "the" model: the loaded one, else the user's
    choice (`--ckpt`, then the `sd_model_checkpoint` setting), else the first listed that loads."""
    context = current_app()
    current = context.models.current_info()
    if current is not None:
        return _view(current)
    chosen = context.chosen_checkpoint()
    if chosen is not None:
        return _view(chosen[0])
    loadable = context.checkpoints.loadable_titles()
    if not loadable:
        folders = ", ".join(str(folder) for folder in context.paths.checkpoint_dirs)
        raise FileNotFoundError(f"No checkpoints found. Put a .safetensors or .ckpt file in {folders}, then call "
                                "sd_models.list_models() or press refresh.")
    return _view(context.checkpoints.get(loadable[0]))


def _listed_file(context, filename, who: str) -> Any:
    """The app's listed checkpoint of `filename`; ValueError for a file outside the checkpoint list."""
    wanted = os.path.abspath(str(filename))
    for listed in context.checkpoints.list():
        if str(listed.filename) == wanted or os.path.realpath(listed.filename) == os.path.realpath(wanted):
            return listed
    folders = ", ".join(str(folder) for folder in context.paths.checkpoint_dirs)
    raise ValueError(f"{who}: {wanted} is not in the checkpoint list; only checkpoints in {folders} are used. Put "
                     "the file there and call sd_models.list_models().")


def _listed(context, info) -> Any:
    """The app's listed checkpoint `info` means (an A1111 or Atelier CheckpointInfo, anything with
    `.filename`, or a title); ValueError for a file outside the checkpoint list."""
    if isinstance(info, str):
        return context.checkpoints.find(info)
    filename = getattr(info, "filename", None)
    if filename is None:
        raise TypeError(f"reload_model_weights: info must be a CheckpointInfo (from sd_models.checkpoints_list), "
                        f"got {type(info).__name__}")
    return _listed_file(context, filename, "reload_model_weights")


def reload_model_weights(sd_model=None, info=None, forced_reload: bool = False):
    """Load the checkpoint `info` (default: `select_checkpoint()`) and make it current; nothing to do
    when it is the loaded one, unless `forced_reload`. Returns the current model."""
    context = current_app()
    listed = _listed(context, info) if info is not None else select_checkpoint().info
    skip_config = _skip_writing_to_config.get()
    caller = extension_caller(context)
    if caller.restricted:
        if caller.job is None:
            # Outside a job the switch would be everyone's: only operators change the global model.
            log.warning("%s asked to load %s for user %r outside a job: refused, only operators (--admin-users) "
                        "switch the checkpoint of this shared server", extension_name(), listed.title,
                        caller.user.name)
            return _view_of_model(context, context.models.current())
        # Inside the user's own job: loaded for this job only; config.json stays the operators'.
        skip_config = True

    def switch():
        current = context.models.current_info()
        if current is not None and current.filename == listed.filename:
            return context.models.reload_current() if forced_reload else context.models.current()
        if skip_config:
            return context.models.load(listed.title)
        context.switch_checkpoint(listed.title)
        return context.models.current()

    return _view_of_model(context, context.between_jobs(switch))


def _view_of_model(context, model):
    """What `shared.sd_model` gives for `model` (A1111's attributes over Atelier's model)."""
    return model_view(context, model) if model is not None else None


def unload_model_weights(sd_model=None, info=None) -> None:
    """Free every loaded checkpoint; the next generation loads one again. On a server shared with
    `--multi-user` only operators unload (it would pull the model from under everyone's jobs)."""
    context = current_app()
    caller = extension_caller(context)
    if caller.restricted:
        log.warning("%s asked to unload the checkpoints for user %r: refused, only operators (--admin-users) "
                    "unload the models of this shared server", extension_name(), caller.user.name)
        return
    context.between_jobs(context.models.unload_all)


class _ModelData:
    """A1111's `sd_models.model_data`: the app's current model."""

    @property
    def sd_model(self):
        """The current model as `shared.sd_model` shows it; None when none is loaded."""
        context = current_app()
        return _view_of_model(context, context.models.current())

    def get_sd_model(self):
        """The current model, loading the start-up choice when none is loaded (A1111's lazy load)."""
        context = current_app()
        return _view_of_model(context, context.load_default_model())


model_data = _ModelData()


def __getattr__(name: str):
    if name == "checkpoints_list":
        return {info.title: _view(info) for info in current_app().checkpoints.list()}
    if name in ("checkpoint_aliases", "checkpoint_alisases"):
        return {alias: _view(info) for alias, info in current_app().checkpoints.alias_map().items()}
    raise AttributeError(f"module 'modules.sd_models' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), "checkpoints_list", "checkpoint_aliases", "checkpoint_alisases"])


class SdModelView:
    """`shared.sd_model` (and what `on_model_loaded` callbacks receive): the names A1111 extensions
    read from A1111's model, over Atelier's `StableDiffusionModel`. Other attributes are the Atelier
    model's own (`unet`, `vae`, `text_encoders`, `architecture`, ...); A1111's LDM internals
    (`cond_stage_model`, `first_stage_model`, `model.diffusion_model`) do not exist here."""

    def __init__(self, model: Any, info: Any):
        self._model = model
        self._info = info

    @property
    def atelier_model(self) -> Any:
        return self._model

    @property
    def sd_checkpoint_info(self) -> "CheckpointInfo | None":
        """The checkpoint with A1111's attributes (`filename` is text)."""
        return CheckpointInfo(self._info) if self._info is not None else None

    @property
    def sd_model_hash(self) -> str | None:
        return self._info.shorthash if self._info is not None else None

    @property
    def sd_model_checkpoint(self) -> str:
        return str(self._info.filename if self._info is not None else self._model.path)

    def _family(self) -> str:
        return self._model.architecture.family.name

    @property
    def is_sd1(self) -> bool:
        return self._family() == "SD1"

    @property
    def is_sd2(self) -> bool:
        return self._family() == "SD2"

    @property
    def is_sdxl(self) -> bool:
        return self._family() == "SDXL"

    @property
    def is_sdxl_inpaint(self) -> bool:
        return self.is_sdxl and "inpaint" in self._model.architecture.name

    is_ssd = False
    is_sd3 = False
    latent_channels = 4

    def get_learned_conditioning(self, prompts):
        """A1111's model method: `prompts` (a list, e.g. `prompt_parser.SdConditioning`) encoded with
        the settings in effect (clip skip, emphasis) and the loaded embeddings, no prompt editing.
        SD1/SD2: a tensor [len(prompts), 77 * chunks, width]; SDXL: `{"crossattn": ..., "vector":
        pooled}` (Atelier's `vector` holds the pooled text embedding only; A1111 appends the size
        embeddings), the layouts `on_cfg_denoiser`'s `text_cond`/`text_uncond` have."""
        import torch

        from modules.generation.conditioning import ConditioningOptions, TextConditioner
        from modules.networks.activation import embedding_widths

        context = current_app()
        settings = context.settings.current()
        options = ConditioningOptions(comma_padding_backtrack=settings["comma_padding_backtrack"],
                                      emphasis=settings["emphasis"], clip_skip=settings["CLIP_stop_at_last_layers"],
                                      sdxl_clip_l_skip=settings["sdxl_clip_l_skip"])
        embeddings = context.embeddings.for_model(embedding_widths(self._model)).loaded
        with torch.no_grad():
            cond = TextConditioner(self._model, embeddings, options).encode([str(prompt) for prompt in prompts])
        if self.is_sdxl:
            return {"crossattn": cond.crossattn, "vector": cond.pooled}
        return cond.crossattn

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        try:
            return getattr(self._model, name)
        except AttributeError:
            raise AttributeError(
                f"shared.sd_model has no {name!r}: Atelier's model is not A1111's LatentDiffusion (it has "
                "sd_checkpoint_info, sd_model_hash, sd_model_checkpoint, is_sd1/is_sd2/is_sdxl, and Atelier's "
                "unet, vae, text_encoders, tokenizers, architecture)") from None

    def __repr__(self) -> str:
        return f"<shared.sd_model {self._info.title if self._info else self._model.name}>"


def model_view(context, model: Any) -> SdModelView:
    """The view of `model`, a model of `context`'s model manager."""
    info = context.models.current_info() if context.models.current() is model else None
    if info is None:
        info = next((i for i in context.checkpoints.list() if i.filename == model.path), None)
    return SdModelView(model, info)


def current_sd_model() -> SdModelView | None:
    """A1111's lazy `shared.sd_model`: the current model; with none, the start-up choice is loaded
    (as A1111 loads one on first read). None when nothing can be loaded (logged)."""
    context = current_app()
    model = context.models.current()
    if model is None:
        try:
            model = context.load_default_model()
        except (ValueError, OSError) as error:
            log.warning("shared.sd_model: no checkpoint could be loaded: %s", error)
            return None
    return model_view(context, model)
