"""One downloader for every model source: stream to `<name>.part`, resume, verify, rename.

- The body goes to `<destination>.part` beside the final name, hashed (sha256) as it streams; a
  `.part` left by a cancelled, failed or killed download is resumed with `Range: bytes=<size>-`
  (and hashed in the background while the rest arrives). A server that ignores Range (200 instead
  of 206) restarts cleanly from byte 0 with the `.part` truncated; a 416 means the `.part` already
  holds everything (verified) or is stale (restarted).
- Dropped connections (reset, short body, timeout) are retried from what is on disk; a retry or a
  resume first asks `refresh_url` for a new URL (Civitai's signed storage URLs expire after a
  while: a 403/410 on an old one refreshes it too).
- Before anything is kept, the first bytes must look like the file expected (`sniff.check_body`:
  an HTML login page or a JSON error is never saved as a model); at the end size and sha256 must
  match what the source published. A bad body or a hash mismatch removes the `.part`.
- Free space is checked before streaming; a full disk mid-way raises `DiskFullError` and removes
  the `.part` (a partial file the user cannot finish is only in the way).
- The verified `.part` is hard-linked to the final name, which fails if a file appeared there
  meanwhile: an existing file is never overwritten.

Reads go through one reused 1 MiB buffer (`readinto`) into an unbuffered file: the bytes are
copied once from the socket; sha256 runs on a second thread that reads the `.part` back from the
page cache (`_PartHasher`), and the disk gets the bytes as they come (see WRITEBACK_BYTES), so the
final fsync is short.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from modules.common.atomic_files import DiskFullError, ensure_space, free_space, is_disk_full, place_without_replacing
from modules.model_sources.http import GuardedHttp, GuardedResponse, TransientHttpError, parse_retry_after, shown_url
from modules.model_sources.sniff import KINDS, SNIFF_BYTES, BodyRefused, check_body, expected_kind
from modules.model_sources.types import ModelSourceError

log = logging.getLogger(__name__)

CHUNK = 1 << 20
PROGRESS_INTERVAL_S = 0.25
SPEED_SMOOTHING = 0.3  # weight of the newest interval in the moving average
# Statuses worth another try: the host is overloaded or a gateway lost its upstream.
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
# Statuses a signed storage URL answers once it has expired (S3/R2: 403 "Request has expired").
EXPIRED_STATUSES = frozenset({401, 403, 410})
MAX_WAIT_S = 60.0
# Written bytes are handed to the disk every so often rather than all at the final fsync, which
# would otherwise stall for seconds after a multi-gigabyte download.
WRITEBACK_BYTES = 16 << 20
# A body whose size neither the source nor the server says (chunked, no Content-Length) stops here
# rather than at a full disk: far above any Stable Diffusion file (SDXL fp32 is ~14 GB).
MAX_UNKNOWN_SIZE = 64 << 30


@dataclass(frozen=True)
class DownloadSpec:
    url: str
    destination: Path  # final file path (placement already chose a free name)
    expected_sha256: str | None = None
    expected_size: int | None = None  # exact bytes when known (verified); None: the host's length is checked
    expect: str = "model"  # "safetensors" | "pickle" | "yaml" | "image" | "model" (= by destination suffix)
    refresh_url: Callable[[], str] | None = None  # a new short-lived signed URL, asked before a resume/retry
    hint_401: str = ""  # appended to 401/403 errors, e.g. "this file needs a Civitai API key: Settings → Model sources"
    max_unknown_size: int = MAX_UNKNOWN_SIZE  # cap for a body of unknown size (see MAX_UNKNOWN_SIZE)


@dataclass(frozen=True)
class DownloadProgress:
    bytes_done: int
    total: int | None
    speed: float  # bytes/s, smoothed
    eta: float | None  # seconds


@dataclass(frozen=True)
class DownloadResult:
    path: Path
    sha256: str
    size: int
    resumed_from: int  # bytes of an earlier .part reused by this call (0: downloaded from scratch)


class DownloadCancelled(Exception):
    """The download was cancelled; its `.part` is kept, and the next download of it resumes."""


def part_path(destination: Path) -> Path:
    return destination.with_name(destination.name + ".part")


def _open_part(path: Path, mode: str):
    """The `.part` file, unbuffered (writes of 1 MiB need no second buffer). A seam for tests that
    simulate a full disk."""
    return open(path, mode, buffering=0)


def _start_writeback(f, offset: int, length: int) -> None:
    """Start writing a range of the file to disk without waiting. On Linux POSIX_FADV_DONTNEED starts
    writeback of the range's dirty pages and drops only clean ones: the range was just written, so
    its pages are dirty and stay cached for `_PartHasher` to read back."""
    try:
        os.posix_fadvise(f.fileno(), offset, length, os.POSIX_FADV_DONTNEED)
    except (AttributeError, OSError, ValueError):  # no fadvise (macOS, Windows) or a test double
        pass


class _PartHasher:
    """sha256 of the `.part`, read back from the file on a worker thread as the download writes it.

    Reading back (from the page cache) rather than hashing the socket's buffers lets a resume hash
    the kept part while the rest is already arriving, keeps the socket reader from ever waiting for
    the hash, and hashes what is in the file, not what was meant to be written. The main thread
    says how far the file is written (`advance`); `digest(size)` waits until that much is hashed.
    """

    def __init__(self, path: Path, available: int):
        self.path = path
        self._sha = hashlib.sha256()
        self._cond = threading.Condition()
        self._available, self._hashed = available, 0
        self._stopped = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="download-sha256", daemon=True)
        self._thread.start()

    def advance(self, available: int) -> None:
        with self._cond:
            self._available = available
            self._cond.notify_all()

    def digest(self, size: int) -> str:
        with self._cond:
            self._available = max(self._available, size)
            self._cond.notify_all()
            while self._hashed < size and self._error is None:
                self._cond.wait()
            if self._error is not None:
                raise self._error
        return self._sha.hexdigest()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        self._thread.join()

    def _run(self) -> None:
        try:
            buffer = memoryview(bytearray(CHUNK))
            with open(self.path, "rb", buffering=0) as f:
                while True:
                    with self._cond:
                        while self._hashed >= self._available and not self._stopped:
                            self._cond.wait()
                        if self._stopped:
                            return
                        want = min(self._available - self._hashed, CHUNK)
                    n = f.readinto(buffer[:want])
                    if not n:
                        raise OSError(f"{self.path} is shorter than the bytes written to it ({self._hashed})")
                    self._sha.update(buffer[:n])  # releases the GIL: runs beside the socket reads
                    with self._cond:
                        self._hashed += n
                        self._cond.notify_all()
        except BaseException as e:  # handed to the main thread by digest()
            with self._cond:
                self._error = e
                self._cond.notify_all()


class _Restart(Exception):
    """The `.part` cannot be resumed (the server ignores Range, or a 416 for a stale part)."""


class _Retry(Exception):
    """A transient failure: try again from what is on disk after `delay` seconds."""

    def __init__(self, reason: str, delay: float | None = None):
        super().__init__(reason)
        self.delay = delay


class _Meter:
    """Progress reports at most every PROGRESS_INTERVAL_S, with a smoothed speed and an ETA."""

    def __init__(self, callback: Callable[[DownloadProgress], None], clock: Callable[[], float] = time.monotonic):
        self.callback, self.clock = callback, clock
        self.speed = 0.0
        self.total: int | None = None
        self._last_time = clock()
        self._last_bytes: int | None = None

    def start(self, done: int, total: int | None) -> None:
        self.total = total
        self._last_time, self._last_bytes = self.clock(), done
        self._emit(done)

    def update(self, done: int, *, force: bool = False) -> None:
        now = self.clock()
        elapsed = now - self._last_time
        if elapsed < PROGRESS_INTERVAL_S and not force:
            return
        if elapsed > 0 and self._last_bytes is not None and done >= self._last_bytes:
            rate = (done - self._last_bytes) / elapsed
            self.speed = rate if self.speed == 0 else SPEED_SMOOTHING * rate + (1 - SPEED_SMOOTHING) * self.speed
        self._last_time, self._last_bytes = now, done
        self._emit(done)

    def _emit(self, done: int) -> None:
        eta = None
        if self.total is not None and self.speed > 0:
            eta = max(0.0, (self.total - done) / self.speed)
        self.callback(DownloadProgress(done, self.total, self.speed, eta))


class _Download:
    """The state of one `download()` call: the `.part`, its running hash, the URL in use."""

    def __init__(self, spec: DownloadSpec, http: GuardedHttp, meter: _Meter, cancel: threading.Event):
        self.spec, self.http, self.meter, self.cancel = spec, http, meter, cancel
        self.destination = Path(spec.destination)
        self.part = part_path(self.destination)
        self.kind = expected_kind(self.destination) if spec.expect == "model" else spec.expect
        self.url = spec.url
        # True right after `refresh_url` gave this URL: a 403/410 then means "forbidden", not "expired".
        self.url_is_fresh = False
        self.restarting = False  # a 200 answered a Range request: the body replaces the .part
        self.hasher: _PartHasher | None = None  # hashes the .part from byte 0 while it grows
        self.size = 0  # bytes written to the .part
        self.reused = 0  # bytes of an earlier .part this call kept (0 once it restarts from byte 0)
        self.total: int | None = spec.expected_size
        self.buffer = bytearray(CHUNK)

    # -- the .part -----------------------------------------------------------------------------------

    def adopt_part(self) -> int:
        """Continue after an existing `.part` (hashed in the background from now on); returns its size."""
        if not self.part.exists():
            return 0
        size = self.part.stat().st_size
        if self.spec.expected_size is not None and size > self.spec.expected_size:
            log.info("%s is larger than the file; starting again", self.part)
            self.reset_part()
            return 0
        self.size = self.reused = size
        self.hasher = _PartHasher(self.part, size) if size else None
        return size

    def forget_part(self) -> None:
        """Stop hashing: the .part's bytes are about to be replaced."""
        if self.hasher is not None:
            self.hasher.stop()
        self.hasher, self.size, self.reused = None, 0, 0

    def reset_part(self) -> None:
        self.forget_part()
        self.part.unlink(missing_ok=True)

    # -- one attempt ---------------------------------------------------------------------------------

    def attempt(self) -> None:
        """One request, streamed to the end of the body. Raises _Retry, _Restart or a final error."""
        headers = {"Range": f"bytes={self.size}-"} if self.size else {}
        try:
            response = self.http.open(self.url, headers=headers)
        except TransientHttpError as e:
            raise _Retry(str(e)) from None
        with response:
            self.check_status(response)
            self.stream(response)

    def check_status(self, response: GuardedResponse) -> None:
        status = response.status
        if status == 206:
            start, total = _content_range(response.headers.get("Content-Range"))
            if start != self.size:  # not the range asked for: the bytes cannot be appended
                raise _Restart(f"the server answered a different range ({response.headers.get('Content-Range')})")
            self.set_total(total)
            return
        if status == 200:
            if self.size:
                log.info("%s ignores Range; downloading %s from the start", shown_url(response.url),
                         self.destination.name)
                self.restarting = True  # the .part is replaced once the body passed the first-bytes check
                self.forget_part()
            length = response.content_length
            self.set_total(length)
            return
        if status == 416 and self.size:
            _, total = _content_range(response.headers.get("Content-Range"))
            if total is not None and self.spec.expected_size is None:
                self.set_total(total)
            if self.total is not None and self.size == self.total:
                return  # the .part is whole; verified after this
            raise _Restart("the server refused the range (416) for a partial file that does not match it")
        if status in EXPIRED_STATUSES and self.spec.refresh_url is not None and not self.url_is_fresh:
            response.close()
            raise _Retry(f"HTTP {status} from {shown_url(response.url)}: the signed URL has likely expired",
                         delay=0)
        if status in RETRY_STATUSES:
            wait = parse_retry_after(response.headers.get("Retry-After"))
            error = self.http.status_error(response, self.spec.url)
            if wait is not None and wait > MAX_WAIT_S:
                raise error
            raise _Retry(str(error), delay=wait)
        raise self.http.status_error(response, self.spec.url, hint=self.spec.hint_401)

    def set_total(self, total: int | None) -> None:
        expected = self.spec.expected_size
        if total is not None and expected is not None and total != expected:
            raise ModelSourceError(
                f"{shown_url(self.spec.url)} is {total} bytes but the source published {expected} bytes for "
                f"{self.destination.name}; the file changed or the link is wrong — look the model up again",
                status=502)
        if total is not None:
            self.total = total
            needed = total - self.size
            ensure_space(self.destination.parent, needed, f"{self.destination.name} ({needed} bytes left to download)")

    def stream(self, response: GuardedResponse) -> None:
        if response.status == 416:
            return
        view = memoryview(self.buffer)
        head = 0
        if self.size == 0:
            head = self._read_head(response, view)
            try:
                check_body(self.kind, bytes(view[:head]), status=response.status,
                           content_type=response.content_type, url=shown_url(response.url), hint=self.spec.hint_401)
            except BodyRefused:
                if not self.restarting:  # a refused restart leaves an earlier good .part alone
                    self.reset_part()
                raise
            self.restarting = False
        with _open_part(self.part, "ab" if self.size else "wb") as f:
            if head:
                self.write(f, view[:head])
            if self.hasher is None:
                self.hasher = _PartHasher(self.part, self.size)
            self.meter.start(self.size, self.total)
            written_back = self.size
            while True:
                if self.cancel.is_set():
                    raise DownloadCancelled(f"download of {self.destination.name} cancelled at {self.size} "
                                            "bytes; the partial file is kept and the next download resumes it")
                try:
                    n = response.readinto(view)
                except (OSError, http.client.HTTPException) as e:
                    raise _Retry(f"the connection dropped at {self.size} bytes ({type(e).__name__})") from None
                if not n:
                    break
                self.write(f, view[:n])
                if self.total is None and self.size > self.spec.max_unknown_size:
                    self.reset_part()
                    raise ModelSourceError(
                        f"{shown_url(self.spec.url)} sent more than {self.spec.max_unknown_size} bytes without saying "
                        "how large the file is; the download was stopped and its partial file removed. If the file "
                        "really is that large, download it by hand into the models folder", status=502)
                self.hasher.advance(self.size)
                if self.size - written_back >= WRITEBACK_BYTES:
                    _start_writeback(f, written_back, self.size - written_back)
                    written_back = self.size
                self.meter.update(self.size)
            self.meter.update(self.size, force=True)  # all received: what follows is verification
        if self.total is not None and self.size < self.total:
            raise _Retry(f"the body ended at {self.size} of {self.total} bytes")

    def _read_head(self, response: GuardedResponse, view: memoryview) -> int:
        """Fill the buffer's start with SNIFF_BYTES (or the whole, shorter body)."""
        filled = 0
        while filled < SNIFF_BYTES:
            try:
                n = response.readinto(view[filled:SNIFF_BYTES])
            except (OSError, http.client.HTTPException) as e:
                raise _Retry(f"the connection dropped at the start ({type(e).__name__})") from None
            if not n:
                break
            filled += n
        return filled

    def write(self, f, data: memoryview) -> None:
        try:
            written = f.write(data)
            while written < len(data):  # unbuffered writes may be partial
                written += f.write(data[written:])
        except OSError as e:
            if is_disk_full(e):
                # A partial file the user cannot finish here is only in the way: removed.
                needed = (self.total - self.size) if self.total is not None else None
                self.reset_part()
                raise DiskFullError(self.destination.parent, needed, free_space(self.destination.parent),
                                    self.destination.name) from None
            raise
        self.size += len(data)

    # -- the end -------------------------------------------------------------------------------------

    def verify_and_place(self) -> str:
        spec = self.spec
        sha256 = self.hasher.digest(self.size) if self.hasher is not None else hashlib.sha256().hexdigest()
        if self.hasher is not None:
            self.hasher.stop()
        if spec.expected_size is not None and self.size != spec.expected_size:
            self.reset_part()
            raise ModelSourceError(f"{self.destination.name}: downloaded {self.size} bytes, the source published "
                                   f"{spec.expected_size}; the partial file was removed — try again", status=502)
        if spec.expected_sha256 and sha256 != spec.expected_sha256.lower():
            self.reset_part()
            raise ModelSourceError(
                f"{self.destination.name}: sha256 mismatch — the source published {spec.expected_sha256.lower()}, "
                f"the downloaded file is {sha256}. The file was removed (it is damaged or not the published one); "
                "try again, and if it repeats, the source's file has changed: look the model up again", status=502)
        with open(self.part, "rb") as f:
            os.fsync(f.fileno())
        if not place_without_replacing(self.part, self.destination):
            raise ModelSourceError(f"{self.destination} appeared while downloading; it was not overwritten. The "
                                   f"verified download is kept as {self.part.name}", status=409)
        return sha256


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """(start, total) of `bytes a-b/total` or `bytes */total`; None where absent or `*`."""
    if not value:
        return None, None
    try:
        unit, spec = value.strip().split(" ", 1)
        span, total = spec.split("/", 1)
        start = None if span == "*" else int(span.split("-", 1)[0])
        return start, None if total.strip() == "*" else int(total)
    except ValueError:
        return None, None


