"""A1111's settings surface for extensions: `OptionInfo` and its chained methods, `OptionHTML`,
`options_section`, and `shared.opts` as a view over the running app's `SettingsStore`.

An extension registers an option with `shared.opts.add_option(key, shared.OptionInfo(default, label,
component, component_args, section=(id, title)))`, usually from `on_ui_settings`. Atelier runs the
`on_ui_settings` callbacks once, right after the extensions load (`ExtensionOptions.collect`), so an
option has its default from then on, in API-only runs too, and the Settings tab shows it under its
section. Its value lives in `config.json` with the others, through the one owner of settings (the
store); `ExtensionOptions` keeps what the store does not need: the `OptionInfo` for the Settings
widget, the section titles, and the `onchange` functions.

Where Atelier differs from A1111 (docs/EXTENSIONS.md): `opts.key = value` and `opts.set` save at
once (A1111 waits for `opts.save`, which is a no-op here); values are checked by the type of the
default (and a static slider's range), where A1111 takes anything through `opts.key = value`.
"""

from __future__ import annotations

import html
import json
import logging
import math
import re
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, MutableMapping

from modules.extension_host.environment import app_scope, current_app
from modules.serving.settings import SCHEMA_BY_KEY, SECTIONS, SettingSpec

if TYPE_CHECKING:
    from modules.serving.app_context import AppContext
    from modules.serving.settings import SettingsStore

log = logging.getLogger(__name__)

OPTION_KEY = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,199}$")
MAX_TEXT_VALUE = 1_000_000  # characters: an option's text value (a prompt template at most)
UNCATEGORIZED = ("extensions", "Uncategorized")


class OptionInfo:
    """One option, as A1111 describes it (attribute names and chaining as A1111's)."""

    def __init__(self, default=None, label="", component=None, component_args=None, onchange=None, section=None,
                 refresh=None, comment_before="", comment_after="", infotext=None, restrict_api=False,
                 category_id=None):
        self.default = default
        self.label = label
        self.component = component
        self.component_args = component_args
        self.onchange = onchange
        self.section = section
        self.category_id = category_id
        self.refresh = refresh
        self.do_not_save = False
        self.comment_before = comment_before
        self.comment_after = comment_after
        self.infotext = infotext
        self.restrict_api = restrict_api
        self.reload_ui = False  # Atelier: marked by needs_reload_ui()
        self.restart = False  # Atelier: marked by needs_restart()

    def link(self, label, url):
        self.comment_before += f"[<a href='{url}' target='_blank'>{label}</a>]"
        return self

    def js(self, label, js_func):
        self.comment_before += f"[<a onclick='{js_func}(); return false'>{label}</a>]"
        return self

    def info(self, info):
        self.comment_after += f"<span class='info'>({info})</span>"
        return self

    def html(self, html):
        self.comment_after += html
        return self

    def needs_restart(self):
        self.comment_after += " <span class='info'>(requires restart)</span>"
        self.restart = True
        return self

    def needs_reload_ui(self):
        self.comment_after += " <span class='info'>(requires Reload UI)</span>"
        self.reload_ui = True
        return self


class OptionHTML(OptionInfo):
    """A block of HTML among the settings; not a setting (nothing is saved)."""

    def __init__(self, text):
        super().__init__(str(text).strip(), label="")
        self.do_not_save = True


def options_section(section_identifier, options_dict):
    """A1111: set `section` (an `(id, title)` or `(id, title, category)` tuple) on every OptionInfo
    of `options_dict` and return it."""
    for value in options_dict.values():
        value.section = section_identifier
    return options_dict


def comment_text(markup: str) -> str:
    """An option's HTML comment as the plain text the Settings tab shows under the label."""
    return html.unescape(re.sub(r"<[^>]*>", "", markup or "")).strip()


