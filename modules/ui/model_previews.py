"""Which files in the model folders the page may load: the previews of the models listed now.

The cards show a model's preview (`<stem>.png`, `<stem>.preview.png`, ... as A1111 names them,
modules.model_sources.cards) through `/file=`. Model folders are not served as a whole: the weights,
their user metadata and anything else lying there stay private. A file is a preview when its name is
a preview name of a listed model (checkpoint, LoRA, hypernetwork or embedding) and its real path is
in the same real folder as that model, so a preview that is a link to a file elsewhere is refused.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from modules.model_sources.cards import preview_stems


def listed_model_files(context) -> list[Path]:
    """The files of every model the context lists now (no rescan); a context without a registry
    (tools, tests) contributes nothing for it."""
    files: list[Path] = []
    checkpoints = getattr(context, "checkpoints", None)
    if checkpoints is not None:
        files += [Path(info.filename) for info in checkpoints.list()]
    loras = getattr(context, "loras", None)
    if loras is not None:
        files += [Path(info.path) for info in loras.list()]
    hypernetworks = getattr(context, "hypernetworks", None)
    if hypernetworks is not None:
        for name in hypernetworks.names():
            try:
                files.append(Path(hypernetworks.path(name)))
            except KeyError:  # removed by a refresh meanwhile
                pass
    embeddings = getattr(context, "embeddings", None)
    if embeddings is not None:
        files += [Path(embedding.filename) for embedding in embeddings.embeddings.values()]
    return files


def is_listed_preview(real: Path, models: Iterable[Path]) -> bool:
    """Whether the file at real path `real` is a preview of one of `models` (see the module docstring)."""
    stems = preview_stems(real.name)
    if not stems:
        return False
    folder = str(real.parent)
    real_folders: dict[Path, str] = {}
    for model in models:
        if model.stem not in stems:
            continue
        if model.parent not in real_folders:
            real_folders[model.parent] = os.path.realpath(model.parent)
        if real_folders[model.parent] == folder:
            return True
    return False
