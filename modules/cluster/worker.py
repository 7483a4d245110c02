"""The worker actor: one per GPU (or N on CPUs), each with its own application context — model
manager, engine, extensions — built by the same code as the embedded server's, and running the same
job functions (`run_generation`, the merge service's work).

The pool (modules.cluster.pool) wraps `GenerationWorker` with `ray.remote` as a threaded actor:
`run` blocks one actor thread for the job while `poll` answers on another, which is how progress,
previews, interrupt and skip cross the process boundary. Nothing here imports Ray, so the class is
tested in-process too.
"""

from __future__ import annotations

import argparse
import logging
import os
import pickle
import socket
import threading
from pathlib import Path
from typing import Any

from modules.cluster.specs import GENERATION, LOAD, MERGE, RunStatus, WorkOutcome, WorkSpec
from modules.serving.jobs import JobInterrupted

log = logging.getLogger(__name__)


class RemoteJobControl:
    """The `JobControl` a job gets on a worker. The server's relay polls it (`poll`) and passes
    interrupt, skip and preview requests in the same call; everything else is the JobControl API."""

    def __init__(self, job_id: str):
        self._job_id = job_id
        self._lock = threading.Lock()
        self._status = RunStatus(running=True)
        self._preview_new = False
        self._want_preview = False
        self._interrupt = False
        self._skip = False
        self._preview_failed = False

    @property
    def job_id(self) -> str:
        return self._job_id

    @property
    def interrupted(self) -> bool:
        return self._interrupt

    @property
    def skip_requested(self) -> bool:
        return self._skip

    def consume_skip(self) -> bool:
        with self._lock:
            pending, self._skip = self._skip, False
            return pending

    def check(self) -> None:
        if self._interrupt:
            raise JobInterrupted(f"job {self._job_id} was interrupted")

    def report(self, step: int, total: int, preview_factory=None) -> None:
        if total < 1:
            raise ValueError(f"report(step={step}, total={total}): total must be at least 1")
        with self._lock:
            self._status.step, self._status.total = min(max(step, 0), total), total
            wanted = self._want_preview
        if preview_factory is None or not wanted:
            return
        try:
            preview = preview_factory()
        except Exception:  # a broken preview must never fail a generation (as JobControl)
            if not self._preview_failed:
                log.exception("Preview for job %s failed at step %d; continuing without it", self._job_id, step)
                self._preview_failed = True
            preview = None
        with self._lock:
            self._want_preview = False
            if preview is not None:
                self._status.preview, self._status.preview_step, self._preview_new = preview, step, True

    def add_info(self, line: str) -> None:
        with self._lock:
            self._status.info_lines.append(str(line))

    def set_info(self, key: str, value: Any) -> None:
        if key == "lines":
            raise ValueError('info key "lines" is reserved; use add_info(line) to append a line')
        with self._lock:
            self._status.info_values[key] = value

    def poll(self, *, want_preview: bool = False, interrupt: bool = False, skip: bool = False) -> RunStatus:
        """The status since the last poll (a preview only when a new one was made), after recording
        the server's requests: an interrupt sticks, a skip waits to be consumed, a preview is made
        at the next reported step."""
        with self._lock:
            if interrupt:
                self._interrupt = True
            if skip:
                self._skip = True
            if want_preview:
                self._want_preview = True
            status = self._status
            sent = RunStatus(step=status.step, total=status.total,
                             preview=status.preview if self._preview_new else None,
                             preview_step=status.preview_step if self._preview_new else None,
                             info_lines=list(status.info_lines), info_values=dict(status.info_values),
                             running=status.running)
            status.info_lines.clear()
            status.info_values.clear()
            self._preview_new = False
            return sent


def worker_context(args: argparse.Namespace):
    """The worker's application context: the server's flags, its data folder (shared), settings
    mirrored from the server and never written, no sweep of other processes' temp files, the
    enabled extensions loaded (their scripts and callbacks run where the model is)."""
    from modules.extension_host.environment import app_scope
    from modules.serving.app_context import AppContext

    context = AppContext.from_args(args, worker=True)
    context.refresh_listings()
    with app_scope(context):
        from webui import load_extensions

        load_extensions(context, args)
    return context


