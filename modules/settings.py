"""Settings: a typed schema, immutable values, and the one owner of `config.json`.

`config.json` keeps A1111's flat format (`{"sd_model_checkpoint": "...", "sd_vae": "Automatic", ...}`)
so an A1111 data folder can be pointed at with `--data-dir`. Keys this schema does not know are kept
and written back untouched. Per-request overrides never mutate the store: `Settings.with_overrides`
returns a new object.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SettingSpec:
    key: str
    default: Any
    label: str
    section: str
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] | None = None  # fixed choices; dynamic ones (checkpoints, VAEs) are checked elsewhere

    def validate(self, value: Any) -> Any:
        """The value converted to the setting's type, or a ValueError that names key, value and rule."""
        expected = type(self.default)
        if expected is bool:
            if not isinstance(value, bool):
                raise ValueError(f"setting {self.key!r} must be true or false, got {value!r}")
        elif expected in (int, float):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"setting {self.key!r} must be a number, got {value!r}")
            if expected is int:
                if float(value) != int(value):
                    raise ValueError(f"setting {self.key!r} must be a whole number, got {value!r}")
                value = int(value)
            else:
                value = float(value)
            if self.minimum is not None and value < self.minimum or self.maximum is not None and value > self.maximum:
                raise ValueError(f"setting {self.key!r} must be between {self.minimum} and {self.maximum}, got {value}")
        elif expected is str:
            if not isinstance(value, str):
                raise ValueError(f"setting {self.key!r} must be text, got {value!r}")
            if self.choices is not None and value not in self.choices:
                raise ValueError(f"setting {self.key!r} must be one of {list(self.choices)}, got {value!r}")
        return value


SCHEMA: tuple[SettingSpec, ...] = (
    SettingSpec("sd_model_checkpoint", "", "Stable Diffusion checkpoint", "checkpoints"),
    SettingSpec("sd_checkpoint_hash", "", "Hash of the loaded checkpoint (read only)", "checkpoints"),
    SettingSpec("sd_checkpoints_limit", 1, "Maximum number of checkpoints loaded at the same time", "checkpoints",
                minimum=1, maximum=10),
    SettingSpec("sd_checkpoints_keep_in_cpu", True, "Only keep one model on device", "checkpoints"),
    SettingSpec("sd_vae", "Automatic", "SD VAE", "vae"),
    SettingSpec("sd_vae_overrides_per_model_preferences", True,
                "Selected VAE overrides per-model preferences", "vae"),
    SettingSpec("randn_source", "GPU", "Random number generator source", "sampling", choices=("GPU", "CPU", "NV")),
    SettingSpec("eta_noise_seed_delta", 0, "Eta noise seed delta (ENSD)", "sampling", minimum=0, maximum=2**32),
    SettingSpec("eta_ancestral", 1.0, "Eta for k-diffusion ancestral/SDE samplers", "sampling", minimum=0, maximum=1),
    SettingSpec("eta_ddim", 0.0, "Eta for DDIM", "sampling", minimum=0, maximum=1),
    SettingSpec("CLIP_stop_at_last_layers", 1, "Clip skip", "sampling", minimum=1, maximum=12),
    SettingSpec("sdxl_clip_l_skip", False, "Clip skip applies to SDXL's CLIP-L", "sampling"),
    SettingSpec("emphasis", "Original", "Emphasis mode", "sampling", choices=("Original", "No norm", "Ignore", "None")),
    SettingSpec("comma_padding_backtrack", 20, "Prompt word wrap length limit (comma backtrack)", "sampling",
                minimum=0, maximum=74),
    SettingSpec("samples_save", True, "Always save all generated images", "saving"),
    SettingSpec("override_settings_restore_afterwards", True,
                "Restore settings (and the checkpoint) after a request that overrides them", "saving"),
)
SCHEMA_BY_KEY: Mapping[str, SettingSpec] = MappingProxyType({spec.key: spec for spec in SCHEMA})


class Settings(Mapping[str, Any]):
    """An immutable snapshot of all settings (schema defaults + stored values + overrides)."""

    def __init__(self, values: Mapping[str, Any]):
        merged = {spec.key: spec.default for spec in SCHEMA}
        merged.update(values)
        self._values = MappingProxyType(merged)

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __iter__(self):
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __getattr__(self, key: str) -> Any:
        try:
            return self._values[key]
        except KeyError:
            raise AttributeError(f"no setting named {key!r}") from None

    def with_overrides(self, overrides: Mapping[str, Any]) -> "Settings":
        """A new snapshot with `overrides` applied (validated); this one is unchanged."""
        return Settings({**self._values, **validate_changes(overrides)})

    def to_dict(self) -> dict[str, Any]:
        return dict(self._values)


def validate_changes(changes: Mapping[str, Any]) -> dict[str, Any]:
    """Validate known keys; unknown keys (an extension's, A1111's) pass through as given."""
    errors, clean = [], {}
    for key, value in changes.items():
        spec = SCHEMA_BY_KEY.get(key)
        try:
            clean[key] = spec.validate(value) if spec else value
        except ValueError as e:
            errors.append(str(e))
    if errors:
        raise ValueError("; ".join(errors))
    return clean


class SettingsStore:
    """The single owner of `config.json`: load, validate, apply, save atomically."""

    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()
        self._stored = self._read()

    def _read(self) -> dict[str, Any]:
        if not self.path.exists():
            return {}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            if not isinstance(data, dict):
                raise ValueError("top level is not an object")
        except (OSError, ValueError) as e:
            aside = self.path.with_name(f"{self.path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
            os.replace(self.path, aside)
            log.warning("%s is unreadable (%s); moved it to %s and using defaults", self.path, e, aside.name)
            return {}
        valid = {}
        for key, value in data.items():
            spec = SCHEMA_BY_KEY.get(key)
            try:
                valid[key] = spec.validate(value) if spec else value
            except ValueError as e:
                log.warning("%s: ignoring invalid stored value: %s", self.path.name, e)
        return valid

    def current(self) -> Settings:
        with self._lock:
            return Settings(self._stored)

    def apply(self, changes: Mapping[str, Any]) -> list[str]:
        """Validate and persist `changes`; returns the keys whose value changed."""
        clean = validate_changes(changes)
        with self._lock:
            current = Settings(self._stored)
            changed = [k for k, v in clean.items() if k not in current or current[k] != v]
            if changed:
                self._stored.update({k: clean[k] for k in changed})
                self._save_locked()
        return changed

    def _save_locked(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self._stored, indent=4, ensure_ascii=False), encoding="utf-8")
        os.replace(tmp, self.path)
