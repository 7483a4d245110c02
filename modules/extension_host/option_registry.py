"""A1111's option descriptions for extensions (`OptionInfo` and its chained methods, `OptionHTML`,
`options_section`) and the running app's registry of the extensions' options (`ExtensionOptions`,
one per AppContext): it registers their settings in the store and keeps what the store does not
need — the `OptionInfo` for the Settings widget, the section titles and the `onchange` functions.
`shared.opts` itself is modules.extension_host.options."""

from __future__ import annotations

import html
import json
import logging
import math
import re
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping

from modules.extension_host.environment import app_scope
from modules.serving.settings import SCHEMA_BY_KEY, SECTIONS, SettingSpec

if TYPE_CHECKING:
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


def component_args(info: OptionInfo) -> dict:
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
            text = json.dumps(value, allow_nan=False)
        except (TypeError, ValueError):
            raise ValueError(f"setting {self.key!r} must be a JSON value (text, number, true/false, list, "
                             f"object), got {value!r}") from None
        if len(text) > MAX_TEXT_VALUE:
            raise ValueError(f"setting {self.key!r} is larger than {MAX_TEXT_VALUE} characters as JSON")
        return value


def _spec_for(key: str, info: OptionInfo) -> ExtensionSettingSpec:
    section = info.section if isinstance(info.section, (tuple, list)) and len(info.section) >= 2 else UNCATEGORIZED
    args = component_args(info)
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

    def run_onchange(self, keys, context) -> None:
        """Call the onchange of each key (A1111 calls it with no arguments), in the extension's scope
        and `context`'s (the AppContext). What one raises is raised (the change is then put back)."""
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
