"""Gradio 3.41 idioms for A1111 extensions, on Gradio 6, only while extension code builds its UI.

A1111 extensions are written against Gradio 3.41 (A1111.md §15.8). Gradio 6 removed the idioms
they use most: `_js=` on event listeners, `gr.Dropdown.update(...)` and the other static updates,
`gr.Box`, `.style(...)`, and `gr.Image(source=..., tool=...)`. `gradio3_compat()` is the context
extension UI code runs in (Script `ui()`, `on_ui_tabs`, `on_ui_settings`, `on_before_ui`, the
component callbacks): inside it those idioms are translated to their Gradio 6 equivalents, and the
event handlers registered inside it run inside it again when Gradio calls them (their `.update`
calls happen then). docs/EXTENSIONS.md ("Gradio 3 idioms") has the table of what is translated and
what cannot be.

How, without changing Gradio for Atelier's own UI:

- The shims are installed into Gradio's classes when the first scope opens anywhere in the process
  and removed when the last one closes (a reference count under a lock: handlers run in Gradio's
  worker threads while another extension may be inside the scope).
- While installed, every shim first asks whether *this* thread / task is inside a scope (a context
  variable). Outside one it behaves exactly as Gradio: `_js=` is rejected, `Component.style` and
  `Component.update` raise AttributeError, constructors see their keywords unchanged. So Atelier's
  code running concurrently with an extension handler never sees a translation. The one name
  visible to other threads while any scope is open is `gr.Box`.
- Each translation is logged once per idiom per extension (the extension named by the callback
  scope, modules.extension_host.callbacks, or the one that registered the running handler).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
import logging
import re
import threading
from typing import Any, Callable, Iterator

import gradio as gr
import gradio.events
from gradio.blocks import Block, BlockContext
from gradio.components import Component
from gradio.component_meta import ComponentMeta
from gradio.events import Dependency
from gradio.layouts import Accordion, Tabs

from modules.extension_host import gradio3_sketch
from modules.extension_host.callbacks import current_scope

log = logging.getLogger(__name__)

# Depth of gradio3_compat scopes in this thread / task, and the extension a running handler belongs to.
_depth: contextvars.ContextVar[int] = contextvars.ContextVar("atelier_gradio3_depth", default=0)
_handler_extension: contextvars.ContextVar[str | None] = contextvars.ContextVar("atelier_gradio3_extension",
                                                                                default=None)

_IDENTIFIER = re.compile(r"^[A-Za-z_$][\w$]*(\.[A-Za-z_$][\w$]*)*$")

# 3.41 `source=` (one string) per class family → Gradio 6 `sources=[...]`.
_IMAGE_SOURCES = {"upload": ["upload"], "webcam": ["webcam"], "canvas": ["upload"], "clipboard": ["clipboard"]}
_AUDIO_SOURCES = {"upload": ["upload"], "microphone": ["microphone"]}
# Gradio 3 keywords that have no Gradio 6 meaning (dropped, with the reason logged).
_DROPPED_WITH_REASON = {
    "tool": "Gradio 6 has no crop/select editor on gr.Image; this stays a plain Image",
    "brush_radius": "the Image editor tools moved to gr.ImageEditor",
    "brush_color": "the Image editor tools moved to gr.ImageEditor",
    "mask_opacity": "the Image editor tools moved to gr.ImageEditor",
    "shape": "Gradio 6 does not resize uploaded images; resize in the handler",
    "invert_colors": "Gradio 6 has no invert_colors",
}
# .style() keys renamed to a constructor keyword, and keys with no Gradio 6 equivalent. Any other key
# the class's constructor takes is applied as is (height, width, container, columns, rows, size, ...).
_STYLE_RENAMES = {"grid": "columns"}
_STYLE_IGNORED = frozenset({"rounded", "margin", "border", "mobile_collapse", "item_container", "full_height"})


# --- the extension to name in logs, and the once-per-idiom log --------------------------------------


def _extension_name() -> str:
    running = _handler_extension.get()
    if running is not None:
        return running
    try:
        return current_scope().extension
    except RuntimeError:  # no extension's callback scope: UI code run outside one
        return "(unknown extension)"


def in_scope() -> bool:
    """True inside `gradio3_compat()` in this thread / task."""
    return _depth.get() > 0


class _Shims:
    """The process-wide part: what is installed into Gradio, how many scopes hold it, and which
    translations were already logged. One instance, `_SHIMS`: Gradio's classes are process-wide, so
    the record of what was put into them is too."""

    def __init__(self):
        self._lock = threading.Lock()
        self._holders = 0
        self._saved: list[tuple[Any, str, Any]] = []  # (owner, attribute, previous value or _MISSING)
        self._logged: set[tuple[str, str]] = set()
        self._log_lock = threading.Lock()
        # Gradio's listener -> its `_js=`-accepting wrapper, made once: the scope is entered for
        # every hooked component, and reading ~200 listeners' signatures each time cost seconds.
        self._wrappers: dict[Callable, Callable] = {}

    def note(self, idiom: str, message: str, *args: Any, level: int = logging.INFO) -> None:
        extension = _extension_name()
        with self._log_lock:
            if (extension, idiom) in self._logged:
                return
            self._logged.add((extension, idiom))
        log.log(level, "Extension %s uses Gradio 3 " + message, extension, *args)

    def acquire(self) -> None:
        with self._lock:
            if self._holders == 0:
                self._install()
            self._holders += 1

    def release(self) -> None:
        with self._lock:
            self._holders -= 1
            if self._holders == 0:
                self._uninstall()

    # --- installing and restoring ----------------------------------------------------------------

    def _set(self, owner: Any, name: str, value: Any) -> None:
        self._saved.append((owner, name, owner.__dict__.get(name, _MISSING) if isinstance(owner, type)
                            else getattr(owner, name, _MISSING)))
        setattr(owner, name, value)

    def _install(self) -> None:
        try:
            self._set(ComponentMeta, "__call__", _construct)
            self._set(Block, "style", _ScopedAttribute("style", _style_for))
            self._set(Block, "update", _ScopedAttribute("update", _update_for))
            self._set(ComponentMeta, "__dir__", _class_dir)
            self._set(gr, "Box", _box)
            self._set(gr, "on", self._wrapper(gradio.events.on))
            for cls in _block_classes():
                for name, value in list(cls.__dict__.items()):
                    if inspect.isfunction(value) and hasattr(value, "event_name") and hasattr(value, "has_trigger"):
                        self._set(cls, name, self._wrapper(value))
        except BaseException:
            self._uninstall()
            raise

    def _wrapper(self, listener: Callable) -> Callable:
        """`_accepting_js(listener)`, made once per listener (called with the lock held)."""
        wrapper = self._wrappers.get(listener)
        if wrapper is None:
            wrapper = self._wrappers[listener] = _accepting_js(listener)
        return wrapper

    def _uninstall(self) -> None:
        while self._saved:
            owner, name, previous = self._saved.pop()
            if previous is _MISSING:
                with contextlib.suppress(AttributeError):
                    delattr(owner, name)
            else:
                setattr(owner, name, previous)


_MISSING = object()
_SHIMS = _Shims()


def _block_classes() -> list[type]:
    seen: list[type] = []
    pending = [Block]
    while pending:
        cls = pending.pop()
        if cls not in seen:
            seen.append(cls)
            pending.extend(cls.__subclasses__())
    return seen


@contextlib.contextmanager
def gradio3_compat() -> Iterator[None]:
    """Translate Gradio 3.41 idioms for the code run in the block (this thread / task); re-entrant.
    Enter it where extension code builds UI; Atelier's own UI never relies on it."""
    _SHIMS.acquire()
    token = _depth.set(_depth.get() + 1)
    try:
        yield
    finally:
        _depth.reset(token)
        _SHIMS.release()


