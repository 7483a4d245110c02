"""Importing an extension's Python files as modules, and where Atelier itself lives: shared by the
extension loader (modules.extension_host.extensions) and the script runner (.scripts)."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def import_file_as_module(module_name: str, path: Path):
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(module_name, None)
        raise
    return module


def module_name_part(name: str) -> str:
    return re.sub(r"\W", "_", name)
