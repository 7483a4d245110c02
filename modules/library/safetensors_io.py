"""Streaming access to `.safetensors` files, one tensor at a time.

The `safetensors` package reads through a memory map: every page it touches stays resident (and is
counted in RSS) until the file is closed, so casting an fp16 file to fp32 while it is mapped holds
both copies at once. The reader here also maps the file, but converts each tensor straight from the
mapped pages into its final buffer (one pass: no temporary copy) and then drops those pages from
the process with `madvise(MADV_DONTNEED)`, so peak memory is the size of what is kept plus one
tensor. Files are written tensor by tensor. The on-disk format is the one the `safetensors` package writes and reads
(8-byte little-endian header length, JSON header, raw little-endian data); tests check that both
sides agree.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import queue
import struct
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Callable, Iterable, Iterator, Mapping

from modules.common.atomic_files import DiskFullError, ensure_space, free_space, is_disk_full, temp_path_for

if TYPE_CHECKING:
    import torch

# Header dtype strings of the safetensors format: bytes per element and the torch dtype's name.
# torch is imported only when a tensor is read or written: checkpoint discovery reads headers, and
# the server's first page does not wait for torch's import (docs/BENCHMARKS.md, start-up).
FORMAT_DTYPES: dict[str, tuple[int, str]] = {
    "F64": (8, "float64"),
    "F32": (4, "float32"),
    "F16": (2, "float16"),
    "BF16": (2, "bfloat16"),
    "I64": (8, "int64"),
    "I32": (4, "int32"),
    "I16": (2, "int16"),
    "I8": (1, "int8"),
    "U8": (1, "uint8"),
    "BOOL": (1, "bool"),
    "F8_E4M3": (1, "float8_e4m3fn"),
    "F8_E5M2": (1, "float8_e5m2"),
}


@cache
def torch_dtypes() -> dict[str, torch.dtype]:
    """Header dtype string → torch dtype."""
    import torch

    return {name: getattr(torch, attribute) for name, (_, attribute) in FORMAT_DTYPES.items()}


@cache
def _format_names() -> dict[torch.dtype, str]:
    return {dtype: name for name, dtype in torch_dtypes().items()}

# A header larger than this is not a checkpoint header but a corrupt length field.
MAX_HEADER_BYTES = 100 * 1024 * 1024
_ALIGNMENT = 8


class SafetensorsFormatError(ValueError):
    """The file is not a readable safetensors file (truncated, corrupt, or another format)."""

    short_reason = "damaged or incomplete (an interrupted download?)"  # how checkpoint lists mark it


@dataclass(frozen=True)
class TensorSpec:
    """Where one tensor lives in a safetensors file."""

    name: str
    dtype_name: str  # as the header says it: "F16", "BF16", ...
    shape: tuple[int, ...]
    begin: int  # offset of the first byte, relative to the start of the data section
    end: int

    @property
    def dtype(self) -> torch.dtype:
        return torch_dtypes()[self.dtype_name]

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


@dataclass(frozen=True)
class SafetensorsHeader:
    path: Path
    data_offset: int  # absolute file offset of the data section
    tensors: dict[str, TensorSpec]  # in file order
    metadata: dict[str, str]

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {name: spec.shape for name, spec in self.tensors.items()}


def read_header(path: str | os.PathLike) -> SafetensorsHeader:
    """Parse the header of a safetensors file without reading any tensor data."""
    path = Path(path)
    with open(path, "rb") as f:
        return _parse_header(path, f, os.fstat(f.fileno()).st_size)


def _parse_header(path: Path, f: BinaryIO, file_size: int) -> SafetensorsHeader:
    prefix = f.read(8)
    if len(prefix) < 8:
        raise SafetensorsFormatError(f"{path}: file is {file_size} bytes, too short to be a safetensors file")
    (header_len,) = struct.unpack("<Q", prefix)
    if header_len < 2 or header_len > MAX_HEADER_BYTES or 8 + header_len > file_size:
        raise SafetensorsFormatError(
            f"{path}: header length field says {header_len} bytes but the file has {file_size}; "
            "the file is truncated or not a safetensors file"
        )
    raw = f.read(header_len)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SafetensorsFormatError(f"{path}: header is not valid JSON ({e}); the file is corrupt") from e
    if not isinstance(header, dict):
        raise SafetensorsFormatError(f"{path}: header is not a JSON object; the file is corrupt")

    metadata = header.pop("__metadata__", None) or {}
    data_offset = 8 + header_len
    data_size = file_size - data_offset
    tensors: dict[str, TensorSpec] = {}
    for name, entry in header.items():
        try:
            dtype_name = entry["dtype"]
            itemsize, _ = FORMAT_DTYPES[dtype_name]
            shape = tuple(int(d) for d in entry["shape"])
            begin, end = (int(x) for x in entry["data_offsets"])
        except (KeyError, TypeError, ValueError) as e:
            raise SafetensorsFormatError(f"{path}: bad header entry for tensor {name!r}: {entry!r}") from e
        expected = _numel(shape) * itemsize
        if end - begin != expected or begin < 0:
            raise SafetensorsFormatError(
                f"{path}: tensor {name!r} has {end - begin} bytes for shape {list(shape)} {entry['dtype']}"
            )
        if end > data_size:
            raise SafetensorsFormatError(
                f"{path}: tensor {name!r} ends at byte {data_offset + end} but the file has {file_size}; "
                "the file is truncated (an interrupted download?)"
            )
        tensors[name] = TensorSpec(name, dtype_name, shape, begin, end)
    ordered = dict(sorted(tensors.items(), key=lambda item: item[1].begin))
    return SafetensorsHeader(path, data_offset, ordered, {str(k): str(v) for k, v in metadata.items()})


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _itemsize(dtype: torch.dtype) -> int:
    return dtype.itemsize


class SafetensorsReader:
    """Reads tensors of one file into fresh buffers, optionally converting dtype and device.

    Use as a context manager; tensors returned stay valid after it closes (they own their memory).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._file = open(self.path, "rb")
        self._map: mmap.mmap | None = None
        try:
            size = os.fstat(self._file.fileno()).st_size
            self.header = _parse_header(self.path, self._file, size)
            if self.header.tensors:
                # Copy-on-write so torch.frombuffer gets a writable buffer; nothing is ever written.
                self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_COPY)
        except BaseException:
            self._file.close()
            raise

    def __enter__(self) -> "SafetensorsReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None
        self._file.close()

    def keys(self) -> list[str]:
        return list(self.header.tensors)

    def read(self, name: str, dtype: torch.dtype | None = None,
             device: torch.device | str | None = None) -> torch.Tensor:
        """The tensor `name`, as a new tensor in `dtype` (floating tensors only) on `device`."""
        import torch

        spec = self.header.tensors[name]
        numel = _numel(spec.shape)
        target = dtype if dtype is not None and spec.dtype.is_floating_point else spec.dtype
        device = torch.device(device) if device is not None else torch.device("cpu")
        if numel == 0:
            return torch.empty(spec.shape, dtype=target, device=device)
        if self._map is None:
            raise ValueError(f"{self.path} is closed")
        start = self.header.data_offset + spec.begin
        view = torch.frombuffer(self._map, dtype=spec.dtype, count=numel, offset=start).view(spec.shape)
        if device.type == "cpu" and target == spec.dtype:
            out = view.clone()
        else:
            out = view.to(device=device, dtype=target)
        self._drop_pages(start, spec.nbytes)
        return out

    def read_into(self, name: str, start: int, out: torch.Tensor) -> None:
        """Fill the 1-D tensor `out` (the stored dtype) with elements [start, start + len(out)) of the
        flattened tensor `name`, with `pread` straight into it: for streaming a large tensor through
        a few reused buffers (the merger) without mapping pages in and out."""
        import torch

        spec = self.header.tensors[name]
        if out.dtype != spec.dtype or out.dim() != 1 or not out.is_contiguous():
            raise ValueError(f"read_into needs a contiguous 1-D {spec.dtype} tensor, got {out.dtype} {list(out.shape)}")
        itemsize = out.element_size()
        if start < 0 or start + out.numel() > _numel(spec.shape):
            raise ValueError(f"elements [{start}, {start + out.numel()}) are outside {name!r} {list(spec.shape)}")
        target = memoryview(out.view(torch.uint8).numpy())
        offset = self.header.data_offset + spec.begin + start * itemsize
        done = 0
        while done < len(target):
            n = os.preadv(self._file.fileno(), [target[done:]], offset + done)
            if n <= 0:
                raise SafetensorsFormatError(f"{self.path}: unexpected end of file reading {name!r}")
            done += n

    @contextmanager
    def view(self, name: str) -> Iterator[torch.Tensor]:
        """A zero-copy view of `name` in the mapped file, valid inside the block; its pages are
        released after. For code that streams over a tensor (the merger) and would otherwise copy
        it whole first. The mapping is copy-on-write: writing into the view never reaches the file."""
        import torch

        spec = self.header.tensors[name]
        numel = _numel(spec.shape)
        if numel == 0:
            yield torch.empty(spec.shape, dtype=spec.dtype)
            return
        if self._map is None:
            raise ValueError(f"{self.path} is closed")
        start = self.header.data_offset + spec.begin
        try:
            yield torch.frombuffer(self._map, dtype=spec.dtype, count=numel, offset=start).view(spec.shape)
        finally:
            if self._map is not None:
                self._drop_pages(start, spec.nbytes)

    def read_many(self, dtypes: Mapping[str, torch.dtype | None], device: torch.device | str | None = None,
                  digest=None) -> dict[str, torch.Tensor]:
        """The tensors `dtypes` names, each as a new tensor in its dtype (floating tensors only; None
        keeps the stored one) on `device`, read in one pass over the file in file order.

        With `digest` (a `hashlib` object) every byte of the file, the header and the tensors not
        asked for included, is fed to it in order, from the same mapped pages the conversion reads:
        a whole-file hash costs no second read of the file. See `_OnePass` for how the work is
        shared between threads, and docs/BENCHMARKS.md for what that saves.
        """
        import torch

        unknown = set(dtypes) - self.header.tensors.keys()
        if unknown:
            raise KeyError(f"{self.path} has no tensors {sorted(unknown)[:3]}")
        device = torch.device(device) if device is not None else torch.device("cpu")
        if self._map is None:  # no tensors: the header is the whole file
            if digest is not None:
                self._file.seek(0)
                digest.update(self._file.read())
            return {}
        return _OnePass(self, dtypes, device, digest).run()

    def _drop_pages(self, start: int, length: int) -> None:
        """Release the mapped pages of a tensor already copied out (they stay in the page cache)."""
        assert self._map is not None
        page = mmap.PAGESIZE
        begin = start - start % page
        self._map.madvise(mmap.MADV_DONTNEED, begin, start + length - begin)


