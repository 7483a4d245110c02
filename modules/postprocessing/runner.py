"""The postprocessing steps of one app and the order they run in (A1111's `ScriptPostprocessingRunner`).

`Postprocessing` (one per AppContext, `context.postprocessing`) holds the built-in steps (Upscale,
Simple Upscale) with their upscale cache, and reaches the extensions' `ScriptPostprocessing` steps
through the script runner that loaded them (`context.extensions.scripts.postprocessing_scripts`).

Order (`scripts_in_preferred_order`): position in the `postprocessing_operation_order` setting
(unlisted steps after the listed ones), then the step's `order`, then its name. For the Extras tab
(`extras=True`) the steps named in `postprocessing_disable_in_extras` are left out, and so is Simple
Upscale, which A1111 never shows there.

A run (`run(pp, script_args)`): `process_firstpass` of every step, then step by step `process` over
the image and every extra image the steps before made (A1111's order). `script_args` maps a step's
name to its keyword arguments; a step without an entry gets its controls' current values (A1111's API
does the same), or none. A built-in step's error fails the run (bad input, such as an unknown
upscaler); an extension's step that raises is logged, noted in the warnings, and the run goes on
without it, as with the extensions' generation hooks.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from modules.common.job_control import NullControl
from modules.postprocessing.scripts import PostprocessedImage, ScriptPostprocessing
from modules.postprocessing.upscale import (
    SIMPLE_UPSCALE_SCRIPT,
    ScriptPostprocessingUpscale,
    ScriptPostprocessingUpscaleSimple,
    UpscaleCache,
)

log = logging.getLogger(__name__)

# Steps A1111 never shows in the Extras tab.
HIDDEN_IN_EXTRAS = frozenset({SIMPLE_UPSCALE_SCRIPT})


class PostprocessingStopped(Exception):
    """The job was interrupted between two steps."""


class Postprocessing:
    """The postprocessing steps of one app (module docstring)."""

    def __init__(self, context: Any):
        self.context = context
        self.cache = UpscaleCache()
        self.builtins: list[ScriptPostprocessing] = [ScriptPostprocessingUpscale(context, self.cache),
                                                     ScriptPostprocessingUpscaleSimple(context, self.cache)]

    def all_scripts(self) -> list[ScriptPostprocessing]:
        """Built-in steps first, then the extensions' in load order."""
        extensions = getattr(self.context, "extensions", None)
        runner = getattr(extensions, "scripts", None)
        loaded = list(getattr(runner, "postprocessing_scripts", ()) or ())
        for script in loaded:
            script.app = self.context
        return [*self.builtins, *loaded]

    def scripts_in_preferred_order(self, *, extras: bool = True) -> list[ScriptPostprocessing]:
        settings = self.context.settings.current()
        order = list(settings["postprocessing_operation_order"] or ())
        scripts = self.all_scripts()
        if extras:
            hidden = set(settings["postprocessing_disable_in_extras"] or ()) | HIDDEN_IN_EXTRAS
            scripts = [script for script in scripts if script.name not in hidden]

        def key(item: tuple[int, ScriptPostprocessing]):
            index, script = item
            position = order.index(script.name) if script.name in order else len(scripts)
            return position, script.order, str(script.name), index

        return [script for _, script in sorted(enumerate(scripts), key=key)]

    def find(self, name: str, *, extras: bool = True) -> ScriptPostprocessing:
        for script in self.scripts_in_preferred_order(extras=extras):
            if script.name == name:
                return script
        names = [script.name for script in self.scripts_in_preferred_order(extras=extras)]
        raise ValueError(f"no postprocessing step named {name!r}; the steps are {names}")

    def check_args(self, script_args: Mapping[str, Mapping[str, Any]], *, extras: bool = True) -> None:
        """Refuse arguments for a step that is not there (a typo would otherwise be ignored)."""
        names = [script.name for script in self.scripts_in_preferred_order(extras=extras)]
        unknown = [name for name in script_args if name not in names]
        if unknown:
            raise ValueError(f"script_args: no postprocessing step named {unknown}; the steps are {names} "
                             "(postprocessing_disable_in_extras removes steps)")
        for name, args in script_args.items():
            if not isinstance(args, Mapping):
                raise ValueError(f"script_args[{name!r}]: the step's keyword arguments as a mapping, got "
                                 f"{type(args).__name__}")

    def image_changed(self) -> None:
        """The single image changed: every step drops what it cached (A1111 calls this from the tab)."""
        for script in self.all_scripts():
            try:
                script.image_changed()
            except Exception:
                log.exception("postprocessing step %r: image_changed failed", script.name)

    def run(self, pp: PostprocessedImage, script_args: Mapping[str, Mapping[str, Any]] | None = None, *,
            extras: bool = True, control: Any = None, warnings: list[str] | None = None) -> PostprocessedImage:
        """Run the steps over `pp` (module docstring); `pp.extra_images` then holds every extra image
        as a PostprocessedImage. Raises PostprocessingStopped when the job is interrupted."""
        control = control or NullControl()
        warnings = warnings if warnings is not None else []
        script_args = script_args or {}
        scripts = [(script, dict(script_args[script.name]) if script.name in script_args else _control_values(script))
                   for script in self.scripts_in_preferred_order(extras=extras)]
        # The steps reach the job through their `job_control` while this run lasts (A1111's
        # `process` signature has no room for it); cleared after, so no step keeps a finished job.
        for script, _ in scripts:
            script.job_control = control
        try:
            for script, args in scripts:
                self._call(script, "process_firstpass", pp, args, warnings)
            images = [pp]
            for script, args in scripts:
                if control.interrupted:
                    raise PostprocessingStopped(f"interrupted before the step {script.name!r}")
                for single in images.copy():
                    if not single.disable_processing:
                        self._call(script, "process", single, args, warnings)
                    for extra in single.extra_images:
                        images.append(extra if isinstance(extra, PostprocessedImage) else PostprocessedImage(extra))
                    single.extra_images.clear()
        finally:
            for script, _ in scripts:
                script.job_control = None
        pp.extra_images = images[1:]
        return pp

    def _call(self, script: ScriptPostprocessing, method: str, pp: PostprocessedImage, args: dict[str, Any],
              warnings: list[str]) -> None:
        if script.extension is None:  # a built-in step: its errors are the request's
            getattr(script, method)(pp, **args)
            return
        try:
            getattr(script, method)(pp, **args)
        except Exception as error:
            log.exception("Extension %s: postprocessing step %r failed in %s", script.extension, script.name, method)
            warnings.append(f"postprocessing step {script.name!r} (extension {script.extension}) failed in {method}: "
                            f"{type(error).__name__}: {error}; the image went on without it")


def _control_values(script: ScriptPostprocessing) -> dict[str, Any]:
    """A step's arguments from its controls' current values (what A1111's API passes a step it was
    given nothing for); none when its UI was never built."""
    controls = script.controls if isinstance(script.controls, Mapping) else {}
    return {name: getattr(component, "value", None) for name, component in controls.items()}


def postprocessing_scripts(context: Any, *, extras: bool = True) -> list[ScriptPostprocessing]:
    """The app's postprocessing steps in their preferred order (for the Extras tab with `extras`)."""
    return context.postprocessing.scripts_in_preferred_order(extras=extras)
