"""A1111's name for extensions: `modules.images`. The code lives in `modules.outputs.images`;
Atelier's own code imports it from there (docs/ARCHITECTURE.md)."""

# ruff: noqa: F401, F403
from modules.outputs.images import *
