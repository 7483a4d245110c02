"""Hypernetwork files: listing a folder, names, lookup, and a small cache of loaded ones.

The listing is plain file work and imports no torch: the server lists hypernetworks while it starts,
before torch is imported (tests/test_startup_imports.py). Reading a file and applying it is
`modules.networks.hypernetworks`, imported by `HypernetworkRegistry.load`.
"""

from __future__ import annotations

import collections
import difflib
import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modules.library.checkpoints import walk_sorted

if TYPE_CHECKING:
    import torch

    from modules.networks.hypernetworks import Hypernetwork

logger = logging.getLogger(__name__)

HYPERNETWORK_EXTENSION = ".pt"
# A file called `None.pt` would be indistinguishable from the "no hypernetwork" choice (A1111).
RESERVED_NAME = "None"
DEFAULT_CACHE_SIZE = 4


class HypernetworkNotFoundError(KeyError):
    """No listed hypernetwork has this name. Says what was asked, what is close, and what exists."""

    def __init__(self, query: str, closest: Sequence[str] = (), available: Sequence[str] = (),
                 directory: str = "") -> None:
        self.query = query
        self.closest = list(closest)
        self.available = list(available)
        self.directory = directory
        where = directory or "the hypernetwork folder"
        if not available:
            message = (f"Hypernetwork {query!r} not found: no hypernetworks are listed. Put .pt files "
                       f"in {where} and refresh the list.")
        else:
            hint = f" Did you mean {' or '.join(repr(c) for c in closest)}?" if closest else ""
            shown = ", ".join(repr(a) for a in available[:5])
            more = f" and {len(available) - 5} more" if len(available) > 5 else ""
            message = (f"Hypernetwork {query!r} not found.{hint} Available: {shown}{more}. Names are file "
                       f"names without '.pt' in {where}; refresh the list if the file was just added.")
        self.message = message
        super().__init__(message)

    def __str__(self) -> str:
        # KeyError's own str() is the repr of its argument, quotes and escapes included.
        return self.message

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.query, self.closest, self.available, self.directory)


@dataclass(frozen=True)
class _CacheKey:
    path: Path
    mtime_ns: int
    size: int
    device: torch.device
    dtype: torch.dtype


class HypernetworkRegistry:
    """The hypernetworks in one folder (`--hypernetwork-dir`), by name, with a small load cache.

    `refresh()` lists `**/*.pt` recursively: name = file name without extension, `None` excluded,
    the last file with a name wins, sorted by lower-cased path (A1111). Nothing is scanned until
    `refresh()`. `load()` caches the most recent `cache_size` loads, keyed by file, its mtime and
    size, device and dtype, so an edited file is read again. Thread-safe.
    """

    def __init__(self, directory: str | os.PathLike[str], *, cache_size: int = DEFAULT_CACHE_SIZE,
                 allow_unsafe_pickle: bool = False) -> None:
        if cache_size < 0:
            raise ValueError(f"cache_size {cache_size} must be 0 (no cache) or more")
        self._directory = Path(directory)
        self._cache_size = cache_size
        self._allow_unsafe_pickle = allow_unsafe_pickle
        self._lock = threading.Lock()
        self._files: dict[str, Path] = {}
        self._cache: collections.OrderedDict[_CacheKey, Hypernetwork] = collections.OrderedDict()

    @property
    def directory(self) -> Path:
        return self._directory

    def refresh(self) -> None:
        """List the folder again; cached loads of files no longer listed are dropped."""
        found: list[Path] = []
        # Hidden names are skipped because A1111's glob skips them.
        for folder, names in walk_sorted(self._directory, include_hidden=False):
            found.extend(Path(folder, n) for n in names if n.lower().endswith(HYPERNETWORK_EXTENSION))
        found.sort(key=lambda p: str(p).lower())
        files: dict[str, Path] = {}
        for path in found:
            name = path.name[:-len(HYPERNETWORK_EXTENSION)]
            if name == RESERVED_NAME:
                logger.warning("Ignoring %s: the name %r means 'no hypernetwork'; rename the file", path, name)
                continue
            if name in files:
                logger.info("Hypernetwork %r: %s replaces %s (same name)", name, path, files[name])
            files[name] = path
        with self._lock:
            self._files = files
            live = set(files.values())
            for key in [k for k in self._cache if k.path not in live]:
                del self._cache[key]
        logger.debug("Listed %d hypernetworks in %s", len(files), self._directory)

    def names(self) -> list[str]:
        with self._lock:
            return list(self._files)

    def __len__(self) -> int:
        with self._lock:
            return len(self._files)

    def __contains__(self, name: object) -> bool:
        with self._lock:
            return name in self._files

    def path(self, name: str) -> Path:
        """The file listed under `name`; raises `HypernetworkNotFoundError`."""
        with self._lock:
            path = self._files.get(name)
        if path is None:
            raise self._not_found(name)
        return path

    def find_closest(self, query: str) -> str:
        """A1111's loose match (infotext paste): exact name, else the shortest name containing
        `query` case-insensitively. Raises `HypernetworkNotFoundError` when nothing matches."""
        names = self.names()
        if query in names:
            return query
        needle = query.lower()
        if needle:
            found = sorted((n for n in names if needle in n.lower()), key=len)
            if found:
                return found[0]
        raise self._not_found(query)

    def load(self, name: str, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> Hypernetwork:
        """The hypernetwork listed as `name`, on `device` in `dtype` (default float32), from the cache
        when unchanged."""
        import torch

        from modules.networks.hypernetworks import Hypernetwork

        dtype = torch.float32 if dtype is None else dtype
        path = self.path(name)
        stat = path.stat()
        key = _CacheKey(path, stat.st_mtime_ns, stat.st_size, _normalize_device(device), dtype)
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                return cached
        # Loaded outside the lock: two threads may load the same file once each, which is harmless.
        hypernetwork = Hypernetwork.from_file(path, device=key.device, dtype=dtype,
                                              allow_unsafe_pickle=self._allow_unsafe_pickle)
        logger.info("Loaded hypernetwork %s (%s, widths %s)", name, path, list(hypernetwork.dims))
        if self._cache_size:
            with self._lock:
                # An older version of the same file on the same device is dead weight.
                for stale in [k for k in self._cache if k.path == path and k.device == key.device
                              and k.dtype == dtype]:
                    del self._cache[stale]
                self._cache[key] = hypernetwork
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        return hypernetwork

    def clear_cache(self) -> None:
        with self._lock:
            self._cache.clear()

    def _not_found(self, query: str) -> HypernetworkNotFoundError:
        names = self.names()
        close = difflib.get_close_matches(query, names, n=3, cutoff=0.5)
        needle = query.lower()
        containing = sorted((n for n in names if needle and needle in n.lower()), key=len)[:3]
        closest = list(dict.fromkeys([*close, *containing]))
        return HypernetworkNotFoundError(query, closest=closest, available=names, directory=str(self._directory))


def _normalize_device(device: str | torch.device) -> torch.device:
    import torch

    device = torch.device(device)
    # "cuda" and "cuda:0" are the same memory; one cache entry, not two.
    if device.type == "cuda" and device.index is None and torch.cuda.is_available():
        device = torch.device("cuda", torch.cuda.current_device())
    return device
