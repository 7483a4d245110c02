"""Planning an X/Y/Z plot: every cell's request built and validated before anything is generated.

- The tab is the base request's type: an `Img2ImgRequest` plans with the img2img axis list (Image CFG
  Scale, Cond. Image Mask Weight, ...; no hires axes), anything else with txt2img's. Every cell is the
  base request with the axes' values (`with_fields`, `model_copy`), so an img2img cell keeps the init
  images, the mask and the other img2img fields.
- Values are parsed and checked (`AxisType.confirm`, and the range of the request field an axis
  sets), the seed and the -1 values of seed axes fixed
  once (unless "keep -1 for seeds"), "vary seeds" offsets added, and each cell's request validated,
  so a bad value fails at once with its axis named.
- Order: the axis with the highest cost runs outermost (Checkpoint name and Merge multiplier 1.0,
  VAE 0.7, others 0; ties: Z, then Y, then X outermost, as A1111), so each checkpoint is loaded, each
  merge made and each VAE applied once.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from modules.generation.rng import get_fixed_seed
from modules.extension_host.xyz.axes import (
    NOTHING,
    AxisContext,
    AxisType,
    MergeAxisSettings,
    check_field_values,
    find_axis,
    with_fields,
)
from modules.extension_host.xyz.services import GridServices
from modules.extension_host.xyz.values import AxisValueError, join_csv, parse_values, str_permutations

SCRIPT_TITLE = "X/Y/Z plot"
LETTERS = ("X", "Y", "Z")
MAX_GRID_MEGAPIXELS = 200  # A1111's default `img_max_size_mp`


@dataclass(frozen=True)
class AxisSpec:
    """One axis as the UI or the API gives it: a type label, the values (A1111 text syntax, or a list
    from a dropdown), and for `Merge multiplier` what to merge."""

    type: str = NOTHING
    values: str | Sequence[Any] = ""
    merge: MergeAxisSettings | None = None


@dataclass(frozen=True)
class GridOptions:
    """A1111's X/Y/Z plot options. `keep_minus_one_seeds` off: the seed (and -1 values of seed axes)
    are fixed once before the grid, so every cell shares it; on: each cell draws its own."""

    draw_legend: bool = True
    keep_minus_one_seeds: bool = False
    vary_seeds_x: bool = False
    vary_seeds_y: bool = False
    vary_seeds_z: bool = False
    include_lone_images: bool = False
    include_sub_grids: bool = False
    margin_size: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.margin_size <= 500:
            raise ValueError(f"grid margins must be 0..500 px, got {self.margin_size}")


@dataclass(frozen=True)
class ResolvedAxis:
    letter: str  # "X", "Y" or "Z"
    axis: AxisType
    values: tuple[Any, ...]
    labels: tuple[str, ...]
    values_text: str  # what the infotext's `X Values` records
    fixed_values: bool = False  # seeds were fixed: the infotext records them as `Fixed X Values`
    merge: MergeAxisSettings | None = None

    @property
    def is_nothing(self) -> bool:
        return self.axis.label == NOTHING

    def infotext_params(self) -> dict[str, Any]:
        if self.is_nothing:
            return {}
        params: dict[str, Any] = {f"{self.letter} Type": self.axis.label, f"{self.letter} Values": self.values_text}
        if self.fixed_values:
            params[f"Fixed {self.letter} Values"] = ", ".join(str(v) for v in self.values)
        if self.merge is not None:
            params[f"{self.letter} Merge"] = self.merge.describe()
        return params


@dataclass(frozen=True)
class PlannedCell:
    ix: int
    iy: int
    iz: int
    request: Any  # processing.GenerationRequest
    merge: Any = None  # merger.MergeRequest for a Merge multiplier cell
    steps: int = 0  # sampling steps it reports (its share of the grid's progress)
    # What extension axes set on `p` beyond the request's fields (set on the cell's `p` before its
    # always-on scripts run); dict values are merged into the `p`'s own dict.
    p_attributes: Mapping[str, Any] = field(default_factory=dict)

    @property
    def model_key(self) -> tuple[str, Any] | None:
        if self.merge is not None:
            return ("merge", self.merge)
        name = self.request.override_settings.get("sd_model_checkpoint")
        return ("checkpoint", name) if name else None

    @property
    def vae_key(self) -> str | None:
        return self.request.override_settings.get("sd_vae")


@dataclass(frozen=True)
class GridPlan:
    x: ResolvedAxis
    y: ResolvedAxis
    z: ResolvedAxis
    request: Any  # the base request, seeds fixed
    cells: tuple[PlannedCell, ...]  # in the order they run
    infotext_params: Mapping[str, Any]

    @property
    def total_steps(self) -> int:
        return sum(cell.steps for cell in self.cells)

    def describe(self) -> str:
        """A1111's summary line, e.g. `X/Y/Z plot will create 4 images on 1 2x2 grid. (Total steps to
        process: 16)`."""
        images = len(self.cells) * self.request.batch_size * self.request.n_iter
        grids = len(self.z.values)
        return (f"{SCRIPT_TITLE} will create {images} images on {grids} {len(self.x.values)}x{len(self.y.values)} "
                f"grid{'s' if grids > 1 else ''}. (Total steps to process: {self.total_steps})")


# -------------------------------------------------------------------------------------------- plan


def is_img2img_request(request) -> bool:
    """Whether `request` is img2img's (the plan then uses the img2img axis list)."""
    from modules.generation.requests import Img2ImgRequest

    return isinstance(request, Img2ImgRequest)


def _resolve_axis(letter: str, spec: AxisSpec, services: GridServices, request, fix_seeds: bool) -> ResolvedAxis:
    try:
        axis = find_axis(spec.type, services.extra_axes, is_img2img=is_img2img_request(request))
    except AxisValueError as e:
        raise AxisValueError(f"{letter} axis: {e}") from None
    if axis.label == NOTHING:
        return ResolvedAxis(letter, axis, (None,), ("",), "")
    try:
        values = parse_values(axis, spec.values)
    except AxisValueError as e:
        raise AxisValueError(f"{letter} axis: {e}") from None
    if not values:
        raise AxisValueError(f"{letter} axis ({axis.label}) has no values; write them like 1, 2, 3 or 1-3")
    context = AxisContext(tuple(values), services, spec.merge)
    try:
        check_field_values(axis, values, request)
        if axis.confirm is not None:
            axis.confirm(values, context, request)
    except AxisValueError as e:
        raise AxisValueError(f"{letter} axis: {e}") from None
    # A list from a dropdown or the API is recorded as the CSV it would have been typed as.
    text = spec.values if isinstance(spec.values, str) else join_csv(
        spec.values if axis.type is str_permutations else values)
    fixed = False
    if axis.seeds and fix_seeds:
        values = [get_fixed_seed(v) for v in values]
        fixed = True
    return ResolvedAxis(letter, axis, tuple(values), tuple(axis.label_for(v) for v in values), text, fixed,
                        spec.merge if axis.builds_merge else None)


def _order(axes: Sequence[ResolvedAxis]) -> list[int]:
    """Axis indices (0=X, 1=Y, 2=Z) from the outermost loop to the innermost: cost descending, ties
    Z before Y before X."""
    return sorted((2, 1, 0), key=lambda i: -axes[i].axis.cost)


def _cell_steps(request) -> int:
    hires = (request.hr_second_pass_steps or request.steps) if request.enable_hr else 0
    return request.n_iter * (request.steps + hires)


def _merge_request(settings: MergeAxisSettings, multiplier: float):
    from modules.merging.merger import MergeRequest

    return MergeRequest(primary_model_name=settings.primary, secondary_model_name=settings.secondary,
                        tertiary_model_name=settings.tertiary, interpolation_method=settings.method,
                        multiplier=multiplier)


def _check_size(pixels: int) -> None:
    megapixels = round(pixels / 1_000_000)
    if megapixels > MAX_GRID_MEGAPIXELS:
        raise AxisValueError(f"the grid would be {megapixels} megapixels, over the {MAX_GRID_MEGAPIXELS} allowed; "
                             "use fewer values or smaller images")


def _apply_on_p(axis: ResolvedAxis, value, request, p_attributes: dict):
    """An extension axis: A1111's `apply(p, x, xs)` on a `p` made from `request`. Returns the request
    `p` then describes (validated now, so a bad value fails before any image) and adds to
    `p_attributes` the other attributes the axis set or changed (dicts: only the changed keys). An
    img2img request gets A1111's img2img `p`."""
    from modules.extension_host.xyz.extension_axes import processing_for

    p = processing_for(request)
    for name, attribute in p_attributes.items():
        setattr(p, name, dict(attribute) if isinstance(attribute, dict) else attribute)
    before = {name: dict(attribute) if isinstance(attribute, dict) else attribute
              for name, attribute in vars(p).items()}
    try:
        axis.axis.p_apply(p, value, list(axis.values))
    except ValueError:
        raise
    except (Exception, SystemExit) as e:  # an extension's apply: any failure is the value's
        raise ValueError(f"{type(e).__name__}: {e}") from None
    fields = set(type(request).model_fields)
    skip = fields | {"styles", "override_settings"}
    for name, attribute in vars(p).items():
        if name in skip or (name in before and before[name] is attribute and not isinstance(attribute, dict)):
            continue
        if isinstance(attribute, dict) and isinstance(before.get(name), dict):
            changed = {k: v for k, v in attribute.items() if k not in before[name] or before[name][k] is not v}
            if changed:
                p_attributes[name] = {**p_attributes.get(name, {}), **changed}
        elif name not in before or before[name] is not attribute:
            p_attributes[name] = attribute
    new = p.to_request()
    if not isinstance(new, type(request)):
        # A `p` that describes only txt2img's fields: the request keeps its own img2img fields (init
        # images, mask, ...), with those the axis changed on `p`.
        values = {name: getattr(new, name) for name in type(new).model_fields}
        values.update({name: getattr(p, name) for name in fields - set(values)
                       if name in vars(p) and (name not in before or before[name] is not getattr(p, name))})
        overrides = values.pop("override_settings")
        new = with_fields(request, **values).model_copy(update={"override_settings": overrides})
    # Overrides it set (apply_override) are checked like the built-in axes' (with_fields).
    changed = {key: value for key, value in new.override_settings.items()
               if key not in request.override_settings or request.override_settings[key] != value}
    return with_fields(new, override_settings=changed) if changed else new


def plan_grid(services: Any, base_request, x: AxisSpec, y: AxisSpec | None = None, z: AxisSpec | None = None,
              options: GridOptions | None = None) -> GridPlan:
    """Every cell's request, in run order; raises `AxisValueError` before any work for bad values.
    An axis left None is `Nothing`."""
    y, z, options = y or AxisSpec(), z or AxisSpec(), options or GridOptions()
    services = GridServices.of(services)
    fix_seeds = not options.keep_minus_one_seeds
    request = base_request
    if fix_seeds:
        request = with_fields(request, seed=get_fixed_seed(request.seed), subseed=get_fixed_seed(request.subseed))
    axes = [_resolve_axis(letter, spec, services, request, fix_seeds) for letter, spec in zip(LETTERS, (x, y, z))]
    merging = [a for a in axes if a.axis.builds_merge]
    if len(merging) > 1:
        raise AxisValueError("only one axis can be Merge multiplier")
    if merging and any(a.axis.label == "Checkpoint name" for a in axes):
        raise AxisValueError("Merge multiplier and Checkpoint name cannot be combined: the merge decides the model")
    vary = (options.vary_seeds_x, options.vary_seeds_y, options.vary_seeds_z)
    dims = [len(a.values) for a in axes]
    _check_size(dims[0] * dims[1] * dims[2] * request.width * request.height)  # before building the cells
    order = _order(axes)
    cells = []
    for indices in itertools.product(*(range(dims[i]) for i in order)):
        position = [0, 0, 0]
        for axis_index, value_index in zip(order, indices):
            position[axis_index] = value_index
        cell_request, merge, p_attributes = request, None, {}
        for axis, index in zip(axes, position):
            value = axis.values[index]
            try:
                if axis.axis.p_apply is not None:
                    cell_request = _apply_on_p(axis, value, cell_request, p_attributes)
                else:
                    cell_request = axis.axis.apply(cell_request, value, AxisContext(axis.values, services, axis.merge))
            except ValueError as e:  # pydantic's ValidationError included
                raise AxisValueError(f"{axis.letter} axis: {axis.axis.label} = {value!r} gives a request that "
                                     f"cannot run: {e}") from None
            if axis.axis.builds_merge:
                merge = _merge_request(axis.merge, value)
        offset = sum(index * (dims[0] if i > 0 and vary[0] else 1) * (dims[1] if i > 1 and vary[1] else 1)
                     for i, index in enumerate(position) if vary[i])
        if offset and cell_request.seed != -1:
            cell_request = cell_request.model_copy(update={"seed": cell_request.seed + offset})
        cells.append(PlannedCell(*position, cell_request, merge, _cell_steps(cell_request), p_attributes))
    _check_size(sum(c.request.width * c.request.height for c in cells))  # with the Size axis's sizes
    params = {"Script": SCRIPT_TITLE}
    for axis in axes:
        params.update(axis.infotext_params())
    return GridPlan(*axes, request, tuple(cells), params)


