"""`shared.opts`: A1111's Options as a view over the running app's settings store (the option
descriptions and the registry of extension options are modules.extension_host.option_registry).

Where Atelier differs from A1111 (docs/EXTENSIONS.md): `opts.key = value` and `opts.set` save at
once (A1111 waits for `opts.save`, which is a no-op here); values are checked by the type of the
default (and a static slider's range), where A1111 takes anything through `opts.key = value`.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Callable, Iterator, Mapping, MutableMapping

from modules.extension_host.a1111_defaults import A1111_ONLY_DEFAULTS
from modules.extension_host.callers import extension_caller, extension_name
from modules.extension_host.environment import current_app
from modules.extension_host.option_registry import OptionHTML, OptionInfo, options_section  # noqa: F401 - A1111's names

log = logging.getLogger(__name__)


def _plain(value: Any) -> Any:
    """A value as A1111's opts holds it: lists, not tuples."""
    return list(value) if isinstance(value, tuple) else value


class OptionsData(MutableMapping):
    """A1111's `opts.data`: every setting's value (defaults included, as A1111 seeds them); writing
    a key sets it like `opts.key = value`."""

    def __init__(self, options: "Options"):
        self._options = options

    def _values(self) -> Mapping[str, Any]:
        return {**A1111_ONLY_DEFAULTS, **current_app().settings.current()}

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
        if key in A1111_ONLY_DEFAULTS:
            return _plain(A1111_ONLY_DEFAULTS[key])
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
        of the wrong type is refused with a ValueError naming the rule.

        On a server shared with `--multi-user`, code running for a user who is not an operator (in
        their job, or their page's event; modules.extension_host.callers) changes only that user's own
        choices (checkpoint, VAE, clip skip); a global setting is refused with a warning naming the
        extension, not an exception (A1111 raises none for a setting it does not store)."""
        from modules.serving.settings_change import change_settings

        context = current_app()
        if key not in context.settings.current():
            return False
        _, invalid = context.settings.validate_each({key: value})
        if invalid:
            raise ValueError(invalid[key])
        caller = extension_caller(context)
        if caller.restricted:
            # Not even without callbacks: a non-operator's global change is refused either way.
            report = change_settings(context, {key: value}, api=is_api, user=caller.user)
            if key in report.refused:
                log.warning("opts.%s not set by %s for user %r: %s", key, extension_name(), caller.user.name,
                            report.refused[key])
            return key in report.changed
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
