"""Which upscalers exist: A1111's names, order and folders, from file names only (no torch import).

A1111 (`modelloader.load_upscalers`) lists None, Lanczos and Nearest first, then every upscaler of
every family sorted by lower-cased name. Each family scans its flag folder, then `models/<Family>`,
recursively, following symlinks, in natural order; broken symlinks and hidden folders are skipped.

Differences from A1111, on purpose:
- Atelier never downloads at run time. A1111's downloadable built-ins ("R-ESRGAN 4x+", "DAT x2",
  "SwinIR 4x", "ScuNET GAN", ...) are listed only when the file their download URL names is in the
  family's folder (e.g. `models/RealESRGAN/RealESRGAN_x4plus.pth`), so an infotext written by A1111
  finds the same upscaler here.
- `.safetensors` files are listed for every family (A1111 1.10 lists only `.pt`/`.pth`).
- Other files in `models/RealESRGAN` are listed by stem (A1111 ignores them); "ScuNET PSNR" runs the
  PSNR weights (A1111's URL entries always load the GAN file).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modules.library.checkpoints import walk_sorted

log = logging.getLogger(__name__)

FAMILIES = ("ESRGAN", "RealESRGAN", "SwinIR", "DAT", "HAT", "ScuNET")
MODEL_EXTENSIONS = (".pt", ".pth", ".safetensors")
BUILTIN_NAMES = ("None", "Lanczos", "Nearest")
DEFAULT_SCALE = 4


@dataclass(frozen=True)
class Builtin:
    """One of A1111's downloadable upscalers: listed here when `filename` is in the family's folder."""

    name: str
    family: str
    filename: str  # the file name A1111's download URL gives it
    url: str
    scale: float | None


_RELEASES = "https://github.com/xinntao/Real-ESRGAN/releases/download"
_DAT = "https://github.com/n0kovo/dat_upscaler_models/raw/main/DAT"
_KAIR = "https://github.com/cszn/KAIR/releases/download/v1.0"
# A1111's six Real-ESRGAN models (realesrgan_model.get_realesrgan_models), in its order.
REALESRGAN_BUILTINS = (
    Builtin("R-ESRGAN General 4xV3", "RealESRGAN", "realesr-general-x4v3.pth",
            f"{_RELEASES}/v0.2.5.0/realesr-general-x4v3.pth", 4),
    Builtin("R-ESRGAN General WDN 4xV3", "RealESRGAN", "realesr-general-wdn-x4v3.pth",
            f"{_RELEASES}/v0.2.5.0/realesr-general-wdn-x4v3.pth", 4),
    Builtin("R-ESRGAN AnimeVideo", "RealESRGAN", "realesr-animevideov3.pth",
            f"{_RELEASES}/v0.2.5.0/realesr-animevideov3.pth", 4),
    Builtin("R-ESRGAN 4x+", "RealESRGAN", "RealESRGAN_x4plus.pth", f"{_RELEASES}/v0.1.0/RealESRGAN_x4plus.pth", 4),
    Builtin("R-ESRGAN 4x+ Anime6B", "RealESRGAN", "RealESRGAN_x4plus_anime_6B.pth",
            f"{_RELEASES}/v0.2.2.4/RealESRGAN_x4plus_anime_6B.pth", 4),
    Builtin("R-ESRGAN 2x+", "RealESRGAN", "RealESRGAN_x2plus.pth", f"{_RELEASES}/v0.2.1/RealESRGAN_x2plus.pth", 2),
)
DAT_BUILTINS = tuple(Builtin(f"DAT x{n}", "DAT", f"DAT_x{n}.pth", f"{_DAT}/DAT_x{n}.pth", n) for n in (2, 3, 4))
OTHER_BUILTINS = (
    # A1111 downloads ESRGAN's and SwinIR's default model under these names; ScuNET's two under
    # their KAIR names ("ScuNET PSNR" loading the GAN file is an A1111 quirk not kept).
    Builtin("ESRGAN_4x", "ESRGAN", "ESRGAN_4x.pth", f"{_KAIR}/ESRGAN.pth", 4),
    Builtin("SwinIR 4x", "SwinIR", "SwinIR_4x.pth",
            "https://github.com/JingyunLiang/SwinIR/releases/download/v0.0/"
            "003_realSR_BSRGAN_DFOWMFC_s64w8_SwinIR-L_x4_GAN.pth", 4),
    Builtin("ScuNET GAN", "ScuNET", "ScuNET.pth", f"{_KAIR}/scunet_color_real_gan.pth", 4),
    Builtin("ScuNET PSNR", "ScuNET", "scunet_color_real_psnr.pth", f"{_KAIR}/scunet_color_real_psnr.pth", 4),
)
# /sdapi/v1/upscalers "model_name": the family class's default model name in A1111, else null.
FAMILY_MODEL_NAMES = {"ESRGAN": "ESRGAN_4x", "SwinIR": "SwinIR 4x", "ScuNET": "ScuNET GAN"}


@dataclass(frozen=True)
class UpscalerEntry:
    """One listed upscaler, as `/sdapi/v1/upscalers` and the dropdowns show it."""

    name: str
    family: str | None  # None for None/Lanczos/Nearest
    path: Path | None  # the model file; None for None/Lanczos/Nearest
    scale: float | None  # A1111's listed scale (a label: the model's own scale decides the output)
    model_name: str | None

    def api_row(self) -> dict[str, Any]:
        return {"name": self.name, "model_name": self.model_name,
                "model_path": str(self.path) if self.path is not None else None,
                "model_url": None, "scale": self.scale}


class UnknownUpscalerError(ValueError):
    """An upscaler name that is not listed; names the choices."""

    def __init__(self, name: str, available: Sequence[str], hint: str = ""):
        self.name = name
        self.available = list(available)
        hint = hint or ("Model upscalers are files in models/ESRGAN, models/RealESRGAN, models/SwinIR, "
                        "models/DAT, models/HAT or models/ScuNET (press refresh after adding one).")
        super().__init__(f"could not find upscaler named {name!r}; available: {', '.join(self.available)}. {hint}")


def builtin_entries() -> list[UpscalerEntry]:
    return [UpscalerEntry(name, None, None, DEFAULT_SCALE, None) for name in BUILTIN_NAMES]


def _model_files(folders: Sequence[Path]) -> list[Path]:
    """Model files under `folders` in A1111's order: each folder in turn, recursive, natural order."""
    visited: set[str] = set()
    found: list[Path] = []
    for root in folders:
        for folder, names in walk_sorted(root, include_hidden=False, visited=visited):
            for name in names:
                path = Path(folder) / name
                if not name.lower().endswith(MODEL_EXTENSIONS):
                    continue
                if not path.exists():  # a broken symlink
                    log.warning("Skipping upscaler %s: a broken link", path)
                    continue
                if path.is_file():
                    found.append(path)
    return found


