"""A1111's `modules.extension_host.callbacks`: `on_*` registration functions and the objects callbacks get.

Callbacks live in a `CallbackRegistry` owned by the extension runtime (modules.extension_host.extensions), never in
module globals. A1111's module-level functions (`script_callbacks.on_ui_tabs(fn)`) still work for
extensions: they register into the *current* registry, a context variable that the runtime sets
while it imports an extension's scripts and while it runs that extension's callbacks and script
methods (`registry_scope`). Each registration is tagged with the extension that made it, so a
failing extension's callbacks can be removed and errors name the extension. Calling an `on_*`
function anywhere else (a plain thread, a module imported outside extension loading) raises a
RuntimeError that says so.

Invoking callbacks (`registry.app_started(demo, app)`, `registry.ui_tabs()`, ...) isolates
failures: a callback that raises is logged with its extension name and traceback, and the others
still run (A1111 does the same).
"""

from __future__ import annotations

import contextvars
import logging
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Iterator

log = logging.getLogger(__name__)

# A1111's callback kinds. The ones Atelier calls are invoked by the methods of CallbackRegistry;
# NOT_CALLED_YET lists kinds accepted (so extensions load) whose event does not exist here yet.
KINDS = (
    "app_started", "model_loaded", "ui_tabs", "ui_train_tabs", "ui_settings", "before_image_saved",
    "image_saved", "extra_noise", "cfg_denoiser", "cfg_denoised", "cfg_after_cfg", "before_component",
    "after_component", "image_grid", "infotext_pasted", "script_unloaded", "before_ui", "before_reload",
    "list_optimizers", "list_unets", "before_token_counter",
)
NOT_CALLED_YET = frozenset({
    "ui_train_tabs",
    "image_grid", "before_reload", "list_optimizers", "list_unets", "before_token_counter",
    "script_unloaded",
})


# Kinds whose callbacks build Gradio UI: they run inside the Gradio 3 compatibility context.
UI_KINDS = frozenset({"ui_tabs", "ui_train_tabs", "ui_settings", "before_ui", "before_component", "after_component"})


# --- the objects A1111 passes to callbacks ---------------------------------------------------------


class ImageSaveParams:
    """`on_before_image_saved` / `on_image_saved`: `image` (PIL), `p` (the processing object),
    `filename` (the file written; None before saving in Atelier, where the name is chosen while
    writing) and `pnginfo` (text chunks; `"parameters"` is the infotext)."""

    def __init__(self, image, p, filename: str | None, pnginfo: dict[str, Any]):
        self.image = image
        self.p = p
        self.filename = filename
        self.pnginfo = pnginfo


class ExtraNoiseParams:
    """`on_extra_noise`: before img2img's (and hires fix's) extra noise is added. `noise` is what
    will be added (× the `img2img_extra_noise` setting; replace it to change that), `x` the clean
    init latent, `xi` the start latent already noised to the denoising strength."""

    def __init__(self, noise, x, xi):
        self.noise = noise
        self.x = x
        self.xi = xi


class CFGDenoiserParams:
    """`on_cfg_denoiser`, once per model evaluation, before the UNet: `x` (one row per AND sub-prompt
    of each image, then one unconditional row per image), `image_cond`, `sigma` (one per row of `x`),
    `sampling_step` (model evaluations so far in this pass), `total_sampling_steps`, `text_cond` and
    `text_uncond` (the cross-attention contexts of the cond and uncond rows; SDXL: dicts with
    `crossattn` and `vector`), `denoiser` (`.p`, `.step`, `.mask`, `.init_latent`, `.inner_model`).
    `x`, `image_cond`, `sigma`, `text_cond` and `text_uncond` are read back (the row layout is in
    modules.generation.cfg_step.CFGStep)."""

    def __init__(self, x, image_cond, sigma, sampling_step: int, total_sampling_steps: int, text_cond, text_uncond,
                 denoiser=None):
        self.x = x
        self.image_cond = image_cond
        self.sigma = sigma
        self.sampling_step = sampling_step
        self.total_sampling_steps = total_sampling_steps
        self.text_cond = text_cond
        self.text_uncond = text_uncond
        self.denoiser = denoiser


class CFGDenoisedParams:
    """`on_cfg_denoised`, after the UNet and before the guidance combine: `x` holds the predictions in
    `CFGDenoiserParams.x`'s rows. Only in-place edits of `x` count (as in A1111)."""

    def __init__(self, x, sampling_step: int, total_sampling_steps: int, inner_model=None):
        self.x = x
        self.sampling_step = sampling_step
        self.total_sampling_steps = total_sampling_steps
        self.inner_model = inner_model


