"""Keep torchvision importable when its compiled ops do not match the installed torch.

spandrel (the upscaler model loader) needs torchvision, and transformers imports it as soon as it is
installed. PyPI's Linux torchvision wheels are built against CUDA torch; beside a CPU torch (the
default install here) their `_C` extension cannot load, and torchvision 0.28's Python then fails at
import: `_meta_registrations` registers fake kernels for `torchvision::nms` and `torchvision::qnms`
without checking that the ops exist ("operator torchvision::nms does not exist"). That would take
down every image processor in transformers and every upscaler.

When, and only when, `_C` cannot be loaded, this declares those two ops' schemas (what `_C` itself
would declare) before torchvision runs, so its pure-Python parts import. The ops have no kernels:
calling `torchvision.ops.nms` raises, which neither spandrel's upscaler architectures nor
Atelier's code do. A log line names the fix: install the torchvision build that matches torch.

It is installed as a one-shot import hook (`install()`, from `modules/__init__.py`) rather than
run eagerly, because the server answers its first page before torch is imported
(tests/test_startup_imports.py): the check runs at torchvision's first import, whoever imports it.
"""

from __future__ import annotations

import functools
import glob
import importlib.abc
import importlib.machinery
import importlib.util
import logging
import os
import sys

log = logging.getLogger(__name__)

# The schemas torchvision's C++ library defines for the ops its Python registers unconditionally.
_UNGUARDED_OPS = (
    ("nms", "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"),
    ("qnms", "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"),
)


def _extension_loads(package_dir: str) -> bool:
    """Whether torchvision's compiled ops load into this torch."""
    import torch

    suffixes = importlib.machinery.EXTENSION_SUFFIXES
    candidates = [path for suffix in suffixes for path in glob.glob(os.path.join(package_dir, "_C" + suffix))]
    for path in candidates:
        try:
            torch.ops.load_library(path)
            return True
        except (OSError, RuntimeError, ImportError):
            continue
    return False


@functools.lru_cache(maxsize=1)
def _declared_ops():
    """The `torch.library.Library` fragment holding the declared schemas. Cached: the declarations
    live as long as this object does, so it must stay referenced for the life of the process."""
    import torch

    library = torch.library.Library("torchvision", "FRAGMENT")
    for name, schema in _UNGUARDED_OPS:
        try:
            getattr(torch.ops.torchvision, name)
            continue  # already there (a later torchvision, or another declarer)
        except (AttributeError, RuntimeError):
            library.define(schema)
    return library


def prepare_torchvision() -> None:
    """Make the first `import torchvision` succeed (see the module docstring). No-op when torchvision
    is not installed, already imported, or its compiled ops load."""
    if "torchvision" in sys.modules:
        return
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return
    package_dir = list(spec.submodule_search_locations)[0]
    if _extension_loads(package_dir):
        return
    _declared_ops()
    import torch

    log.warning("torchvision's compiled ops do not load with torch %s (a CUDA torchvision beside a CPU torch?); "
                "upscalers still work, torchvision.ops do not. To fix it, install the matching build, e.g. "
                "`pip install torchvision --index-url https://download.pytorch.org/whl/cpu` for a CPU torch",
                torch.__version__)


class _TorchvisionFirstImport(importlib.abc.MetaPathFinder):
    """Runs `prepare_torchvision` once, just before torchvision is first imported, then steps aside."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "torchvision":
            return None
        try:
            sys.meta_path.remove(self)
        except ValueError:
            pass
        try:
            prepare_torchvision()
        except Exception:  # noqa: BLE001 - the import itself then reports what is wrong
            log.exception("could not prepare torchvision's import")
        return None  # the normal finders import it


def install() -> None:
    """Put the one-shot hook in front of the import system (once per process)."""
    if "torchvision" in sys.modules or any(isinstance(f, _TorchvisionFirstImport) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _TorchvisionFirstImport())
