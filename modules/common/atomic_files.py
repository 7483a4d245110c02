"""Files that appear whole or not at all, and a full disk reported as one.

Everything Atelier writes that others read (images and their .txt, config.json, cache.json, merged
checkpoints) is written to a temp file beside its final name, flushed to disk, and renamed into
place (`os.replace` is atomic within a folder): a reader, a crash or `kill -9` never sees half a
file under the final name.

Temp files are named `.<final name>.<token>.atelier-tmp`: hidden, never matching a checkpoint or
image suffix (so no folder scan lists them), and marked, so that start-up removes the ones a killed
process left (`remove_stale_temp_files`). The token is this process's, so the sweep never touches
a write in progress here.

A full disk (ENOSPC, or a quota) becomes `DiskFullError`, which names the folder, the space the
write needed and the space free. When the size is known in advance, the space is checked before
anything is written; a write that still runs out removes its temp file.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import secrets
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path

log = logging.getLogger(__name__)

TEMP_MARK = ".atelier-tmp"
# Per process: a start-up sweep must not remove the temp files of writes this process is doing,
# and a pid alone can repeat after a restart (containers start at the same pid).
_PROCESS_TOKEN = secrets.token_hex(4)


class DiskFullError(OSError):
    """Not enough space to write a file; `folder`, `needed` and `free` are in the message."""

    def __init__(self, folder: str | os.PathLike, needed: int | None, free: int | None, what: str):
        self.folder, self.needed, self.free, self.what = Path(folder), needed, free, what
        need = f"it needs {format_size(needed)}" if needed is not None else "it needs more space"
        if free is None:
            have = "free space unknown"
        elif needed is not None and free >= needed:  # the bytes are there, the file entries or quota not
            have = f"{format_size(free)} free, but the file system refused (no free inodes, or a quota)"
        else:
            have = f"{format_size(free)} free"
        self.message = (f"not enough free space in {self.folder} to write {what}: {need}, {have}; free some "
                        "space there (or choose another folder) and try again. Nothing was written.")
        super().__init__(errno.ENOSPC, self.message)

    def __str__(self) -> str:
        return self.message

    def __reduce__(self):
        return type(self), (self.folder, self.needed, self.free, self.what)


def format_size(size: int) -> str:
    """`1.5 MiB (1572864 bytes)`: the unit to read, the exact count to compare."""
    value, unit = float(size), "bytes"
    for next_unit in ("KiB", "MiB", "GiB", "TiB"):
        if value < 1024:
            break
        value, unit = value / 1024, next_unit
    return f"{size} bytes" if unit == "bytes" else f"{value:.1f} {unit} ({size} bytes)"


# A final name longer than this (in UTF-8 bytes) is shortened in its temp name, which must fit the
# file system's name limit (255 bytes) whatever the final name.
_TEMP_STEM_BYTES = 200


def temp_path_for(final: str | os.PathLike) -> Path:
    """The temp file beside `final` (see the module docstring)."""
    final = Path(final)
    stem = final.name
    if len(stem.encode()) > _TEMP_STEM_BYTES:
        # Cut to a whole character, plus a digest so that two long names stay apart.
        digest = hashlib.sha1(stem.encode()).hexdigest()[:10]
        stem = stem.encode()[:_TEMP_STEM_BYTES - 11].decode("utf-8", errors="ignore") + "~" + digest
    return final.with_name(f".{stem}.{_PROCESS_TOKEN}{TEMP_MARK}")


def is_temp_name(name: str) -> bool:
    """Whether `name` is a temp file name of `temp_path_for` (this process's or another's)."""
    return name.startswith(".") and name.endswith(TEMP_MARK)


def free_space(folder: str | os.PathLike) -> int | None:
    """Bytes an unprivileged write can still use in `folder` (or its nearest existing parent)."""
    path = Path(folder)
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def is_disk_full(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)


def ensure_space(folder: str | os.PathLike, needed: int, what: str) -> None:
    """Raise `DiskFullError` when `folder` has less than `needed` bytes free."""
    free = free_space(folder)
    if free is not None and free < needed:
        raise DiskFullError(folder, needed, free, what)


def write_bytes(final: str | os.PathLike, data: bytes, *, what: str,
                choose_target: Callable[[Path], Path] | None = None) -> Path:
    """Write `data` to `final` through a temp file (see the module docstring); returns the path
    written, which `choose_target(final)` may change at the last moment (e.g. to add a number
    rather than replace a file that appeared meanwhile). Raises `DiskFullError` on a full disk."""
    final = Path(final)
    ensure_space(final.parent, len(data), what)
    temp = temp_path_for(final)
    try:
        with open(temp, "wb") as file:
            file.write(data)
            file.flush()
            # Without fsync a power cut soon after the rename can leave an empty file under the name.
            os.fsync(file.fileno())
        target = choose_target(final) if choose_target is not None else final
        os.replace(temp, target)
    except BaseException as error:
        temp.unlink(missing_ok=True)
        if is_disk_full(error) and not isinstance(error, DiskFullError):
            raise DiskFullError(final.parent, len(data), free_space(final.parent), what) from error
        raise
    return target


# Errors of a file system that has no hard links (FAT, some network mounts) or refuses one here.
_NO_HARD_LINKS = frozenset({errno.EPERM, errno.EXDEV, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK})


def place_without_replacing(source: str | os.PathLike, final: str | os.PathLike) -> bool:
    """Give the finished file `source` the name `final` only if no file has that name: True when
    placed (`source` is gone), False when the name is taken (`source` stays). A hard link fails on a
    taken name where a rename would silently replace a file that appeared since the name was
    chosen; on a file system without hard links, an existence check and a rename."""
    try:
        os.link(source, final)
    except FileExistsError:
        return False
    except OSError as error:
        if error.errno not in _NO_HARD_LINKS:
            raise
        if os.path.lexists(final):
            return False
        os.replace(source, final)
        return True
    os.unlink(source)
    return True


def numbered_names(final: str | os.PathLike, limit: int = 10_000) -> Iterable[Path]:
    """`final`, then `<stem>-1<suffix>`, `<stem>-2<suffix>`, ...: the names tried, in order, for a
    new file that must not replace another."""
    final = Path(final)
    yield final
    for number in range(1, limit):
        yield final.with_name(f"{final.stem}-{number}{final.suffix}")


def remove_stale_temp_files(folders: Iterable[tuple[str | os.PathLike, int]]) -> list[Path]:
    """Remove the temp files that earlier (killed) processes left in each `(folder, depth)`:
    `depth` 0 looks in the folder only, 1 also in its subfolders, and so on. Folders that do not
    exist are skipped, symbolic links to folders are not followed. Returns what was removed."""
    removed: list[Path] = []
    swept: dict[str, int] = {}  # folder -> the depth it was swept to
    mine = f".{_PROCESS_TOKEN}{TEMP_MARK}"

    def sweep(folder: str, depth: int) -> None:
        if swept.get(folder, -1) >= depth:
            return
        swept[folder] = depth
        try:
            entries = list(os.scandir(folder))
        except OSError:
            return
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    if depth > 0:
                        sweep(entry.path, depth - 1)
                elif is_temp_name(entry.name) and not entry.name.endswith(mine):
                    os.unlink(entry.path)
                    removed.append(Path(entry.path))
            except OSError as error:
                log.warning("Could not remove the leftover temp file %s: %s", entry.path, error)

    for folder, depth in folders:
        sweep(os.path.abspath(folder), depth)
    if removed:
        log.info("Removed %d unfinished file(s) left by an earlier run (it stopped while writing them): %s",
                 len(removed), ", ".join(str(p) for p in removed[:5]) + (" ..." if len(removed) > 5 else ""))
    return removed
