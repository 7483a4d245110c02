"""A1111's `modules.paths` and `modules.paths_internal` for extensions: where Atelier is installed
and where the running app keeps its data.

A1111 computes these once, from the command line, at import. Here each value is read when asked,
from the app in scope (modules.extension_host.environment), so two apps in one process each see
their own folders. With no app in scope (a tool, or an extension's install.py) they follow the
command line as A1111 does: `--data-dir` and `--models-dir` from `sys.argv`, else the install
folder.

Names: `script_path` (the install folder), `data_path` (`--data-dir`, default the install folder),
`models_path` (`--models-dir`, default `<data>/models`), `extensions_dir` (`<data>/extensions`),
`extensions_builtin_dir`, `config_states_dir`, `sd_configs_path`, `sd_default_config`,
`sd_model_file`, `default_sd_model_file`, `modules_path`, `cwd` (the working folder now).
Unlike A1111, importing `modules.paths` does not change `sys.path` (Atelier's folder is already on
it when it runs).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from modules.extension_host.module_files import REPO_ROOT

BUILTIN_EXTENSIONS_DIR = REPO_ROOT / "extensions-builtin"


def _from_command_line() -> tuple[Path, Path]:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--models-dir", default=None)
    known, _ = parser.parse_known_args(sys.argv[1:])
    data = Path(known.data_dir).expanduser().resolve() if known.data_dir else REPO_ROOT
    models = Path(known.models_dir).expanduser().resolve() if known.models_dir else data / "models"
    return data, models


def _app_folders() -> tuple[Path, Path, Path]:
    """(data, models, user extensions) of the app in scope, else from the command line."""
    from modules.extension_host.environment import current_app_or_none

    context = current_app_or_none()
    if context is None:
        data, models = _from_command_line()
        return data, models, data / "extensions"
    runtime = getattr(context, "extensions", None)
    extensions = runtime.folders.user if runtime is not None else context.paths.data_dir / "extensions"
    return context.paths.data_dir, context.paths.models_dir, extensions


_FIXED = {
    "script_path": str(REPO_ROOT),
    "modules_path": str(REPO_ROOT / "modules"),
    "extensions_builtin_dir": str(BUILTIN_EXTENSIONS_DIR),
    "config_states_dir": str(REPO_ROOT / "config_states"),
    "sd_configs_path": str(REPO_ROOT / "configs"),
    "sd_default_config": str(REPO_ROOT / "configs" / "ldm" / "v1-inference.yaml"),  # A1111: configs/
    "sd_model_file": str(REPO_ROOT / "model.ckpt"),
    "default_sd_model_file": str(REPO_ROOT / "model.ckpt"),
}
_PER_APP = ("data_path", "models_path", "extensions_dir", "cwd")


def __getattr__(name: str) -> str:
    if name in _FIXED:
        return _FIXED[name]
    if name == "cwd":
        return os.getcwd()
    if name in _PER_APP:
        data, models, extensions = _app_folders()
        return str({"data_path": data, "models_path": models, "extensions_dir": extensions}[name])
    raise AttributeError(f"module 'modules.paths' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*_FIXED, *_PER_APP])
