"""A1111's name for extensions: `modules.extra_networks`. The code lives in `modules.networks.syntax`;
Atelier's own code imports it from there (docs/ARCHITECTURE.md)."""

# ruff: noqa: F401, F403
from modules.networks.syntax import *
