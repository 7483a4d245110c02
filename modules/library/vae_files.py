"""VAE discovery and the choice of which VAE goes with a checkpoint (A1111.md §1.11). No loading.

Discovery looks where A1111 looks, in the same order, and keys VAEs by file name:
1. `<models>/Stable-diffusion/**/*.vae.{ckpt,pt,safetensors}`
2. `<models>/VAE/**/*.{ckpt,pt,safetensors}`
3. `--ckpt-dir/**/*.vae.{ckpt,pt,safetensors}`
4. `--vae-dir/**/*.{ckpt,pt,safetensors}`
A name found twice keeps the position of its first find and the path of its last, as in A1111.
Differences: within a folder tree the order is natural-sorted (A1111's glob order is whatever the
file system returns), extensions match in any case (A1111's glob is case-sensitive on Linux), and a
folder reached twice through symlinks is walked once. Hidden files and folders are skipped, as
A1111's glob skips them.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

from modules.library.checkpoints import CheckpointInfo, walk_sorted

logger = logging.getLogger(__name__)

VAE_EXTENSIONS = (".ckpt", ".pt", ".safetensors")
VAE_SUFFIXES = tuple(".vae" + ext for ext in VAE_EXTENSIONS)

AUTOMATIC = "Automatic"
NONE = "None"
# Older A1111 configs store "auto" for Automatic.
_AUTOMATIC_VALUES = frozenset({AUTOMATIC, "auto"})

VaeSource = Literal["flag", "setting", "user-metadata", "near-checkpoint", "none/builtin"]


@dataclass(frozen=True)
class VaeFile:
    name: str  # file name, the key users pick in the dropdown
    path: Path


@dataclass(frozen=True)
class VaeChoice:
    """Which VAE to use and why. `path` None means the checkpoint's own (built-in) VAE."""

    source: VaeSource
    path: Path | None

    @property
    def uses_builtin(self) -> bool:
        return self.path is None


class UnknownVaeError(ValueError):
    """A VAE name that is neither Automatic, None, nor a discovered file."""

    def __init__(self, name: str, choices: Sequence[str]):
        self.name = name
        self.choices = list(choices)
        close = difflib.get_close_matches(name, self.choices, n=3, cutoff=0.5)
        hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        super().__init__(f"Unknown VAE {name!r}.{hint} Choose one of {', '.join(repr(c) for c in self.choices)}, "
                         "or put the file in models/VAE and refresh the VAE list.")

    def __reduce__(self):
        # Rebuilt from its fields, not from the message, when it crosses a process boundary.
        return type(self), (self.name, self.choices)


