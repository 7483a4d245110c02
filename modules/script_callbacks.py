"""A1111's name for extensions: `modules.script_callbacks`. The code lives in `modules.extension_host.callbacks`;
Atelier's own code imports it from there (docs/ARCHITECTURE.md)."""

# ruff: noqa: F401, F403
from modules.extension_host.callbacks import *
