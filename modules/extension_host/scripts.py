"""A1111's `modules.extension_host.scripts`: the `Script` base class extensions subclass, and the runner that loads
them and joins them to a generation.

A script is a `Script` subclass in an extension's `scripts/*.py` (A1111.md §11):
  title()            its name in a tab's "Script" dropdown and for the API (case-insensitive)
  show(is_img2img)   False (hidden), True (selectable in the dropdown) or `AlwaysVisible` (always on)
  ui(is_img2img)     Gradio components; their values are the script's `*args`
  run(p, *args)      selectable scripts: do the whole job, return a `Processed` (usually from
                     `process_images(p)`)
  setup, before_process, process, before_process_batch, after_extra_networks_activate, process_batch,
  process_before_every_sampling, before_hr, post_sample,
  postprocess_batch, postprocess_batch_list, postprocess_image,
  postprocess        hooks of always-on scripts, in A1111's order (modules.generation.engine.GenerationHooks)

As in A1111, every class is instantiated once per tab (`ScriptRunner.txt2img_tab` and
`img2img_tab`, A1111's `scripts_txt2img` and `scripts_img2img`): `is_txt2img`/`is_img2img` are set on
the instance, `show(is_img2img)` decides whether the tab offers it, `ui(is_img2img)` builds its
controls there, and each tab has its own args layout (`args_from:args_to`) and default arguments.
The callbacks (one CallbackRegistry) are shared. `ScriptRunner`'s own lists and lookups
(`txt2img_scripts`, `selectable`, `alwayson`, `find`, `layout`, ...) are the txt2img tab's.

`ScriptRunner.generate(engine, request, control, save=..., selection=...)` runs one request (the
img2img tab's scripts for an `Img2ImgRequest`, whose `p` is a `StableDiffusionProcessingImg2Img`): the
selected script's `run`, else `process_images(p)`, with every always-on script's hooks and the
generation callbacks (on_cfg_denoiser, on_before_image_saved, on_image_saved). A hook of an
always-on script that raises is logged with the extension's name, added to the result's warnings,
and the generation goes on (A1111 does the same); a selected script's `run` that raises fails the
job with a `ScriptError` naming the script and extension. With no script and no generation
callback, the engine runs exactly as without extensions.

What the UI and the API call: `run_txt2img(context, request, control, save=..., selection=...)` and
`run_img2img(...)` (the same for an `Img2ImgRequest`), through
`modules.serving.generation_service.run_generation`.

Atelier additions for selectable scripts that run a job of their own (the built-in X/Y/Z plot):
`job_of(p)` inside `run(p, *args)` gives a `ScriptJob` (the AppContext, an engine whose every
generation runs the always-on scripts' hooks, the job's control, the save choice), and a `run` that
raises `ScriptArgumentError` fails the request as bad input (its message unchanged) instead of as a
script fault. `Script.app` is the AppContext the runner was bound to (`ScriptRunner.bind_app`), for
`ui()` choices such as checkpoint names; None until bound.
"""

from __future__ import annotations

import contextvars
import logging
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Sequence

from modules.generation.engine import GenerationHooks, GenerationPlan, GenerationRequest, GenerationResult, ImageSaveEvent
from modules.generation.requests import Img2ImgRequest
from modules.extension_host.processing_objects import (
    Processed,
    StableDiffusionProcessingImg2Img,
    process_images,
    processing_for,
)
from modules.extension_host.module_files import REPO_ROOT
from modules.extension_host.callbacks import (
    CallbackRegistry,
    ExtraNoiseParams,
    ImageSaveParams,
    registry_scope,
    script_scope,
)
from modules.extension_host.cfg_callbacks import CFG_KINDS, CFGCallbackHooks
from modules.extension_host.paste_fields import PasteRegistry

log = logging.getLogger(__name__)


_current_basedir: contextvars.ContextVar[str | None] = contextvars.ContextVar("atelier_script_basedir", default=None)


def basedir() -> str:
    """A1111: the folder of the extension whose scripts are being imported (else Atelier's folder)."""
    return _current_basedir.get() or str(REPO_ROOT)


class _AlwaysVisible:
    def __repr__(self) -> str:
        return "AlwaysVisible"


AlwaysVisible = _AlwaysVisible()


class PostprocessImageArgs:
    def __init__(self, image):
        self.image = image


class PostprocessBatchListArgs:
    def __init__(self, images):
        self.images = images


class PostSampleArgs:
    def __init__(self, samples):
        self.samples = samples


