"""File hashes A1111 users know, and the on-disk cache that keeps them from being computed twice.

Three hashes (A1111.md §1.3):
- `legacy_model_hash`: 8 hex of the sha256 of 64 KiB at offset 1 MiB (the old "Model hash").
- `sha256_of_file`: the whole file; its first 10 hex are the checkpoint "shorthash" in titles.
- `addnet_hash_safetensors`: the bytes after the safetensors header (LoRA hashes).

`HashCache` keeps sha256 hashes and safetensors metadata keyed by file mtime in `<data_dir>/cache.json`,
in the format A1111 used before v1.9, so an A1111 `cache.json` is read as it is and A1111 can read
ours. Unknown subsections (A1111 keeps other data there) are preserved on write.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import re
import threading
import time
from pathlib import Path
from typing import Any, Callable, Mapping

from modules.library.safetensors_io import read_header

logger = logging.getLogger(__name__)

LEGACY_HASH_OFFSET = 0x100000
LEGACY_HASH_LENGTH = 0x10000

# cache.json subsections, named as A1111 names them.
SUBSECTION_HASHES = "hashes"
SUBSECTION_ADDNET_HASHES = "hashes-addnet"
SUBSECTION_SAFETENSORS_METADATA = "safetensors-metadata"

_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")

FileHasher = Callable[[Path], str]
MetadataReader = Callable[[Path], dict[str, Any]]


def sha256_of_file(path: str | os.PathLike, block: int = 1 << 20) -> str:
    """Hex sha256 of the whole file, read in `block`-byte chunks into one reused buffer."""
    digest = hashlib.sha256()
    update_with_file(digest, path, block)
    return digest.hexdigest()


def update_with_file(digest, path: str | os.PathLike, block: int = 1 << 20) -> None:
    """Feed the whole file to `digest` (a `hashlib` object), in `block`-byte reads into one buffer."""
    buffer = bytearray(block)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buffer):
            digest.update(view[:n])


def legacy_model_hash(path: str | os.PathLike) -> str:
    """A1111's old 8-hex model hash: sha256 of the 64 KiB starting at 1 MiB.

    A file shorter than 1 MiB hashes the empty string (`e3b0c442`), as in A1111. A missing file
    raises `FileNotFoundError` (A1111 returns 'NOFILE'); the caller decides what that means.
    """
    with open(path, "rb") as f:
        f.seek(LEGACY_HASH_OFFSET)
        return hashlib.sha256(f.read(LEGACY_HASH_LENGTH)).hexdigest()[:8]


def addnet_hash_safetensors(path: str | os.PathLike, block: int = 1 << 20) -> str:
    """Hex sha256 of a safetensors file's data section (everything after the 8-byte length and header).

    This is the hash kohya's additional-networks extension and A1111 use for LoRA files: it stays the
    same when only the metadata in the header changes.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise ValueError(f"{path}: {len(prefix)} bytes is too short to be a safetensors file")
        f.seek(8 + int.from_bytes(prefix, "little"))
        while chunk := f.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def decode_safetensors_metadata(raw: Mapping[str, str]) -> dict[str, Any]:
    """A1111's view of `__metadata__`: JSON-looking values decoded, the (large) thumbnail dropped."""
    decoded: dict[str, Any] = {}
    for key, value in raw.items():
        if isinstance(value, str) and value.startswith("{"):
            try:
                value = json.loads(value)
            except ValueError:
                pass  # free text that happens to start with "{": keep it as it is, as A1111 does
        decoded[key] = value
    decoded.pop("modelspec.thumbnail", None)
    return decoded


