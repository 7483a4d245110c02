"""Safe loading of pickled PyTorch files (`.ckpt`, `.pt`, `.bin`, `.pth`).

A pickle is a program: unpickling an untrusted file with the stock `pickle` module can run any
code (`os.system`, `builtins.exec`, ...). Every pickled checkpoint, VAE, embedding and
hypernetwork goes through `load_pickled_checkpoint`, which by default only runs a restricted
unpickler. `.safetensors` files never pickle and do not come here.

Design choice: torch's own weights-only unpickler, not a `pickle.Unpickler` subclass
------------------------------------------------------------------------------------
A1111 subclasses `pickle.Unpickler` and filters `find_class`. That only restricts *which globals*
can be named; the C unpickler still lets an allowed global be called with any arguments and lets
BUILD set state on any object. `torch.load(weights_only=True)` uses torch's pure-Python
unpickler (`torch._weights_only_unpickler`), which is stricter on every risky opcode:

* GLOBAL resolves only names in an allow-list (never imports anything), and modules `os`, `sys`,
  `posix`, `nt` are refused even if someone allow-lists a name in them;
* REDUCE calls only allow-listed callables, NEWOBJ creates only allow-listed classes, BUILD sets
  state only on tensors, Parameters, OrderedDicts and allow-listed classes, APPEND(S) only on
  lists, SETITEM(S) only on dicts, persistent ids only for storages;
* it comes with torch's zip reader (zero-copy `mmap`, torch>=2.x members such as
  `.data/serialization_id`, `.format_version`, `.storage_alignment`, big-endian files), which a
  hand-written unpickler would have to re-implement.

Its default allow-list is a superset of A1111's for everything torch-related (all `*Storage`
types, all dtypes, all `torch._utils._rebuild_*` functions, `collections.OrderedDict`,
`builtins.set` - `__builtin__.set` is mapped to it - and `_codecs.encode`). What A1111 allows and
torch does not is added for the duration of each load through
`torch.serialization.safe_globals` (see `restricted_allowlist`): numpy scalars and arrays
(under both the numpy 1 `numpy.core` and numpy 2 `numpy._core` paths, plus numpy's dtype classes,
which torch's BUILD check needs), `torch.nn.ParameterDict` (textual-inversion files), and
`pytorch_lightning...ModelCheckpoint`, mapped to the inert `ModelCheckpointPlaceholder` so that
SD1 `.ckpt` files load without lightning installed.

`nn.ParameterDict` loads from zip files only: the legacy format stores `nn.Module`s as a
"module" persistent id with their source code, which torch (like A1111) refuses.

The price: torch's unpickler reads pickle protocol 2 (what `torch.save` writes unless told
otherwise); a file saved with `pickle_protocol=4/5` is refused (nothing runs) with a message
saying so. A1111's unpickler reads any protocol.

torch's allow-list of user globals is process-wide, so each load adds ours under a lock and
restores the list exactly as it was afterwards (torch's own context manager would also remove
entries that someone had registered before us).

When torch refuses a file, its message names only the first global it met, strips the
`builtins.` prefix, and names none for protocol>=4 pickles. To name every forbidden global
precisely, the pickle is then disassembled with `pickletools.genops`, which parses opcodes
without importing or calling anything.

`allow_unsafe=True` (`--disable-safe-unpickle`) uses plain `torch.load(weights_only=False)`, which
runs whatever the file contains; it logs a warning naming the file.

Failures never return None (A1111's `torch.load` replacement does): a refused file raises
`UnsafeCheckpointError`, a truncated or corrupt one `CorruptCheckpointError`; both are
`PickledCheckpointError`, a `ValueError`, and name the file.
"""

from __future__ import annotations

import contextlib
import errno
import io
import logging
import os
import pickle
import pickletools
import re
import threading
import types
import zipfile
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

# torch is imported by the functions that use it: importers of this module (embeddings, LoRA) list
# files while the server starts, before torch is imported (tests/test_startup_imports.py).

logger = logging.getLogger(__name__)

DISABLE_SAFE_UNPICKLE_FLAG = "--disable-safe-unpickle"

