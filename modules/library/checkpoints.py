"""Checkpoint discovery: which files exist, what they are called, and how a name resolves to one.

No loading happens here. The behaviour users see in A1111 is reproduced (A1111.md §1.1, §1.2, §1.5):
folders walked recursively in natural order, titles `name [sha256[:10]]`, the same aliases and the
same closest-match rules, hashes read from the cache at listing time and computed only on request
(`ensure_hash`). Differences from A1111 are deliberate and named where they happen.

Unlike A1111 the list also remembers which files cannot be loaded and why (`CheckpointProblem`): a
truncated download or a file of another kind stays listed, so the user sees it and can delete it,
but it is marked, and nothing tries to load it again until it changes on disk.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import os
import re
import stat
import threading
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any, Callable, Iterator, Mapping, Sequence

from modules.library.hashes import HashCache, legacy_model_hash
from modules.library.safetensors_io import SafetensorsFormatError

logger = logging.getLogger(__name__)

CHECKPOINT_EXTENSIONS = frozenset({".ckpt", ".safetensors"})
# VAE files that live beside checkpoints; they are listed by the VAE registry instead.
EXCLUDED_SUFFIXES = (".vae.ckpt", ".vae.safetensors")
CACHE_TITLE_PREFIX = "checkpoint/"

_DIGITS_RE = re.compile(r"(\d+)")
# A trailing " [hash]" in a query, stripped for the last closest-match attempt (A1111's rule).
_TRAILING_BRACKETS_RE = re.compile(r"\s*\[[^]]+]\s*$")

SortKey = tuple[Any, ...]
LegacyHasher = Callable[[Path], str]


def natural_sort_key(text: str) -> list[Any]:
    """Sort key that orders `model2` before `model10` and ignores case (A1111's order)."""
    # re.split with a capturing group alternates text and digit runs, always starting with text, so
    # two keys compare str with str and int with int at every position.
    return [int(part) if part.isdigit() else part.lower() for part in _DIGITS_RE.split(text)]


def walk_sorted(root: str | os.PathLike, *, include_hidden: bool = True,
                visited: set[str] | None = None) -> Iterator[tuple[str, list[str]]]:
    """Yield `(folder, file names)` under `root`, recursively, following symlinked folders.

    The order is A1111's: folders sorted by the natural key of their whole path, file names
    naturally sorted within each folder. Unlike A1111 a folder reached twice (a symlink loop, or a
    link to a folder already walked) is walked once: `visited` holds real paths and can be shared
    between roots. Hidden names (a leading dot) are skipped when `include_hidden` is false; only
    names below `root` count, so a root inside a hidden folder still works.
    """
    visited = set() if visited is None else visited
    root = os.path.abspath(root)
    if not os.path.isdir(root):
        logger.debug("Skipping %s: not a folder", root)
        return
    real_root = os.path.realpath(root)
    if real_root in visited:
        return
    visited.add(real_root)

    def on_error(error: OSError) -> None:
        logger.warning("Cannot list %s (%s); its files are not listed", error.filename, error.strerror)

    found: list[tuple[str, list[str]]] = []
    for folder, subfolders, files in os.walk(root, followlinks=True, onerror=on_error):
        kept = []
        # Sorted before pruning so that, of two paths to one folder, the same one is always kept.
        for sub in sorted(subfolders, key=natural_sort_key):
            if not include_hidden and sub.startswith("."):
                continue
            real = os.path.realpath(os.path.join(folder, sub))
            if real in visited:
                logger.debug("Skipping %s: already listed as %s", os.path.join(folder, sub), real)
                continue
            visited.add(real)
            kept.append(sub)
        subfolders[:] = kept
        names = [f for f in files if include_hidden or not f.startswith(".")]
        found.append((folder, sorted(names, key=natural_sort_key)))
    found.sort(key=lambda item: natural_sort_key(item[0]))
    yield from found


def is_checkpoint_filename(filename: str) -> bool:
    """A `.ckpt`/`.safetensors` file (any case) that is not a `.vae.` file."""
    if os.path.splitext(filename)[1].lower() not in CHECKPOINT_EXTENSIONS:
        return False
    # A1111 compares case-sensitively; `X.VAE.safetensors` would then be listed as a checkpoint and
    # fail to load. Case-insensitive here, and the VAE registry accepts the same names.
    return not filename.lower().endswith(EXCLUDED_SUFFIXES)


DEFAULT_PROBLEM_SUMMARY = "cannot be loaded"


@dataclass(frozen=True)
class CheckpointProblem:
    """Why a listed checkpoint cannot be loaded, and the state of the file when that was found.

    `summary` is a few words for lists (a class attribute `short_reason` of the error, when it has
    one); `detail` is the error's own message, which names the file and says what to do. A problem
    lasts until the file or the `.yaml` beside it changes (size or mtime); a refresh then reads the
    file again, as any changed file.
    """

    summary: str
    detail: str
    size_bytes: int
    mtime: float
    config_mtime: float | None = None

    @classmethod
    def from_error(cls, error: BaseException, filename: str | os.PathLike,
                   config_path: Path | None = None) -> CheckpointProblem | None:
        """The problem `error` shows, for the file as it is now; None if the file cannot be stat-ed."""
        try:
            st = os.stat(filename)
        except OSError:
            return None
        return cls(summary=getattr(error, "short_reason", DEFAULT_PROBLEM_SUMMARY), detail=str(error),
                   size_bytes=st.st_size, mtime=st.st_mtime, config_mtime=_mtime_or_none(config_path))

    def still_applies(self, filename: str | os.PathLike, config_path: Path | None) -> bool:
        """Whether the file and its `.yaml` are as they were when the problem was found."""
        try:
            st = os.stat(filename)
        except OSError:
            return False
        return (st.st_size, st.st_mtime, _mtime_or_none(config_path)) == (self.size_bytes, self.mtime,
                                                                          self.config_mtime)


@dataclass(frozen=True)
class CheckpointInfo:
    """One checkpoint file as listed. Immutable: hashing returns a new value (`ensure_hash`)."""

    filename: Path  # absolute, symlinks not resolved (names follow the folder the user sees)
    name: str  # path relative to the checkpoint folder, `/`-separated, e.g. `sub/model.safetensors`
    hash: str  # legacy 8-hex hash (64 KiB read); A1111's `hash` field and infotext "Model hash" of old
    sha256: str | None  # whole-file sha256, only when cached or computed on request
    size_bytes: int
    mtime: float
    config_path: Path | None = None  # `<stem>.yaml` beside the file, which overrides detection
    metadata: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)
    problem: CheckpointProblem | None = field(default=None, compare=False)  # known to fail to load

    @property
    def name_for_extra(self) -> str:
        """File name without folder and extension, as extra-network cards call it."""
        return os.path.splitext(self.filename.name)[0]

    @property
    def model_name(self) -> str:
        """`name` with separators as `_` and no extension (infotext "Model")."""
        return os.path.splitext(self.name.replace("/", "_").replace("\\", "_"))[0]

    @property
    def is_safetensors(self) -> bool:
        return self.filename.suffix.lower() == ".safetensors"

    @property
    def shorthash(self) -> str | None:
        return self.sha256[:10] if self.sha256 else None

    @property
    def title(self) -> str:
        return f"{self.name} [{self.shorthash}]" if self.shorthash else self.name

    @property
    def short_title(self) -> str:
        return f"{self.name_for_extra} [{self.shorthash}]" if self.shorthash else self.name_for_extra

    @property
    def label(self) -> str:
        """The title as lists show it: a file known not to load says so (the value stays `title`)."""
        return f"{self.title} \u26a0 {self.problem.summary}" if self.problem else self.title

    @property
    def cache_title(self) -> str:
        """Key of this file's entries in the hash cache (A1111's)."""
        return CACHE_TITLE_PREFIX + self.name

    @property
    def aliases(self) -> tuple[str, ...]:
        """Every string that names this checkpoint exactly, in A1111's order."""
        ids = [self.hash, self.model_name, self.title, self.name, self.name_for_extra, f"{self.name} [{self.hash}]"]
        if self.sha256:
            ids += [self.shorthash, self.sha256, f"{self.name} [{self.shorthash}]",
                    f"{self.name_for_extra} [{self.shorthash}]"]
        return tuple(dict.fromkeys(ids))


