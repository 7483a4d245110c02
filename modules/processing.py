"""A1111's name for extensions: `modules.processing`. The code lives in `modules.generation.engine` and `modules.extension_host.processing_objects`;
Atelier's own code imports it from there (docs/ARCHITECTURE.md)."""

# ruff: noqa: F401, F403
from modules.generation.engine import *
from modules.extension_host.processing_objects import *