# Where real SD1 `.ckpt` files name the lightning callback (`callbacks` holds the class as a key).
LIGHTNING_MODEL_CHECKPOINT = "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint"
# A1111 also allows the module itself as a global; kept for parity.
LIGHTNING_MODEL_CHECKPOINT_MODULE = "pytorch_lightning.callbacks.model_checkpoint"

_ZIP_LOCAL_HEADER = b"PK\x03\x04"
# torch.load's legacy format is 5 pickles (magic number, protocol, sys info, object, storage keys)
# followed by raw storage bytes; A1111's check unpickles the same 5.
_LEGACY_PICKLE_COUNT = 5
# Disassembling for an error message must not read a multi-GB file of garbage into memory:
# real pickles (tensor data lives outside them) are a few MB.
_MAX_SCAN_BYTES = 64 * 1024 * 1024

# torch's process-wide allow-list is shared state; serialise our add/restore of it so that one
# load's cleanup never pulls entries out from under a concurrent load (UI threads, extensions).
# A lock, not data: it holds no state between calls.
_ALLOWLIST_LOCK = threading.RLock()


class PickledCheckpointError(ValueError):
    """A pickled checkpoint could not be loaded. `path` is the file."""

    short_reason = "damaged or unreadable .ckpt"  # how checkpoint lists mark the file

    def __init__(self, message: str, path: str | os.PathLike[str] | None = None) -> None:
        super().__init__(message)
        self.path = None if path is None else os.fspath(path)


class UnsafeCheckpointError(PickledCheckpointError):
    """The restricted unpickler refused the file; nothing in it was executed.

    `forbidden` lists the globals (``module.name``) it references that are not allowed, in the
    order they appear; it is empty when the refusal is for another reason (see the message).
    """

    short_reason = "refused: loading it could run code it contains"

    def __init__(
        self,
        message: str,
        path: str | os.PathLike[str] | None = None,
        forbidden: Sequence[str] = (),
    ) -> None:
        super().__init__(message, path)
        self.forbidden = tuple(forbidden)


class CorruptCheckpointError(PickledCheckpointError):
    """The file is empty, truncated, or not a PyTorch pickle at all."""


class ModelCheckpointPlaceholder:
    """Inert stand-in for `pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint`.

    SD1 training checkpoints pickle the lightning callback (usually the class itself, as the key
    of the `callbacks` dict, sometimes an instance with its settings). Inference never uses it,
    so the name resolves to this class instead of importing lightning. It has no behaviour: it
    accepts any constructor arguments and keeps pickled state as plain attributes.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Deliberately ignores its arguments; defining __init__ also lets object.__new__ accept
        # the arguments a pickle passes to NEWOBJ.
        pass

    def __repr__(self) -> str:
        return f"<{type(self).__name__} for {LIGHTNING_MODEL_CHECKPOINT} {vars(self)!r}>"


class LightningModulePlaceholder:
    """Inert stand-in for the `pytorch_lightning.callbacks.model_checkpoint` module object."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass


def _lightning_placeholders() -> dict[str, type]:
    return {
        LIGHTNING_MODEL_CHECKPOINT: ModelCheckpointPlaceholder,
        LIGHTNING_MODEL_CHECKPOINT_MODULE: LightningModulePlaceholder,
    }


def _numpy_allowlist() -> list[tuple[Any, str]]:
    """numpy globals that embedding/hypernetwork files carry (e.g. `step` as a numpy integer)."""
    try:
        import numpy as np
    except ImportError:  # numpy-free install: such files cannot be built without numpy either
        return []
    try:
        from numpy._core import multiarray  # numpy >= 2
    except ImportError:
        from numpy.core import multiarray  # type: ignore[no-redef]  # numpy 1.x

    entries: list[tuple[Any, str]] = []
    # Files written under numpy 1 name `numpy.core...`; numpy 2 writes `numpy._core...`.
    for prefix in ("numpy.core.multiarray", "numpy._core.multiarray"):
        entries.append((multiarray.scalar, f"{prefix}.scalar"))
        entries.append((multiarray._reconstruct, f"{prefix}._reconstruct"))
    entries.append((np.dtype, "numpy.dtype"))
    entries.append((np.ndarray, "numpy.ndarray"))
    # Since numpy 1.25 `numpy.dtype("i8")` is an instance of `numpy.dtypes.Int64DType`; torch's
    # BUILD only sets state on instances of allowed classes, so the dtype classes must be listed.
    dtypes_module = getattr(np, "dtypes", None)
    if dtypes_module is not None:
        for name in sorted(dir(dtypes_module)):
            cls = getattr(dtypes_module, name)
            if isinstance(cls, type) and issubclass(cls, np.dtype) and cls is not np.dtype:
                entries.append((cls, f"numpy.dtypes.{name}"))
    return entries