# --- constructors: source=, tool=, and keywords Gradio 6 rejects ------------------------------------


def _keywords_of(cls: type) -> tuple[set[str], bool]:
    """The keywords the Gradio class under `cls` takes, and whether `cls` may take others. A class
    of an extension (or of modules.ui_components, whose signatures show their Gradio class's) may
    take keywords of its own, which cannot be told from outside: those are never dropped."""
    gradio_class = next(klass for klass in cls.__mro__ if klass.__module__.split(".")[0] == "gradio")
    parameters = inspect.signature(gradio_class.__init__).parameters.values()
    own_init = next(klass for klass in cls.__mro__ if "__init__" in klass.__dict__)
    open_ended = own_init.__module__.split(".")[0] != "gradio" or any(p.kind is p.VAR_KEYWORD for p in parameters)
    return {p.name for p in parameters}, open_ended


def _sources(cls: type, source: Any) -> Any:
    if source == "canvas" and issubclass(cls, gr.ImageEditor):
        return []  # an editor with no source starts on a blank canvas, as 3.41's
    table = _AUDIO_SOURCES if issubclass(cls, gr.Audio) else _IMAGE_SOURCES
    if isinstance(source, str):
        return list(table.get(source, [source]))
    return source


def translate_keywords(cls: type, kwargs: dict[str, Any], what: str = "constructor") -> dict[str, Any]:
    """`kwargs` of a 3.41 `cls(...)` (or `cls.update(...)`) in Gradio 6's terms: renamed where the
    keyword was renamed, dropped (logged) where Gradio 6 has no such keyword."""
    accepted, open_ended = _keywords_of(cls)
    result = dict(kwargs)
    name = cls.__name__
    if "source" in result and "source" not in accepted and "sources" in accepted:
        source = result.pop("source")
        result.setdefault("sources", _sources(cls, source))
        if source == "canvas" and not issubclass(cls, gr.ImageEditor):
            _SHIMS.note(f"{name}.source=canvas", "gr.%s(source='canvas'): Gradio 6 has no blank-canvas Image; "
                        "it accepts uploads (use gr.Sketchpad for drawing)", name, level=logging.WARNING)
        else:
            _SHIMS.note(f"{name}.source", "gr.%s(source=%r): translated to sources=%r", name, source,
                        result["sources"])
    if "mirror_webcam" in result and "mirror_webcam" not in accepted and "webcam_options" in accepted:
        mirror = result.pop("mirror_webcam")
        if mirror is not None:
            result.setdefault("webcam_options", gr.WebcamOptions(mirror=bool(mirror)))
    if "show_copy_button" in result and "show_copy_button" not in accepted and "buttons" in accepted:
        if result.pop("show_copy_button"):
            result.setdefault("buttons", ["copy"])
    if what == "constructor" and result.get("visible") is False and "visible" in accepted:
        # 3.41 kept invisible blocks in the page (display: none); extensions' page scripts read and
        # clone them (a hidden checkbox as a template, a hidden button to click). Gradio 6 leaves
        # `visible=False` out of the page and keeps `"hidden"` in it, invisible.
        result["visible"] = "hidden"
    if result.get("type") == "file" and issubclass(cls, gr.File):
        result["type"] = "filepath"
        _SHIMS.note(f"{name}.type=file", "gr.%s(type='file'): Gradio 6 gives a file path (str), not a "
                    "temporary file object", name, level=logging.WARNING)
    if open_ended:
        return result
    for key in [key for key in result if key not in accepted]:
        value = result.pop(key)
        if key == "tool" and value:
            _SHIMS.note(f"{name}.tool", "gr.%s(tool=%r): %s", name, value, _DROPPED_WITH_REASON["tool"],
                        level=logging.WARNING)
        elif key in _DROPPED_WITH_REASON:
            _SHIMS.note(f"{name}.{key}", "gr.%s(%s=...): ignored (%s)", name, key, _DROPPED_WITH_REASON[key])
        else:
            _SHIMS.note(f"{name}.{key}", "gr.%s %s keyword %r: Gradio 6 has none; ignored", name, what, key,
                        level=logging.WARNING)
    return result


