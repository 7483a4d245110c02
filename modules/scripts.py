"""A1111's name for extensions: `modules.scripts`. The code lives in `modules.extension_host.scripts`;
Atelier's own code imports it from there (docs/ARCHITECTURE.md)."""

# ruff: noqa: F401, F403
from modules.extension_host.scripts import *

from modules.extension_host.scripts import module_getattr as __getattr__