def restricted_allowlist(extra_globals: Sequence[Any] = ()) -> list[Any]:
    """Globals added to torch's default weights-only allow-list for one load.

    Entries are objects (named by ``__module__.__qualname__``) or ``(obj, "module.Name")`` tuples
    for objects pickled under another path; `extra_globals` (for extensions) uses the same form.
    """
    import torch

    entries: list[Any] = [
        # torch's default list already has OrderedDict; listing it again costs nothing and keeps
        # A1111's list complete here even if torch ever drops it.
        (OrderedDict, "collections.OrderedDict"),
        # Textual-inversion files from the original repo hold `string_to_param` as a ParameterDict.
        (torch.nn.ParameterDict, "torch.nn.modules.container.ParameterDict"),
    ]
    entries.extend(_numpy_allowlist())
    entries.extend((cls, name) for name, cls in _lightning_placeholders().items())
    for item in extra_globals:
        if isinstance(item, tuple):
            if len(item) != 2 or not isinstance(item[1], str):
                raise TypeError(
                    f"extra_globals entry {item!r} must be an object or an (object, 'module.Name') "
                    "tuple"
                )
        elif not (hasattr(item, "__module__") and hasattr(item, "__qualname__")):
            raise TypeError(
                f"extra_globals entry {item!r} has no __module__/__qualname__; pass it as an "
                "(object, 'module.Name') tuple"
            )
        try:
            hash(item)
        except TypeError:
            raise TypeError(f"extra_globals entry {item!r} must be hashable") from None
        entries.append(item)
    return entries


def _entry_name(entry: Any) -> str:
    if isinstance(entry, tuple):
        return entry[1]
    return f"{entry.__module__}.{entry.__qualname__}"


def _allowed_global_names(entries: Sequence[Any]) -> set[str]:
    """Every global name a load with `entries` accepts; used only to word error messages."""
    names = {_entry_name(entry) for entry in entries}
    try:
        # Private, but it is the list the loader really uses; if torch renames it the messages
        # merely get less precise (every global not added by us gets reported).
        from torch._weights_only_unpickler import _get_allowed_globals

        names.update(_get_allowed_globals())
    except (ImportError, AttributeError):  # pragma: no cover - depends on torch internals
        logger.debug("torch's default weights-only allow-list is not inspectable")
    return names


@contextlib.contextmanager
def _allowlisted(entries: Sequence[Any]) -> Iterator[None]:
    import torch

    with _ALLOWLIST_LOCK:
        before = torch.serialization.get_safe_globals()
        try:
            with torch.serialization.safe_globals(list(entries)):
                yield
        finally:
            # torch's context manager removes every entry it was given, including ones somebody
            # registered earlier with add_safe_globals; put those back.
            after = set(torch.serialization.get_safe_globals())
            lost = [entry for entry in before if entry not in after]
            if lost:
                torch.serialization.add_safe_globals(lost)


# --------------------------------------------------------------------------------------------
# Loading