def read_safetensors_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The decoded `__metadata__` of a safetensors file; reads the header only, never tensor data."""
    return decode_safetensors_metadata(read_header(path).metadata)


class HashCache:
    """sha256 hashes and safetensors metadata of files, valid while the file's mtime is unchanged.

    Entries are keyed by a title such as `checkpoint/sub/model.safetensors` (A1111's keys). An entry
    is valid when the file's current mtime equals the cached one: A1111 v1.10 only invalidated on a
    newer mtime, which misses a file replaced by an older copy; its dev branch uses `!=`, as here.

    Changes stay in memory until `flush()`, which writes only when something changed, atomically
    (temp file + `os.replace`), so one scan or one batch of hashes costs one write. Thread-safe:
    hashing can run on a worker thread while the UI lists; one file is never hashed by two threads
    at once (the second waits for the first and takes its result).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        hasher: FileHasher = sha256_of_file,
        addnet_hasher: FileHasher = addnet_hash_safetensors,
        metadata_reader: MetadataReader = read_safetensors_metadata,
    ):
        self.path = Path(path)
        # Injectable so that tests (and benchmarks) can count or fake the expensive reads.
        self._hasher = hasher
        self._addnet_hasher = addnet_hasher
        self._metadata_reader = metadata_reader
        self._lock = threading.Lock()
        self._key_locks: dict[tuple[str, str], threading.Lock] = {}
        self._dirty = False
        self._writable = True
        self._data = self._load()

    @classmethod
    def in_data_dir(cls, data_dir: str | os.PathLike, **kwargs: Any) -> HashCache:
        """The cache at `<data_dir>/cache.json`, where A1111 (before v1.9) keeps it."""
        return cls(Path(data_dir) / "cache.json", **kwargs)

    # ----- loading and saving

    def _load(self) -> dict[str, Any]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        except UnicodeDecodeError as e:
            return self._set_aside(f"not UTF-8 text ({e})")
        except OSError as e:
            # Unreadable (permissions, I/O error): writing over it could destroy a good cache that
            # another user or program owns, so keep working from memory only.
            logger.warning("Cannot read hash cache %s (%s); hashes will not be saved this session", self.path, e)
            self._writable = False
            return {}
        try:
            data = json.loads(text)
        except ValueError as e:
            return self._set_aside(f"not valid JSON ({e})")
        if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
            return self._set_aside("not a JSON object of subsections")
        return data

    def _set_aside(self, reason: str) -> dict[str, Any]:
        """Move a corrupt cache file out of the way (kept for inspection) and start empty."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        counter = 1
        while target.exists():
            target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{counter}")
            counter += 1
        try:
            os.replace(self.path, target)
        except OSError as e:
            logger.warning("Hash cache %s is %s and cannot be moved aside (%s); hashes will not be saved",
                           self.path, reason, e)
            self._writable = False
            return {}
        logger.warning("Hash cache %s is %s; moved it to %s and starting with an empty cache (hashes are "
                       "recomputed when needed)", self.path, reason, target)
        return {}

    @property
    def dirty(self) -> bool:
        """Whether there are changes that `flush()` would write."""
        with self._lock:
            return self._dirty

    def flush(self) -> bool:
        """Write the cache if anything changed since the last write; returns whether it wrote.

        A failed write (read-only or full disk) is logged, not raised: the values stay in memory
        and the next flush tries again. Losing a cache costs time, never correctness.
        """
        with self._lock:
            if not self._dirty or not self._writable:
                return False
            # Same layout as A1111's writer, so diffs between the two stay readable.
            text = json.dumps(self._data, indent=4, ensure_ascii=False)
            try:
                self._write(text)
            except OSError as e:
                logger.warning("Cannot write hash cache %s (%s); hashes will be recomputed next start", self.path, e)
                return False
            self._dirty = False
            return True

    def _write(self, text: str) -> None:
        # Temp file, fsync, rename (modules.common.atomic_files): a kill leaves the previous cache whole, and
        # its temp file is removed at the next start.
        from modules.common.atomic_files import write_bytes

        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes(self.path, text.encode("utf-8"), what=f"the hash cache {self.path.name}")

    # ----- hashes

    def cached_sha256(self, title: str, path: str | os.PathLike, *, mtime: float | None = None) -> str | None:
        """The cached sha256 of `path` if still valid, else None; never reads the file.

        `mtime` saves a stat when the caller has just stat-ed the file.
        """
        return self._cached_hash(SUBSECTION_HASHES, title, _mtime(path) if mtime is None else mtime)

    def sha256(self, title: str, path: str | os.PathLike, *, compute: bool = True) -> str | None:
        """The sha256 of `path`: cached if valid, else computed and stored when `compute` is true."""
        return self._hash(SUBSECTION_HASHES, title, Path(path), self._hasher, compute)

    def store_sha256(self, title: str, path: str | os.PathLike, sha256: str, *, mtime: float | None = None) -> None:
        """Record a hash computed elsewhere (e.g. while writing a merge, or loading), valid for the
        file's current mtime, or for `mtime`, the one it had when the hashed read began."""
        if not _SHA256_RE.match(sha256):
            raise ValueError(f"sha256 for {path} must be 64 lower-case hex digits, got {sha256!r}")
        self._store(SUBSECTION_HASHES, title, {"mtime": _mtime(path) if mtime is None else mtime, "sha256": sha256})

    def cached_addnet_sha256(self, title: str, path: str | os.PathLike, *, mtime: float | None = None) -> str | None:
        return self._cached_hash(SUBSECTION_ADDNET_HASHES, title, _mtime(path) if mtime is None else mtime)

    def addnet_sha256(self, title: str, path: str | os.PathLike, *, compute: bool = True) -> str | None:
        """Like `sha256`, for the data-section hash LoRA files are known by (subsection `hashes-addnet`)."""
        return self._hash(SUBSECTION_ADDNET_HASHES, title, Path(path), self._addnet_hasher, compute)

    def _cached_hash(self, subsection: str, title: str, mtime: float) -> str | None:
        with self._lock:
            entry = self._data.get(subsection, {}).get(title)
        if not isinstance(entry, dict) or entry.get("mtime") != mtime:
            return None
        value = entry.get("sha256")
        return value if isinstance(value, str) and _SHA256_RE.match(value) else None

    def _hash(self, subsection: str, title: str, path: Path, hasher: FileHasher, compute: bool) -> str | None:
        cached = self._cached_hash(subsection, title, _mtime(path))
        if cached is not None or not compute:
            return cached
        with self._key_lock(subsection, title):
            # Taken before reading: if the file changes while it is hashed, the next lookup sees a
            # newer mtime and hashes again instead of trusting a hash of a half-written file.
            mtime = _mtime(path)
            cached = self._cached_hash(subsection, title, mtime)
            if cached is not None:
                return cached  # another thread hashed it while this one waited
            started = time.perf_counter()
            value = hasher(path)
            logger.info("Calculated %s for %s in %.1f s: %s", subsection, path, time.perf_counter() - started, value)
            self._store(subsection, title, {"mtime": mtime, "sha256": value})
            return value

    def _key_lock(self, subsection: str, title: str) -> threading.Lock:
        with self._lock:
            return self._key_locks.setdefault((subsection, title), threading.Lock())

    def _store(self, subsection: str, title: str, entry: dict[str, Any]) -> None:
        with self._lock:
            self._data.setdefault(subsection, {})[title] = entry
            self._dirty = True

    # ----- safetensors metadata

    def safetensors_metadata(self, title: str, path: str | os.PathLike, *, mtime: float | None = None) -> dict[str, Any]:
        """The decoded `__metadata__` of a safetensors file, from the cache when the mtime matches.

        Raises what the reader raises (e.g. `SafetensorsFormatError` for a truncated file); nothing
        is cached then. The result is a copy: callers may change it without changing the cache.
        """
        mtime = _mtime(path) if mtime is None else mtime
        with self._lock:
            entry = self._data.get(SUBSECTION_SAFETENSORS_METADATA, {}).get(title)
            if isinstance(entry, dict) and entry.get("mtime") == mtime and isinstance(entry.get("value"), dict):
                return copy.deepcopy(entry["value"])
        value = self._metadata_reader(Path(path))
        self._store(SUBSECTION_SAFETENSORS_METADATA, title, {"mtime": mtime, "value": value})
        return copy.deepcopy(value)


def _mtime(path: str | os.PathLike) -> float:
    # os.path.getmtime is what A1111 stores; the same float round-trips exactly through JSON.
    return os.path.getmtime(path)