def _construct(cls, *args, **kwargs):
    """ComponentMeta.__call__ while installed: translate only inside a scope."""
    if in_scope() and kwargs:
        tool = kwargs.get("tool")
        if cls is gr.Image and tool in gradio3_sketch.EDITORS:
            _SHIMS.note(f"Image.tool={tool}", "gr.Image(tool=%r): drawn as gr.ImageEditor; the handler gets 3.41's "
                        "value (%s)", tool, "{'image', 'mask'}" if tool == "sketch" else "the painted image")
            cls, kwargs = gradio3_sketch.EDITORS[tool], gradio3_sketch.editor_keywords(tool, kwargs)
        kwargs = translate_keywords(cls, kwargs)
    return type.__call__(cls, *args, **kwargs)


def _box(*args, **kwargs) -> gr.Group:
    """3.41 `gr.Box(...)`: a `gr.Group` (a context manager, elem_id/elem_classes/visible kept)."""
    _SHIMS.note("Box", "gr.Box: drawn as gr.Group")
    return gr.Group(*args, **kwargs)


_box.update = lambda *args, **kwargs: _update(gr.Group, *args, **kwargs)  # type: ignore[attr-defined]


# --- Component.style(...) and Component.update(...) -------------------------------------------------


class _ScopedAttribute:
    """A class attribute that exists only inside a scope: elsewhere it raises AttributeError, so
    `hasattr(component, "style")` is False there, as in plain Gradio 6."""

    def __init__(self, name: str, factory: Callable[[Any, type], Any]):
        self._name = name
        self._factory = factory

    def __get__(self, obj, owner=None):
        if not in_scope():
            raise AttributeError(f"type object {(owner or type(obj)).__name__!r} has no attribute {self._name!r} "
                                 "(a Gradio 3 idiom, translated only in an extension's UI code)")
        return self._factory(obj, owner if owner is not None else type(obj))