def load_pickled_checkpoint(
    path: str | os.PathLike[str],
    *,
    allow_unsafe: bool = False,
    mmap: bool | None = None,
    map_location: str | torch.device | None = "cpu",
    extra_globals: Sequence[Any] = (),
) -> object:
    """Load a `torch.save` file (zip or legacy format) without running code from it.

    - `allow_unsafe`: `--disable-safe-unpickle`; plain `torch.load(weights_only=False)`, which
      runs any code in the file. Logs a warning naming the file.
    - `mmap`: None picks it from the format: zip files (torch>=1.6) are memory-mapped (tensors
      are views of the file, no copy); legacy files cannot be, so True is ignored for them.
    - `map_location`: where storages go; "cpu" by default because many checkpoints were saved
      from a GPU and would otherwise fail on a machine without one.
    - `extra_globals`: more allowed globals, as objects or `(obj, "module.Name")` tuples.

    Raises `UnsafeCheckpointError` if the file needs anything outside the allow-list (nothing is
    executed), `CorruptCheckpointError` if it is empty/truncated/not a torch pickle, and
    `FileNotFoundError`/`IsADirectoryError`/`PermissionError` as usual. Never returns None on
    failure.
    """
    import torch

    path = Path(path)
    is_zip = _inspect_container(path)
    use_mmap = is_zip if mmap is None else bool(mmap)
    if use_mmap and not is_zip:
        # mmap is an optimisation, not a meaning: don't fail a legacy file over it.
        logger.debug("%s is a legacy (non-zip) torch file; loading it without mmap", path)
        use_mmap = False

    if allow_unsafe:
        return _load_unsafe(path, is_zip, use_mmap, map_location)

    entries = restricted_allowlist(extra_globals)
    with _allowlisted(entries):
        try:
            return torch.load(
                os.fspath(path), map_location=map_location, weights_only=True, mmap=use_mmap
            )
        except OSError:
            raise  # I/O trouble (permissions, disk), not the file's content
        except Exception as exc:  # noqa: BLE001 - every other failure is explained below
            failure = exc
    # Explained outside the lock (disassembly takes a moment) and raised outside the except
    # block: torch's own text ("use add_safe_globals", "file an issue") is advice for
    # developers, wrong for our users, so it must not be printed as the context of our error.
    raise _classify_failure(path, is_zip, failure, entries)


def _inspect_container(path: Path) -> bool:
    """Return True for a zip-format torch file; raise for files that cannot be one at all."""
    if not path.exists():
        raise FileNotFoundError(errno.ENOENT, "Checkpoint file not found", os.fspath(path))
    if path.is_dir():
        raise IsADirectoryError(
            errno.EISDIR, "Expected a checkpoint file but got a directory", os.fspath(path)
        )
    size = path.stat().st_size
    if size == 0:
        raise CorruptCheckpointError(
            f"{path} is empty (0 bytes), so it is not a checkpoint. "
            "An interrupted download is the usual cause; re-download the file.",
            path,
        )
    with open(path, "rb") as handle:
        head = handle.read(len(_ZIP_LOCAL_HEADER))
    # torch decides zip vs legacy by the leading signature; zipfile.is_zipfile looks for the
    # end-of-archive record, which a cut-off download lacks. Both are needed to tell a truncated
    # archive from a legacy pickle.
    if head != _ZIP_LOCAL_HEADER:
        return False
    if not zipfile.is_zipfile(path):
        raise CorruptCheckpointError(
            f"{path} looks truncated: it starts like a torch zip archive but its end-of-archive "
            f"directory is missing ({size} bytes). Re-download the file and check its size or "
            "hash against the source.",
            path,
        )
    return True


def _lenient_pickle_module() -> types.ModuleType:
    """A `pickle` look-alike for the unsafe path that does not require lightning installed."""
    placeholders = _lightning_placeholders()

    class LenientUnpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            placeholder = placeholders.get(f"{module}.{name}")
            if placeholder is not None:
                return placeholder
            return super().find_class(module, name)

    module = types.ModuleType(f"{__name__}.lenient_pickle")
    module.Unpickler = LenientUnpickler  # type: ignore[attr-defined]
    module.load = lambda f, **kw: LenientUnpickler(f, **kw).load()  # type: ignore[attr-defined]
    return module


def _load_unsafe(path: Path, is_zip: bool, use_mmap: bool, map_location: Any) -> object:
    import torch

    logger.warning(
        "Loading %s with the safe unpickler disabled (%s): any code inside the file runs with "
        "this program's permissions. Only do this for files you trust.",
        path,
        DISABLE_SAFE_UNPICKLE_FLAG,
    )
    try:
        return torch.load(
            os.fspath(path),
            map_location=map_location,
            weights_only=False,
            mmap=use_mmap,
            pickle_module=_lenient_pickle_module(),
        )
    except OSError:
        raise
    except Exception as exc:  # noqa: BLE001 - every other failure is explained below
        failure = exc
    if isinstance(failure, (ImportError, AttributeError)) and _scan_pickles(path, is_zip).parsed:
        raise PickledCheckpointError(
            f"Could not load {path}: it pickles an object whose class is not available here "
            f"({type(failure).__name__}: {failure}). Install the package it needs, or use a "
            ".safetensors version of the model.",
            path,
        )
    # Anything else (including a "module not found" from garbage that happens to look like a
    # GLOBAL opcode) means the bytes are not a usable pickle.
    raise _corrupt(path, failure)