class Script:
    """Base class of extension scripts, with A1111's method names (every hook a no-op)."""

    filename: str | None = None
    extension: str = ""  # Atelier: the extension the script came from
    args_from: int | None = None
    args_to: int | None = None
    alwayson = False
    is_txt2img = False
    is_img2img = False
    group = None
    create_group = True
    infotext_fields = None
    paste_field_names = None
    section = None
    setup_for_ui_only = False
    api_info = None
    name: str | None = None  # title().lower(), set when loaded
    controls = None
    on_before_component_elem_id: list | None = None  # [(elem_id, callback)] from on_before_component
    on_after_component_elem_id: list | None = None  # [(elem_id, callback)] from on_after_component
    _atelier_shown = False  # shown in its tab (selectable or always-on); set when loaded
    _atelier_defaults: tuple | None = None  # the ui() components' values, once known
    app = None  # Atelier: the AppContext the scripts run in (ScriptRunner.bind_app); None until bound

    def title(self) -> str:
        raise NotImplementedError(f"{type(self).__name__} must define title()")

    def ui(self, is_img2img: bool):
        pass

    def show(self, is_img2img: bool):
        return True

    def run(self, p, *args):
        pass

    def setup(self, p, *args):
        pass

    def before_process(self, p, *args):
        pass

    def process(self, p, *args):
        pass

    def before_process_batch(self, p, *args, **kwargs):
        pass

    def after_extra_networks_activate(self, p, *args, **kwargs):
        pass

    def process_before_every_sampling(self, p, *args, **kwargs):
        pass

    def process_batch(self, p, *args, **kwargs):
        pass

    def post_sample(self, p, ps: PostSampleArgs, *args):
        pass

    def postprocess_batch(self, p, *args, **kwargs):
        pass

    def postprocess_batch_list(self, p, pp: PostprocessBatchListArgs, *args, **kwargs):
        pass

    def postprocess_image(self, p, pp: PostprocessImageArgs, *args):
        pass

    def postprocess(self, p, processed, *args):
        pass

    def before_component(self, component, **kwargs):
        pass

    def after_component(self, component, **kwargs):
        pass

    def on_before_component(self, callback, *, elem_id):
        """Call `callback(OnComponent(component=...))` before the component `elem_id` of this script's tab
        is created (the component is then a stand-in holding its keyword arguments). Call it from
        `__init__` or `ui()`, as A1111's scripts do."""
        if self.on_before_component_elem_id is None:
            self.on_before_component_elem_id = []
        self.on_before_component_elem_id.append((elem_id, callback))

    def on_after_component(self, callback, *, elem_id):
        """Call `callback(OnComponent(component=...))` right after the component `elem_id` of this
        script's tab is created; components made in the callback are placed after it."""
        if self.on_after_component_elem_id is None:
            self.on_after_component_elem_id = []
        self.on_after_component_elem_id.append((elem_id, callback))

    def describe(self) -> str:
        return ""

    def elem_id(self, item_id: str) -> str:
        """A1111's element id for a component of this script."""
        need_tabname = self.show(True) == self.show(False)
        tabname = ("img2img_" if self.is_img2img else "txt2img_") if need_tabname else ""
        title = re.sub(r"[^a-z_0-9]", "", re.sub(r"\s", "_", self.title().lower()))
        return f"script_{tabname}{title}_{item_id}"

    def before_hr(self, p, *args):
        pass


# A1111 Script hooks with no matching point in Atelier's engine yet (docs/EXTENSIONS.md lists them).
HOOKS_NOT_CALLED_YET: tuple[str, ...] = ()


@dataclass
class OnComponent:
    """What `Script.on_before_component` / `on_after_component` callbacks receive (A1111's name)."""

    component: Any


class ScriptClassData(NamedTuple):
    """A1111's entry of `scripts.scripts_data`: the class, its file, its extension's folder and the
    module the file was loaded as (the X/Y/Z script's holds `axis_options`)."""

    script_class: type
    path: str
    basedir: str | None
    module: Any


def _current_runner() -> "ScriptRunner | None":
    """The scripts of the app being loaded (in an extension's import or callback), else of the
    running app (modules.extension_host.environment)."""
    from modules.extension_host.callbacks import current_scope_or_none
    from modules.extension_host.environment import current_app

    scope = current_scope_or_none()
    runner = getattr(scope.registry, "scripts", None) if scope is not None else None
    if runner is None:
        runtime = getattr(current_app(), "extensions", None)
        runner = runtime.scripts if runtime is not None else None
    return runner


def current_scripts_data() -> list[ScriptClassData]:
    """`modules.scripts.scripts_data` as extensions read it (see `_current_runner`)."""
    runner = _current_runner()
    return runner.scripts_data() if runner is not None else []


class ScriptFile(NamedTuple):
    """A1111's `(basedir, filename, path)` of a script file."""

    basedir: str
    filename: str
    path: str


def list_scripts(scriptdirname: str, extension: str, *, include_extensions: bool = True) -> list[ScriptFile]:
    """A1111: the files ending with `extension` in the install's `<scriptdirname>/` folder, then in
    each loaded extension's (built-in ones first), by file name within each folder."""
    from modules.extension_host.environment import current_app

    folders = [REPO_ROOT]
    runtime = getattr(current_app(), "extensions", None)
    if include_extensions and runtime is not None:
        folders += [ext.path for ext in runtime.active()]
    found = []
    for basedir in folders:
        folder = Path(basedir) / scriptdirname
        if folder.is_dir():
            found += [ScriptFile(str(basedir), path.name, str(path)) for path in sorted(folder.iterdir())
                      if path.is_file() and path.name.lower().endswith(extension.lower())]
    return found


def module_getattr(name: str):
    """The façade `modules.scripts`' module `__getattr__`: A1111's process-wide `scripts_data`,
    `scripts_txt2img` and `scripts_img2img` (the tabs' ScriptTab; None without extensions),
    resolved per app when read (no module global)."""
    if name == "scripts_data":
        return current_scripts_data()
    if name in ("scripts_txt2img", "scripts_img2img"):
        runner = _current_runner()
        return runner.tab(name == "scripts_img2img") if runner is not None else None
    raise AttributeError(f"module 'modules.scripts' has no attribute {name!r}")


class ScriptError(RuntimeError):
    """A selected script's run() failed; the message names the script and its extension."""


class ScriptArgumentError(ValueError):
    """Raised by a selected script's run() for arguments that cannot work: the request's fault, so it
    reaches the caller unchanged (a 422 from the API, the message in the UI), not as a ScriptError."""


@dataclass(frozen=True)
class ScriptJob:
    """What a selected script's `run(p, *args)` may use besides `p` (A1111 scripts read `shared.state`
    and `shared.sd_model` instead); get it with `job_of(p)`."""

    context: Any  # the AppContext of ScriptRunner.bind_app (run_txt2img binds it); None when unbound
    engine: Any  # `generate(request, control=None, *, save=None)`: the always-on scripts' hooks included
    control: Any  # the job's JobControl (progress, interrupt, skip); None outside a job
    save: bool | None  # the request's choice: None = as the settings say, False = save nothing