class AfterCFGCallbackParams:
    """`on_cfg_after_cfg`, after the combine: `x` has one row per image and is read back."""

    def __init__(self, x, sampling_step: int, total_sampling_steps: int):
        self.x = x
        self.sampling_step = sampling_step
        self.total_sampling_steps = total_sampling_steps


class UiTrainTabParams:
    def __init__(self, txt2img_preview_params):
        self.txt2img_preview_params = txt2img_preview_params


class ImageGridLoopParams:
    def __init__(self, imgs, cols: int, rows: int):
        self.imgs = imgs
        self.cols = cols
        self.rows = rows


# --- the registry ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RegisteredCallback:
    kind: str
    callback: Callable
    extension: str  # the extension that registered it
    name: str  # A1111's `name=`, else "<extension>/<function name>"
    script: str | None = None  # the scripts/*.py file being imported when it was registered


class CallbackRegistry:
    """The callbacks of one running app, in registration order per kind."""

    def __init__(self, ui_scope: Callable[[], ContextManager] | None = None):
        self._callbacks: dict[str, list[RegisteredCallback]] = {kind: [] for kind in KINDS}
        # The context UI_KINDS callbacks run in (the extension runtime passes the Gradio 3
        # compatibility context, modules.extension_host.gradio3_compat); none when not given.
        self._ui_scope = ui_scope
        self._warned_not_called: set[str] = set()
        # The AppContext these callbacks belong to (ScriptRunner.bind_app sets it): extension code run
        # in `registry_scope` sees it as the app of shared.opts & co. (modules.extension_host.environment).
        self.app = None
        # The ScriptRunner these callbacks share (it sets this): A1111's `scripts.scripts_data` while
        # extensions load, before the app holds the runtime.
        self.scripts = None

    def add(self, kind: str, callback: Callable, *, extension: str, name: str | None = None,
            script: str | None = None) -> None:
        if kind not in self._callbacks:
            raise ValueError(f"unknown callback kind {kind!r}; known: {', '.join(KINDS)}")
        if not callable(callback):
            raise TypeError(f"on_{kind}: expected a function, got {callback!r}")
        if kind in NOT_CALLED_YET and kind not in self._warned_not_called:
            self._warned_not_called.add(kind)
            log.warning("Extension %s registered an on_%s callback; Atelier accepts it but does not call "
                        "on_%s callbacks yet", extension, kind, kind)
        label = name or f"{extension}/{getattr(callback, '__name__', type(callback).__name__)}"
        self._callbacks[kind].append(RegisteredCallback(kind, callback, extension, label, script))

    def _scope_for(self, kind: str) -> ContextManager:
        return self._ui_scope() if kind in UI_KINDS and self._ui_scope is not None else nullcontext()

    def callbacks(self, kind: str) -> list[RegisteredCallback]:
        return list(self._callbacks[kind])

    def remove_extension(self, extension: str) -> None:
        """Forget every callback `extension` registered (it failed to load)."""
        for kind, entries in self._callbacks.items():
            self._callbacks[kind] = [entry for entry in entries if entry.extension != extension]

    def remove_script(self, script: str) -> None:
        """Forget the callbacks registered while `script` (a scripts/*.py path) was imported."""
        for kind, entries in self._callbacks.items():
            self._callbacks[kind] = [entry for entry in entries if entry.script != script]

    def remove_function(self, callback: Callable) -> None:
        for kind, entries in self._callbacks.items():
            self._callbacks[kind] = [entry for entry in entries if entry.callback != callback]

    def run(self, kind: str, *args: Any) -> list[Any]:
        """Call every `kind` callback with `args`, each in its extension's scope; a failure is logged
        with the extension's name and does not stop the others. Returns the results of those that
        returned."""
        return [result for _, result in self.run_each(kind, *args)]

    def call(self, entry: RegisteredCallback, *args: Any) -> bool:
        """Call one callback in its extension's scope; False (logged) when it raised."""
        try:
            with registry_scope(self, entry.extension), self._scope_for(entry.kind):
                entry.callback(*args)
            return True
        except (Exception, SystemExit):
            log.exception("Extension %s: on_%s callback %s failed", entry.extension, entry.kind, entry.name)
            return False

    def run_each(self, kind: str, *args: Any, **kwargs: Any) -> list[tuple[RegisteredCallback, Any]]:
        """`run`, keeping which callback returned what (to blame the right extension for a bad value)."""
        results = []
        for entry in self.callbacks(kind):
            try:
                with registry_scope(self, entry.extension), self._scope_for(kind):
                    results.append((entry, entry.callback(*args, **kwargs)))
            except (Exception, SystemExit):  # sys.exit() in an extension must not end the server
                log.exception("Extension %s: on_%s callback %s failed", entry.extension, kind, entry.name)
        return results

    # A1111's events, by the names of its `*_callback` invokers.

    def app_started(self, demo, app) -> None:
        """Once the app is built: `demo` is the Gradio Blocks (None without a web UI), `app` the
        FastAPI app, on which extensions add routes."""
        self.run("app_started", demo, app)

    def model_loaded(self, sd_model) -> None:
        self.run("model_loaded", sd_model)

    def ui_tabs(self) -> list[tuple[Any, str, str, str]]:
        """The extension tabs: `(gr.Blocks, title, elem_id, extension)`, in order. Call before the main
        Blocks is opened; render each inside a `gr.Tab`."""
        tabs = []
        for entry, returned in self.run_each("ui_tabs"):
            items = returned if isinstance(returned, (list, tuple)) else [returned] if returned is not None else []
            for item in items:
                if isinstance(item, (tuple, list)) and len(item) >= 2 and hasattr(item[0], "render"):
                    title = str(item[1])
                    elem_id = str(item[2]) if len(item) > 2 else title.lower().replace(" ", "_")
                    tabs.append((item[0], title, elem_id, entry.extension))
                else:
                    log.error("Extension %s: on_ui_tabs callback %s returned %r; expected a list of "
                              "(gr.Blocks, title, elem_id) tuples. That tab is left out.", entry.extension,
                              entry.name, item)
        return tabs

    def ui_settings(self) -> None:
        self.run("ui_settings")

    def before_ui(self) -> None:
        self.run("before_ui")

    def before_image_saved(self, params: ImageSaveParams) -> None:
        self.run("before_image_saved", params)

    def image_saved(self, params: ImageSaveParams) -> None:
        self.run("image_saved", params)

    def extra_noise(self, params: ExtraNoiseParams) -> None:
        self.run("extra_noise", params)

    def before_component(self, component, **kwargs: Any) -> None:
        """Before a component of the txt2img tab is created: `component` is a stand-in carrying the
        constructor's keyword arguments as attributes (modules.ui.component_hooks), `kwargs` those
        arguments (`elem_id` included)."""
        self.run_each("before_component", component, **kwargs)

    def after_component(self, component, **kwargs: Any) -> None:
        """After a component of the txt2img tab is created, with the constructor's keyword arguments;
        components an extension creates here are placed right after it in the layout."""
        self.run_each("after_component", component, **kwargs)

    def infotext_pasted(self, infotext: str, params: dict) -> None:
        """A pasted infotext was parsed into `params`; callbacks may edit it before the fields are set."""
        self.run("infotext_pasted", infotext, params)

    def has(self, kind: str) -> bool:
        return bool(self._callbacks[kind])