def _class_dir(cls) -> list[str]:
    """dir() of a component class while installed: without the scoped attributes outside a scope
    (Gradio's Component.__init__ reads every name dir() lists)."""
    names = type.__dir__(cls)
    if in_scope():
        return names
    return [name for name in names if name not in ("style", "update") or not isinstance(_class_attribute(cls, name),
                                                                                         _ScopedAttribute)]


def _class_attribute(cls: type, name: str) -> Any:
    for klass in cls.__mro__:
        if name in klass.__dict__:
            return klass.__dict__[name]
    return None


def _style_for(obj, owner: type):
    if obj is None:
        return lambda self, **kwargs: _style(self, **kwargs)
    return lambda *args, **kwargs: _style(obj, *args, **kwargs)


def _style(block: Block, *args, **kwargs) -> Block:
    """3.41 `.style(...)`: apply the keys Gradio 6 has as constructor keywords; return the block."""
    accepted, _ = _keywords_of(type(block))
    name = type(block).__name__
    if args:
        _SHIMS.note(f"{name}.style-positional", "%s.style() with positional arguments: ignored", name,
                    level=logging.WARNING)
    applied = {}
    for key, value in kwargs.items():
        if value is None:
            continue
        target = _STYLE_RENAMES.get(key, key)
        if key == "grid" and isinstance(value, (list, tuple)):
            value = value[-1] if value else None  # 3.41: columns per screen width; Gradio 6 has one
            if value is None:
                continue
        if key == "full_width" and "scale" in accepted:
            target, value = "scale", 1 if value else 0
        if key == "show_copy_button" and "buttons" in accepted:
            if not value:
                continue
            target, value = "buttons", ["copy"]
        if key in _STYLE_IGNORED or target not in accepted or not hasattr(block, target):
            _SHIMS.note(f"{name}.style.{key}", "%s.style(%s=...): Gradio 6 has no equivalent; ignored", name, key,
                        level=logging.WARNING)
            continue
        setattr(block, target, value)
        applied[target] = value
    if applied:
        _SHIMS.note(f"{name}.style", "%s.style(...): applied as constructor keywords %s", name, sorted(applied))
        constructor_args = getattr(block, "_constructor_args", None)
        if constructor_args:
            # Gradio rebuilds a component from these when a handler updates it; keep the styling.
            constructor_args[0].update(applied)
    return block


def _update_for(obj, owner: type):
    return functools.partial(_update, owner)


def _update(cls: type, *args, **kwargs) -> dict[str, Any]:
    """3.41 `gr.<Component>.update(...)` → `gr.update(...)`, with renamed keywords translated."""
    if args:
        # 3.41's update() took its main property first: `value`, or for layouts what they have.
        kwargs.setdefault(_first_update_keyword(cls), args[0])
    _SHIMS.note(f"{cls.__name__}.update", "gr.%s.update(...): returned as gr.update(...)", cls.__name__)
    return gr.update(**translate_update(cls, kwargs))


def _first_update_keyword(cls: type) -> str:
    if issubclass(cls, Accordion):
        return "open"
    if issubclass(cls, Tabs):
        return "selected"
    if issubclass(cls, BlockContext):
        return "visible"
    return "value"


def translate_update(cls: type, kwargs: dict[str, Any]) -> dict[str, Any]:
    """An update's keywords for an output of class `cls`: what Gradio 6 can rebuild the component
    with (`value` and the `__type__` marker pass through)."""
    special = {key: kwargs[key] for key in ("value", "__type__") if key in kwargs}
    rest = {key: value for key, value in kwargs.items() if key not in special}
    return {**translate_keywords(cls, rest, what="update"), **special}


# --- event listeners: _js=, and running handlers inside the scope -----------------------------------