def job_of(p) -> ScriptJob:
    """The job `p` belongs to; RuntimeError for a `p` that is not from a running request."""
    execution = getattr(p, "_atelier_execution", None)
    if execution is None:
        raise RuntimeError("job_of(p) needs the p a script's run() receives (or a copy of it)")
    return ScriptJob(execution.runner.app, _HookedEngine(execution), execution.control, execution.save)


@dataclass(frozen=True)
class ScriptSelection:
    """The scripts part of one request: the selected script (its title; None = "None") with its
    arguments, and arguments for always-on scripts by lowercase title. Scripts not named here run
    with their UI's default values; arguments shorter than a script's UI are completed with them."""

    script: str | None = None
    script_args: tuple = ()
    alwayson_args: Mapping[str, tuple] = field(default_factory=dict)


class ScriptTab:
    """One tab's scripts (A1111's `scripts_txt2img` or `scripts_img2img`): an instance of every loaded
    Script class made for this tab (`is_img2img` set on it), in load order, and what depends on the
    tab: which are shown (`show(is_img2img)`), the "Script" dropdown's entries, the flat args layout,
    the API's names, and the component hooks fired while the tab is built."""

    def __init__(self, runner: "ScriptRunner", is_img2img: bool):
        self.runner = runner
        self.is_img2img = is_img2img
        self.all_scripts: list[Script] = []  # every loaded class's instance for this tab, shown or not

    @property
    def name(self) -> str:
        return "img2img" if self.is_img2img else "txt2img"

    @property
    def callbacks(self) -> CallbackRegistry:
        return self.runner.callbacks

    # --- lists and lookup ------------------------------------------------------------------------

    @property
    def scripts(self) -> list[Script]:
        """Scripts shown in this tab (selectable and always-on), in load order: A1111's args layout."""
        return [script for script in self.all_scripts if script._atelier_shown]

    @property
    def selectable(self) -> list[Script]:
        return [script for script in self.scripts if not script.alwayson]

    @property
    def alwayson(self) -> list[Script]:
        return [script for script in self.scripts if script.alwayson]

    # A1111's attribute names on a runner (`p.scripts.alwayson_scripts`, ...).
    alwayson_scripts = alwayson
    selectable_scripts = selectable

    @property
    def titles(self) -> list[str]:
        return [script.title() for script in self.selectable]

    def script(self, title: str) -> Script | None:
        """A1111: the shown script titled `title` (case-insensitive), else None."""
        try:
            return self.find(title)
        except KeyError:
            return None

    def find(self, title: str, among: Sequence[Script] | None = None) -> Script:
        """The script titled `title` (case-insensitive); KeyError listing the titles otherwise."""
        among = self.scripts if among is None else among
        wanted = title.strip().lower()
        for script in among:
            if script.name == wanted:
                return script
        raise KeyError(f"script {title!r} not found in {self.name}; available: "
                       f"{[script.title() for script in among] or 'none'}")

    # --- arguments -------------------------------------------------------------------------------

    def default_args(self, script: Script) -> tuple:
        return self.runner.default_args(script)

    def record_ui(self, script: Script, components: Sequence[Any]) -> None:
        self.runner.record_ui(script, components)

    def args_for(self, script: Script, given: Sequence[Any] = ()) -> tuple:
        return self.runner.args_for(script, given)

    def layout(self) -> int:
        """A1111's flat args layout: index 0 is the selected script (0 = None), then each shown
        script's slice `args_from:args_to`. Returns the total length."""
        start = 1
        for script in self.scripts:
            script.args_from, script.args_to = start, start + len(self.default_args(script))
            start = script.args_to
        return start

    def flat_args(self, selected: Script | None, args: Mapping[Script, tuple]) -> list:
        flat = [None] * self.layout()
        flat[0] = self.selectable.index(selected) + 1 if selected is not None else 0
        for script in self.scripts:
            width = script.args_to - script.args_from
            values = list(args.get(script, self.default_args(script)))[:width]
            flat[script.args_from:script.args_from + len(values)] = values
        return flat

    def selection_from_api(self, script_name: str | None, script_args: Sequence[Any] | None,
                           alwayson_scripts: Mapping[str, Any] | None) -> ScriptSelection:
        """A1111's API fields as a ScriptSelection for this tab; ValueError (a 422) naming what is wrong."""
        selected = None
        if script_name:
            try:
                selected = self.find(script_name, self.selectable)
            except KeyError as error:
                raise ValueError(f"script_name: {error.args[0]}") from None
        alwayson: dict[str, tuple] = {}
        for name, value in (alwayson_scripts or {}).items():
            try:
                script = self.find(name)
            except KeyError:
                raise ValueError(f"alwayson_scripts: always on script {name!r} not found in {self.name}; always-on "
                                 f"scripts: {[s.title() for s in self.alwayson] or 'none'}") from None
            if not script.alwayson:
                raise ValueError(f"alwayson_scripts: cannot have a selectable script ({script.title()!r}) in the "
                                 "always on scripts params; send it as script_name")
            if not isinstance(value, Mapping):
                raise ValueError(f"alwayson_scripts.{name}: expected an object like {{\"args\": [...]}}")
            args = value.get("args", [])
            if not isinstance(args, (list, tuple)):
                raise ValueError(f"alwayson_scripts.{name}.args: expected a list, got {type(args).__name__}")
            alwayson[script.name] = tuple(args)
        return ScriptSelection(script=selected.title() if selected else None, script_args=tuple(script_args or ()),
                               alwayson_args=alwayson)

    def api_titles(self) -> list[str]:
        """Lowercase titles of the scripts shown in this tab (A1111's GET /sdapi/v1/scripts)."""
        return [script.name for script in self.scripts]

    # --- component hooks (fired by modules.ui.component_hooks while this tab is built) -----------

    def has_component_hooks(self) -> bool:
        """Whether a script of this tab defines `before_component`/`after_component` or registered an
        `on_*_component` callback (else building a component needs no hook, nor their scope)."""
        return any(type(script).before_component is not Script.before_component
                   or type(script).after_component is not Script.after_component
                   or script.on_before_component_elem_id or script.on_after_component_elem_id
                   for script in self.scripts)

    def before_component(self, component, **kwargs) -> None:
        """A1111's order: the `on_before_component` callbacks for this elem_id, then every script's
        `before_component` (this tab's scripts). Each runs in its extension's scope; one that raises
        is logged with the extension's name and the others still run."""
        elem_id = kwargs.get("elem_id")
        for script in self.scripts:
            for wanted, callback in script.on_before_component_elem_id or ():
                if wanted == elem_id:
                    self._component_hook(script, "on_before_component", callback, OnComponent(component))
        for script in self.scripts:
            self._component_hook(script, "before_component", script.before_component, component, **kwargs)

    def after_component(self, component, **kwargs) -> None:
        """The `on_after_component` callbacks for the component's elem_id, then every script's
        `after_component` (this tab's scripts)."""
        elem_id = getattr(component, "elem_id", None) or kwargs.get("elem_id")
        for script in self.scripts:
            for wanted, callback in script.on_after_component_elem_id or ():
                if wanted == elem_id:
                    self._component_hook(script, "on_after_component", callback, OnComponent(component))
        for script in self.scripts:
            self._component_hook(script, "after_component", script.after_component, component, **kwargs)

    def _component_hook(self, script: Script, hook: str, function, *args, **kwargs) -> None:
        try:
            with registry_scope(self.callbacks, script.extension):
                function(*args, **kwargs)
        except (Exception, SystemExit):
            log.exception("Extension %s: %s of script %r (%s) failed for component %r; the page is built "
                          "without what it adds", script.extension, hook, script.title(), self.name,
                          kwargs.get("elem_id") or getattr(args[0], "elem_id", None))

    # --- running ---------------------------------------------------------------------------------

    def needed_for(self, selection: ScriptSelection) -> bool:
        return bool(selection.script or self.alwayson or any(
            self.callbacks.has(kind) for kind in (*CFG_KINDS, "before_image_saved", "image_saved", "extra_noise")))


