"""A1111's `modules.upscaler` for extensions (`Upscaler`, `UpscalerData`, `UpscalerNone`,
`UpscalerLanczos`, `UpscalerNearest`) and the entries of `shared.sd_upscalers`.

Extensions read `shared.sd_upscalers` (name, `data_path`, `scale`) and upscale with
`upscaler.scaler.upscale(image, scale, upscaler.data_path)`. Here every entry's `scaler` runs the
app's upscaler owner (`context.upscalers`), so the extension gets the same models, cache, tiling
and pixel limit as hires fix and Extras. Atelier does not look for `Upscaler` subclasses defined
by extensions (A1111 instantiates them all); a subclass still gets A1111's `upscale` arithmetic
around its own `do_upscale`.
"""

from __future__ import annotations

import logging
from typing import Any

from PIL import Image

from modules.extension_host.environment import current_app

log = logging.getLogger(__name__)

LANCZOS = Image.Resampling.LANCZOS
NEAREST = Image.Resampling.NEAREST


class _JobStop:
    """The running job's interrupt flag, as the `control` the upscaler service polls between tiles."""

    @property
    def interrupted(self) -> bool:
        job = current_app().jobs.current()
        return bool(job and job.interrupt_requested)


class Upscaler:
    """A1111's `Upscaler`: a family of upscalers (`scalers`), `upscale(img, scale, selected_model)`
    with A1111's arithmetic (multiples of 8, up to 3 passes of `do_upscale`, LANCZOS to the target)."""

    name: str | None = None
    model_path: str | None = None
    model_name: str | None = None
    model_url: str | None = None
    enable = True
    filter = None
    model = None
    user_path: str | None = None
    scalers: list
    tile = True

    def __init__(self, create_dirs: bool = False):
        self.scale = 1
        self.scalers = []

    def do_upscale(self, img: Image.Image, selected_model: Any) -> Image.Image:
        raise NotImplementedError(f"{type(self).__name__}.do_upscale is not implemented")

    def upscale(self, img: Image.Image, scale: float, selected_model: Any = None) -> Image.Image:
        from modules.upscaling.service import repeat_passes

        self.scale = scale
        return repeat_passes(img, scale, lambda current: self.do_upscale(current, selected_model))

    def load_model(self, path: str):
        raise NotImplementedError("Atelier loads upscaler models itself (context.upscalers)")

    def find_models(self, ext_filter=None) -> list[str]:
        return [scaler.data_path for scaler in self.scalers if scaler.data_path]

    def update_status(self, prompt):
        pass


class UpscalerData:
    """A1111's `UpscalerData`: one entry of `shared.sd_upscalers`."""

    name: str | None = None
    data_path: str | None = None
    scale: float | None = 4
    scaler: Upscaler | None = None
    model: Any = None

    def __init__(self, name: str, path: str | None, upscaler: Upscaler | None = None, scale: float | None = 4,
                 model: Any = None, sha256: str | None = None):
        self.name = name
        self.data_path = path
        self.local_data_path = path
        self.scaler = upscaler
        self.scale = scale
        self.model = model
        self.sha256 = sha256

    def __repr__(self) -> str:
        return f"<UpscalerData name={self.name} path={self.data_path} scale={self.scale}>"


class AtelierUpscaler(Upscaler):
    """One family of the app's listed upscalers; `upscale`/`do_upscale` run `context.upscalers`."""

    def __init__(self, family: str, entries: list[Any]):
        super().__init__()
        self.name = family
        for entry in entries:
            self.model_name = entry.model_name
            path = str(entry.path) if entry.path is not None else None
            self.scalers.append(UpscalerData(entry.name, path, self, entry.scale))

    def _entry_name(self, selected_model: Any) -> str:
        for scaler in self.scalers:
            if selected_model is None or selected_model in (scaler.data_path, scaler.name):
                return scaler.name
        raise ValueError(f"could not find upscaler model {selected_model!r} in {self.name}; available: "
                         f"{', '.join(str(s.data_path or s.name) for s in self.scalers)}")

    def upscale(self, img: Image.Image, scale: float, selected_model: Any = None) -> Image.Image:
        self.scale = scale
        return current_app().upscalers.upscale(img, self._entry_name(selected_model), scale, control=_JobStop())

    def do_upscale(self, img: Image.Image, selected_model: Any) -> Image.Image:
        return current_app().upscalers.single_pass(img, self._entry_name(selected_model), self.scale,
                                                   control=_JobStop())


def _builtin(name: str) -> list[Any]:
    from modules.upscaling.registry import builtin_entries

    return [entry for entry in builtin_entries() if entry.name == name]


class UpscalerNone(AtelierUpscaler):
    def __init__(self, dirname: Any = None):
        super().__init__("None", _builtin("None"))


class UpscalerLanczos(AtelierUpscaler):
    def __init__(self, dirname: Any = None):
        super().__init__("Lanczos", _builtin("Lanczos"))


class UpscalerNearest(AtelierUpscaler):
    def __init__(self, dirname: Any = None):
        super().__init__("Nearest", _builtin("Nearest"))


def sd_upscalers(context: Any) -> list[UpscalerData]:
    """`shared.sd_upscalers`: an UpscalerData per listed upscaler, in the list's order (None, Lanczos,
    Nearest, then by name); entries of one family share their `scaler`."""
    if getattr(context, "upscalers", None) is None:
        return []
    entries = context.upscalers.registry.entries()
    families: dict[str, list[Any]] = {}
    for entry in entries:
        families.setdefault(entry.family or entry.name, []).append(entry)
    scalers = {family: AtelierUpscaler(family, members) for family, members in families.items()}
    by_name = {data.name: data for scaler in scalers.values() for data in scaler.scalers}
    return [by_name[entry.name] for entry in entries]