class VaeRegistry:
    """The VAE files users can choose, and the resolution of the VAE for a checkpoint.

    Nothing is scanned until `refresh()`. Thread-safe; lists returned are snapshots.
    """

    def __init__(
        self,
        checkpoint_dir: str | os.PathLike,
        vae_dir: str | os.PathLike,
        *,
        ckpt_dir: str | os.PathLike | None = None,
        extra_vae_dir: str | os.PathLike | None = None,
    ):
        """`checkpoint_dir`: `<models>/Stable-diffusion`; `vae_dir`: `<models>/VAE`; `ckpt_dir`:
        `--ckpt-dir`; `extra_vae_dir`: `--vae-dir` (the names of `modules.serving.paths.Paths`)."""
        # (folder, only `*.vae.*` names): the search order of the module docstring.
        self._searches: list[tuple[str, bool]] = [(os.fspath(checkpoint_dir), True), (os.fspath(vae_dir), False)]
        if ckpt_dir is not None:
            self._searches.append((os.fspath(ckpt_dir), True))
        if extra_vae_dir is not None:
            self._searches.append((os.fspath(extra_vae_dir), False))
        self._lock = threading.Lock()
        self._files: dict[str, VaeFile] = {}

    def refresh(self) -> None:
        found: dict[str, VaeFile] = {}
        for root, vae_suffix_only in self._searches:
            suffixes = VAE_SUFFIXES if vae_suffix_only else VAE_EXTENSIONS
            # A fresh `visited` per search: searches overlap by design (ckpt-dir may be the
            # Stable-diffusion folder) and the name key already merges what they both find.
            for folder, filenames in walk_sorted(root, include_hidden=False):
                for filename in filenames:
                    if filename.lower().endswith(suffixes):
                        found[filename] = VaeFile(filename, Path(folder, filename))  # folder is absolute
        with self._lock:
            self._files = found
        logger.info("Found %d VAE files", len(found))

    def files(self) -> list[VaeFile]:
        with self._lock:
            return list(self._files.values())

    def names(self) -> list[str]:
        with self._lock:
            return list(self._files)

    def choices(self) -> list[str]:
        """Dropdown choices: `Automatic`, `None`, then the file names in discovery order."""
        return [AUTOMATIC, NONE, *self.names()]

    def get(self, name: str) -> VaeFile:
        with self._lock:
            found = self._files.get(name)
        if found is None:
            raise UnknownVaeError(name, self.choices())
        return found

    def resolve_vae(
        self,
        checkpoint: CheckpointInfo,
        setting: str,
        overrides_per_model: bool,
        vae_path_flag: str | os.PathLike | None,
    ) -> VaeChoice:
        """The VAE for `checkpoint`; the first rule that applies wins (A1111's order):

        1. `--vae-path` (then the settings are not consulted at all);
        2. the `sd_vae` setting, when it is not Automatic and `sd_vae_overrides_per_model_preferences`
           is on (`None` = the checkpoint's own VAE);
        3. the `vae` key of the user metadata `<checkpoint stem>.json` beside the checkpoint;
        4. a VAE named like the checkpoint: `<stem>.<anything>`, e.g. `model.vae.pt` for
           `model.safetensors` (A1111 accepts any name starting with the stem, so `model` also takes
           `model2.vae.pt` or `model-old.vae.pt`, a VAE meant for another checkpoint; not here);
        5. the setting again (reached with overrides off), else the checkpoint's own VAE.

        Raises `UnknownVaeError` for a setting that names no known VAE, and `FileNotFoundError` for
        a `--vae-path` that does not exist.
        """
        if vae_path_flag is not None:
            path = Path(os.path.abspath(vae_path_flag))
            if not path.is_file():
                raise FileNotFoundError(f"--vae-path {path} does not exist; fix the path or drop the flag")
            return VaeChoice("flag", path)

        automatic = setting in _AUTOMATIC_VALUES
        if not automatic and setting != NONE:
            self.get(setting)  # a setting naming no file is an error (A1111 silently uses None)
        if overrides_per_model and not automatic:
            return self._from_setting(setting)

        from_metadata = self._from_user_metadata(checkpoint.filename)
        if from_metadata is not None:
            return from_metadata

        near = self._near_checkpoint(checkpoint.filename)
        if near is not None:
            return VaeChoice("near-checkpoint", near.path)

        if automatic:
            return VaeChoice("none/builtin", None)
        return self._from_setting(setting)

    def _from_setting(self, setting: str) -> VaeChoice:
        if setting == NONE:
            return VaeChoice("setting", None)
        return VaeChoice("setting", self.get(setting).path)

    def _from_user_metadata(self, checkpoint_file: Path) -> VaeChoice | None:
        metadata_file = checkpoint_file.with_name(os.path.splitext(checkpoint_file.name)[0] + ".json")
        if not metadata_file.is_file():
            return None
        try:
            metadata = json.loads(metadata_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            logger.warning("Ignoring user metadata %s: cannot read it as JSON (%s)", metadata_file, e)
            return None
        name = metadata.get("vae") if isinstance(metadata, dict) else None
        if not isinstance(name, str) or name in ("", AUTOMATIC):
            return None
        if name == NONE:
            return VaeChoice("user-metadata", None)
        with self._lock:
            found = self._files.get(name)
        if found is None:
            # User data, not a setting: say so and carry on with the next rule, as A1111 does.
            logger.warning("VAE %r named in %s is not among the VAE files; ignoring it", name, metadata_file)
            return None
        return VaeChoice("user-metadata", found.path)

    def _near_checkpoint(self, checkpoint_file: Path) -> VaeFile | None:
        prefix = os.path.splitext(checkpoint_file.name)[0] + "."
        with self._lock:
            return next((vae for vae in self._files.values() if vae.name.startswith(prefix)), None)