# --------------------------------------------------------------------------------------------
# Explaining failures


@dataclass(frozen=True)
class _PickleScan:
    globals: tuple[str, ...]  # canonical names, first appearance order, from complete pickles
    parsed: bool  # the first pickle parsed to its STOP opcode
    protocol: int | None  # of the first pickle


def _canonical_global(module: str, name: str) -> str:
    """`module.name` after the Python-2 renames torch's unpickler applies (`__builtin__`...)."""
    try:
        # torch's own (smaller) copy of pickle's table: names must match what the loader checks.
        from torch._utils import IMPORT_MAPPING, NAME_MAPPING
    except ImportError:  # pragma: no cover - depends on torch internals
        from _compat_pickle import IMPORT_MAPPING, NAME_MAPPING
    if (module, name) in NAME_MAPPING:
        module, name = NAME_MAPPING[(module, name)]
    elif module in IMPORT_MAPPING:
        module = IMPORT_MAPPING[module]
    return f"{module}.{name}"


_STRING_OPCODES = frozenset(
    {
        "STRING",
        "BINSTRING",
        "SHORT_BINSTRING",
        "UNICODE",
        "BINUNICODE",
        "SHORT_BINUNICODE",
        "BINUNICODE8",
    }
)
_NON_PUSHING_OPCODES = frozenset(
    {"PROTO", "FRAME", "MARK", "STOP", "MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT", "POP", "POP_MARK"}
)


def _globals_in_pickle(stream: Any) -> tuple[list[str], int | None]:
    """Globals one pickle references, by disassembly only (nothing is imported or called).

    Raises ValueError (from pickletools) when the bytes are not a complete pickle.
    """
    found: list[str] = []
    protocol: int | None = None
    memo: dict[int, Any] = {}
    # Values recently pushed, so STACK_GLOBAL (protocol >= 4), which takes module and name from
    # the stack, can be named. An approximation of the real stack, good enough for messages.
    pushed: list[Any] = []
    for opcode, arg, _pos in pickletools.genops(stream):
        op = opcode.name
        if op == "PROTO":
            protocol = arg
        if op in ("GLOBAL", "INST"):
            module, _, name = str(arg).partition(" ")
            found.append(_canonical_global(module, name))
            pushed.append(None)
        elif op == "STACK_GLOBAL":
            module, name = (pushed[-2], pushed[-1]) if len(pushed) >= 2 else (None, None)
            if isinstance(module, str) and isinstance(name, str):
                found.append(_canonical_global(module, name))
            else:
                found.append("<global named by computed strings>")
            del pushed[-2:]
            pushed.append(None)
        elif op in ("EXT1", "EXT2", "EXT4"):
            found.append(f"<copyreg extension code {arg}>")
            pushed.append(None)
        elif op in _STRING_OPCODES:
            pushed.append(arg.decode("latin-1") if isinstance(arg, bytes) else arg)
        elif op in ("GET", "BINGET", "LONG_BINGET"):
            pushed.append(memo.get(int(arg)))
        elif op == "MEMOIZE":
            memo[len(memo)] = pushed[-1] if pushed else None
        elif op in ("PUT", "BINPUT", "LONG_BINPUT"):
            memo[int(arg)] = pushed[-1] if pushed else None
        elif op not in _NON_PUSHING_OPCODES:
            pushed.append(None)
        del pushed[:-8]  # only the last couple of values ever matter
    return found, protocol