class CheckpointNotFoundError(KeyError):
    """No checkpoint matches a name. Says what was asked, what is close, and what exists."""

    def __init__(self, query: str, closest: Sequence[str] = (), available: Sequence[str] = (),
                 folders: Sequence[str] = ()):
        self.query = query
        self.closest = list(closest)
        self.available = list(available)
        self.folders = list(folders)
        if not available:
            # An empty query: nothing was named, a default was wanted (a request naming no checkpoint).
            start = f"Checkpoint {query!r} not found: no" if query else "No"
            message = (f"{start} checkpoints are listed. Put .safetensors or .ckpt "
                       f"files in {' or '.join(folders) or 'the checkpoint folder'} and refresh the list.")
        else:
            shown = ", ".join(repr(t) for t in available[:5])
            more = f" and {len(available) - 5} more" if len(available) > 5 else ""
            hint = f" Did you mean {' or '.join(repr(c) for c in closest)}?" if closest else ""
            message = (f"Checkpoint {query!r} not found.{hint} Available: {shown}{more}. Use a title, file name "
                       "or hash from the list, or refresh it if the file was just added.")
        self.message = message
        super().__init__(message)

    def __str__(self) -> str:
        # KeyError's own str() shows the repr of its argument, quotes and escapes included.
        return self.message

    def __reduce__(self):
        # Rebuilt from its fields, not from the message, when it crosses a process boundary.
        return type(self), (self.query, self.closest, self.available, self.folders)