def _component_args(info: OptionInfo) -> dict:
    args = info.component_args
    if callable(args):
        try:
            args = args()
        except Exception:  # noqa: BLE001 - an extension's choices function; its widget shows no choices
            log.exception("component_args of option %r failed", info.label)
            args = {}
    return dict(args) if isinstance(args, Mapping) else {}


@dataclass(frozen=True)
class ExtensionSettingSpec(SettingSpec):
    """An extension's option as the store checks it: the type of its default (int and float are
    one type, as in A1111), a static slider's range, JSON-storable."""

    def validate(self, value: Any) -> Any:
        default = self.default
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise ValueError(f"setting {self.key!r} must be true or false, got {value!r}")
            return value
        if isinstance(default, (int, float)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"setting {self.key!r} must be a finite number, got {value!r}")
            if self.minimum is not None and self.maximum is not None and not self.minimum <= value <= self.maximum:
                raise ValueError(f"setting {self.key!r} must be between {self.minimum} and {self.maximum}, "
                                 f"got {value!r}")
            if isinstance(default, int) and float(value).is_integer():
                return int(value)
            return float(value) if isinstance(default, float) else value
        if isinstance(default, str):
            if not isinstance(value, str):
                raise ValueError(f"setting {self.key!r} must be text, got {value!r}")
            if len(value) > MAX_TEXT_VALUE:
                raise ValueError(f"setting {self.key!r} is longer than {MAX_TEXT_VALUE} characters")
            return value
        if isinstance(default, (list, tuple)):
            if isinstance(value, str) or not isinstance(value, (list, tuple)):
                raise ValueError(f"setting {self.key!r} must be a list, got {value!r}")
            value = list(value)
        try:
            if len(json.dumps(value)) > MAX_TEXT_VALUE:
                raise ValueError(f"setting {self.key!r} is larger than {MAX_TEXT_VALUE} characters as JSON")
        except (TypeError, ValueError) as error:
            if isinstance(error, ValueError) and "larger" in str(error):
                raise
            raise ValueError(f"setting {self.key!r} must be a JSON value (text, number, true/false, list, "
                             f"object), got {value!r}") from None
        return value


def _spec_for(key: str, info: OptionInfo) -> ExtensionSettingSpec:
    section = info.section if isinstance(info.section, (tuple, list)) and len(info.section) >= 2 else UNCATEGORIZED
    args = _component_args(info)
    slider = getattr(info.component, "__name__", "") == "Slider"
    minimum = args.get("minimum") if slider and isinstance(args.get("minimum"), (int, float)) else None
    maximum = args.get("maximum") if slider and isinstance(args.get("maximum"), (int, float)) else None
    return ExtensionSettingSpec(
        key=key, default=info.default, label=str(info.label or key), section=str(section[0]),
        minimum=minimum, maximum=maximum, info=comment_text(info.comment_after),
        needs_restart=bool(info.restart or info.reload_ui), restrict_api=bool(info.restrict_api))


@dataclass(frozen=True)
class RegisteredOption:
    key: str
    info: OptionInfo
    extension: str | None  # None: registered outside an extension's scope
    section: tuple[str, str]