# Slices converted by one call stay below torch's intra-op grain size (at::internal::GRAIN_SIZE,
# 32768 elements), so torch runs each on the calling thread and never starts threads of its own.
_SERIAL_ELEMENTS = 32767
# How far hashing may run ahead of the conversion; those mapped file pages count in RSS.
_HASH_LEAD_BYTES = 64 << 20
_MAX_READ_THREADS = 4


class _OnePass:
    """One pass over a mapped safetensors file: convert the tensors asked for and, optionally, hash
    every byte in file order, with as many threads as torch's intra-op setting allows (at least two
    when hashing: the caller's and a helper; at most `_MAX_READ_THREADS`) and no more.

    Each tensor is converted by one thread, in slices small enough that torch keeps them on that
    thread (`_SERIAL_ELEMENTS`). The alternative, torch's own parallel copy beside a hashing thread,
    puts three busy threads on two cores, and torch's threads wait for each other at every tensor:
    that cost a quarter of the load's time (docs/BENCHMARKS.md). The helper thread hashes while it
    is less than `_HASH_LEAD_BYTES` ahead of the conversion and converts otherwise. A tensor's
    pages are dropped once it is converted and hashed; dropping a page another thread still reads
    only costs that thread a minor fault, as the mapping is private and never written.
    """

    def __init__(self, reader: SafetensorsReader, dtypes: Mapping[str, torch.dtype | None], device: torch.device,
                 digest) -> None:
        import torch

        self.reader = reader
        self.dtypes = dtypes
        self.device = device
        self.digest = digest
        self.specs = list(reader.header.tensors.values())  # file order
        self.base = reader.header.data_offset
        self.size = len(reader._map)
        self.tasks = [i for i, spec in enumerate(self.specs) if spec.name in dtypes]
        self.next_task = 0
        self.converted = [spec.name not in dtypes for spec in self.specs]  # nothing to do for those
        # Hashing: the header, then each tensor (with any bytes before it), then the bytes after the last.
        self.hashed_end = 0 if digest is not None else self.size  # file bytes fed to the digest so far
        self.hashed_specs = 0 if digest is not None else len(self.specs) + 1  # steps done after the header
        self.out: dict[str, torch.Tensor] = {}
        self.lock = threading.Lock()
        self.failed: BaseException | None = None
        # Past a few threads the GIL, held between slices, and memory bandwidth stop the gain.
        self.workers = max(2 if digest is not None else 1, min(_MAX_READ_THREADS, torch.get_num_threads()))

    def run(self) -> dict[str, torch.Tensor]:
        with memoryview(self.reader._map) as self.whole:
            helpers = [threading.Thread(target=self._work, args=(i == 0,), name=f"safetensors-read-{i}", daemon=True)
                       for i in range(self.workers - 1)]
            for thread in helpers:
                thread.start()
            self._work(hashes=self.workers == 1)
            for thread in helpers:
                thread.join()
            del self.whole
        if self.failed is not None:
            raise self.failed
        return self.out

    def _work(self, hashes: bool) -> None:
        try:
            while self.failed is None:
                action = self._next_action(hashes)
                if action is None:
                    return
                action()
        except BaseException as error:  # the caller re-raises it; the other threads stop
            with self.lock:
                self.failed = self.failed or error

    def _next_action(self, hashes: bool):
        with self.lock:
            hashing_left = self.hashed_specs <= len(self.specs)
            if hashes and hashing_left:
                upcoming = self.tasks[self.next_task] if self.next_task < len(self.tasks) else None
                lead = self.hashed_end - (self.base + self.specs[upcoming].begin if upcoming is not None else self.size)
                if upcoming is None or lead < _HASH_LEAD_BYTES:
                    return self._hash_next
            if self.next_task < len(self.tasks):
                index = self.tasks[self.next_task]
                self.next_task += 1
                return lambda: self._convert(index)
            return self._hash_next if hashes and hashing_left else None

    def _hash_next(self) -> None:
        """Feed the digest the next step: the header, a tensor (and any bytes before it), or the bytes
        after the last tensor. Only the hashing thread runs this, so its steps stay in file order."""
        header = self.hashed_end == 0
        index = self.hashed_specs
        if header:
            end = self.base
        else:
            end = self.base + self.specs[index].end if index < len(self.specs) else self.size
        if end > self.hashed_end:
            self.digest.update(self.whole[self.hashed_end:end])
        with self.lock:
            self.hashed_end = max(self.hashed_end, end)
            if not header:
                self.hashed_specs = index + 1
            done = not header and index < len(self.specs) and self.converted[index]
        if done:
            self._drop(index)

    def _convert(self, index: int) -> None:
        import torch

        spec = self.specs[index]
        numel = _numel(spec.shape)
        wanted = self.dtypes[spec.name]
        target = wanted if wanted is not None and spec.dtype.is_floating_point else spec.dtype
        if numel == 0:
            tensor = torch.empty(spec.shape, dtype=target, device=self.device)
        else:
            source = torch.frombuffer(self.reader._map, dtype=spec.dtype, count=numel, offset=self.base + spec.begin)
            if self.device.type == "cpu":
                tensor = torch.empty(spec.shape, dtype=target)
                flat = tensor.view(-1)
                for start in range(0, numel, _SERIAL_ELEMENTS):
                    flat[start:start + _SERIAL_ELEMENTS].copy_(source[start:start + _SERIAL_ELEMENTS])
            else:
                tensor = source.view(spec.shape).to(device=self.device, dtype=target)
            del source
        with self.lock:
            self.out[spec.name] = tensor
            self.converted[index] = True
            done = self.hashed_specs > index
        if done:
            self._drop(index)

    def _drop(self, index: int) -> None:
        spec = self.specs[index]
        if spec.nbytes:
            self.reader._drop_pages(self.base + spec.begin, spec.nbytes)