def download(spec: DownloadSpec, http: GuardedHttp, *, progress: Callable[[DownloadProgress], None] = lambda p: None,
             cancel: threading.Event | None = None, retries: int = 3, backoff: float = 0.5) -> DownloadResult:
    """Download `spec.url` to `spec.destination`, verified (see the module docstring). Raises
    ModelSourceError (HttpStatusError, BodyRefused) with a message for the user, DiskFullError,
    or DownloadCancelled. `retries` counts failed attempts in a row (an attempt that moved the
    download forward resets it); `backoff` is the first wait between them, doubled each time."""
    destination = Path(spec.destination)
    if spec.expect not in KINDS:
        raise ValueError(f"DownloadSpec.expect must be one of {KINDS}, not {spec.expect!r}")
    if destination.exists():
        raise ModelSourceError(f"{destination} already exists; it is never overwritten (choose another name)",
                               status=409)
    destination.parent.mkdir(parents=True, exist_ok=True)
    state = _Download(spec, http, _Meter(progress), cancel or threading.Event())
    try:
        return _run(state, retries=retries, backoff=backoff)
    finally:
        if state.hasher is not None:
            state.hasher.stop()


def _run(state: _Download, *, retries: int, backoff: float) -> DownloadResult:
    spec, destination = state.spec, state.destination
    on_disk = state.adopt_part()
    if spec.expected_size is not None:
        ensure_space(destination.parent, spec.expected_size - on_disk, destination.name)
    failures, restarts, refresh = 0, 0, on_disk > 0
    while not (spec.expected_size is not None and state.size == spec.expected_size and state.size):
        state.url_is_fresh = refresh and spec.refresh_url is not None
        if state.url_is_fresh:
            state.url = spec.refresh_url()
        refresh = True  # every later attempt is a retry or a resume
        before = state.size
        try:
            state.attempt()
            break
        except _Restart as e:
            restarts += 1
            if restarts > 2:
                raise ModelSourceError(f"{shown_url(spec.url)} cannot be resumed ({e}) and restarting failed too; "
                                       "try again later", status=502) from None
            log.info("restarting %s from the start: %s", destination.name, e)
            state.reset_part()
        except _Retry as e:
            failures = 1 if state.size > before else failures + 1
            if failures > retries:
                raise ModelSourceError(f"downloading {destination.name} failed {failures} times in a row "
                                       f"(last: {e}); the partial file ({state.size} bytes) is kept: try again "
                                       "to resume", status=502) from None
            delay = min(e.delay if e.delay is not None else backoff * 2 ** (failures - 1), MAX_WAIT_S)
            log.info("download of %s: %s; retrying in %.1f s", destination.name, e, delay)
            if delay and state.cancel.wait(delay):
                raise DownloadCancelled(f"download of {destination.name} cancelled") from None
    sha256 = state.verify_and_place()
    state.meter.update(state.size, force=True)
    return DownloadResult(destination, sha256, state.size, state.reused)
