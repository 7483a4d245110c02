"""Atelier's modules. Importing the package installs one import-time guard: torchvision must import
even when its compiled ops do not match torch (see modules.library.torchvision_compat)."""

from modules.library import torchvision_compat as _torchvision_compat

_torchvision_compat.install()
