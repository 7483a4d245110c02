"""The server's side of the Ray workers: `WorkerPool` (`context.cluster`) owns the actors, decides
which idle worker takes which job, and makes a remote job look like a local one to the queue.

- **Workers** are `GenerationWorker` actors (modules.cluster.worker), one per GPU or N on CPUs
  (`RayCluster.desired_workers`). Ray restarts a dead actor (`max_restarts=-1`); the monitor thread
  notices when it answers again, and adds actors when the cluster grows (more GPUs), so a worker
  that comes back or is added takes work without a server restart.
- **Scheduling**: the queue starts jobs in FIFO order with as many slots as live workers; a job then
  takes an idle worker by checkpoint affinity (modules.cluster.scheduler). Waiting for a worker is
  FIFO too (tickets), so a fanned-out job cannot starve a later one forever.
- **Fan-out**: a txt2img/img2img request with batch count > 1 and no selected script is split into
  one request per batch, each with the seeds it would have had (seeds are fixed here first), run on
  as many workers as are idle; the images come back in order, so they are the pictures one worker
  would make. The grid, when one is saved, is saved here from all of them.
- **Nothing lost**: a worker that dies mid-job (its process killed, its node gone) has the job run
  again once on another worker, and the job's info says so; a job lost twice fails naming both
  losses. Errors of the work itself (a bad request, a broken file) are raised as they are, not retried.
- **Progress**: a relay loop polls the worker every `poll_interval` seconds, forwarding the local
  job's interrupt, skip and preview requests and bringing back steps, previews and info lines.
"""

from __future__ import annotations

import itertools
import logging
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

from modules.cluster.scheduler import Candidate, choose_worker
from modules.cluster.specs import GENERATION, LOAD, MERGE, RunStatus, WorkOutcome, WorkSpec
from modules.cluster.types import WorkerInfo, workers_summary
from modules.serving.jobs import JobInterrupted

log = logging.getLogger(__name__)

POLL_INTERVAL_S = 0.1
MONITOR_INTERVAL_S = 2.0
POLL_TIMEOUT_S = 30.0  # a poll unanswered this long: the worker is treated as lost
NO_WORKER_WAIT_S = 120.0  # a job waits this long with every worker down before it fails
REVIVE_BACKOFF_S = (5.0, 300.0)  # a worker that died for good is created again after 5 s, doubling to 5 min
ACTOR_THREADS = 4  # `run` holds one; polls and status calls use the others


class WorkerLost(RuntimeError):
    """The worker running a job went away (process killed, node gone)."""


@dataclass
class _Slot:
    """One worker as the pool tracks it. Changed under the pool's lock only."""

    id: str
    actor: Any
    state: str = "starting"  # starting, idle, busy, dead
    node: str = ""
    device: str = ""
    loaded: tuple[str, ...] = ()
    current_job: str | None = None
    jobs_done: int = 0
    last_error: str | None = None
    idle_since: float = field(default_factory=time.monotonic)
    probing: bool = False
    retry_at: float = 0.0  # dead for good (its creation failed): created again from this monotonic time
    backoff: float = 0.0
    model_loads: int = 0  # as its process last reported (a restarted worker counts from 0 again)

    def info(self) -> WorkerInfo:
        return WorkerInfo(id=self.id, node=self.node, device=self.device, state=self.state,
                          loaded_checkpoints=self.loaded, current_job=self.current_job, jobs_done=self.jobs_done,
                          last_error=self.last_error, extra={"model_loads": self.model_loads})


