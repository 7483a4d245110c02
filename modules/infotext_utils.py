"""A1111's name for extensions: `modules.infotext_utils`. The code lives in `modules.outputs.infotext`;
Atelier's own code imports it from there (docs/ARCHITECTURE.md)."""

# ruff: noqa: F401, F403
from modules.outputs.infotext import *