class SafetensorsWriter:
    """Writes a safetensors file tensor by tensor, atomically.

    The header is written first from the declared specs, so tensors must be written in the declared
    order. Data goes to a temp file beside `path` (modules.common.atomic_files: hidden, removed at the next
    start if a kill leaves it) and is renamed over `path` only by `commit()`; leaving the
    context without committing (an error, an interrupt) removes the temp file. The sha256 of the
    whole file is computed while writing (`sha256` after commit), so a new checkpoint needs no
    re-read to be hashed. Hashing and writing run on a background thread (both release the GIL), so
    they overlap with whatever computes the next tensor; at most `queue_depth` tensors wait.

    `write_blocks` lets a producer compute a large tensor block by block into a few recycled
    buffers instead of one fresh allocation per tensor: on the merge benchmark, fresh buffers cost
    more in page faults and unmapping than the arithmetic that filled them.
    """

    BLOCK_BYTES = 4 << 20

    def __init__(
        self,
        path: str | os.PathLike,
        specs: Iterable[tuple[str, torch.dtype, tuple[int, ...]]],
        metadata: Mapping[str, str] | None = None,
        overwrite: bool = False,
        queue_depth: int = 2,
        what: str | None = None,  # how errors name the file, e.g. "the checkpoint x.safetensors"
    ):
        self.path = Path(path)
        if self.path.exists() and not overwrite:
            raise FileExistsError(f"{self.path} already exists; choose another name or allow overwriting")
        self._order: list[tuple[str, torch.dtype, tuple[int, ...]]] = []
        header: dict[str, object] = {}
        if metadata:
            bad = {k: type(v).__name__ for k, v in metadata.items() if not isinstance(v, str)}
            if bad:
                raise TypeError(f"safetensors metadata values must be strings; got {bad}")
            header["__metadata__"] = dict(metadata)
        offset = 0
        for name, dtype, shape in specs:
            shape = tuple(int(d) for d in shape)
            nbytes = _numel(shape) * _itemsize(dtype)
            header[name] = {"dtype": _format_names()[dtype], "shape": list(shape),
                            "data_offsets": [offset, offset + nbytes]}
            self._order.append((name, dtype, shape))
            offset += nbytes
        encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
        encoded += b" " * (-len(encoded) % _ALIGNMENT)
        self._next = 0
        self._hasher = hashlib.sha256()
        self.sha256: str | None = None
        # The whole size is known now: a full disk is refused before a byte is written.
        self.size = 8 + len(encoded) + offset
        self._what = what or f"the checkpoint {self.path.name}"
        ensure_space(self.path.parent, self.size, self._what)
        self._tmp = temp_path_for(self.path)  # hidden, marked: never listed, swept at start-up
        self._file: BinaryIO | None = open(self._tmp, "wb")
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, queue_depth))
        # Blocks for write_blocks: one being filled, `queue_depth` queued, one being written.
        self._free_blocks: queue.Queue = queue.Queue()
        self._blocks_made = 0
        self._max_blocks = max(1, queue_depth) + 2
        self._error: BaseException | None = None
        self._hash_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="safetensors-hasher")
        self._thread = threading.Thread(target=self._drain, name="safetensors-writer", daemon=True)
        self._thread.start()
        self._emit(struct.pack("<Q", len(encoded)) + encoded)

    def __enter__(self) -> "SafetensorsWriter":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if self._file is not None:
            self.abort()

    def _drain(self) -> None:
        import torch  # the writer is given tensors: torch is imported already

        while True:
            item = self._queue.get()
            if item is None:
                return
            block = None
            if isinstance(item, tuple):  # (filled part, its recycled block) from write_blocks
                item, block = item
            try:
                if self._error is None:  # after a failure keep draining so the producer never blocks
                    data = item if isinstance(item, bytes) else memoryview(item.view(-1).view(torch.uint8).numpy())
                    # Hash on a second thread while this one writes: both release the GIL and
                    # each is about as slow as the other; hash updates stay in file order.
                    hashed = self._hash_pool.submit(self._hasher.update, data)
                    assert self._file is not None
                    try:
                        self._file.write(data)
                    finally:
                        hashed.result()
            except BaseException as e:  # reported to the producer by _check()
                self._error = e
            finally:
                if block is not None:
                    self._free_blocks.put(block)

    def _check(self) -> None:
        if self._error is not None:
            self._raise_write_error(self._error)

    def _raise_write_error(self, error: BaseException) -> None:
        if is_disk_full(error):  # space taken by someone else since the check in __init__
            raise DiskFullError(self.path.parent, self.size, free_space(self.path.parent), self._what) from error
        raise OSError(f"writing {self._tmp} failed: {error}") from error

    def _emit(self, data: bytes | torch.Tensor) -> None:
        self._check()
        self._queue.put(data)

    def write(self, name: str, tensor: torch.Tensor) -> None:
        self._expect(name, tensor.dtype, tuple(tensor.shape))
        data = tensor.detach().to("cpu").contiguous()
        if data.numel():
            self._emit(data)
        self._next += 1

    def write_blocks(self, name: str, dtype: torch.dtype, shape: tuple[int, ...],
                     fill: Callable[[torch.Tensor, int, int], None]) -> None:
        """Write the next declared tensor block by block: `fill(out, start, end)` must put elements
        [start, end) of the flattened tensor into `out`, a 1-D tensor of `dtype`. If `fill` raises,
        nothing more is written and the error propagates (the file is then aborted as usual)."""
        self._expect(name, dtype, tuple(shape))
        itemsize = _itemsize(dtype)
        per_block = max(1, self.BLOCK_BYTES // itemsize)
        numel = _numel(tuple(shape))
        for start in range(0, numel, per_block):
            end = min(numel, start + per_block)
            block = self._take_block()
            part = block[: (end - start) * itemsize].view(dtype)
            try:
                fill(part, start, end)
            except BaseException:
                self._free_blocks.put(block)
                raise
            self._emit((part, block))
        self._next += 1

    def _take_block(self) -> torch.Tensor:
        import torch

        try:
            return self._free_blocks.get_nowait()
        except queue.Empty:
            pass
        if self._blocks_made < self._max_blocks:
            self._blocks_made += 1
            return torch.empty(self.BLOCK_BYTES, dtype=torch.uint8)
        while True:  # all blocks are queued or being written: wait for one, unless the writer died
            self._check()
            try:
                return self._free_blocks.get(timeout=1.0)
            except queue.Empty:
                continue

    def _expect(self, name: str, dtype: torch.dtype, shape: tuple[int, ...]) -> None:
        if self._next >= len(self._order):
            raise ValueError(f"tensor {name!r} was not declared when the writer was created")
        want_name, want_dtype, want_shape = self._order[self._next]
        if name != want_name or dtype != want_dtype or shape != want_shape:
            raise ValueError(
                f"expected tensor {want_name!r} {want_dtype} {list(want_shape)} next, "
                f"got {name!r} {dtype} {list(shape)}"
            )

    def _finish_thread(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        self._hash_pool.shutdown(wait=True)

    def commit(self) -> Path:
        """Finish the file and move it into place; returns the final path."""
        if self._next != len(self._order):
            missing = [n for n, _, _ in self._order[self._next :]]
            raise ValueError(f"{len(missing)} declared tensors were not written, first {missing[0]!r}")
        self._finish_thread()
        self._check()
        assert self._file is not None
        try:
            self._file.flush()
            os.fsync(self._file.fileno())  # a file system may report a full disk only here
        except OSError as error:
            self._raise_write_error(error)
        self._file.close()
        self._file = None
        os.replace(self._tmp, self.path)
        self.sha256 = self._hasher.hexdigest()
        return self.path

    def abort(self) -> None:
        self._finish_thread()
        try:
            if self._file is not None:
                file, self._file = self._file, None
                try:
                    file.close()
                except OSError:
                    pass  # flushing what is being thrown away can fail the same way (a full disk)
        finally:
            self._tmp.unlink(missing_ok=True)


def save_file(tensors: Mapping[str, torch.Tensor], path: str | os.PathLike, metadata: Mapping[str, str] | None = None,
              overwrite: bool = False) -> str:
    """Write a whole dict at once (small files); returns the file's sha256."""
    specs = [(name, t.dtype, tuple(t.shape)) for name, t in tensors.items()]
    with SafetensorsWriter(path, specs, metadata, overwrite=overwrite) as writer:
        for name, t in tensors.items():
            writer.write(name, t)
        writer.commit()
    assert writer.sha256 is not None
    return writer.sha256