class _Progress:
    """The job's progress over its parts (one part unless fanned out), reported to its control."""

    def __init__(self, control, parts: int):
        self.control = control
        self.lock = threading.Lock()
        self.steps = [0] * parts
        self.totals = [0] * parts
        self.done = [False] * parts
        self.fanned_out = parts > 1

    def update(self, index: int, status: RunStatus) -> None:
        for line in status.info_lines:
            self.control.add_info(line)
        for key, value in status.info_values.items():
            if not (self.fanned_out and key in ("job_count", "job_no")):
                self.control.set_info(key, value)
        with self.lock:
            if status.total:
                self.steps[index], self.totals[index] = status.step, status.total
            step, total = self._aggregate()
        if total:
            preview = status.preview
            self.control.report(step, total, (lambda: preview) if preview is not None else None)

    def finish(self, index: int) -> None:
        with self.lock:
            self.steps[index] = self.totals[index]
            self.done[index] = True
            done = sum(self.done)
            step, total = self._aggregate()
        if self.fanned_out:
            self.control.set_info("job_no", done)
        if total:
            self.control.report(step, total)

    def _aggregate(self) -> tuple[int, int]:
        known = [total for total in self.totals if total]
        estimate = known[0] if known else 0
        return sum(self.steps), sum(total or estimate for total in self.totals)


class _PartsControl:
    """The job's control as the parts of a fanned-out job see it: interrupted also when a part failed."""

    def __init__(self, control):
        self._control = control
        self._stopped = threading.Event()

    def stop(self) -> None:
        self._stopped.set()

    @property
    def interrupted(self) -> bool:
        return self._stopped.is_set() or bool(self._control.interrupted)

    def __getattr__(self, name):
        return getattr(self._control, name)


def _preview_wanted(control) -> bool:
    return bool(getattr(control, "preview_wanted", False))


