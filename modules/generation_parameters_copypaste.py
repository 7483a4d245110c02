"""A1111's name for extensions: `modules.generation_parameters_copypaste`, A1111's name before 1.8 for
`modules.infotext_utils`, whose names it re-exports (docs/ARCHITECTURE.md)."""

# ruff: noqa: F401, F403
from modules.infotext_utils import *
from modules.infotext_utils import __getattr__