def _postprocessing_steps(module, path, extension: str, file_modules: set[str], known: set[type]) -> list:
    """Instances of the `ScriptPostprocessing` subclasses in a script file's namespace (A1111 loads
    them from the same files as `Script`s), each class once: a class imported from a sibling script
    file counts for that file; the base classes of `modules.postprocessing` are not steps."""
    from modules.postprocessing.scripts import ScriptPostprocessing

    steps = []
    for value in list(vars(module).values()):
        if not (isinstance(value, type) and issubclass(value, ScriptPostprocessing)) or value in known:
            continue
        if value.__module__.startswith("modules.postprocessing"):
            continue  # the base class or a built-in step imported by the file
        if value.__module__ != module.__name__ and value.__module__ in file_modules:
            continue  # registered with its own file
        known.add(value)
        step = value()
        step.filename, step.extension = str(path), extension
        if step.name is None:
            log.info("Extension %s: postprocessing step %s in %s has no name; named after its class",
                     extension, value.__name__, path.name)
            step.name = value.__name__
        steps.append(step)
    return steps


class ScriptRunner:
    """The loaded scripts of one app, in load order, and the code that runs them. Holds one
    `ScriptTab` per generation tab (`txt2img_tab`, `img2img_tab`); the list and lookup methods
    without a tab argument are the txt2img tab's (Atelier's callers before img2img)."""

    def __init__(self, callbacks: CallbackRegistry):
        self.callbacks = callbacks
        self.txt2img_tab = ScriptTab(self, is_img2img=False)
        self.img2img_tab = ScriptTab(self, is_img2img=True)
        self.app = None  # the AppContext these scripts run in; see bind_app
        callbacks.scripts = self
        # The extensions' postprocessing steps (A1111's ScriptPostprocessing subclasses in the same
        # scripts/ files), one instance each, in load order; modules.postprocessing runs them.
        self.postprocessing_scripts: list = []
        # The app's paste destinations and "send to" buttons (A1111's infotext_utils registrations).
        self.paste = PasteRegistry()

    def tab(self, is_img2img: bool = False) -> ScriptTab:
        """The txt2img or img2img tab's scripts."""
        return self.img2img_tab if is_img2img else self.txt2img_tab

    @property
    def tabs(self) -> tuple[ScriptTab, ScriptTab]:
        return self.txt2img_tab, self.img2img_tab

    @property
    def scripts(self) -> list[Script]:
        """Every loaded script class's txt2img instance, in load order (shown there or not)."""
        return self.txt2img_tab.all_scripts

    def bind_app(self, context) -> None:
        """Make `context` (the AppContext owning these scripts) `Script.app` of every script, for
        ui() choices and run(); run_txt2img does it on each call, the app should once it has loaded
        the extensions, before the UI is built."""
        self.app = context
        self.callbacks.app = context
        for tab in self.tabs:
            for script in tab.all_scripts:
                script.app = context

    # --- loading ---------------------------------------------------------------------------------

    def load_extension(self, extension) -> list[Script]:
        """Import `extension`'s scripts/*.py and instantiate the Script subclasses they hold. Raises on
        the first failure; the caller (modules.extension_host.extensions.load_extensions) isolates it.

        As in A1111, while a file imports the extension's folder is first on sys.path and
        `basedir()` is that folder. `from scripts.<file> import X` imports the extension's own
        `scripts/<file>.py` (modules.extension_host.script_imports). Every Script subclass in a
        file's namespace is registered, imported ones included (A1111), each class once: a class
        imported from a sibling script file counts for that file, and a class that does not define
        title() (a base class) is skipped with a note in the log (A1111 lists it, titled by its file)."""

        from modules.extension_host.script_imports import ExtensionImports

        imports = ExtensionImports(extension.name, extension.path)
        files = extension.script_files()
        file_modules = {f"{imports.package}.{path.stem}" for path in files}
        known = {type(script) for script in self.scripts}
        known_steps = {type(step) for step in self.postprocessing_scripts}
        loaded = []
        steps = []
        try:
            for path in files:
                saved_path = list(sys.path)
                sys.path.insert(0, str(extension.path))
                token = _current_basedir.set(str(extension.path))
                try:
                    with script_scope(str(path)):
                        module = imports.load_script_file(path)
                finally:
                    _current_basedir.reset(token)
                    sys.path[:] = saved_path
                steps += _postprocessing_steps(module, path, extension.name, file_modules, known_steps)
                for value in list(vars(module).values()):
                    if not (isinstance(value, type) and issubclass(value, Script)) or value is Script or value in known:
                        continue
                    if value.__module__ != module.__name__ and value.__module__ in file_modules:
                        continue  # registered with its own file
                    if value.title is Script.title:
                        log.info("Extension %s: %s has %s, which defines no title() (a base class?); not "
                                 "registered as a script", extension.name, path.name, value.__name__)
                        continue
                    known.add(value)
                    pair = [self._instantiate(value, path, extension.name, is_img2img=tab.is_img2img)
                            for tab in self.tabs]
                    for script in pair:
                        script._atelier_module = module  # for A1111's scripts_data
                        script._atelier_basedir = str(extension.path)
                    loaded.append(pair)
        except BaseException:
            imports.forget()
            raise
        for pair in loaded:
            for tab, script in zip(self.tabs, pair):
                script.app = self.app
                tab.all_scripts.append(script)
        for step in steps:
            step.app = self.app
        self.postprocessing_scripts.extend(steps)
        return [pair[0] for pair in loaded]

    @staticmethod
    def _instantiate(script_class: type[Script], path, extension: str, *, is_img2img: bool = False) -> Script:
        """The script's instance for one tab (A1111 makes one per tab: `show` and `ui` are asked with
        that tab's `is_img2img`, and the instance keeps that tab's state)."""
        skipped = [hook for hook in HOOKS_NOT_CALLED_YET if getattr(script_class, hook) is not getattr(Script, hook)]
        if skipped and not is_img2img:
            log.warning("Extension %s: script %s defines %s, which Atelier does not call yet; that part of it "
                        "does nothing here", extension, script_class.__name__, ", ".join(skipped))
        script = script_class()
        script.filename, script.extension = str(path), extension
        script.is_txt2img, script.is_img2img = not is_img2img, is_img2img
        script.name = str(script.title()).lower()
        visibility = script.show(is_img2img)
        script.alwayson = visibility is AlwaysVisible
        script._atelier_shown = bool(visibility)
        return script

    def remove_extension(self, extension: str) -> None:
        for tab in self.tabs:
            tab.all_scripts = [script for script in tab.all_scripts if script.extension != extension]
        self.postprocessing_scripts = [step for step in self.postprocessing_scripts if step.extension != extension]

    def scripts_data(self) -> list[ScriptClassData]:
        """A1111's `scripts.scripts_data`: one entry per loaded script class, in load order."""
        return [ScriptClassData(type(script), script.filename, getattr(script, "_atelier_basedir", None),
                                getattr(script, "_atelier_module", None)) for script in self.scripts]

    # --- the txt2img tab's lists and lookup (callers from before img2img) ------------------------

    @property
    def txt2img_scripts(self) -> list[Script]:
        """Scripts shown in txt2img (selectable and always-on), in load order: A1111's args layout."""
        return self.txt2img_tab.scripts

    @property
    def img2img_scripts(self) -> list[Script]:
        """Scripts shown in img2img, in load order (their img2img instances)."""
        return self.img2img_tab.scripts

    @property
    def selectable(self) -> list[Script]:
        return self.txt2img_tab.selectable

    @property
    def alwayson(self) -> list[Script]:
        return self.txt2img_tab.alwayson

    def find(self, title: str, among: Sequence[Script] | None = None) -> Script:
        """The txt2img script titled `title` (case-insensitive); KeyError listing the titles otherwise."""
        return self.txt2img_tab.find(title, among)

    # --- arguments -------------------------------------------------------------------------------

    def default_args(self, script: Script) -> tuple:
        """The values of the script's ui() components: recorded when the UI built them
        (`record_ui`), else read by building them once outside the page (A1111's API does the same)."""
        if script._atelier_defaults is None:
            from modules.ui.script_defaults import read_default_args

            try:
                with registry_scope(self.callbacks, script.extension):
                    script._atelier_defaults = read_default_args(script)
            except Exception:
                log.exception("Extension %s: reading the default arguments of script %r failed; it gets none",
                              script.extension, script.title())
                script._atelier_defaults = ()
        return script._atelier_defaults

    def record_ui(self, script: Script, components: Sequence[Any]) -> None:
        """The UI built `components` for `script`: their values are its default arguments."""
        script._atelier_defaults = tuple(getattr(component, "value", None) for component in components)
        self.paste.record_controls(script, components)

    def args_for(self, script: Script, given: Sequence[Any] = ()) -> tuple:
        """`given`, then the defaults of the arguments not given. Extra values (a client written for
        a newer version of the script) are dropped, as A1111 keeps only the script's own slice."""
        defaults = self.default_args(script)
        if defaults and len(given) > len(defaults):
            log.info("Script %r takes %d arguments; ignoring the %d extra given", script.title(), len(defaults),
                     len(given) - len(defaults))
            given = given[:len(defaults)]
        return tuple(given) + tuple(defaults[len(given):])

    def selection_from_api(self, script_name: str | None, script_args: Sequence[Any] | None,
                           alwayson_scripts: Mapping[str, Any] | None, *, is_img2img: bool = False) -> ScriptSelection:
        """A1111's API fields (`script_name`, `script_args`, `alwayson_scripts`) as the ScriptSelection
        of the txt2img or img2img tab; ValueError (a 422) naming what is wrong."""
        return self.tab(is_img2img).selection_from_api(script_name, script_args, alwayson_scripts)

    def api_titles(self) -> dict[str, list[str]]:
        """A1111's GET /sdapi/v1/scripts: lowercase titles of the scripts each tab shows."""
        return {"txt2img": self.txt2img_tab.api_titles(), "img2img": self.img2img_tab.api_titles()}

    # --- running ---------------------------------------------------------------------------------

    def generate(self, engine, request: GenerationRequest, control=None, *, save: bool | None = None,
                 selection: ScriptSelection | None = None) -> GenerationResult:
        """Run `request` on `engine` (a Txt2ImgEngine) with the scripts of its tab (img2img for an
        Img2ImgRequest); see the module docstring."""
        selection = selection or ScriptSelection()
        tab = self.tab(isinstance(request, Img2ImgRequest))
        if not tab.needed_for(selection):
            return engine.generate(request, control, save=save)
        selected = None
        if selection.script:
            try:
                selected = tab.find(selection.script, tab.selectable)
            except KeyError as error:
                raise ValueError(error.args[0]) from None
        alwayson = [(script, self.args_for(script, selection.alwayson_args.get(script.name, ())))
                    for script in tab.alwayson]
        selected_args = self.args_for(selected, selection.script_args) if selected else ()
        execution = _Execution(self, engine, control, save, alwayson, tab)
        p = processing_for(request)
        execution.attach(p, selected, {**dict(alwayson), **({selected: selected_args} if selected else {})})
        for script, args in alwayson:
            execution.call(script, "setup", p, *args)
        if selected is None:
            processed = process_images(p)
        else:
            try:
                with registry_scope(self.callbacks, selected.extension):
                    processed = selected.run(p, *selected_args)
            except ScriptArgumentError:
                raise
            except Exception as error:
                log.exception("Extension %s: script %r failed in run()", selected.extension, selected.title())
                raise ScriptError(f"script {selected.title()!r} (extension {selected.extension}) failed: "
                                  f"{type(error).__name__}: {error}") from error
            if processed is None:
                processed = process_images(p)
        return execution.result_of(processed)