@dataclass(frozen=True)
class _Scope:
    registry: CallbackRegistry
    extension: str
    script: str | None = None  # set while one of the extension's scripts/*.py is imported


_current: contextvars.ContextVar[_Scope | None] = contextvars.ContextVar("atelier_callback_scope", default=None)


@contextmanager
def registry_scope(registry: CallbackRegistry, extension: str) -> Iterator[None]:
    """Make `registry` the target of A1111's module-level `on_*` functions, on behalf of
    `extension`, for the duration of the block (this thread / task only)."""
    from modules.extension_host.environment import app_scope

    token = _current.set(_Scope(registry, extension))
    try:
        with app_scope(registry.app):
            yield
    finally:
        _current.reset(token)


@contextmanager
def script_scope(script: str) -> Iterator[None]:
    """Inside `registry_scope`: callbacks registered in the block come from `script` (so A1111's
    `remove_current_script_callbacks()` removes that file's callbacks only)."""
    scope = _current.get()
    if scope is None:  # not loading an extension: on_* calls will say so themselves
        yield
        return
    token = _current.set(_Scope(scope.registry, scope.extension, script))
    try:
        yield
    finally:
        _current.reset(token)


def current_scope_or_none() -> _Scope | None:
    """The extension scope in effect, if any (see `registry_scope`)."""
    return _current.get()


