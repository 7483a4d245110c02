"""What travels between the server and a worker (pickled by Ray): plain dataclasses over the core's
own request and result types, so a worker runs exactly what the embedded worker would."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

GENERATION = "generation"
MERGE = "merge"
LOAD = "load"  # make a checkpoint current on a worker (the top bar's switch, the start-up load)


@dataclass(frozen=True)
class WorkSpec:
    """One piece of work for one worker.

    `settings`: the server's stored settings (config.json's values) when the job was dispatched; the
    worker mirrors them before it runs, so a changed VAE, clip skip or cache size applies on every
    worker between jobs. `checkpoint`: the title the work needs current (affinity, and made current
    on the worker before a generation that names none), or None to use the worker's default choice.
    `submission` (a `GenerationSubmission`), `merge` (a `MergeRequest`) per `kind`.
    """

    kind: str
    settings: dict[str, Any]
    checkpoint: str | None = None
    submission: Any = None
    merge: Any = None
    load_without_saving: bool = False
    # How many times the server rescanned the model folders: a worker with older lists rescans first.
    listings: int = 0
    # A merge trial ("merge and load") to make current instead of a listed checkpoint: (path, title, sha256).
    temporary: tuple[str, str, str] | None = None


@dataclass
class WorkOutcome:
    """What a worker sends back: the work's return value, whether it was interrupted, and the
    worker's state afterwards (for the scheduler and `/atelier/v1/workers`)."""

    result: Any = None
    interrupted: bool = False
    loaded_checkpoints: tuple[str, ...] = ()
    current_checkpoint: tuple[str, str] | None = None  # (title, sha256) of the worker's current model
    device: str = ""
    model_loads: int = 0  # checkpoints this worker has read from disk since it started
    final_status: RunStatus | None = None  # info lines and values written after the last poll


@dataclass
class RunStatus:
    """A running job as the worker sees it, for the server's copy of the job: progress, a preview
    when one was asked for, info lines and values added since the last poll."""

    step: int = 0
    total: int = 0
    preview: Any = None
    preview_step: int | None = None
    info_lines: list[str] = field(default_factory=list)
    info_values: dict[str, Any] = field(default_factory=dict)
    running: bool = False