def js_source(js: str) -> str:
    """3.41 `_js` (function source, or the name of a global function) as Gradio 6 `js=` source."""
    stripped = js.strip()
    if _IDENTIFIER.match(stripped):
        return f"(...args) => {stripped}(...args)"
    return js


def _accepting_js(listener: Callable) -> Callable:
    """`listener` (a Gradio event method, or gr.on) that, inside a scope, takes 3.41's `_js=` and
    `every=` and wraps its handler to run inside the scope."""
    signature = inspect.signature(listener)

    @functools.wraps(listener)
    def accepting(*args, **kwargs):
        if not in_scope():
            return listener(*args, **kwargs)
        return _register_gradio3(listener, signature, args, kwargs)

    return accepting


def _register_gradio3(listener: Callable, signature: inspect.Signature, args: tuple, kwargs: dict) -> Any:
    """`listener(*args, **kwargs)` with 3.41's listener keywords translated and the handler wrapped."""
    kwargs = dict(kwargs)
    gradio3_js = kwargs.pop("_js", None)
    if gradio3_js is not None and kwargs.get("js") is not None:
        raise TypeError("both _js= and js= given; keep one")
    if "every" in kwargs:
        kwargs.pop("every")
        _SHIMS.note("every", "every= on an event listener: Gradio 6 runs repeating events with gr.Timer; "
                    "this event runs once", level=logging.WARNING)
    bound = signature.bind(*args, **kwargs)
    fn = bound.arguments.get("fn")
    output_arguments = 0
    if isinstance(gradio3_js, str):
        _SHIMS.note("_js", "_js= on an event listener: passed as js=")
        bound.arguments["js"], output_arguments = _gradio3_js(bound, js_source(gradio3_js), callable(fn))
    elif gradio3_js is not None:
        bound.arguments["js"] = gradio3_js
    if callable(fn):
        bound.arguments["fn"] = run_in_scope(fn, _extension_name(), bound.arguments.get("outputs"),
                                             drop_trailing=output_arguments)
    dependency = listener(*bound.args, **bound.kwargs)
    if isinstance(dependency, Dependency):
        for name in ("then", "success", "failure"):
            chained = getattr(dependency, name, None)
            if chained is not None:
                setattr(dependency, name, _accepting_js(chained))
    return dependency


def _gradio3_js(bound: inspect.BoundArguments, js: str, has_fn: bool) -> tuple[str, int]:
    """3.41's call of an `_js` function, where Gradio 6 can express it: the function gets the values
    of the inputs *and then of the outputs* (Gradio 6 passes the inputs only), so the outputs are
    added to the event's inputs. With a Python handler, what the function returns replaces the
    inputs (3.41 sent the rest along and ignored it; here it becomes nulls), and the handler is
    called without the added values. Returns the js source and how many values were added; none
    when an output cannot be an input (a layout) or the inputs are not a plain list."""
    inputs, outputs = _as_list(bound.arguments.get("inputs")), _as_list(bound.arguments.get("outputs"))
    if inputs is None or not outputs or not all(isinstance(block, Component) for block in outputs):
        return js, 0
    bound.arguments["inputs"] = inputs + outputs
    if has_fn:
        # As 3.41: a non-array result is the one input's value.
        body = (f"const values = Array.isArray(result) ? result.slice(0, {len(inputs)}) : [result]; "
                f"while (values.length < {len(inputs) + len(outputs)}) values.push(null); return values;")
    else:
        body = f"return ({len(outputs)} === 1 && !Array.isArray(result)) ? [result] : result;"
    return f"async (...args) => {{ const result = await ({js})(...args); {body} }}", len(outputs)


def _as_list(blocks: Any) -> list | None:
    if blocks is None:
        return []
    if isinstance(blocks, Block):
        return [blocks]
    if isinstance(blocks, (list, tuple)):
        return list(blocks)
    return None  # a set or a dict (Gradio 4+ forms, not 3.41's)


def _output_classes(outputs: Any) -> list[type] | None:
    if outputs is None:
        return []
    if isinstance(outputs, Block):
        return [type(outputs)]
    if isinstance(outputs, (list, tuple)):
        return [type(block) for block in outputs]
    return None  # a set: Gradio passes a dict keyed by component