class _Execution:
    """One request's run of the scripts: what `process_images(p)` needs, and the warnings."""

    def __init__(self, runner: ScriptRunner, engine, control, save, alwayson: list[tuple[Script, tuple]],
                 tab: ScriptTab | None = None):
        self.runner = runner
        self.tab = tab or runner.txt2img_tab  # the request's tab (img2img for an Img2ImgRequest)
        self.engine = engine
        self.control = control
        self.save = save
        self.alwayson = alwayson
        self.warnings: list[str] = []
        self.saved_paths: list[str] = []
        self.interrupted = False
        self.script_args: tuple = ()
        self.base_p = None  # the request's p, after the always-on scripts' setup()

    def attach(self, p, selected: Script | None, args: Mapping[Script, tuple]) -> None:
        self.script_args = tuple(self.tab.flat_args(selected, args))
        self.base_p = p
        self._join(p)

    def _join(self, p) -> None:
        """Make `p` part of this execution: the current model, output folders, the scripts' args."""
        models = getattr(self.engine, "models", None)
        info = models.current_info() if models is not None else None
        p.sd_model = models.current() if models is not None else None
        p.sd_model_name = getattr(info, "name_for_extra", None)
        p.sd_model_hash = getattr(info, "shorthash", None)
        save_dir = getattr(self.engine, "save_dir", None)
        settings = getattr(self.engine, "settings", None)
        if save_dir and settings is not None:
            from modules.outputs.images import SaveOptions, img2img_output_dirs, txt2img_output_dirs

            # Where this request's images go: the outdir_* settings, with the request's overrides.
            snapshot = settings.current().with_overrides(p.override_settings or {})
            is_img2img = isinstance(p, StableDiffusionProcessingImg2Img)
            output_dirs = img2img_output_dirs if is_img2img else txt2img_output_dirs
            images_dir, grids_dir = output_dirs(save_dir, SaveOptions.from_settings(snapshot))
            p.outpath_samples, p.outpath_grids = str(images_dir), str(grids_dir)
        p.scripts = self.tab  # A1111's p.scripts: the tab's runner (`alwayson_scripts`, `script(title)`)
        p.script_args = self.script_args
        p._atelier_execution = self

    def warn(self, message: str) -> None:
        if message not in self.warnings:
            self.warnings.append(message)
            if self.control is not None and hasattr(self.control, "add_info"):
                self.control.add_info(message)

    def call(self, script: Script, method: str, *args, **kwargs):
        try:
            with registry_scope(self.runner.callbacks, script.extension):
                return getattr(script, method)(*args, **kwargs)
        except Exception as error:
            log.exception("Extension %s: script %r failed in %s()", script.extension, script.title(), method)
            self.warn(f"Script {script.title()!r} ({script.extension}) failed in {method}(): "
                      f"{type(error).__name__}: {error}")
            return None

    def request_of(self, p, stage: str) -> GenerationRequest:
        if getattr(p, "latent_mask", None) is not None:
            self.warn("p.latent_mask (a separate mask for the latent blend) is not supported by Atelier; the "
                      "image mask (p.image_mask) is used for it")
        try:
            return p.to_request()
        except ValueError as error:
            raise ValueError(f"after the scripts' {stage}, p holds a value Atelier cannot use: {error}") from None

    def process_images(self, p) -> Processed:
        save = False if p.do_not_save_samples else self.save
        result, hooks = self._generate(p, self.control, save)
        self.interrupted |= result.interrupted
        return hooks.processed or Processed.from_result(p, result)

    def generate_request(self, request: GenerationRequest, control, save: bool | None,
                         p_attributes: Mapping[str, Any] | None = None) -> GenerationResult:
        """One more generation of this job (a selected script's grid cell): `request` on a fresh `p`,
        with the always-on scripts' hooks, reporting to `control`. `p_attributes`: more attributes
        for that `p` (what an extension's X/Y/Z axis set; a dict value is merged into p's dict)."""
        p = self.base_p.copy_with(request) if self.base_p is not None else processing_for(request)
        self._join(p)
        for name, value in (p_attributes or {}).items():
            current = getattr(p, name, None)
            setattr(p, name, {**current, **value} if isinstance(value, dict) and isinstance(current, dict) else value)
        return self._generate(p, control, save)[0]

    def _generate(self, p, control, save) -> tuple[GenerationResult, ScriptHooks]:
        for script, args in self.alwayson:
            self.call(script, "before_process", p, *args)
        request = self.request_of(p, "before_process")
        hooks = ScriptHooks(self, p)
        result = self.engine.generate(request, control, save=save, hooks=hooks)
        self.saved_paths += result.saved_paths
        return result, hooks

    def result_of(self, processed) -> GenerationResult:
        if not isinstance(processed, Processed):
            raise ScriptError(f"a script's run() returned {type(processed).__name__}, not a Processed")
        result = processed.to_result()
        result.saved_paths = list(self.saved_paths) + [path for path in result.saved_paths
                                                       if path not in self.saved_paths]
        result.interrupted |= self.interrupted
        result.warnings += [warning for warning in self.warnings if warning not in result.warnings]
        return result