class WorkerPool:
    """The Ray workers of one server (see the module docstring). `context`: the server's AppContext
    (its settings, which workers mirror; its checkpoint list, for affinity and a merge's output).
    `on_capacity`: called when the number of live workers changes (the queue's `capacity_changed`)."""

    def __init__(self, cluster, context, *, on_capacity: Callable[[], None] = lambda: None,
                 poll_interval: float = POLL_INTERVAL_S, monitor_interval: float = MONITOR_INTERVAL_S,
                 affinity: bool = True):
        self.cluster = cluster
        self._context = context
        self._args = context.args
        self._settings = context.settings
        self._checkpoints = context.checkpoints
        self._on_capacity = on_capacity
        self.poll_interval = poll_interval
        self._monitor_interval = monitor_interval
        self._cond = threading.Condition()
        self._slots: list[_Slot] = []
        self._tickets: deque[object] = deque()
        self._ids = itertools.count(1)
        self._stopping = threading.Event()
        self._monitor: threading.Thread | None = None
        self._job_ids = itertools.count(1)
        # False: the worker idle longest takes the job whatever it holds (bench/bench_ray.py's baseline).
        self.affinity = affinity
        # "Merge and load": the trial generations use until a checkpoint is chosen, (path, title, sha256).
        self._trial: tuple[str, str, str] | None = None
        self._trial_info = None  # its CheckpointInfo, made once (hashing reads the file)
        self._listings = 0  # rescans of the model folders; workers with older lists rescan first

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Create the workers (they load in the background) and the monitor."""
        self._grow()
        self._monitor = threading.Thread(target=self._watch, name="ray-worker-monitor", daemon=True)
        self._monitor.start()

    def wait_ready(self, count: int | None = None, timeout: float = 300.0) -> None:
        """Block until `count` workers (default: all) are idle or busy; TimeoutError naming the others."""
        deadline = time.monotonic() + timeout
        with self._cond:
            wanted = len(self._slots) if count is None else count
            while sum(1 for slot in self._slots if slot.state in ("idle", "busy")) < wanted:
                left = deadline - time.monotonic()
                if left <= 0:
                    states = ", ".join(f"{slot.id}: {slot.state} {slot.last_error or ''}".strip() for slot in self._slots)
                    raise TimeoutError(f"Ray workers not ready after {timeout:.0f} s ({states})")
                self._cond.wait(min(left, 0.5))

    def shutdown(self) -> None:
        self._stopping.set()
        import ray

        with self._cond:
            slots = list(self._slots)
            self._cond.notify_all()
        for slot in slots:
            try:
                ray.kill(slot.actor, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone
                pass
        self.cluster.shutdown()

    # -- what the server asks --------------------------------------------------------------------

    def capacity(self) -> int:
        """Live workers (starting ones count: they take the job once ready); at least 1."""
        with self._cond:
            return max(1, sum(1 for slot in self._slots if slot.state != "dead"))

    def describe(self) -> list[WorkerInfo]:
        with self._cond:
            return [slot.info() for slot in self._slots]

    def summary(self) -> str:
        return workers_summary(self.describe())

    def holders(self, title: str) -> int:
        """How many live workers hold checkpoint `title` (with or without its " [hash]")."""
        wanted = _unhashed(title)
        with self._cond:
            return sum(1 for slot in self._slots
                       if slot.state != "dead" and wanted in map(_unhashed, slot.loaded))

    def run_generation(self, submission, control):
        """The generation job's work on the server: the request on the workers (fanned out when it
        can be), its result as the embedded worker returns it."""
        if self._grid_runs_here(submission):
            from modules.extension_host.xyz.runner import GridNeedsOneWorker

            try:
                return self._run_scripts_here(submission, control)
            except GridNeedsOneWorker as reason:
                log.info("X/Y/Z plot on one worker: %s", reason)
        settings = dict(self._settings.stored())
        parts = self._split(submission)
        control.set_info("job_count", submission.request.n_iter)
        if len(parts) == 1:
            # The overrides to keep are kept here, in config.json; the worker's settings are a copy.
            spec = self._generation_spec(settings, replace(submission, keep_overrides={}))
            outcome = self._run_spec(spec, control, _Progress(control, 1), 0)
            return self._generation_result(outcome, submission)
        part_settings = {**settings, "grid_save": False}  # the grid of all parts is saved here
        specs = [self._generation_spec(part_settings, replace(part, keep_overrides={})) for part in parts]
        outcomes = self._run_parts(specs, control)
        return self._joined_result([outcome or WorkOutcome(interrupted=True) for outcome in outcomes],
                                   submission)

    def run_cells(self, requests: list, control, save: bool | None) -> list:
        """The X/Y/Z plot's cells at once (`GridServices.cell_executor`): each request on a worker,
        with its checkpoint made current there; GenerationResults in order, None for a cell an
        interrupt stopped before it ran."""
        from modules.serving.generation_service import GenerationSubmission

        settings = dict(self._settings.stored())
        specs = [self._generation_spec(settings, GenerationSubmission(request, save=save, save_grid=False))
                 for request in requests]
        outcomes = self._run_parts(specs, control)
        results = []
        for outcome in outcomes:
            if outcome is None or outcome.result is None:
                results.append(None)
                continue
            outcome.result.interrupted |= outcome.interrupted
            results.append(outcome.result)
        return results

    def _generation_spec(self, settings: dict[str, Any], submission) -> WorkSpec:
        """The spec of one generation: the checkpoint it names, else the merge trial being tried,
        else the selected one."""
        named = submission.request.override_settings.get("sd_model_checkpoint")
        with self._cond:
            trial = self._trial
        if not named and trial is not None:
            # The title a worker reports for it (CheckpointInfo.title), so affinity finds its holders.
            title = f"{trial[1]} [{trial[2][:10]}]" if trial[2] else trial[1]
            return WorkSpec(GENERATION, settings, title, submission=submission, temporary=trial)
        # With none selected yet, the one the start-up picks: every part of a job on the same model.
        checkpoint = self._checkpoint_for(named or settings.get("sd_model_checkpoint")
                                          or self._context.startup_checkpoint_title())
        return WorkSpec(GENERATION, settings, checkpoint, submission=submission)

    def trial_info(self):
        """The merge trial generations use now ("merge and load"), as a CheckpointInfo, or None."""
        with self._cond:
            return self._trial_info

    def listings_changed(self) -> None:
        """The server rescanned the model folders: each worker rescans before its next job."""
        with self._cond:
            self._listings += 1

    def apply_settings(self) -> None:
        """Apply the server's settings on one worker now, making the selected checkpoint current there
        (a VAE change that fails raises here, so the settings change is undone, as without workers)."""
        from modules.common.job_control import NullControl

        title = self._context.startup_checkpoint_title() if self._trial is None else None
        if self._trial is None and title is None:
            return
        spec = WorkSpec(LOAD, dict(self._settings.stored()), title, temporary=self._trial)
        self._run_spec(spec, NullControl(), _Progress(NullControl(), 1), 0)

    def _run_parts(self, specs: list[WorkSpec], control) -> list[WorkOutcome | None]:
        """Run `specs` on as many workers as are free, each outcome in its place; None for a part an
        interrupt stopped before it started. The first error of a part is raised (after the others end)."""
        progress = _Progress(control, len(specs))
        parts_control = _PartsControl(control)

        def run(index: int) -> WorkOutcome | None:
            try:
                return self._run_spec(specs[index], parts_control, progress, index)
            except JobInterrupted:
                return None
            except BaseException:
                parts_control.stop()  # one part failed: the job fails, the other parts stop (as on one worker)
                raise

        with ThreadPoolExecutor(min(len(specs), 32), thread_name_prefix="ray-fanout") as pool:
            futures = [pool.submit(run, index) for index in range(len(specs))]
            return [future.result() for future in futures]

    def _grid_runs_here(self, submission) -> bool:
        """Whether the X/Y/Z plot is run from here, its cells spread over the workers: it is the
        selected script, and no always-on script needs to see the whole job (those run with the
        job on one worker)."""
        from modules.extension_host.xyz.plan import SCRIPT_TITLE
        from modules.generation.requests import Img2ImgRequest

        selection = submission.selection
        runtime = self._context.extensions
        if selection is None or not selection.script or runtime is None:
            return False
        if selection.script.strip().lower() != SCRIPT_TITLE.lower():
            return False
        tab = runtime.scripts.tab(isinstance(submission.request, Img2ImgRequest))
        return not tab.alwayson

    def _run_scripts_here(self, submission, control):
        from modules.extension_host.scripts import run_img2img, run_txt2img
        from modules.generation.requests import Img2ImgRequest

        request = submission.request
        run = run_img2img if isinstance(request, Img2ImgRequest) else run_txt2img
        result = run(self._context, request, control, save=submission.save, selection=submission.selection)
        return self._generation_result(WorkOutcome(result=result), submission)

    def run_merge(self, request, control, *, load_without_saving: bool = False):
        """A merge on one worker; a saved merge is then listed here (the workers list it at their next job)."""
        spec = WorkSpec(MERGE, dict(self._settings.stored()), None, merge=request,
                        load_without_saving=load_without_saving)
        outcome = self._run_spec(spec, control, _Progress(control, 1), 0)
        if outcome.interrupted and outcome.result is None:
            raise JobInterrupted("the merge was interrupted")
        result = outcome.result
        if load_without_saving:
            # Every worker's next generation uses the trial (it is in the shared trial folder), as the
            # embedded mode's next generation uses the model merge_and_load made current.
            from modules.library.checkpoints import CheckpointInfo
            from modules.library.hashes import legacy_model_hash

            stat = result.path.stat()
            name = f"(merge trial) {result.path.name}"
            info = CheckpointInfo(filename=result.path, name=name, hash=legacy_model_hash(result.path),
                                  sha256=result.sha256, size_bytes=stat.st_size, mtime=stat.st_mtime)
            with self._cond:
                self._trial, self._trial_info = (str(result.path), name, result.sha256), info
        else:
            self._checkpoints.add_file(result.path, sha256=result.sha256)
        return result

    def load_checkpoint(self, title: str, control) -> WorkOutcome:
        """Make `title` current on one worker (the one that holds it, else the least disturbed)."""
        spec = WorkSpec(LOAD, dict(self._settings.stored()), title)
        outcome = self._run_spec(spec, control, _Progress(control, 1), 0)
        with self._cond:
            self._trial = self._trial_info = None  # a chosen checkpoint replaces the merge being tried
        return outcome

    def broadcast(self, method: str, timeout: float = 600.0) -> list[str]:
        """Call `method` (e.g. "unload", "refresh") on every live worker; returns the errors, one line each."""
        import ray

        with self._cond:
            targets = [slot for slot in self._slots if slot.state in ("idle", "busy")]
        refs = [(slot, getattr(slot.actor, method).remote()) for slot in targets]
        errors = []
        for slot, ref in refs:
            try:
                ray.get(ref, timeout=timeout)
            except Exception as error:  # noqa: BLE001 - reported per worker
                errors.append(f"{slot.id}: {type(error).__name__}: {error}")
        if method == "unload":
            with self._cond:
                for slot in targets:
                    slot.loaded = ()
        return errors

    # -- running one spec --------------------------------------------------------------------------

    def _run_spec(self, spec: WorkSpec, control, progress: _Progress, index: int) -> WorkOutcome:
        job_id = f"{getattr(control, 'job_id', 'job')}#{next(self._job_ids)}"
        with self._cond:
            spec = replace(spec, listings=self._listings)
        lost: list[str] = []
        tried: set[str] = set()
        while True:
            # A job run again goes first: it waited its turn already.
            slot = self._acquire(spec.checkpoint, tried, control, first=bool(lost))
            try:
                outcome = self._dispatch(slot, spec, job_id, control, progress, index)
            except WorkerLost as error:
                self._mark_lost(slot, str(error))
                tried.add(slot.id)
                lost.append(f"worker {slot.id}: {error}")
                if len(lost) >= 2:
                    raise RuntimeError(f"the job was lost twice: {lost[0]}; then {lost[1]}") from None
                control.add_info(f"Worker {slot.id} was lost while running this job ({error}); "
                                 "running it again on another worker.")
                log.warning("Job %s: worker %s lost (%s); running it again", job_id, slot.id, error)
                continue
            except BaseException as error:
                self._release(slot, None, f"{type(error).__name__}: {error}")
                raise
            self._release(slot, outcome, None)
            if outcome.final_status is not None:
                progress.update(index, outcome.final_status)
            progress.finish(index)
            return outcome

    def _dispatch(self, slot: _Slot, spec: WorkSpec, job_id: str, control, progress: _Progress,
                  index: int) -> WorkOutcome:
        import ray
        from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

        lost_errors = _lost_errors()
        with self._cond:
            slot.current_job = getattr(control, "job_id", job_id)
        skip = False  # a skip is handed over once the worker runs the job (poll answers)
        try:
            ref = slot.actor.run.remote(job_id, spec)
            while True:
                ready, _ = ray.wait([ref], timeout=self.poll_interval)
                if ready:
                    break
                skip = control.consume_skip() or skip
                try:
                    status = ray.get(slot.actor.poll.remote(job_id, _preview_wanted(control), bool(control.interrupted),
                                                            skip), timeout=POLL_TIMEOUT_S)
                except GetTimeoutError:
                    # It may still be running the job: stop it (Ray restarts the process) before the
                    # job runs elsewhere, or it would run twice.
                    ray.kill(slot.actor, no_restart=False)
                    raise WorkerLost(f"it did not answer for {POLL_TIMEOUT_S:.0f} s") from None
                if status is not None:
                    skip = False
                    progress.update(index, status)
            outcome: WorkOutcome = ray.get(ref)
        except RayTaskError as error:
            cause = getattr(error, "cause", None)
            if isinstance(cause, lost_errors):
                raise WorkerLost(_short(cause)) from None
            if isinstance(cause, Exception):
                raise cause.with_traceback(None) from None
            raise
        except lost_errors as error:
            raise WorkerLost(_short(error)) from None
        except RayActorError as error:
            raise WorkerLost(_short(error)) from None
        return outcome

    # -- results -------------------------------------------------------------------------------

    def _generation_result(self, outcome: WorkOutcome, submission):
        result = outcome.result
        if outcome.interrupted and result is not None:
            result.interrupted = True
        if outcome.result is None and outcome.interrupted:
            raise JobInterrupted("interrupted before any image was made")
        if submission.keep_overrides and outcome.current_checkpoint is not None:
            kept = dict(submission.keep_overrides)
            if "sd_model_checkpoint" in kept:
                kept["sd_model_checkpoint"], kept["sd_checkpoint_hash"] = outcome.current_checkpoint
            self._settings.apply(kept)
        elif submission.keep_overrides:
            self._settings.apply(dict(submission.keep_overrides))
        return result

    def _joined_result(self, outcomes: list[WorkOutcome], submission):
        from modules.generation.engine import GenerationResult

        joined = GenerationResult()
        for outcome in outcomes:
            part = outcome.result or GenerationResult()
            for name in ("images", "seeds", "subseeds", "prompts", "negative_prompts", "infotexts", "saved_paths"):
                getattr(joined, name).extend(getattr(part, name))
            joined.warnings += [warning for warning in part.warnings if warning not in joined.warnings]
            joined.interrupted |= outcome.interrupted or part.interrupted
            for key, value in part.timings.items():
                joined.timings[key] = joined.timings.get(key, 0.0) + value
        snapshot = self._settings.current().with_overrides(submission.request.override_settings)
        do_save = snapshot["samples_save"] if submission.save is None else submission.save
        if do_save and snapshot["grid_save"] and submission.save_grid and len(joined.images) > 1:
            from modules.generation.engine import save_grid_of

            info = self._checkpoint_info(outcomes[0].current_checkpoint)
            joined.saved_paths.append(save_grid_of(joined, submission.request, snapshot,
                                                   str(self._settings.path.parent), info))
        self._generation_result(WorkOutcome(result=joined, current_checkpoint=outcomes[0].current_checkpoint),
                                submission)
        return joined

    def _checkpoint_info(self, current: tuple[str, str] | None):
        if current is None:
            return None
        try:
            return self._checkpoints.find(current[0])
        except Exception:  # noqa: BLE001 - a merge trial is not listed; the grid's name does without
            return None

    # -- fan-out -----------------------------------------------------------------------------------

    def _split(self, submission) -> list:
        """One submission per batch when the request has several and nothing would see the whole job
        (a selected script); the seeds each batch would get, so the pictures do not change."""
        request = submission.request
        selection = submission.selection
        if request.n_iter <= 1 or (selection is not None and selection.script) or self.capacity() < 2:
            return [submission]
        from modules.generation.rng import get_fixed_seed, per_image_seeds

        seed, subseed = get_fixed_seed(request.seed), get_fixed_seed(request.subseed)
        seeds, subseeds = per_image_seeds(seed, subseed, request.subseed_strength, request.n_iter * request.batch_size)
        size = request.batch_size
        parts = []
        for batch in range(request.n_iter):
            part = request.model_copy(update={"n_iter": 1, "seed": seeds[batch * size],
                                              "subseed": subseeds[batch * size]})
            parts.append(replace(submission, request=part))
        return parts

    # -- scheduling ----------------------------------------------------------------------------

    def _checkpoint_for(self, name: str | None) -> str | None:
        if not name:
            return None
        try:
            return self._checkpoints.find(name).title
        except Exception:  # noqa: BLE001 - the worker names a missing checkpoint in its own error
            return name

    def _acquire(self, checkpoint: str | None, avoid: set[str], control, *, first: bool = False) -> _Slot:
        """The worker for a job (FIFO among waiting jobs, `first` ahead of them; affinity among idle
        workers), marked busy. Waits while none is idle; an interrupt while waiting ends the job."""
        ticket = object()
        all_down_since: float | None = None
        with self._cond:
            if first:
                self._tickets.appendleft(ticket)
            else:
                self._tickets.append(ticket)
            try:
                while True:
                    if self._stopping.is_set():
                        raise RuntimeError("the Ray worker pool is shut down")
                    if self._tickets[0] is ticket:
                        idle = [slot for slot in self._slots if slot.state == "idle"]
                        live = [slot for slot in self._slots if slot.state != "dead"]
                        preferred = [slot for slot in idle if slot.id not in avoid]
                        # Another worker when there is one; the same one again (restarted) when not.
                        pick_from = preferred or (idle if all(slot.id in avoid for slot in live) else [])
                        if pick_from:
                            slot = self._choose(pick_from, checkpoint)
                            slot.state = "busy"
                            return slot
                    if getattr(control, "interrupted", False):
                        raise JobInterrupted("interrupted while waiting for a worker")
                    if any(slot.state != "dead" for slot in self._slots):
                        all_down_since = None
                    elif all_down_since is None:
                        all_down_since = time.monotonic()
                        control.add_info("Waiting for a Ray worker: none is up ("
                                         + "; ".join(f"{slot.id}: {slot.last_error}" for slot in self._slots) + ")")
                    elif time.monotonic() - all_down_since > NO_WORKER_WAIT_S:
                        raise RuntimeError(
                            f"no Ray worker came up in {NO_WORKER_WAIT_S:.0f} s: "
                            + "; ".join(f"{slot.id}: {slot.last_error}" for slot in self._slots)
                            + ". Check the server's log for the workers' errors (docs/SCALING.md)")
                    self._cond.wait(0.2)
            finally:
                self._tickets.remove(ticket)
                self._cond.notify_all()

    def _choose(self, idle: list[_Slot], checkpoint: str | None) -> _Slot:
        limit = int(self._settings.current()["sd_checkpoints_limit"])
        # Workers list titles with the sha256 they computed while loading ("a.safetensors [644306e401]");
        # the server's listing may not know it yet ("a.safetensors"): compare without it.
        candidates = [Candidate(slot.id, tuple(map(_unhashed, slot.loaded)), limit, slot.idle_since) for slot in idle]
        others = [tuple(map(_unhashed, slot.loaded)) for slot in self._slots if slot.state == "busy"]
        chosen = choose_worker(candidates, _unhashed(checkpoint) if self.affinity and checkpoint else None, others)
        return next(slot for slot in idle if slot.id == chosen.id)

    def _release(self, slot: _Slot, outcome: WorkOutcome | None, error: str | None) -> None:
        with self._cond:
            if slot.state == "busy":
                slot.state = "idle"
            slot.current_job = None
            slot.idle_since = time.monotonic()
            if outcome is not None:
                slot.jobs_done += 1
                slot.loaded = tuple(outcome.loaded_checkpoints)
                slot.device = outcome.device or slot.device
                slot.model_loads = outcome.model_loads
            if error is not None:
                slot.last_error = error
            self._cond.notify_all()

    def _mark_lost(self, slot: _Slot, reason: str) -> None:
        with self._cond:
            slot.state = "dead"
            slot.current_job = None
            slot.loaded = ()
            slot.last_error = f"lost: {reason}"
            self._cond.notify_all()
        self._on_capacity()

    # -- workers coming and going ------------------------------------------------------------------

    def _grow(self) -> None:
        """Create actors up to the number the cluster should run."""
        wanted = self.cluster.desired_workers()
        with self._cond:
            missing = wanted - len(self._slots)
        if missing <= 0:
            return
        for _ in range(missing):
            slot = _Slot(f"worker-{next(self._ids)}", None)
            self._create_actor(slot)
            with self._cond:
                self._slots.append(slot)
        self._on_capacity()

    def _create_actor(self, slot: _Slot) -> None:
        """A new actor for `slot` (a new worker, or one whose process died for good)."""
        import ray

        from modules.cluster.worker import GenerationWorker

        options = {"max_restarts": -1, "max_task_retries": 0, "max_concurrency": ACTOR_THREADS,
                   **self.cluster.actor_options()}
        threads = None if options.get("num_gpus") else options.get("num_cpus")
        actor = ray.remote(GenerationWorker).options(**options).remote(slot.id, self._args, threads)
        with self._cond:
            slot.actor, slot.state = actor, "starting"
        log.info("Ray worker %s created (%s)", slot.id, options)

    def _watch(self) -> None:
        while not self._stopping.wait(self._monitor_interval if self._all_up() else min(self._monitor_interval, 0.5)):
            try:
                self._grow()
                self._probe()
            except Exception:  # noqa: BLE001 - the monitor must keep running; the next round retries
                log.exception("Ray worker monitor failed; retrying")

    def _all_up(self) -> bool:
        with self._cond:
            return all(slot.state in ("idle", "busy") for slot in self._slots)

    def _probe(self) -> None:
        """Ask starting and lost workers whether they answer (Ray restarts a dead actor)."""
        import ray

        now = time.monotonic()
        with self._cond:
            revive = [slot for slot in self._slots if slot.state == "dead" and slot.retry_at and now >= slot.retry_at]
            for slot in revive:
                slot.retry_at = 0.0
        for slot in revive:
            self._create_actor(slot)
        with self._cond:
            waiting = [slot for slot in self._slots if slot.state in ("starting", "dead") and not slot.probing
                       and not slot.retry_at]
            for slot in waiting:
                slot.probing = True
        for slot in waiting:
            threading.Thread(target=self._probe_one, args=(slot, ray), name=f"probe-{slot.id}", daemon=True).start()

    def _probe_one(self, slot: _Slot, ray) -> None:
        from ray.exceptions import ActorDiedError

        try:
            hello = ray.get(slot.actor.hello.remote(), timeout=600)
        except ActorDiedError as error:  # dead for good (e.g. its start failed): created again, later
            with self._cond:
                slot.probing = False
                slot.state, slot.last_error = "dead", _short(error)
                slot.backoff = min(max(slot.backoff * 2, REVIVE_BACKOFF_S[0]), REVIVE_BACKOFF_S[1])
                slot.retry_at = time.monotonic() + slot.backoff
                self._cond.notify_all()
            log.error("Ray worker %s failed (%s); creating it again in %.0f s", slot.id, slot.last_error, slot.backoff)
            self._on_capacity()
            return
        except Exception as error:  # noqa: BLE001 - still down (restarting); the next round asks again
            with self._cond:
                slot.probing = False
                if slot.state == "starting":
                    slot.last_error = _short(error)
            return
        with self._cond:
            came_back = slot.state == "dead"
            slot.state, slot.probing, slot.backoff = "idle", False, 0.0
            slot.node, slot.device, slot.loaded = hello["node"], hello["device"], tuple(hello["loaded"])
            slot.model_loads = hello["model_loads"]
            slot.idle_since = time.monotonic()
            self._cond.notify_all()
        log.info("Ray worker %s %s on %s (%s)", slot.id, "is back" if came_back else "is ready", slot.node, slot.device)
        self._on_capacity()


def _unhashed(title: str) -> str:
    """A checkpoint title without its " [sha256 prefix]" (CheckpointInfo.title adds it once known)."""
    return re.sub(r" \[[0-9a-f]{10}\]$", "", title)


def _lost_errors() -> tuple[type[BaseException], ...]:
    from ray import exceptions

    names = ("RayActorError", "ActorDiedError", "ActorUnavailableError", "WorkerCrashedError", "NodeDiedError",
             "ObjectLostError", "OwnerDiedError", "LocalRayletDiedError")
    return tuple(getattr(exceptions, name) for name in names if hasattr(exceptions, name))


def _short(error: BaseException) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error)).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:300]
