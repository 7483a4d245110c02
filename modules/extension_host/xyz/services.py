"""What the X/Y/Z plot needs from the application: the engine, the model manager, the checkpoint,
VAE and style lists, and where "merge and load" trials may be written. Built from an `AppContext` or a
bare `Txt2ImgEngine` (then without VAE choices or merge trials unless given)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class GridServices:
    engine: Any  # processing.Txt2ImgEngine
    models: Any  # model_manager.ModelManager
    checkpoints: Any  # checkpoints.CheckpointRegistry
    vaes: Any = None  # vae_files.VaeRegistry; None: no VAE axis
    styles: Any = None  # styles.StyleDatabase; None: no Styles axis
    merge_scratch_dir: Path | None = None  # None: no Merge multiplier axis
    merge_options: Mapping[str, Any] = field(default_factory=dict)  # vae_files, allow_unsafe_pickle
    data_dir: Path | None = None  # where grids are saved (outputs/txt2img-grids under it)
    extra_axes: tuple = ()  # AxisTypes extensions added (the X/Y/Z script's axis_options)
    # With Ray workers: `cell_executor(requests, control, save)` runs the cells at once and returns
    # their GenerationResults in order (None for a cell an interrupt stopped before it ran).
    cell_executor: Any = None

    @classmethod
    def of(cls, source: Any) -> GridServices:
        """`source` as services: a `GridServices`, an `AppContext`, or a `Txt2ImgEngine`."""
        if isinstance(source, GridServices):
            return source
        from modules.serving.app_context import AppContext
        from modules.generation.engine import Txt2ImgEngine

        if isinstance(source, AppContext):
            from modules.merging.service import merge_options, merge_trial_dir

            return cls(
                engine=source.engine, models=source.models, checkpoints=source.checkpoints, vaes=source.vaes,
                styles=source.prompt_styles,
                # A folder of its own inside the trial folder: the grid deletes what it wrote there,
                # never the Checkpoint Merger tab's current trial.
                merge_scratch_dir=merge_trial_dir(source.paths) / "xyz",
                merge_options=merge_options(source),
                data_dir=source.paths.data_dir,
                cell_executor=source.cluster.run_cells if source.cluster is not None else None,
            )
        if isinstance(source, Txt2ImgEngine):
            save_dir = Path(source.save_dir) if source.save_dir else None
            return cls(engine=source, models=source.models, checkpoints=source.models.registry, data_dir=save_dir)
        raise TypeError(f"run_grid needs an AppContext, a Txt2ImgEngine or GridServices, got {type(source).__name__}")
