"""The values behind A1111's `modules.shared`: `state` over the job queue, `sd_model` (the view of
modules.extension_host.a1111_models), and the other per-app names (`cmd_opts`, `device`, `prompt_styles`, ...),
each looked up in the running app (modules.extension_host.environment) when read."""

from __future__ import annotations

import argparse
import logging
import os
import time
from typing import Any

from modules.extension_host.a1111_models import current_sd_model
from modules.extension_host.callers import extension_caller, extension_name
from modules.extension_host.environment import current_app
from modules.extension_host.options import Options

log = logging.getLogger(__name__)


class State:
    """`shared.state`: A1111's State, read from the job the queue is running (with `--multi-user`:
    the calling job, see `_job`). Holds no state of its own. Extensions' writes to the progress
    fields (`job_count`, `job_no`, `textinfo`, ...) are accepted and ignored: Atelier's progress
    comes from the sampler; setting `interrupted` or `skipped` to True interrupts or skips the
    current job (with `--multi-user`: the calling one, see `_stop`)."""

    _WRITES_IGNORED = frozenset({"job", "job_no", "job_count", "processing_has_refined_job_count", "job_timestamp",
                                 "sampling_step", "sampling_steps", "current_latent", "current_image",
                                 "current_image_sampling_step", "id_live_preview", "textinfo", "time_start",
                                 "stopping_generation", "server_start", "server_command"})

    @staticmethod
    def _job():
        """The job the fields describe: the queue's running one; on a server shared with
        `--multi-user` the calling job (modules.extension_host.callers), and outside a job only for
        an operator (another user's job is not shown)."""
        context = current_app()
        caller = extension_caller(context)
        if not caller.multi_user:
            return context.jobs.current()
        if caller.job is not None:
            return caller.job
        return context.jobs.current() if caller.operator else None

    @property
    def interrupted(self) -> bool:
        job = self._job()
        return bool(job and job.interrupt_requested)

    @property
    def skipped(self) -> bool:
        job = self._job()
        return bool(job and job.skip_requested)

    @property
    def stopping_generation(self) -> bool:
        return self.interrupted

    @property
    def job(self) -> str:
        job = self._job()
        return job.kind if job else ""

    @property
    def job_count(self) -> int:
        job = self._job()
        if job is None:
            return 0
        return max(1, int(job.info.get("job_count", 1)))

    @property
    def job_no(self) -> int:
        job = self._job()
        if job is None or not job.total_steps:
            return 0
        count = self.job_count
        per_job = job.total_steps / count
        return min(int(job.step // per_job), count - 1) if per_job else 0

    @property
    def sampling_steps(self) -> int:
        job = self._job()
        if job is None or not job.total_steps:
            return 0
        return int(job.total_steps / self.job_count)

    @property
    def sampling_step(self) -> int:
        job = self._job()
        if job is None:
            return 0
        return int(job.step - self.job_no * self.sampling_steps)

    @property
    def time_start(self) -> float | None:
        job = self._job()
        return job.started_at if job else None

    @property
    def job_timestamp(self) -> str:
        start = self.time_start
        return time.strftime("%Y%m%d%H%M%S", time.localtime(start)) if start else "0"

    @property
    def current_image(self):
        job = self._job()
        return job.preview if job else None

    @property
    def id_live_preview(self) -> int:
        job = self._job()
        return (job.preview_step or 0) if job else 0

    current_latent = None
    textinfo = None
    server_start = None
    processing_has_refined_job_count = False

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "interrupted" and value:
            self.interrupt()
        elif name == "skipped" and value:
            self.skip()
        elif name not in self._WRITES_IGNORED and name not in ("interrupted", "skipped"):
            raise AttributeError(f"shared.state has no field {name!r}")

    def interrupt(self) -> None:
        self._stop("interrupt")

    def stop_generating(self) -> None:
        self.interrupt()

    def skip(self) -> None:
        self._stop("skip")

    @staticmethod
    def _stop(how: str) -> None:
        """Interrupt or skip the running job (A1111). With `--multi-user`: the calling job only; outside
        any job only an operator's call acts (as A1111), since another user's call cannot name their
        own page's job and must not stop someone else's."""
        context = current_app()
        stop = context.jobs.interrupt if how == "interrupt" else context.jobs.skip
        caller = extension_caller(context)
        if not caller.multi_user:
            stop()
        elif caller.job is not None:
            stop(caller.job.id)
        elif caller.operator:
            stop()
        else:
            who = f"user {caller.user.name!r}" if caller.user is not None else "a caller outside any job"
            log.warning("shared.state.%s() from %s for %s did nothing: on a shared server (--multi-user) it stops "
                        "only the job it is called from; use the page's %s button", how, extension_name(), who,
                        how.capitalize())

    def begin(self, job: str = "(unknown)") -> None:
        """A1111 resets its progress fields here; Atelier's job queue keeps them."""

    def end(self) -> None:
        pass

    def nextjob(self) -> None:
        pass

    def set_current_image(self) -> None:
        pass

    def do_set_current_image(self) -> None:
        pass

    def assign_current_image(self, image) -> None:
        pass

    def dict(self) -> dict[str, Any]:
        """The `state` of A1111's `/sdapi/v1/progress`."""
        return {"skipped": self.skipped, "interrupted": self.interrupted, "stopping_generation": self.stopping_generation,
                "job": self.job, "job_count": self.job_count, "job_timestamp": self.job_timestamp,
                "job_no": self.job_no, "sampling_step": self.sampling_step, "sampling_steps": self.sampling_steps}


class _TotalProgress:
    """A1111's `shared.total_tqdm` (a console progress bar extensions reset): Atelier's console
    progress follows the job queue, so these do nothing."""

    def reset(self) -> None:
        pass

    def update(self) -> None:
        pass

    def updateTotal(self, new_total) -> None:  # noqa: N802 - A1111's name
        pass

    def clear(self) -> None:
        pass




def _device():
    context = current_app()
    model = context.models.current()
    if model is not None:
        return model.device
    from modules.library.model_manager import default_load_options

    args = context.args
    device_name = f"cuda:{args.device_id}" if getattr(args, "device_id", None) is not None else None
    return default_load_options(use_cpu=bool(getattr(args, "use_cpu", None)), no_half=args.no_half,
                                precision=args.precision, no_half_vae=args.no_half_vae,
                                device_name=device_name).device


def listfiles(dirname: str) -> list[str]:
    """A1111: the files (not folders, not hidden) of `dirname`, sorted, as full paths."""
    from modules.library.checkpoints import natural_sort_key

    names = sorted((name for name in os.listdir(dirname) if not name.startswith(".")), key=natural_sort_key)
    return [os.path.join(dirname, name) for name in names if os.path.isfile(os.path.join(dirname, name))]


def walk_files(path: str, allowed_extensions=None):
    """A1111: every file under `path` (following links), optionally only those extensions."""
    if not os.path.exists(path):
        return
    allowed = {ext.lower() for ext in allowed_extensions} if allowed_extensions is not None else None
    for root, _, files in os.walk(path, followlinks=True):
        for filename in sorted(files):
            if allowed is not None and os.path.splitext(filename)[1].lower() not in allowed:
                continue
            yield os.path.join(root, filename)


def cmd_opts_view(context) -> argparse.Namespace:
    """`shared.cmd_opts`: the parsed flags (extensions' preload flags included), with the folders
    A1111 gives defaults to filled in as Atelier resolved them (A1111's `--embeddings-dir` defaults to
    `<data>/embeddings`, `--lora-dir` to `<models>/Lora`, ...; extensions build paths from them). A
    copy: changing it changes nothing."""
    paths = context.paths
    view = argparse.Namespace(**vars(context.args))
    view.data_dir = str(paths.data_dir)
    view.models_dir = str(paths.models_dir)
    view.embeddings_dir = str(paths.embeddings_dir)
    view.hypernetwork_dir = str(paths.hypernetwork_dir)
    view.lora_dir = str(paths.lora_dir)
    if getattr(view, "lyco_dir_backcompat", None) is None:
        view.lyco_dir_backcompat = str(paths.models_dir / "LyCORIS")
    return view


def shared_value(name: str) -> Any:
    """The per-app value of `modules.shared.<name>` (PEP 562 `__getattr__` of the façade)."""
    if name == "sd_model":
        return current_sd_model()
    context = current_app()
    if name == "cmd_opts":
        return cmd_opts_view(context)
    if name == "device":
        return _device()
    if name == "prompt_styles":
        return context.prompt_styles
    if name == "config_filename":
        return str(context.paths.config_file)
    if name == "styles_filename":
        from modules.generation.styles import configured_styles_paths

        return [str(path) for path in configured_styles_paths(getattr(context.args, "styles_file", None) or [],
                                                              context.paths.data_dir)]
    if name == "hide_dirs":
        return {"visible": not getattr(context.args, "hide_ui_dir_config", False)}
    if name == "sd_upscalers":
        from modules.extension_host.a1111_upscaler import sd_upscalers

        return sd_upscalers(context)
    if name == "hypernetworks":
        return {name: str(context.hypernetworks.path(name)) for name in context.hypernetworks.names()}
    if name == "demo":
        return None
    if name == "settings_components":
        return {}
    raise AttributeError(f"module 'modules.shared' has no attribute {name!r} in Atelier (docs/EXTENSIONS.md lists "
                         "what it has)")


def module_getattr(name: str) -> Any:
    """`modules.shared.__getattr__` (PEP 562): the names not defined there are per-app values.
    Dunder names are not: the import system asks for `__path__` (`from modules.shared import x`
    outside an app) and must get an AttributeError, not "used outside a running Atelier app"."""
    if name.startswith("__"):
        raise AttributeError(f"module 'modules.shared' has no attribute {name!r}")
    return shared_value(name)


# The objects `modules.shared` exports. Views with no state of their own: constants.
opts = Options()
state = State()
total_tqdm = _TotalProgress()