class _HookedEngine:
    """`ScriptJob.engine`: the job's engine, each `generate` run as `process_images` runs (the
    always-on scripts' hooks on a fresh `p`), so a script's own generations get them as in A1111."""

    def __init__(self, execution: _Execution):
        self._execution = execution

    @property
    def models(self):
        return self._execution.engine.models

    @property
    def settings(self):
        return self._execution.engine.settings

    @property
    def save_dir(self):
        return getattr(self._execution.engine, "save_dir", None)

    def generate(self, request: GenerationRequest, control=None, *, save: bool | None = None,
                 p_attributes: Mapping[str, Any] | None = None) -> GenerationResult:
        return self._execution.generate_request(request, control, save, p_attributes)


class ScriptHooks(GenerationHooks):
    """The engine's hook points, mapped onto the always-on scripts and the callbacks, through `p`."""

    def __init__(self, execution: _Execution, p):
        self.execution = execution
        self.p = p
        self.callbacks = execution.runner.callbacks
        self.processed: Processed | None = None

    def _bind(self, plan: GenerationPlan) -> None:
        p = self.p
        p.all_prompts, p.all_negative_prompts = plan.all_prompts, plan.all_negative_prompts
        p.all_seeds, p.all_subseeds = plan.all_seeds, plan.all_subseeds
        p.prompts, p.negative_prompts = plan.prompts, plan.negative_prompts
        p.seeds, p.subseeds = plan.seeds, plan.subseeds
        p.iteration = plan.iteration
        p.extra_generation_params = plan.extra_generation_params

    def _collect(self, plan: GenerationPlan) -> None:
        p = self.p
        plan.all_prompts, plan.all_negative_prompts = list(p.all_prompts), list(p.all_negative_prompts)
        plan.all_seeds, plan.all_subseeds = [int(s) for s in p.all_seeds], [int(s) for s in p.all_subseeds]
        plan.prompts, plan.negative_prompts = list(p.prompts), list(p.negative_prompts)
        plan.seeds, plan.subseeds = list(p.seeds), list(p.subseeds)
        plan.extra_generation_params = p.extra_generation_params

    def _each(self, method: str, *args, **kwargs) -> None:
        for script, script_args in self.execution.alwayson:
            self.execution.call(script, method, self.p, *args, *script_args, **kwargs)

    def process(self, plan: GenerationPlan) -> None:
        plan.extra_generation_params.update(self.p.extra_generation_params)  # from setup/before_process
        self._bind(plan)
        self.p.main_prompt, self.p.main_negative_prompt = plan.all_prompts[0], plan.all_negative_prompts[0]
        self._each("process")
        self._collect(plan)
        plan.request = self.execution.request_of(self.p, "process")

    def _batch(self, plan: GenerationPlan, method: str, **extra) -> None:
        self._bind(plan)
        for script, script_args in self.execution.alwayson:
            self.execution.call(script, method, self.p, *script_args, batch_number=plan.iteration,
                                prompts=self.p.prompts, seeds=self.p.seeds, subseeds=self.p.subseeds, **extra)
        self._collect(plan)

    def after_extra_networks_activate(self, plan: GenerationPlan, networks) -> None:
        self.p.extra_network_data = networks
        self._batch(plan, "after_extra_networks_activate", extra_network_data=networks)

    def before_every_sampling(self, plan: GenerationPlan, x, noise, cond, uncond) -> None:
        self._bind(plan)
        if isinstance(self.p, StableDiffusionProcessingImg2Img):
            self.p.init_latent = x  # A1111's p.init_latent: the encoded init images, before noising
        self._each("process_before_every_sampling", x=x, noise=noise, c=cond, uc=uncond)

    def before_process_batch(self, plan: GenerationPlan) -> None:
        self._batch(plan, "before_process_batch")

    def process_batch(self, plan: GenerationPlan) -> None:
        self._batch(plan, "process_batch")

    def cfg_hooks(self, plan: GenerationPlan, total_steps: int):
        if not any(self.callbacks.has(kind) for kind in CFG_KINDS):
            return None  # the denoiser's plain path: no params objects, no checks
        self._bind(plan)
        return CFGCallbackHooks(self.callbacks, self.p, self._warn_once)

    def _warn_once(self, message: str) -> None:
        if message not in self.execution.warnings:
            log.error("%s", message)
        self.execution.warn(message)

    def before_hr(self, plan: GenerationPlan) -> None:
        self._bind(plan)
        self._each("before_hr")

    def post_sample(self, plan: GenerationPlan, samples):
        import torch

        self._bind(plan)
        args = PostSampleArgs(samples)
        for script, script_args in self.execution.alwayson:
            before = args.samples
            self.execution.call(script, "post_sample", self.p, args, *script_args)
            if not (isinstance(args.samples, torch.Tensor) and args.samples.ndim == 4):
                self._reject(script, "post_sample", "ps.samples must stay a 4-dimensional latent tensor "
                             f"(batch, channels, height/8, width/8), got {_describe(args.samples)}")
                args.samples = before
        return args.samples

    def postprocess_batch(self, plan: GenerationPlan, images) -> None:
        self._bind(plan)
        for script, script_args in self.execution.alwayson:
            self.execution.call(script, "postprocess_batch", self.p, *script_args, images=images,
                                batch_number=plan.iteration)

    def postprocess_batch_list(self, plan: GenerationPlan, images: list) -> list:
        self._bind(plan)
        args = PostprocessBatchListArgs(images)
        for script, script_args in self.execution.alwayson:
            before = list(args.images)
            self.execution.call(script, "postprocess_batch_list", self.p, args, *script_args,
                                batch_number=plan.iteration)
            problem = _batch_list_problem(args.images)
            if problem:
                self._reject(script, "postprocess_batch_list", problem)
                args.images = before
        return list(args.images)

    def _reject(self, script: Script, method: str, problem: str) -> None:
        log.error("Extension %s: script %r: %s; its change is ignored", script.extension, script.title(), problem)
        self.execution.warn(f"Script {script.title()!r} ({script.extension}) in {method}(): {problem}; "
                            "its change is ignored")

    def postprocess_image(self, plan: GenerationPlan, index: int, image):
        self._bind(plan)
        self.p.batch_index = index % self.p.batch_size
        args = PostprocessImageArgs(image)
        self._each("postprocess_image", args)
        return args.image

    def before_image_saved(self, plan: GenerationPlan, event: ImageSaveEvent) -> None:
        if self.callbacks.has("before_image_saved"):
            params = ImageSaveParams(event.image, self.p, None, event.pnginfo)
            self.callbacks.before_image_saved(params)
            event.image, event.pnginfo = params.image, dict(params.pnginfo)

    def extra_noise(self, plan: GenerationPlan, noise, x, xi):
        if not self.callbacks.has("extra_noise"):
            return noise
        params = ExtraNoiseParams(noise, x, xi)
        self.callbacks.extra_noise(params)
        return params.noise

    def image_saved(self, plan: GenerationPlan, event: ImageSaveEvent) -> None:
        if self.callbacks.has("image_saved"):
            self.callbacks.image_saved(ImageSaveParams(event.image, self.p, event.filename, event.pnginfo))

    def postprocess(self, plan: GenerationPlan, result: GenerationResult) -> None:
        self._bind(plan)
        self.processed = Processed.from_result(self.p, result)
        self._each("postprocess", self.processed)