def _fix_updates(result: Any, classes: list[type] | None) -> Any:
    """Handler results with 3.41 update keywords made acceptable to the output components."""
    if classes is None:
        if isinstance(result, dict) and not _is_update(result):
            return {block: _fix_update(value, type(block)) if isinstance(block, Block) else value
                    for block, value in result.items()}
        return result
    if len(classes) == 1:
        if isinstance(result, (list, tuple)) and len(result) == 1:
            return type(result)([_fix_update(result[0], classes[0])])
        return _fix_update(result, classes[0])
    if isinstance(result, (list, tuple)) and len(result) == len(classes):
        return type(result)(_fix_update(value, cls) for value, cls in zip(result, classes))
    return result


def _is_update(value: Any) -> bool:
    return isinstance(value, dict) and value.get("__type__") == "update"


def _fix_update(value: Any, cls: type) -> Any:
    if _is_update(value) and issubclass(cls, Block):
        return translate_update(cls, value)
    return value


def run_in_scope(fn: Callable, extension: str, outputs: Any = None, drop_trailing: int = 0) -> Callable:
    """`fn` (an event handler registered by `extension` inside a scope) running inside the scope
    when Gradio calls it, its update results fitted to `outputs`. The signature, the kind of
    function (plain, async, generator) and the name stay `fn`'s, so Gradio counts its inputs and
    finds `gr.Request` / `gr.Progress` parameters as before. `drop_trailing`: positional values
    Gradio passes after `fn`'s own (the outputs `_gradio3_js` added to the inputs), not given to `fn`."""
    classes = _output_classes(outputs)
    if drop_trailing:
        fn = _dropping_trailing(fn, drop_trailing)

    @contextlib.contextmanager
    def scope():
        token = _handler_extension.set(extension)
        try:
            with gradio3_compat():
                yield
        finally:
            _handler_extension.reset(token)

    if inspect.isasyncgenfunction(fn):
        @functools.wraps(fn)
        async def wrapped(*args, **kwargs):
            with scope():
                iterator = fn(*args, **kwargs)
            while True:
                with scope():
                    try:
                        item = await iterator.__anext__()
                    except StopAsyncIteration:
                        return
                    item = _fix_updates(item, classes)
                yield item
    elif inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def wrapped(*args, **kwargs):
            with scope():
                iterator = fn(*args, **kwargs)
            while True:
                # Each step may run in another worker thread: enter and leave the scope around it.
                with scope():
                    try:
                        item = next(iterator)
                    except StopIteration as stop:
                        return stop.value
                    item = _fix_updates(item, classes)
                yield item
    elif inspect.iscoroutinefunction(fn):
        @functools.wraps(fn)
        async def wrapped(*args, **kwargs):
            with scope():
                return _fix_updates(await fn(*args, **kwargs), classes)
    else:
        @functools.wraps(fn)
        def wrapped(*args, **kwargs):
            with scope():
                return _fix_updates(fn(*args, **kwargs), classes)
    return wrapped


def _dropping_trailing(fn: Callable, count: int) -> Callable:
    """`fn` called without the last `count` positional arguments; its signature takes them as
    `*gradio3_outputs` (so Gradio expects them), its kind and name stay `fn`'s."""
    signature = inspect.signature(fn)
    parameters = [p for p in signature.parameters.values() if p.kind is not p.VAR_KEYWORD]
    keywords = [p for p in signature.parameters.values() if p.kind is p.VAR_KEYWORD]
    if not any(p.kind is p.VAR_POSITIONAL for p in parameters):
        parameters = [p for p in parameters if p.kind is not p.KEYWORD_ONLY] + [
            inspect.Parameter("gradio3_outputs", inspect.Parameter.VAR_POSITIONAL)] + [
            p for p in parameters if p.kind is p.KEYWORD_ONLY]
    if inspect.isasyncgenfunction(fn):
        @functools.wraps(fn)
        async def dropping(*args, **kwargs):
            async for item in fn(*args[:len(args) - count], **kwargs):
                yield item
    elif inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def dropping(*args, **kwargs):
            return (yield from fn(*args[:len(args) - count], **kwargs))
    elif inspect.iscoroutinefunction(fn):
        @functools.wraps(fn)
        async def dropping(*args, **kwargs):
            return await fn(*args[:len(args) - count], **kwargs)
    else:
        @functools.wraps(fn)
        def dropping(*args, **kwargs):
            return fn(*args[:len(args) - count], **kwargs)
    dropping.__signature__ = signature.replace(parameters=parameters + keywords)  # type: ignore[attr-defined]
    return dropping
