"""A1111's name for extensions: `modules.prompt_parser`. The code lives in `modules.generation.prompt_parser`;
Atelier's own code imports it from there (docs/ARCHITECTURE.md)."""

# ruff: noqa: F401, F403
from modules.generation.prompt_parser import *