class ExtensionOptions:
    """The running app's extension options (one per AppContext): registers their settings in the
    store, keeps their OptionInfo, section titles and onchange functions."""

    def __init__(self, settings: "SettingsStore"):
        self.settings = settings
        self._lock = threading.Lock()
        self._options: dict[str, RegisteredOption] = {}
        self._html: list[RegisteredOption] = []  # OptionHTML blocks, in order
        self._onchange: dict[str, tuple[Callable[[], Any], str | None]] = {}
        self._collected = False

    def add(self, key: str, info: OptionInfo) -> None:
        """A1111's `opts.add_option(key, info)`; the extension is the one in scope."""
        from modules.extension_host.callbacks import current_scope_or_none

        if not isinstance(key, str) or not OPTION_KEY.match(key):
            raise ValueError(f"option key {key!r} must be 1-200 letters, digits, '_', '.' or '-'")
        if not isinstance(info, OptionInfo):
            raise TypeError(f"opts.add_option({key!r}, ...) needs a shared.OptionInfo, got {type(info).__name__}")
        scope = current_scope_or_none()
        extension = scope.extension if scope else None
        section = tuple(str(part) for part in info.section[:2]) \
            if isinstance(info.section, (tuple, list)) and len(info.section) >= 2 else UNCATEGORIZED
        option = RegisteredOption(key, info, extension, section)
        if info.do_not_save:
            with self._lock:
                self._html.append(option)
            return
        if key in SCHEMA_BY_KEY:
            log.warning("Extension %s: option %r is one of Atelier's own settings; its registration is ignored",
                        extension, key)
            return
        self.settings.register(_spec_for(key, info))
        with self._lock:
            self._options[key] = option
            if info.onchange is not None:
                self._onchange[key] = (info.onchange, extension)

    def collect(self, callbacks) -> None:
        """Run the extensions' `on_ui_settings` callbacks, once: their options exist from now on."""
        with self._lock:
            if self._collected:
                return
            self._collected = True
        if callbacks is not None:
            callbacks.ui_settings()

    def options(self) -> list[RegisteredOption]:
        with self._lock:
            return list(self._options.values())

    def html_blocks(self) -> list[RegisteredOption]:
        with self._lock:
            return list(self._html)

    def get(self, key: str) -> RegisteredOption | None:
        with self._lock:
            return self._options.get(key)

    def section_titles(self) -> dict[str, str]:
        with self._lock:
            return {option.section[0]: option.section[1] for option in [*self._options.values(), *self._html]}

    def set_onchange(self, key: str, func: Callable[[], Any]) -> None:
        from modules.extension_host.callbacks import current_scope_or_none

        scope = current_scope_or_none()
        with self._lock:
            self._onchange[key] = (func, scope.extension if scope else None)
            if key in self._options:
                self._options[key].info.onchange = func

    def has_onchange(self, key: str) -> bool:
        with self._lock:
            return key in self._onchange

    def run_onchange(self, keys, context: "AppContext") -> None:
        """Call the onchange of each key (A1111 calls it with no arguments), in the extension's
        scope. What one raises is raised (the change is then put back)."""
        from modules.extension_host.callbacks import registry_scope

        with self._lock:
            todo = [(key, *self._onchange[key]) for key in keys if key in self._onchange]
        registry = context.extensions.callbacks if context.extensions is not None else None
        for key, func, extension in todo:
            with app_scope(context):
                if registry is not None and extension is not None:
                    with registry_scope(registry, extension):
                        func()
                else:
                    func()

    def data_labels(self) -> dict[str, OptionInfo]:
        """A1111's `opts.data_labels`: key -> OptionInfo, Atelier's own settings included."""
        labels = {spec.key: OptionInfo(spec.default, spec.label, section=(spec.section, SECTIONS.get(spec.section,
                                                                                                     spec.section)),
                                       restrict_api=spec.restrict_api)
                  for spec in self.settings.specs() if spec.key not in self._options}
        with self._lock:
            labels.update({key: option.info for key, option in self._options.items()})
        return labels


def _plain(value: Any) -> Any:
    """A value as A1111's opts holds it: lists, not tuples."""
    return list(value) if isinstance(value, tuple) else value


class OptionsData(MutableMapping):
    """A1111's `opts.data`: every setting's value (defaults included, as A1111 seeds them); writing
    a key sets it like `opts.key = value`."""

    def __init__(self, options: "Options"):
        self._options = options

    def _values(self) -> Mapping[str, Any]:
        return current_app().settings.current()

    def __getitem__(self, key: str) -> Any:
        return _plain(self._values()[key])

    def __setitem__(self, key: str, value: Any) -> None:
        self._options.set(key, value)

    def __delitem__(self, key: str) -> None:
        raise TypeError("settings cannot be deleted; set the option's default instead")

    def __iter__(self) -> Iterator[str]:
        return iter(self._values())

    def __len__(self) -> int:
        return len(self._values())


