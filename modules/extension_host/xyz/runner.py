"""Running a planned X/Y/Z plot as one job and drawing its grids.

- Models: a cell whose request names a checkpoint (`override_settings["sd_model_checkpoint"]`) gets it
  made current before the cell, so the engine's own per-request switch finds it loaded; a merge cell
  gets its merge written to the trial folder and loaded (`merger.merge_and_load`); a cell naming a VAE
  (`override_settings["sd_vae"]`) runs inside `ModelManager.temporary_vae`. The plan's order makes each
  of these happen once per value. Afterwards the checkpoint that was current before the grid is
  current again and the merge trials are deleted: nothing is ever written to the checkpoint folders.
- Progress: one job; each cell reports through a child control that maps its steps into the steps of
  the whole grid. An interrupt keeps the finished cells (the cell being sampled is dropped) and the
  grids are drawn with the missing cells left black.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from modules.serving.jobs import JobInterrupted
from modules.extension_host.xyz.drawing import draw_grid
from modules.extension_host.xyz.plan import SCRIPT_TITLE, AxisSpec, GridOptions, GridPlan, PlannedCell, plan_grid
from modules.extension_host.xyz.services import GridServices

log = logging.getLogger(__name__)

AUTOMATIC_VAE = "Automatic"  # the VAE the settings choose: nothing to swap


class GridNeedsOneWorker(Exception):
    """The grid cannot be spread over Ray workers cell by cell; the caller runs it whole on one."""


@dataclass
class GridCell:
    ix: int
    iy: int
    iz: int
    request: Any
    images: list[Image.Image] = field(default_factory=list)
    infotexts: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def image(self) -> Image.Image | None:
        """What the grid shows: the image, or a grid of the cell's batch (A1111's cell image)."""
        if not self.images:
            return None
        if len(self.images) == 1:
            return self.images[0]
        from modules.outputs.images import image_grid

        return image_grid(self.images, batch_size=self.request.batch_size)


@dataclass
class GridResult:
    plan: GridPlan
    cells: list[GridCell]  # finished cells, in the order they ran
    sub_grids: list[Image.Image]  # one per Z value
    grid: Image.Image | None  # the grid of grids (the only grid when Z has one value); None: no cell finished
    images: list[Image.Image]  # for a gallery, in A1111's order: grid, [sub grids], [cell images]
    infotexts: list[str]  # one per image of `images`
    interrupted: bool = False
    warnings: list[str] = field(default_factory=list)
    saved_paths: list[str] = field(default_factory=list)

    @property
    def infotext(self) -> str:
        """The grid's infotext: the first cell's, with the plot's fields (A1111's)."""
        return self.infotexts[0] if self.infotexts else ""

    def cell(self, ix: int, iy: int = 0, iz: int = 0) -> GridCell | None:
        return next((c for c in self.cells if (c.ix, c.iy, c.iz) == (ix, iy, iz)), None)


# --------------------------------------------------------------------------------------------- run


class _CellControl:
    """A cell's view of the grid's control: its steps mapped into the grid's, the rest passed on."""

    def __init__(self, parent, offset: int, steps: int, total: int):
        self._parent, self._offset, self._steps, self._total = parent, offset, steps, total

    @property
    def interrupted(self) -> bool:
        return bool(self._parent.interrupted)

    @property
    def skip_requested(self) -> bool:
        return bool(getattr(self._parent, "skip_requested", False))

    def consume_skip(self) -> bool:
        return self._parent.consume_skip()

    def check(self) -> None:
        self._parent.check()

    def add_info(self, line: str) -> None:
        self._parent.add_info(line)

    def report(self, step: int, total: int, preview_factory: Callable[[], Any] | None = None) -> None:
        done = self._offset + (round(step * self._steps / total) if total else 0)
        self._parent.report(min(done, self._total), self._total, preview_factory)


class _MergeControl:
    """What a merge sees: the grid's interrupt; its per-key progress is not the grid's steps."""

    def __init__(self, parent):
        self._parent = parent

    @property
    def interrupted(self) -> bool:
        return bool(self._parent.interrupted)

    def report(self, step, total, preview_factory=None) -> None:
        pass


