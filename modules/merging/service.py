"""Running a checkpoint merge as a job: what the web UI's Checkpoint Merger tab, the HTTP merge
route and the X/Y/Z plot's Merge multiplier axis share (where the result goes, which VAE files can be baked in, the trial folder of "merge
and load"), so the two cannot drift apart.

The work runs on the job queue's worker, after any generation already queued; callers get the
`Job` at once and watch its progress, result (`merger.MergeResult`) or error.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from modules.merging.merger import MergeRequest, MergeResult, merge_and_load, merge_checkpoints

if TYPE_CHECKING:
    from modules.serving.app_context import AppContext
    from modules.serving.jobs import Job, JobControl
    from modules.serving.paths import Paths

MERGE_JOB_KIND = "merge"


def merge_output_dir(paths: Paths) -> Path:
    """Saved merges go where A1111 puts them: `--ckpt-dir`, else `models/Stable-diffusion`."""
    return paths.ckpt_dir or paths.checkpoints_dir


def merge_trial_dir(paths: Paths) -> Path:
    """"Merge and load" writes here: a folder no checkpoint scan looks in, emptied of old trials."""
    return paths.merge_trials_dir


def describe_merge(request: MergeRequest, load_without_saving: bool = False) -> str:
    """One line for job lists and the log, e.g. `Weighted sum 0.3: a, b (merge and load)`."""
    names = [n for n in (request.primary_model_name, request.secondary_model_name, request.tertiary_model_name) if n]
    text = f"{request.interpolation_method} {round(request.multiplier, 2)}: {', '.join(names)}"
    return text + (" (merge and load)" if load_without_saving else "")


def merge_options(context: AppContext) -> dict:
    """The keyword arguments every merge of this app takes: the VAE files that can be baked in, and
    whether pickled inputs may run code (--disable-safe-unpickle)."""
    return {"vae_files": {f.name: f.path for f in context.vaes.files()},
            "allow_unsafe_pickle": bool(context.args.disable_safe_unpickle)}


def merge_work(context: AppContext, request: MergeRequest, *, load_without_saving: bool = False
               ) -> Callable[[JobControl], MergeResult]:
    """The merge job's work function on `context` (the server's, or a Ray worker's)."""
    options = merge_options(context)

    def work(control: JobControl) -> MergeResult:
        if load_without_saving:
            return merge_and_load(request, context.checkpoints, context.models, merge_trial_dir(context.paths),
                                  control=control, **options)
        result = merge_checkpoints(request, context.checkpoints, merge_output_dir(context.paths), control=control,
                                   **options)
        if request.overwrite:
            _forget_replaced_weights(context, result.path)
        return result

    return work


def _forget_replaced_weights(context: AppContext, path: Path) -> None:
    """An overwritten checkpoint that is loaded (the model cache is keyed by file) would keep serving
    the old weights: a cached one is dropped, the current one read again (the job is exclusive)."""
    current = context.models.current_info()
    if current is not None and Path(current.filename) == Path(path):
        context.models.reload_current()
    else:
        context.models.unload_file(path)


def submit_merge(context: AppContext, request: MergeRequest, *, load_without_saving: bool = False) -> Job:
    """Queue `request` as a merge job. With `load_without_saving` the result is written to the trial
    folder, not listed, and made the current model (see `merger.merge_and_load`). With Ray workers
    (`context.cluster`) one worker merges; a saved merge is then listed here too."""
    if context.cluster is not None:
        cluster = context.cluster

        def work(control: JobControl) -> MergeResult:
            return cluster.run_merge(request, control, load_without_saving=load_without_saving)
    else:
        work = merge_work(context, request, load_without_saving=load_without_saving)
    # "Merge and load" changes what later jobs use (and, with Ray workers, deletes older trials in the
    # shared folder), and an overwrite may replace the file of a loaded model: nothing else runs beside them.
    return context.jobs.submit(work, kind=MERGE_JOB_KIND, description=describe_merge(request, load_without_saving),
                               exclusive=load_without_saving or request.overwrite)