class Options:
    """`shared.opts`: A1111's Options, read and written through the running app's settings store.
    Holds no state of its own, so one object serves every app in the process."""

    def __getattr__(self, key: str) -> Any:
        if key.startswith("__"):
            raise AttributeError(key)
        settings = current_app().settings.current()
        if key in settings:
            return _plain(settings[key])
        raise AttributeError(f"shared.opts has no option {key!r}: it is not one of Atelier's settings and no "
                             "extension registered it (opts.add_option in on_ui_settings)")

    def __setattr__(self, key: str, value: Any) -> None:
        if not self.set(key, value):
            current = current_app().settings.current()
            if key not in current:
                raise AttributeError(f"shared.opts has no option {key!r} to set; register it first with "
                                     "opts.add_option")

    @property
    def data(self) -> OptionsData:
        return OptionsData(self)

    @property
    def data_labels(self) -> dict[str, OptionInfo]:
        return current_app().extension_options.data_labels()

    def add_option(self, key: str, info: OptionInfo) -> None:
        current_app().extension_options.add(key, info)

    def onchange(self, key: str, func: Callable[[], Any], call: bool = True) -> None:
        current_app().extension_options.set_onchange(key, func)
        if call:
            func()

    def set(self, key: str, value: Any, is_api: bool = False, run_callbacks: bool = True) -> bool:
        """Store `value` (saved at once); False when unchanged or refused (the log says why). A value
        of the wrong type is refused with a ValueError naming the rule."""
        from modules.serving.settings_change import change_settings

        context = current_app()
        if key not in context.settings.current():
            return False
        _, invalid = context.settings.validate_each({key: value})
        if invalid:
            raise ValueError(invalid[key])
        if not run_callbacks:
            return bool(context.settings.apply({key: value}))
        report = change_settings(context, {key: value}, api=is_api)
        if key in report.refused:
            log.warning("opts.%s not set: %s", key, report.refused[key])
        if key in report.reverted:
            log.warning("opts.%s put back: %s", key, report.reverted[key])
        return key in report.changed

    def save(self, filename: str | None = None) -> None:
        """A1111 writes config.json here; Atelier saved each change already."""

    def load(self, filename: str | None = None) -> None:
        """A1111 re-reads config.json here; Atelier's store is the one owner of that file."""

    def reorder(self) -> None:
        """A1111 sorts data_labels by section for its Settings tab; Atelier's tab does it itself."""

    def get_default(self, key: str) -> Any:
        spec = current_app().settings.specs_by_key().get(key)
        return None if spec is None else _plain(spec.default)

    def same_type(self, x: Any, y: Any) -> bool:
        if x is None or y is None:
            return True
        numbers = (int, float)
        if isinstance(x, numbers) and isinstance(y, numbers) and not isinstance(x, bool) and not isinstance(y, bool):
            return True
        return type(_plain(x)) is type(_plain(y))

    def cast_value(self, key: str, value: Any) -> Any:
        default = self.get_default(key)
        if value is None or default is None:
            return value
        if isinstance(default, bool):
            return value if isinstance(value, bool) else str(value).lower() in ("true", "1", "yes", "on")
        if isinstance(default, (int, float)) and not isinstance(value, bool):
            return type(default)(float(value)) if isinstance(default, float) else int(float(value))
        if isinstance(default, str):
            return str(value)
        return value

    def dumpjson(self) -> str:
        """The settings as the page's JS `opts` holds them (A1111's shape)."""
        context = current_app()
        data = {key: _plain(value) for key, value in context.settings.current().items()}
        labels = {option.key: option.info for option in context.extension_options.options()}
        data["_comments_before"] = {key: info.comment_before for key, info in labels.items() if info.comment_before}
        data["_comments_after"] = {key: info.comment_after for key, info in labels.items() if info.comment_after}
        data["_categories"] = []
        return json.dumps(data, default=str)