class _BoundedReader:
    """File wrapper that refuses to read past `limit` bytes (see _MAX_SCAN_BYTES)."""

    def __init__(self, raw: io.BufferedReader, limit: int) -> None:
        self._raw = raw
        self._left = limit

    def _take(self, data: bytes) -> bytes:
        self._left -= len(data)
        if self._left < 0:
            raise ValueError("pickle is larger than the scan limit")
        return data

    def read(self, n: int = -1) -> bytes:
        return self._take(self._raw.read(self._left + 1 if n < 0 else min(n, self._left + 1)))

    def readline(self) -> bytes:
        return self._take(self._raw.readline(self._left + 1))

    def tell(self) -> int:
        return self._raw.tell()

    def at_eof(self) -> bool:
        return not self._raw.peek(1)


def _scan_pickles(path: Path, is_zip: bool) -> _PickleScan:
    names: list[str] = []
    parsed = False
    protocol: int | None = None
    try:
        if is_zip:
            with zipfile.ZipFile(path) as archive:
                members = [
                    m for m in archive.infolist() if m.filename.rsplit("/", 1)[-1] == "data.pkl"
                ]
                for index, member in enumerate(members):
                    if member.file_size > _MAX_SCAN_BYTES:
                        break
                    found, proto = _globals_in_pickle(io.BytesIO(archive.read(member)))
                    names.extend(found)
                    if index == 0:
                        parsed, protocol = True, proto
        else:
            with open(path, "rb") as raw:
                reader = _BoundedReader(raw, _MAX_SCAN_BYTES)  # type: ignore[arg-type]
                for index in range(_LEGACY_PICKLE_COUNT):
                    if index and reader.at_eof():
                        break  # a bare pickle (not torch's legacy layout) ends here
                    found, proto = _globals_in_pickle(reader)
                    names.extend(found)
                    if index == 0:
                        parsed, protocol = True, proto
    except (ValueError, zipfile.BadZipFile, EOFError, OSError, UnicodeDecodeError) as exc:
        logger.debug("Disassembling %s stopped: %s", path, exc)
    return _PickleScan(tuple(dict.fromkeys(names)), parsed, protocol)


def _inner_torch_message(exc: BaseException) -> str:
    # torch re-raises its unpickler's error wrapped in long advice (`raise ... from None`); the
    # original, short message is still kept as __context__.
    context = exc.__context__
    if isinstance(exc, pickle.UnpicklingError) and isinstance(context, pickle.UnpicklingError):
        return str(context)
    return str(exc)


_TORCH_GLOBAL_PATTERN = re.compile(r"GLOBAL (\S+) (?:was not an allowed global|whose module)")


def _torch_named_global(message: str) -> str | None:
    match = _TORCH_GLOBAL_PATTERN.search(message)
    if match is None:
        return None
    name = match.group(1)
    # torch prints builtins without their module ("GLOBAL eval"); put it back.
    return name if "." in name else f"builtins.{name}"


def _first_line(text: str, limit: int = 200) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    # torch appends advice for developers ("Please use `torch.serialization.add_safe_globals`");
    # it is wrong for our users, who get our own advice instead.
    line = line.split(" Please use ", 1)[0]
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _unsafe_advice() -> str:
    return (
        "Nothing in the file was executed. Use a .safetensors version of this model (or convert "
        "the file to .safetensors in an isolated environment), or, only if you trust where the "
        f"file came from, restart with {DISABLE_SAFE_UNPICKLE_FLAG}."
    )