def _describe(value) -> str:
    shape = getattr(value, "shape", None)
    return f"{type(value).__name__} of shape {tuple(shape)}" if shape is not None else type(value).__name__


def _batch_list_problem(images) -> str | None:
    """Why `pp.images` after a postprocess_batch_list hook cannot be used, or None: it must be a list
    of (3, H, W) tensors in [0, 1] (as A1111 gives them) or of PIL images."""
    import torch
    from PIL import Image

    if not isinstance(images, list):
        return f"pp.images must stay a list, got {type(images).__name__}"
    for position, image in enumerate(images):
        if isinstance(image, Image.Image):
            continue
        if not (isinstance(image, torch.Tensor) and image.ndim == 3 and image.shape[0] == 3):
            return (f"pp.images[{position}] must be a (3, height, width) tensor in [0, 1] or a PIL image, "
                    f"got {_describe(image)}")
    return None


def run_txt2img(context, request: GenerationRequest, control=None, *, save: bool | None = None,
                selection: ScriptSelection | None = None) -> GenerationResult:
    """What the UI and the API call instead of `context.engine.generate`: the request with the
    loaded extensions' scripts and callbacks (`context.extensions`, when extensions are loaded). An
    Img2ImgRequest runs with the img2img tab's scripts (as `run_img2img`)."""
    runtime = getattr(context, "extensions", None)
    if runtime is None:
        if selection is not None and selection.script:
            raise ValueError(f"script {selection.script!r} not found; no extensions are loaded")
        return context.engine.generate(request, control, save=save)
    if runtime.scripts.app is not context:
        runtime.scripts.bind_app(context)
    return runtime.scripts.generate(context.engine, request, control, save=save, selection=selection)


def run_img2img(context, request: Img2ImgRequest, control=None, *, save: bool | None = None,
                selection: ScriptSelection | None = None) -> GenerationResult:
    """`run_txt2img` for an img2img request: the img2img tab's scripts (A1111's `scripts_img2img`),
    with `p` a `StableDiffusionProcessingImg2Img`."""
    if not isinstance(request, Img2ImgRequest):
        raise TypeError(f"run_img2img takes an Img2ImgRequest, got {type(request).__name__}; use run_txt2img")
    return run_txt2img(context, request, control, save=save, selection=selection)