def add_infotext_params(infotext: str, params: Mapping[str, Any]) -> str:
    """`infotext` with `params` added to its parameter line, before `Version`/`User` as A1111 orders
    extra generation parameters."""
    from modules.outputs.infotext import RE_PARAM, format_parameters

    addition = format_parameters(params)
    if not addition:
        return infotext
    head, _, last = infotext.rpartition("\n")
    if len(RE_PARAM.findall(last)) < 3:
        return f"{infotext}\n{addition}" if infotext else addition
    cut = next((m.start() for m in RE_PARAM.finditer(last) if m.group(1) in ("Version", "User")), len(last))
    line = ", ".join(part for part in (last[:cut].rstrip(" ,"), addition, last[cut:].strip(" ,")) if part)
    return f"{head}\n{line}" if head else line


class _Runner:
    def __init__(self, services: GridServices, plan: GridPlan, options: GridOptions, control, on_cell, save: bool):
        self.services, self.plan, self.options = services, plan, options
        # Imported here: the engine brings torch, and the grid's module loads with the extensions,
        # before the first page (tests/test_startup_imports.py).
        from modules.generation.engine import NullControl

        self.control = control if control is not None else NullControl()
        self.on_cell, self.save = on_cell, save
        self.models = services.models
        self.trials: list[Path] = []
        self.warnings: list[str] = []

    def run(self) -> GridResult:
        if self.services.cell_executor is not None:
            return self._run_on_workers()
        cells: list[GridCell] = []
        interrupted = False
        total = max(1, self.plan.total_steps)
        if hasattr(self.control, "set_info"):
            self.control.set_info("job_count", len(self.plan.cells))
        with self.models.lock:
            previous = self.models.current_info()
            model_key: Any = object()
            vae_scope = ExitStack()
            vae_key: Any = object()
            offset = 0
            try:
                for planned in self.plan.cells:
                    if self.control.interrupted:
                        interrupted = True
                        break
                    if planned.model_key != model_key:
                        vae_scope.close()
                        vae_key = object()
                        if not self._use_model(planned, previous):
                            interrupted = True
                            break
                        model_key = planned.model_key
                    if planned.vae_key != vae_key:
                        vae_scope.close()
                        if planned.vae_key not in (None, AUTOMATIC_VAE):
                            vae_scope.enter_context(self.models.temporary_vae(self._vae_file(planned.vae_key)))
                        vae_key = planned.vae_key
                    child = _CellControl(self.control, offset, planned.steps, total)
                    # Only for a cell an extension axis edited: a bare engine has no `p` to put them on.
                    extra = {"p_attributes": planned.p_attributes} if planned.p_attributes else {}
                    result = self.services.engine.generate(planned.request, child, save=None if self.save else False,
                                                           **extra)
                    offset += planned.steps
                    if result.interrupted:
                        interrupted = True
                        break
                    cell = GridCell(planned.ix, planned.iy, planned.iz, planned.request, list(result.images),
                                    [add_infotext_params(t, self.plan.infotext_params) for t in result.infotexts],
                                    list(result.seeds), list(result.warnings))
                    for warning in result.warnings:
                        if warning not in self.warnings:
                            self.warnings.append(warning)
                    cells.append(cell)
                    if self.on_cell is not None:
                        self.on_cell(cell)
            except JobInterrupted:  # raised by control.check(): keep what is finished
                interrupted = True
            finally:
                vae_scope.close()
                self._restore(previous)
                self._delete_trials()
        result = self._assemble(cells, interrupted)
        if self.save and result.grid is not None:
            result.saved_paths += self._save_grids(result)
        return result

    def _run_on_workers(self) -> GridResult:
        """The cells at once on the Ray workers (`services.cell_executor`), each request naming its
        checkpoint; the grid is drawn and saved here as in `run`. A plan that needs this process's
        model manager (a merge, a VAE swap, an extension's `p` attributes) raises GridNeedsOneWorker."""
        for planned in self.plan.cells:
            if ((planned.model_key is not None and planned.model_key[0] != "checkpoint")
                    or planned.vae_key not in (None, AUTOMATIC_VAE) or planned.p_attributes):
                raise GridNeedsOneWorker("this grid merges, swaps VAEs or sets extension attributes per cell")
        if hasattr(self.control, "set_info"):
            self.control.set_info("job_count", len(self.plan.cells))
        results = self.services.cell_executor([planned.request for planned in self.plan.cells], self.control,
                                              None if self.save else False)
        cells: list[GridCell] = []
        interrupted = False
        for planned, result in zip(self.plan.cells, results):
            if result is None or result.interrupted:
                interrupted = True
                continue
            cell = GridCell(planned.ix, planned.iy, planned.iz, planned.request, list(result.images),
                            [add_infotext_params(t, self.plan.infotext_params) for t in result.infotexts],
                            list(result.seeds), list(result.warnings))
            self.warnings += [warning for warning in result.warnings if warning not in self.warnings]
            cells.append(cell)
            if self.on_cell is not None:
                self.on_cell(cell)
        grid = self._assemble(cells, interrupted)
        if self.save and grid.grid is not None:
            grid.saved_paths += self._save_grids(grid)
        return grid

    # -- models ----------------------------------------------------------------------------------

    def _use_model(self, planned: PlannedCell, previous) -> bool:
        """Make the cell's model current; False when a merge was interrupted."""
        key = planned.model_key
        if key is None:
            if previous is not None and not self._is_current(previous):
                self._load_info(previous)
            return True
        kind, what = key
        if kind == "checkpoint":
            self.models.load(what)
            return True
        from modules.merging.merger import MergeInterrupted, merge_and_load

        self.control.add_info(f"{SCRIPT_TITLE}: merging {what.interpolation_method} {round(what.multiplier, 2)}")
        try:
            merged = merge_and_load(what, self.services.checkpoints, self.models, self.services.merge_scratch_dir,
                                    control=_MergeControl(self.control), **self.services.merge_options)
        except MergeInterrupted:
            return False
        self.trials.append(merged.path)
        return True

    def _is_current(self, info) -> bool:
        current = self.models.current_info()
        return current is not None and Path(current.filename) == Path(info.filename)

    def _load_info(self, info) -> None:
        if info.filename in {i.filename for i in self.services.checkpoints.list()}:
            self.models.load(info.title)
        elif Path(info.filename).is_file():  # a merge trial loaded before the grid
            self.models.load_temporary(Path(info.filename), info.name, info.sha256)

    def _restore(self, previous) -> None:
        if previous is None or self._is_current(previous):
            return
        try:
            self._load_info(previous)
        except Exception as e:  # noqa: BLE001 - the grid's images are done; a failed restore must not lose them
            log.error("%s: could not make %s current again: %s", SCRIPT_TITLE, previous.name, e)
            self.warnings.append(f"could not load {previous.name} again after the grid: {e}")

    def _delete_trials(self) -> None:
        from modules.merging.merger import remove_trial

        for path in self.trials:
            self.models.unload_file(path)  # its weights go with its file (the grid restored the previous model)
            remove_trial(path)

    def _vae_file(self, name: str) -> Path | None:
        from modules.library.vae_files import NONE

        return None if name == NONE else self.services.vaes.get(name).path

    # -- images ----------------------------------------------------------------------------------

    def _assemble(self, cells: list[GridCell], interrupted: bool) -> GridResult:
        plan, options = self.plan, self.options
        if not cells:
            return GridResult(plan, [], [], None, [], [], interrupted, self.warnings)
        by_position = {(c.ix, c.iy, c.iz): c for c in cells}
        cols, rows = len(plan.x.values), len(plan.y.values)
        images = {key: cell.image for key, cell in by_position.items()}
        size = (max(i.width for i in images.values()), max(i.height for i in images.values()))
        legend = options.draw_legend
        sub_grids = []
        for iz in range(len(plan.z.values)):
            slots = [images.get((ix, iy, iz)) for iy in range(rows) for ix in range(cols)]
            sub_grids.append(draw_grid(slots, cols, rows, cell_size=size, margin=options.margin_size,
                                       column_labels=plan.x.labels if legend else (),
                                       row_labels=plan.y.labels if legend else ()))
        first = cells[0].infotexts[0] if cells[0].infotexts else ""
        if len(sub_grids) == 1 and (plan.z.is_nothing or not legend):
            grid = sub_grids[0]
        else:
            grid = draw_grid(sub_grids, len(sub_grids), 1, margin=options.margin_size,
                             column_labels=plan.z.labels if legend else ())
        gallery, infotexts = [grid], [first]
        if self._shows_sub_grids(grid, sub_grids):
            for iz, sub in enumerate(sub_grids):
                in_z = [c for c in cells if c.iz == iz]
                gallery.append(sub)
                infotexts.append(in_z[0].infotexts[0] if in_z else first)
        if options.include_lone_images:
            for cell in sorted(cells, key=lambda c: (c.iz, c.iy, c.ix)):
                gallery += cell.images
                infotexts += cell.infotexts
        return GridResult(plan, cells, sub_grids, grid, gallery, infotexts, interrupted, self.warnings)

    def _shows_sub_grids(self, grid: Image.Image, sub_grids: list[Image.Image]) -> bool:
        return self.options.include_sub_grids and grid is not sub_grids[0]

    def _save_grids(self, result: GridResult) -> list[str]:
        """The grid (and the sub grids shown with it) in `outputs/txt2img-grids` (img2img's:
        `outputs/img2img-grids`; the request's override of those folders counts), as A1111's `xyz_grid-NNNN-<seed>.png`, when the `grid_save` setting
        is on."""
        from modules.extension_host.xyz.plan import is_img2img_request
        from modules.outputs.images import (
            FilenameContext,
            SaveOptions,
            img2img_output_dirs,
            save_image,
            txt2img_output_dirs,
        )

        # With the request's overrides, as its images are saved: a --multi-user owner's grid folder is
        # theirs (outputs/<user>/...), and a request's own grid settings count.
        settings = self.services.engine.settings.current().with_overrides(self.plan.request.override_settings or {})
        if not settings["grid_save"] or self.services.data_dir is None:
            return []
        options = SaveOptions.from_settings(settings)
        output_dirs = img2img_output_dirs if is_img2img_request(self.plan.request) else txt2img_output_dirs
        _, grids_dir = output_dirs(self.services.data_dir, options)
        request = self.plan.request
        context = FilenameContext(seed=result.cells[0].seeds[0] if result.cells[0].seeds else request.seed,
                                  prompt=request.prompt, negative_prompt=request.negative_prompt,
                                  steps=request.steps, cfg_scale=request.cfg_scale, width=request.width,
                                  height=request.height, sampler_name=request.sampler_name)
        count = 1 + (len(result.sub_grids) if self._shows_sub_grids(result.grid, result.sub_grids) else 0)
        return [save_image(image, grids_dir, "xyz_grid", context=context, options=options, infotext=infotext,
                           extension=settings["grid_format"], grid=True).path
                for image, infotext in zip(result.images[:count], result.infotexts[:count])]


def run_grid(services: Any, base_request, x: AxisSpec, y: AxisSpec | None = None, z: AxisSpec | None = None,
             options: GridOptions | None = None, control=None, *,
             on_cell: Callable[[GridCell], None] | None = None, save: bool = False) -> GridResult:
    """Run the X/Y/Z plot of `base_request` as one job; see the module docstring.

    `services`: an `AppContext`, a `Txt2ImgEngine` or `GridServices`; an axis left None is `Nothing`.
    `base_request`: a `GenerationRequest` (txt2img's axes) or an `Img2ImgRequest` (img2img's axes;
    every cell keeps its init images and mask).
    `control`: the job's `JobControl` (progress over all cells, interrupt, skip); None for direct calls.
    `on_cell(cell)` is called after each finished cell (live galleries). With `save`, cells are saved as the
    `samples_save` setting says and the grid as `grid_save` says; otherwise nothing is written.
    Raises `AxisValueError` for bad axis values before any image is made.
    """
    services, options = GridServices.of(services), options or GridOptions()
    plan = plan_grid(services, base_request, x, y, z, options)
    return _Runner(services, plan, options, control, on_cell, save).run()