def _text_file_hint(path: Path) -> str | None:
    """Say what a text file is, for the usual failed downloads; None for binary files."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(512)
        text = head.decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    if not text or any(ch < " " and ch not in "\t\r\n" for ch in text):
        return None
    if text.startswith("version https://git-lfs"):
        return (
            "it is a Git LFS pointer file, not the model itself; download the real file "
            "(e.g. `git lfs pull`, or the download link of the model page)"
        )
    lowered = text.lstrip().lower()
    if lowered.startswith(("<!doctype html", "<html")):
        return "it is an HTML page (a failed or redirected download), not a checkpoint"
    # Its content is not quoted: the message reaches UI and API users, and the file (or a link named
    # like a model) may hold anything the server can read.
    return "it is a plain text file, not a checkpoint"


def _corrupt(path: Path, exc: BaseException) -> CorruptCheckpointError:
    hint = _text_file_hint(path)
    if hint is not None:
        return CorruptCheckpointError(
            f"{path} looks truncated or corrupt: {hint}. Re-download the file.", path
        )
    detail = _first_line(_inner_torch_message(exc))
    if not detail and isinstance(exc, EOFError):
        detail = "the file ends early"
    cause = f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
    return CorruptCheckpointError(
        f"{path} looks truncated or corrupt: it is not a readable PyTorch pickle ({cause}). "
        "An interrupted download is the usual cause; re-download the file and check its size "
        "or hash against the source.",
        path,
    )


def _classify_failure(
    path: Path, is_zip: bool, exc: Exception, entries: Sequence[Any]
) -> PickledCheckpointError:
    message = _inner_torch_message(exc)
    if isinstance(exc, RuntimeError) and "TorchScript" in message:
        return UnsafeCheckpointError(
            f"Refused to load {path}: it is a TorchScript archive, which contains code and "
            f"cannot be loaded as plain weights. {_unsafe_advice()}",
            path,
        )
    refused_by_torch = (
        isinstance(exc, pickle.UnpicklingError) and "Weights only load failed" in str(exc)
    ) or (isinstance(exc, RuntimeError) and "weights_only" in message)

    scan = _scan_pickles(path, is_zip)
    allowed = _allowed_global_names(entries)
    forbidden = [name for name in scan.globals if name not in allowed]
    torch_named = _torch_named_global(message)
    if scan.parsed and torch_named and torch_named not in forbidden:
        forbidden.insert(0, torch_named)

    if forbidden:
        listed = ", ".join(forbidden)
        plural = "globals" if len(forbidden) > 1 else "global"
        return UnsafeCheckpointError(
            f"Refused to load {path}: it references the {plural} {listed}, which the safe "
            f"unpickler does not allow (a pickle can use {'them' if len(forbidden) > 1 else 'it'} "
            f"to run code). {_unsafe_advice()}",
            path,
            forbidden,
        )
    if refused_by_torch and scan.parsed:
        if scan.protocol is not None and scan.protocol > 2:
            reason = (
                f"it was pickled with protocol {scan.protocol}, and the safe unpickler reads "
                "protocol 2, torch.save's default"
            )
        else:
            reason = f"the safe unpickler rejected it: {_first_line(message)}"
        return UnsafeCheckpointError(f"Refused to load {path}: {reason}. {_unsafe_advice()}", path)
    return _corrupt(path, exc)


# --------------------------------------------------------------------------------------------
# State dicts


def unwrap_state_dict(
    obj: object, source: str | os.PathLike[str] | None = None
) -> dict[str, torch.Tensor]:
    """The tensors of a loaded checkpoint, as a flat ``{name: tensor}`` dict.

    A `.ckpt` is usually ``{"state_dict": {...}, "global_step": ..., "callbacks": ...}``: the
    outer `state_dict` is unwrapped (one level, as A1111 does). Entries that are not tensors
    (step counters, nested dicts, a stray inner "state_dict") or have non-string keys are dropped.
    `nn.Parameter`s become plain tensors sharing the same storage. `source` (the file) is only
    used in error messages.
    """
    import torch

    where = f"{os.fspath(source)}" if source is not None else "the checkpoint"
    if not isinstance(obj, Mapping):
        raise PickledCheckpointError(
            f"Expected {where} to hold a dict of tensors (a state dict), but it holds a "
            f"{type(obj).__module__}.{type(obj).__qualname__}. It is probably not a model "
            "checkpoint (or a whole pickled model, which is not supported).",
            source,
        )
    inner = obj.get("state_dict")
    state = inner if isinstance(inner, Mapping) else obj

    tensors: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    for key, value in state.items():
        if isinstance(key, str) and isinstance(value, torch.Tensor):
            # A Parameter's autograd flag has no meaning for inference weights.
            tensors[key] = value.detach() if isinstance(value, torch.nn.Parameter) else value
        else:
            dropped.append(repr(key))
    if dropped:
        logger.debug("%s: dropped non-tensor entries %s", where, ", ".join(dropped[:20]))
    if not tensors:
        raise PickledCheckpointError(
            f"{where} contains no tensors (keys: {', '.join(map(repr, list(state)[:10])) or 'none'}"
            "). It is not a model checkpoint.",
            source,
        )
    return tensors