class GenerationWorker:
    """A worker's state and the methods the server calls on it (through Ray; see the module
    docstring). `args`: the server's parsed flags (paths, precision, device options)."""

    def __init__(self, worker_id: str, args: argparse.Namespace, threads: int | None = None):
        self.worker_id = worker_id
        if threads:
            import torch

            torch.set_num_threads(threads)
        self._context = worker_context(args)
        self._lock = threading.Lock()
        self._model_loads = 0  # checkpoints read from disk (what affinity saves), for the pool's view
        self._context.models.add_load_listener(self._count_load)
        self._controls: dict[str, RemoteJobControl] = {}
        self._mirrored: dict[str, Any] | None = None
        self._listings = 0  # the server's rescan count this worker's lists are from

    def __repr__(self) -> str:  # Ray prefixes the worker's log lines with it
        return f"GenerationWorker({self.worker_id})"

    # -- called by the server ----------------------------------------------------------------------

    def hello(self) -> dict[str, Any]:
        """Who and where this worker is, and what it holds."""
        return {"node": _node_name(), "pid": os.getpid(), "device": self._device(),
                "loaded": self._loaded(), "model_loads": self._model_loads}

    def run(self, job_id: str, spec: WorkSpec) -> WorkOutcome:
        """Run `spec` as job `job_id` (blocks this actor thread); an interrupted job returns what it
        finished with `interrupted` set. Other exceptions travel to the server as they are."""
        from modules.extension_host.environment import app_scope

        control = RemoteJobControl(job_id)
        with self._lock:
            self._controls[job_id] = control
        outcome = WorkOutcome()
        try:
            self._mirror_settings(spec.settings)
            if spec.listings != self._listings:  # the server rescanned the model folders since
                self._context.refresh()
                self._listings = spec.listings
            with app_scope(self._context):
                outcome.result = self._run(spec, control)
            outcome.interrupted = control.interrupted
        except JobInterrupted:
            outcome.interrupted = True
        except Exception as error:
            raise portable_error(error) from None
        except BaseException as error:  # SystemExit from an extension: would end this worker's process
            raise RuntimeError(f"{type(error).__name__}: {error}") from None
        finally:
            with self._lock:
                self._controls.pop(job_id, None)
            control._status.running = False
            outcome.final_status = control.poll()
        outcome.loaded_checkpoints = self._loaded()
        info = self._context.models.current_info()
        outcome.current_checkpoint = (info.title, info.sha256 or "") if info is not None else None
        outcome.device = self._device()
        outcome.model_loads = self._model_loads
        return outcome

    def poll(self, job_id: str, want_preview: bool = False, interrupt: bool = False,
             skip: bool = False) -> RunStatus | None:
        """The job's status (see `RemoteJobControl.poll`); None when it does not run here (yet)."""
        with self._lock:
            control = self._controls.get(job_id)
        if control is None:
            return None
        return control.poll(want_preview=want_preview, interrupt=interrupt, skip=skip)

    def unload(self) -> None:
        """Free every loaded model (`/sdapi/v1/unload-checkpoint` on every worker)."""
        self._context.models.unload_all()
        if self._context.upscalers is not None:
            self._context.upscalers.free()

    def refresh(self) -> None:
        """Rescan the model folders (files added on the shared storage)."""
        self._context.refresh()

    # -- internals ---------------------------------------------------------------------------------

    def _count_load(self, model) -> None:
        self._model_loads += 1

    def _run(self, spec: WorkSpec, control: RemoteJobControl) -> Any:
        context = self._context
        if spec.kind == GENERATION:
            from modules.serving.generation_service import run_generation

            overrides = spec.submission.request.override_settings
            if spec.temporary is not None and "sd_model_checkpoint" not in overrides:
                path, title, sha256 = spec.temporary
                context.models.use_temporary(Path(path), title, sha256)
            elif spec.checkpoint:
                self._make_current(spec.checkpoint)
            return run_generation(context, spec.submission, control)
        if spec.kind == MERGE:
            from modules.merging.service import merge_work

            context.checkpoints.refresh()  # inputs another worker merged since this one listed them
            return merge_work(context, spec.merge, load_without_saving=spec.load_without_saving)(control)
        if spec.kind == LOAD:
            if spec.temporary is not None:
                path, title, sha256 = spec.temporary
                context.models.use_temporary(Path(path), title, sha256)
            else:
                self._make_current(spec.checkpoint)
            return None
        raise ValueError(f"unknown kind of work {spec.kind!r}; expected {GENERATION}, {MERGE} or {LOAD}")

    def _make_current(self, title: str | None) -> None:
        if title is None:
            self._context.load_default_model()
            return
        if title not in self._context.checkpoints:
            self._context.checkpoints.refresh()  # a file the server lists and this worker has not seen yet
        self._context.models.load(title)

    def _mirror_settings(self, values: dict[str, Any]) -> None:
        """Take the server's settings; a change that concerns the loaded model (the VAE) applies now,
        between jobs, as on the server."""
        if values == self._mirrored:
            return
        changed = self._context.settings.mirror(values)
        if changed:
            self._context.settings_changed(changed)  # a VAE that fails raises here, and again next job
        self._mirrored = dict(values)

    def _loaded(self) -> tuple[str, ...]:
        return tuple(self._context.models.loaded_titles())

    def _device(self) -> str:
        model = self._context.models.current()
        if model is not None:
            return str(model.device)
        import torch

        return "cuda:0" if torch.cuda.is_available() and not self._context.args.use_cpu else "cpu"


def portable_error(error: Exception) -> Exception:
    """`error` if it survives pickling (Ray sends it to the server, which maps its type to an HTTP
    status), else its nearest built-in base class with the same message: an error whose class
    cannot be rebuilt from its args would reach the server as an opaque Ray error."""
    try:
        copy = pickle.loads(pickle.dumps(error))
        if type(copy) is type(error) and str(copy) == str(error):
            return error
    except Exception:  # noqa: BLE001 - any failure to round-trip means: send a plain one
        pass
    base = next(cls for cls in type(error).__mro__ if cls.__module__ == "builtins")
    return base(str(error))


def _node_name() -> str:
    try:
        import ray

        if ray.is_initialized():
            return ray.get_runtime_context().get_node_id()[:12] + f" ({socket.gethostname()})"
    except ImportError:
        pass
    return socket.gethostname()