def current_scope() -> _Scope:
    scope = _current.get()
    if scope is None:
        raise RuntimeError(
            "script_callbacks.on_*() was called outside extension loading. Register callbacks when a "
            "script in extensions/<name>/scripts/ is imported, or from inside another callback or script "
            "method, where Atelier knows which extension is registering.")
    return scope


def _register(kind: str, callback: Callable, name: str | None) -> None:
    scope = current_scope()
    scope.registry.add(kind, callback, extension=scope.extension, name=name, script=scope.script)


# --- A1111's registration functions (module level, as extensions call them) -----------------------


def on_app_started(callback, *, name=None):
    """`callback(demo: gr.Blocks | None, app: FastAPI)` once the app is built."""
    _register("app_started", callback, name)


def on_model_loaded(callback, *, name=None):
    """`callback(sd_model)` after a checkpoint is loaded from disk."""
    _register("model_loaded", callback, name)


def on_ui_tabs(callback, *, name=None):
    """`callback()` returns `[(gr.Blocks, title, elem_id), ...]`: tabs added before Settings."""
    _register("ui_tabs", callback, name)


def on_ui_train_tabs(callback, *, name=None):
    _register("ui_train_tabs", callback, name)


def on_ui_settings(callback, *, name=None):
    """`callback()` while the Settings tab is built."""
    _register("ui_settings", callback, name)


def on_before_image_saved(callback, *, name=None):
    """`callback(ImageSaveParams)` before an image is written; `params.image` and `params.pnginfo`
    may be changed."""
    _register("before_image_saved", callback, name)


def on_image_saved(callback, *, name=None):
    """`callback(ImageSaveParams)` after an image is written; `params.filename` is its path."""
    _register("image_saved", callback, name)


def on_extra_noise(callback, *, name=None):
    _register("extra_noise", callback, name)


def on_cfg_denoiser(callback, *, name=None):
    """`callback(CFGDenoiserParams)` at each model evaluation, before the UNet; may replace `x`,
    `image_cond`, `sigma`, `text_cond` and `text_uncond` (same rows)."""
    _register("cfg_denoiser", callback, name)


def on_cfg_denoised(callback, *, name=None):
    """`callback(CFGDenoisedParams)` after the UNet, before the guidance combine (in-place edits)."""
    _register("cfg_denoised", callback, name)


def on_cfg_after_cfg(callback, *, name=None):
    """`callback(AfterCFGCallbackParams)` after the guidance combine; may replace `x` (same shape)."""
    _register("cfg_after_cfg", callback, name)


def on_before_component(callback, *, name=None):
    """`callback(component, **kwargs)` before each component of the txt2img tab is created (the
    component is a stand-in holding its keyword arguments; `kwargs["elem_id"]` names it)."""
    _register("before_component", callback, name)


def on_after_component(callback, *, name=None):
    """`callback(component, **kwargs)` after each component of the txt2img tab is created."""
    _register("after_component", callback, name)


def on_image_grid(callback, *, name=None):
    _register("image_grid", callback, name)


def on_infotext_pasted(callback, *, name=None):
    """`callback(infotext, params)` when an infotext is pasted (the paste button, PNG Info's "Send to
    txt2img"): `params` is the parsed dict, which the callback may edit before the fields are set."""
    _register("infotext_pasted", callback, name)


def on_script_unloaded(callback, *, name=None):
    _register("script_unloaded", callback, name)


def on_before_ui(callback, *, name=None):
    _register("before_ui", callback, name)


def on_before_reload(callback, *, name=None):
    _register("before_reload", callback, name)


def on_list_optimizers(callback, *, name=None):
    _register("list_optimizers", callback, name)


def on_list_unets(callback, *, name=None):
    _register("list_unets", callback, name)


def on_before_token_counter(callback, *, name=None):
    _register("before_token_counter", callback, name)


def remove_current_script_callbacks():
    """A1111: forget the callbacks the script file being imported registered (extensions call it
    first thing, so a reload does not register twice); outside an import, the whole extension's."""
    scope = current_scope()
    if scope.script is not None:
        scope.registry.remove_script(scope.script)
    else:
        scope.registry.remove_extension(scope.extension)


def remove_callbacks_for_function(callback_func):
    current_scope().registry.remove_function(callback_func)
