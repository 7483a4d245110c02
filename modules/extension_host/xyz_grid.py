"""The X/Y/Z plot, built in: what the Script wrapper, the UI and the API call.

    from modules.extension_host.xyz_grid import AxisSpec, GridOptions, run_grid
    result = run_grid(context, request, AxisSpec("Checkpoint name", "a, b"), AxisSpec("CFG Scale", "5, 9"),
                      control=job_control)
    result.grid, result.images, result.infotexts, result.cells

An `Img2ImgRequest` as the base request makes an img2img grid: img2img's axis list (Denoising,
Image CFG Scale, Cond. Image Mask Weight, ...), every cell with the base's init images and mask.

The parts live in `modules.extension_host.xyz`: values (A1111's value syntax), axes (the axis types), plan (`plan_grid`: cells checked before any work), runner (`run_grid`),
drawing (grids with legends).
"""

from modules.extension_host.xyz.axes import (
    BUILTIN_AXES,
    IMG2IMG,
    MERGE_MULTIPLIER,
    NOTHING,
    TXT2IMG,
    AxisContext,
    AxisType,
    MergeAxisSettings,
    apply_field,
    apply_override,
    axis_types,
    find_axis,
    format_basename,
    format_nothing,
    format_plain,
    format_with_label,
    parse_axis_values,
    with_fields,
)
from modules.extension_host.xyz.drawing import GridLayout, draw_grid, grid_layout
from modules.extension_host.xyz.plan import (
    SCRIPT_TITLE,
    AxisSpec,
    GridOptions,
    GridPlan,
    PlannedCell,
    ResolvedAxis,
    plan_grid,
)
from modules.extension_host.xyz.runner import GridCell, GridResult, add_infotext_params, run_grid
from modules.extension_host.xyz.services import GridServices
from modules.extension_host.xyz.values import AxisValueError, join_csv, split_csv

__all__ = [
    "BUILTIN_AXES", "IMG2IMG", "MERGE_MULTIPLIER", "NOTHING", "SCRIPT_TITLE", "TXT2IMG",
    "AxisContext", "AxisSpec", "AxisType", "AxisValueError", "GridCell", "GridLayout", "GridOptions", "GridPlan",
    "GridResult", "GridServices", "MergeAxisSettings", "PlannedCell", "ResolvedAxis",
    "add_infotext_params", "apply_field", "apply_override", "axis_types", "draw_grid", "find_axis",
    "format_basename", "format_nothing", "format_plain", "format_with_label", "grid_layout", "join_csv",
    "parse_axis_values", "plan_grid", "run_grid", "split_csv", "with_fields",
]
