"""Writing a legacy `.ckpt` (torch zip pickle) from a finished safetensors file.

A1111's merger can save `.ckpt`: `torch.save` of a flat state dict, no `state_dict` wrapper, no
metadata (A1111.md §6). `torch.save` needs every tensor at once, so the streaming merger first
writes safetensors, then this module hands `torch.save` views into that file's memory map: the
tensors are file-backed pages that the kernel can drop, not a second copy of the model in RAM.
The output is hashed while `torch.save` writes it and appears under its name only when complete.
"""

from __future__ import annotations

import hashlib
import os
from contextlib import ExitStack
from pathlib import Path

import torch

from modules.common.atomic_files import DiskFullError, ensure_space, free_space, is_disk_full, temp_path_for
from modules.library.safetensors_io import SafetensorsReader


class _HashingFile:
    """The file object `torch.save` writes to: every byte goes to the file and to sha256."""

    def __init__(self, path: Path):
        self._file = open(path, "wb")
        self.hasher = hashlib.sha256()

    def write(self, data) -> int:
        self.hasher.update(data)
        return self._file.write(data)

    def flush(self) -> None:
        self._file.flush()

    def sync_and_close(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()

    def close(self) -> None:
        self._file.close()


def safetensors_to_ckpt(source: Path, destination: Path, overwrite: bool = False) -> str:
    """Write the tensors of the safetensors file `source` to `destination` as a `.ckpt` (a flat dict
    saved by `torch.save`); returns the new file's sha256. Leaves no partial file on failure."""
    destination = Path(destination)
    if destination.exists() and not overwrite:
        raise FileExistsError(f"{destination} already exists; choose another name or allow overwriting")
    # The pickle holds the same tensor bytes as the source, plus a little framing.
    needed, what = Path(source).stat().st_size, f"the checkpoint {destination.name}"
    ensure_space(destination.parent, needed, what)
    tmp = temp_path_for(destination)
    out = _HashingFile(tmp)
    try:
        with SafetensorsReader(source) as reader, ExitStack() as views:
            state = {name: views.enter_context(reader.view(name)) for name in reader.keys()}
            torch.save(state, out)
            del state
        out.sync_and_close()
        os.replace(tmp, destination)
    except BaseException as error:
        try:
            out.close()
        except OSError:
            pass  # flushing what is being thrown away can fail the same way (a full disk)
        tmp.unlink(missing_ok=True)
        # torch.save reports a failed write as its own RuntimeError; the OSError is its cause.
        cause = error if is_disk_full(error) else error.__cause__ or error.__context__
        if is_disk_full(cause) and not isinstance(error, DiskFullError):
            raise DiskFullError(destination.parent, needed, free_space(destination.parent), what) from error
        raise
    return out.hasher.hexdigest()