class BrokenCheckpointError(ValueError):
    """A checkpoint already found not to load, asked for again before its file changed."""

    def __init__(self, info: CheckpointInfo, others: Sequence[str] = ()):
        assert info.problem is not None
        self.info = info
        self.others = list(others)
        shown = ", ".join(repr(t) for t in others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
        pick = f" or pick another checkpoint: {shown}" if others else " or add a checkpoint that loads"
        super().__init__(f"Checkpoint {info.title!r} cannot be loaded: {info.problem.detail.rstrip('.')}. Replace or delete "
                         f"the file (it is tried again once it changes on disk){pick}.")


class NoLoadableCheckpointError(ValueError):
    """Every listed checkpoint was tried (no choice directed the load) and none loads."""

    def __init__(self, failures: Sequence[tuple[str, str]], folders: Sequence[str] = ()):
        self.failures = list(failures)  # (title, reason)
        self.folders = list(folders)
        listed = "; ".join(f"{title} ({reason})" for title, reason in failures)
        super().__init__(f"none of the {len(failures)} checkpoints can be loaded: {listed}. Replace or delete "
                         f"them, or put a checkpoint that loads in {' or '.join(folders) or 'the checkpoint folder'} "
                         "and refresh the list")

    def __reduce__(self):  # pickled whole: a Ray worker's error reaches the server as it was raised
        return type(self), (self.failures, self.folders)


@dataclass(frozen=True)
class _Entry:
    sort_key: SortKey  # position in discovery order; lets add_file insert where a rescan would
    info: CheckpointInfo


class CheckpointRegistry:
    """The list of checkpoints in the checkpoint folders, with A1111's titles and aliases.

    `dirs`: `--ckpt-dir` first, then `<models>/Stable-diffusion`; a folder given twice is walked
    once. `explicit_file` (`--ckpt`) is listed first when it exists. Nothing is scanned until
    `refresh()`. Listing reads 64 KiB of each new or changed file (legacy hash) and the header of
    safetensors files (metadata, cached); whole-file hashes come only from the cache, or from
    `ensure_hash`. Thread-safe; the lists returned are snapshots.

    A1111 quirk not reproduced: when `<ckpt-dir>/experiments/pretrained_models` exists A1111 lists
    only that folder; here the ckpt folder is always walked as a whole.
    """

    def __init__(
        self,
        dirs: Sequence[str | os.PathLike],
        hash_cache: HashCache,
        hashing_enabled: bool = True,
        *,
        explicit_file: str | os.PathLike | None = None,
        include_hidden: bool = True,
        legacy_hasher: LegacyHasher = legacy_model_hash,
    ):
        self._dirs = list(dict.fromkeys(os.path.abspath(d) for d in dirs))
        self._cache = hash_cache
        self._hashing_enabled = hashing_enabled
        self._explicit_file = os.path.abspath(explicit_file) if explicit_file is not None else None
        self._include_hidden = include_hidden  # A1111's `list_hidden_files`, default on
        self._legacy_hasher = legacy_hasher
        self._lock = threading.RLock()
        self._entries: dict[Path, _Entry] = {}  # by filename, in discovery order
        self._aliases: dict[str, CheckpointInfo] = {}

    @property
    def dirs(self) -> list[str]:
        return list(self._dirs)

    @property
    def hashing_enabled(self) -> bool:
        return self._hashing_enabled

    # ----- scanning

    def refresh(self) -> None:
        """Rescan the folders. Unchanged files are not read again; hashes come from the cache."""
        with self._lock:
            previous = {filename: entry.info for filename, entry in self._entries.items()}
        entries: list[_Entry] = []
        if self._explicit_file is not None:
            if os.path.isfile(self._explicit_file):
                folder = os.path.dirname(self._explicit_file)
                info = self._describe(self._explicit_file, _list_folder(folder), previous)
                if info is not None:
                    entries.append(_Entry(self._sort_key_for(self._explicit_file), info))
            else:
                logger.warning("Checkpoint %s given with --ckpt does not exist; check the path", self._explicit_file)
        visited: set[str] = set()
        for index, root in enumerate(self._dirs):
            for folder, filenames in walk_sorted(root, include_hidden=self._include_hidden, visited=visited):
                names = set(filenames)
                for filename in filenames:
                    if not is_checkpoint_filename(filename):
                        continue
                    info = self._describe(os.path.join(folder, filename), names, previous)
                    if info is not None:
                        entries.append(_Entry((index, natural_sort_key(folder), natural_sort_key(filename)), info))
        self._install(entries)
        self._cache.flush()
        logger.info("Found %d checkpoints in %s", len(self._entries), ", ".join(self._dirs))

    def add_file(self, path: str | os.PathLike, sha256: str | None = None) -> CheckpointInfo:
        """Register one new or rewritten checkpoint (e.g. a merge result) without rescanning.

        `sha256`, when the writer computed it, is stored in the cache so the file is never re-read to
        hash it. The file takes the position a rescan would give it.
        """
        filename = os.path.abspath(path)
        if not is_checkpoint_filename(os.path.basename(filename)):
            raise ValueError(f"{filename} is not a checkpoint file: expected a .safetensors or .ckpt file "
                             "(and not a .vae. file)")
        if not os.path.isfile(filename):
            raise FileNotFoundError(f"Cannot add checkpoint {filename}: no such file")
        name = self._name_for(filename)
        if sha256 is not None:
            self._cache.store_sha256(CACHE_TITLE_PREFIX + name, filename, sha256)
        info = self._describe(filename, _list_folder(os.path.dirname(filename)), {})
        if info is None:
            raise FileNotFoundError(f"Cannot add checkpoint {filename}: it disappeared while being read")
        with self._lock:
            entries = [entry for entry in self._entries.values() if entry.info.filename != info.filename]
            entries.append(_Entry(self._sort_key_for(filename), info))
            self._install(entries)
        self._cache.flush()
        return info

    def _describe(self, filename: str, folder_names: set[str], previous: Mapping[Path, CheckpointInfo]) -> CheckpointInfo | None:
        """Build the listing entry of one file, reusing what is known when size and mtime are unchanged."""
        try:
            st = os.stat(filename)
        except FileNotFoundError:
            if os.path.islink(filename):
                logger.warning("Skipping broken symlink %s (its target %s does not exist)",
                               filename, os.readlink(filename))
            else:
                logger.warning("Skipping %s: it disappeared while the folder was listed", filename)
            return None
        except OSError as e:
            logger.warning("Skipping %s: cannot read it (%s)", filename, e.strerror)
            return None
        if not stat.S_ISREG(st.st_mode):
            logger.warning("Skipping %s: not a regular file", filename)
            return None
        path = Path(filename)
        name = self._name_for(filename)
        cache_title = CACHE_TITLE_PREFIX + name
        config_name = os.path.splitext(path.name)[0] + ".yaml"
        config_path = path.with_name(config_name) if config_name in folder_names else None
        sha256 = self._cache.cached_sha256(cache_title, filename, mtime=st.st_mtime)

        old = previous.get(path)
        if old is not None and old.size_bytes == st.st_size and old.mtime == st.st_mtime and old.name == name:
            problem = old.problem
            if problem is not None and not problem.still_applies(filename, config_path):
                problem = None  # its .yaml changed since: worth another try
            return dataclasses.replace(old, sha256=sha256, config_path=config_path, problem=problem)

        try:
            legacy = self._legacy_hasher(path)
        except OSError as e:
            logger.warning("Skipping %s: cannot read it (%s)", filename, e)
            return None
        metadata: dict[str, Any] = {}
        problem = None
        if path.suffix.lower() == ".safetensors":
            try:
                metadata = self._cache.safetensors_metadata(cache_title, filename, mtime=st.st_mtime)
            except SafetensorsFormatError as e:
                # Still listed (the user must see it to delete it), marked: a truncated download or
                # a file of another kind never loads, and start-up skips it.
                problem = CheckpointProblem.from_error(e, filename, config_path)
                logger.warning("Checkpoint %s cannot be loaded: %s", filename, e)
            except OSError as e:
                # Still listed, as in A1111: loading it will give the precise error.
                logger.warning("Cannot read the metadata of %s: %s", filename, e)
        return CheckpointInfo(filename=path, name=name, hash=legacy, sha256=sha256, size_bytes=st.st_size,
                              mtime=st.st_mtime, config_path=config_path, metadata=metadata, problem=problem)

    def _root_of(self, filename: str) -> tuple[int, str] | None:
        pure = PurePath(filename)
        for index, root in enumerate(self._dirs):
            if pure.is_relative_to(root):
                return index, root
        return None

    def _name_for(self, filename: str) -> str:
        # A1111 tests `abspath.startswith(dir)` on strings, so `/models/sd` also claims
        # `/models/sd2/x.ckpt` (named `2/x.ckpt`); a real path containment test here.
        found = self._root_of(filename)
        if found is None:
            return os.path.basename(filename)
        return PurePath(filename).relative_to(found[1]).as_posix()

    def _sort_key_for(self, filename: str) -> SortKey:
        if filename == self._explicit_file:
            return (-1,)
        found = self._root_of(filename)
        index = found[0] if found is not None else len(self._dirs)
        folder, basename = os.path.split(filename)
        return (index, natural_sort_key(folder), natural_sort_key(basename))

    def _install(self, entries: list[_Entry]) -> None:
        """Replace the list with `entries` (sorted, one per file and per name) and rebuild aliases."""
        entries = sorted(entries, key=lambda entry: entry.sort_key)
        by_filename: dict[Path, _Entry] = {}
        by_name: dict[str, CheckpointInfo] = {}
        for entry in entries:
            info = entry.info
            if info.filename in by_filename:
                continue  # the --ckpt file, found again in a folder
            if info.name in by_name:
                # Same relative name in --ckpt-dir and models/Stable-diffusion. A1111 keys its list by
                # title, so the later file silently replaces the earlier one; here the first folder
                # given wins, and the user is told which file is hidden.
                logger.warning("Checkpoint %s is hidden by %s, which has the same name %r; rename one of them",
                               info.filename, by_name[info.name].filename, info.name)
                continue
            by_filename[info.filename] = entry
            by_name[info.name] = info
        with self._lock:
            self._entries = by_filename
            self._rebuild_aliases()

    def _rebuild_aliases(self) -> None:
        aliases: dict[str, CheckpointInfo] = {}
        infos = [entry.info for entry in self._entries.values()]
        for info in infos:
            for alias in info.aliases:
                aliases[alias] = info  # later files win a shared alias, as in A1111
        # ...except that a title or name always means its own file, whatever another file's
        # short aliases are (A1111 lets a later file's alias shadow an earlier title).
        for info in infos:
            aliases[info.name] = info
            aliases[info.title] = info
        self._aliases = aliases

    # ----- listing and lookup

    def list(self) -> list[CheckpointInfo]:
        """All checkpoints in discovery order (the `--ckpt` file first)."""
        with self._lock:
            return [entry.info for entry in self._entries.values()]

    def titles(self) -> list[str]:
        return [info.title for info in self.list()]

    def choices(self) -> list[tuple[str, str]]:
        """`(label, title)` per checkpoint for lists: a file known not to load is marked in its label,
        while the value stays the title A1111 clients send."""
        return [(info.label, info.title) for info in self.list()]

    def loadable_titles(self, *, excluding: CheckpointInfo | None = None) -> list[str]:
        """Titles of the checkpoints not known to be broken, in list order (to offer instead)."""
        return [info.title for info in self.list()
                if info.problem is None and (excluding is None or info.filename != excluding.filename)]

    def alias_map(self) -> dict[str, CheckpointInfo]:
        """Every alias → its checkpoint (A1111's `checkpoint_aliases`), a snapshot."""
        with self._lock:
            return dict(self._aliases)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def __contains__(self, alias: object) -> bool:
        with self._lock:
            return alias in self._aliases

    def get(self, alias: str) -> CheckpointInfo:
        """The checkpoint an exact alias names (title, name, hash, ...); raises `CheckpointNotFoundError`."""
        with self._lock:
            info = self._aliases.get(alias)
        if info is None:
            raise self._not_found(alias)
        return info

    def find(self, query: str) -> CheckpointInfo:
        """Resolve a user-typed name as A1111 does; raises `CheckpointNotFoundError` with suggestions.

        Order: exact alias; else titles containing `query`, shortest first; else the same after
        removing a trailing ` [hash]` from `query` (an infotext title whose hash changed).
        """
        info = self._closest_match(query)
        if info is None:
            raise self._not_found(query)
        return info

    def _closest_match(self, query: str) -> CheckpointInfo | None:
        with self._lock:
            info = self._aliases.get(query)
            infos = [entry.info for entry in self._entries.values()]
        if info is not None:
            return info
        for needle in dict.fromkeys([query, _TRAILING_BRACKETS_RE.sub("", query)]):
            # An empty needle is in every title: A1111 then returns the shortest title for "" or
            # "[abc]"; here such a query matches nothing.
            if not needle.strip():
                continue
            found = sorted((i for i in infos if needle in i.title), key=lambda i: len(i.title))
            if found:
                return found[0]
        return None

    def _not_found(self, query: str) -> CheckpointNotFoundError:
        infos = self.list()
        # Close spellings of the title or of the bare file name, mapped back to titles.
        names: dict[str, str] = {}
        for info in infos:
            for candidate in (info.title, info.name, info.name_for_extra):
                names.setdefault(candidate, info.title)
        close = difflib.get_close_matches(query, list(names), n=3, cutoff=0.5)
        closest = list(dict.fromkeys(names[c] for c in close))
        return CheckpointNotFoundError(query, closest=closest, available=[i.title for i in infos], folders=self._dirs)

    # ----- hashing on request

    def ensure_hash(self, info: CheckpointInfo, *, compute: bool = True) -> CheckpointInfo:
        """`info` with its sha256: from the cache, else computed when hashing is enabled and `compute`.

        The registry's entry is updated in place (same position; its title gains `[shorthash]`).
        With `--no-hashing` a cached hash is still used, as in A1111; nothing is computed.
        """
        sha256 = info.sha256
        if sha256 is None:
            sha256 = self._cache.sha256(info.cache_title, info.filename, compute=self._hashing_enabled and compute)
            if sha256 is None:
                return info
            self._cache.flush()
        return self._set_hash(info, sha256)

    def record_hash(self, info: CheckpointInfo, sha256: str, mtime: float) -> CheckpointInfo:
        """Keep a sha256 computed while reading `info`'s file (a load hashes in the same pass), as
        `ensure_hash` would have: in the cache, and in the entry, whose title gains `[shorthash]`.
        `mtime` is the file's before the read: if the file changed meanwhile, nothing is kept."""
        try:
            unchanged = os.stat(info.filename).st_mtime == mtime
        except OSError:
            unchanged = False
        if not unchanged:
            logger.warning("%s changed while it was read; its sha256 is not kept", info.filename)
            return info
        self._cache.store_sha256(info.cache_title, info.filename, sha256, mtime=mtime)
        self._cache.flush()
        return self._set_hash(info, sha256)

    def _set_hash(self, info: CheckpointInfo, sha256: str) -> CheckpointInfo:
        with self._lock:
            current = self._entries.get(info.filename)
            if current is None:
                return dataclasses.replace(info, sha256=sha256)  # not listed (any more): nothing to update
            if current.info.sha256 != sha256:
                updated = dataclasses.replace(current.info, sha256=sha256)
                self._entries[info.filename] = _Entry(current.sort_key, updated)  # existing key: position kept
                self._rebuild_aliases()
            return self._entries[info.filename].info


    # ----- files that do not load

    def mark_broken(self, info: CheckpointInfo, error: BaseException) -> CheckpointInfo:
        """Remember that `info`'s file failed to load with `error` (a problem with the file's content);
        it stays listed, marked, and is refused (`check_loadable`) until it changes on disk."""
        problem = CheckpointProblem.from_error(error, info.filename, info.config_path)
        if problem is None:
            return info  # the file is gone; the next refresh drops it
        return self._set_problem(info, problem)

    def check_loadable(self, info: CheckpointInfo) -> CheckpointInfo:
        """`info` as listed now; raises `BrokenCheckpointError` (a ValueError: bad input) if its file is
        known not to load and has not changed since. A changed file loses its mark and is returned."""
        with self._lock:
            entry = self._entries.get(info.filename)
        current = entry.info if entry is not None else info
        problem = current.problem
        if problem is None:
            return current
        if problem.still_applies(current.filename, current.config_path):
            raise BrokenCheckpointError(current, self.loadable_titles(excluding=current))
        logger.info("Checkpoint %s changed since it failed to load; trying it again", current.filename)
        return self._set_problem(current, None)

    def _set_problem(self, info: CheckpointInfo, problem: CheckpointProblem | None) -> CheckpointInfo:
        with self._lock:
            current = self._entries.get(info.filename)
            if current is None:
                return dataclasses.replace(info, problem=problem)  # not listed (any more): nothing to update
            updated = dataclasses.replace(current.info, problem=problem)
            self._entries[info.filename] = _Entry(current.sort_key, updated)  # existing key: position kept
            self._rebuild_aliases()
            return updated


def _mtime_or_none(path: str | os.PathLike | None) -> float | None:
    if path is None:
        return None
    try:
        return os.stat(path).st_mtime
    except OSError:
        return None


def _list_folder(folder: str) -> set[str]:
    try:
        return set(os.listdir(folder))
    except OSError:
        return set()
