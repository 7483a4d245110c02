"""Which files the mounted Gradio app may read, copy and serve, and where it keeps its copies.

Gradio checks every `FileData` an event receives ("only files a user uploaded") and every file
an event returns ("only files the app made, or in `allowed_paths`"), but only once its Blocks count
as launched. Mounted on our FastAPI app with `gr.mount_gradio_app`, they never do (`launch()` is
what sets `has_launched`), so without `apply_file_rules` a logged-in user could name any server file
(`/etc/passwd`, `config.json`) as an image input and read it back from `/gradio_api/file=`.

Gradio's uploads and copies go to a cache folder of this instance under the data folder
(`<data>/cache/gradio/<pid>`), emptied at start and removed at exit, instead of the shared
`/tmp/gradio` that every Gradio app on the host reads and nothing cleans.

This module does not import gradio (it runs before the UI is built); it only names the settings
Gradio reads: the `GRADIO_TEMP_DIR` environment variable and the Blocks' file rules.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger(__name__)

GRADIO_TEMP_ENV = "GRADIO_TEMP_DIR"


def gradio_cache_root(data_dir: Path) -> Path:
    return data_dir / "cache" / "gradio"


def prepare_gradio_cache(data_dir: Path, *, pid: int | None = None) -> Path:
    """Make `<data>/cache/gradio/<pid>` this process's empty Gradio cache and point Gradio at it.

    Folders left by processes that are gone (a crash, a kill -9) are removed now; a folder of
    another live Atelier on the same data folder is left alone. Must run before the Blocks are
    built: each Gradio component reads the folder when it is created."""
    pid = os.getpid() if pid is None else pid
    root = gradio_cache_root(data_dir)
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.iterdir():
        if stale.name != str(pid) and not (stale.name.isdigit() and _process_alive(int(stale.name))):
            _remove(stale)
    folder = root / str(pid)
    _remove(folder)
    folder.mkdir(mode=0o700)
    os.environ[GRADIO_TEMP_ENV] = str(folder)
    atexit.register(_remove, folder)
    return folder


def apply_file_rules(blocks, *, allowed: Iterable[Path] = (), blocked: Iterable[Path] = ()) -> None:
    """Turn on Gradio's file checks for Blocks mounted with `gr.mount_gradio_app` (see the module
    docstring) and set what, besides its own cache, it may serve (`allowed`) or never touch
    (`blocked`, which wins over everything)."""
    # `has_launched` is the flag Gradio's own check reads (processing_utils._check_allowed): mounting
    # is a launch in all but name, and Gradio's reload mode sets it the same way when it swaps Blocks.
    blocks.has_launched = True
    blocks.allowed_paths = [str(path) for path in allowed]
    blocks.blocked_paths = [str(path) for path in blocked]


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