def _family_entries(family: str, files: Sequence[Path], enabled: Mapping[str, Sequence[str]]) -> list[UpscalerEntry]:
    """The entries one family contributes, before de-duplication and sorting."""
    by_filename = {path.name: path for path in reversed(files)}  # the first file of a name wins
    model_name = FAMILY_MODEL_NAMES.get(family)
    entries: list[UpscalerEntry] = []
    builtins = [b for b in (*REALESRGAN_BUILTINS, *DAT_BUILTINS, *OTHER_BUILTINS) if b.family == family]
    claimed: set[Path] = set()
    for builtin in builtins:
        path = by_filename.get(builtin.filename)
        if path is None:
            continue
        claimed.add(path)
        if family in enabled and builtin.name not in enabled[family]:
            continue
        entries.append(UpscalerEntry(builtin.name, family, path, builtin.scale, model_name))
    for path in files:
        # DAT files are listed by stem beside "DAT xN", as in A1111; the other families' built-in
        # files are listed only under the built-in name (and not at all when it is disabled).
        if path in claimed and family != "DAT":
            continue
        scale = None if family == "DAT" else DEFAULT_SCALE
        entries.append(UpscalerEntry(path.stem, family, path, scale, model_name))
    return entries


class UpscalerRegistry:
    """The listed upscalers. `refresh()` scans the folders; the enabled-model settings are applied
    when the list is read, so changing them needs no rescan."""

    def __init__(self, folders: Callable[[str], Sequence[Path]],
                 settings: Callable[[], Mapping[str, Any]] | None = None):
        """`folders(family)` → the folders to scan (`Paths.upscaler_dirs`); `settings()` → the current
        settings (for realesrgan_enabled_models and dat_enabled_models)."""
        self._folders = folders
        self._settings = settings
        self._lock = threading.Lock()
        self._files: dict[str, tuple[Path, ...]] = {}
        self._warned: set[Path | None] = set()  # files whose name clash was logged
        self.refresh()

    def refresh(self) -> None:
        files = {family: tuple(_model_files([Path(f) for f in self._folders(family)])) for family in FAMILIES}
        with self._lock:
            self._files = files
        hidden = self._listed()[1]
        with self._lock:  # each clash is logged once, not at every rescan (a page load rescans)
            new = [(entry, kept) for entry, kept in hidden if entry.path not in self._warned]
            self._warned = {entry.path for entry, _ in hidden}
        for entry, kept in new:
            log.warning("Upscaler %s (%s) has the name of %s; it is not listed. Rename the file to use it.",
                        entry.path, entry.family, kept.path if kept is not None else "a built-in upscaler")

    def _enabled(self) -> dict[str, Sequence[str]]:
        if self._settings is None:
            return {}
        current = self._settings()
        return {"RealESRGAN": tuple(current["realesrgan_enabled_models"]),
                "DAT": tuple(current["dat_enabled_models"])}

    def entries(self) -> list[UpscalerEntry]:
        """None, Lanczos, Nearest, then every model upscaler by lower-cased name (A1111's order). Of
        two upscalers with one name the first found (family order, then folder order) is kept; the
        others are logged by `refresh`."""
        return self._listed()[0]

    def _listed(self) -> tuple[list[UpscalerEntry], list[tuple[UpscalerEntry, UpscalerEntry | None]]]:
        """(the entries, the (hidden, kept) pairs of duplicate names)."""
        with self._lock:
            files = dict(self._files)
        enabled = self._enabled()
        seen: dict[str, UpscalerEntry | None] = {name: None for name in BUILTIN_NAMES}
        models: list[UpscalerEntry] = []
        duplicates: list[tuple[UpscalerEntry, UpscalerEntry | None]] = []
        for family in FAMILIES:
            for entry in _family_entries(family, files.get(family, ()), enabled):
                if entry.name in seen:
                    duplicates.append((entry, seen[entry.name]))
                    continue
                seen[entry.name] = entry
                models.append(entry)
        models.sort(key=lambda entry: entry.name.lower())
        return builtin_entries() + models, duplicates

    def names(self) -> list[str]:
        return [entry.name for entry in self.entries()]

    def get(self, name: str) -> UpscalerEntry:
        entries = self.entries()
        for entry in entries:
            if entry.name == name:
                return entry
        raise UnknownUpscalerError(name, [entry.name for entry in entries], self._builtin_hint(name))

    def _builtin_hint(self, name: str) -> str:
        """For one of A1111's downloadable upscalers: where its file goes, or which setting hides it."""
        builtin = next((b for b in (*REALESRGAN_BUILTINS, *DAT_BUILTINS, *OTHER_BUILTINS) if b.name == name), None)
        if builtin is None:
            return ""
        with self._lock:
            present = any(path.name == builtin.filename for path in self._files.get(builtin.family, ()))
        if present:
            setting = "realesrgan_enabled_models" if builtin.family == "RealESRGAN" else "dat_enabled_models"
            return (f"Its file {builtin.filename} is there but the setting {setting} hides it: enable {name} in "
                    "Settings → Upscaling.")
        return (f"It is one of A1111's downloadable models; Atelier does not download at run time: put "
                f"{builtin.filename} (from {builtin.url}) into models/{builtin.family} and press refresh.")

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self.names()

    def realesrgan_models(self) -> list[dict[str, Any]]:
        """`/sdapi/v1/realesrgan-models`: all six Real-ESRGAN models whatever the enabled setting, with
        the local file when present, else A1111's download URL (not fetched here)."""
        with self._lock:
            files = self._files.get("RealESRGAN", ())
        by_filename = {path.name: path for path in reversed(files)}
        return [{"name": b.name, "path": os.fspath(by_filename[b.filename]) if b.filename in by_filename else b.url,
                 "scale": b.scale} for b in REALESRGAN_BUILTINS]
