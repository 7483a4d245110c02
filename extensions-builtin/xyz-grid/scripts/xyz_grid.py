"""The X/Y/Z plot as A1111's built-in script "X/Y/Z plot" (A1111.md §11): the controls, A1111's
positional `script_args`, and `run(p, *args)` turning them into a `modules.extension_host.xyz_grid.run_grid` call.

The grid itself (values, axes, order of loads, drawing) lives in `modules.extension_host.xyz`; this file is only the
Script shape around it. `script_args`, as A1111's API sends them (docs/EXTENSIONS.md, "X/Y/Z plot"):

    0 x_type  1 x_values  2 x_values_dropdown  3 y_type  4 y_values  5 y_values_dropdown
    6 z_type  7 z_values  8 z_values_dropdown  9 draw_legend  10 include_lone_images
    11 include_sub_grids  12 no_fixed_seeds  13 vary_seeds_x  14 vary_seeds_y  15 vary_seeds_z
    16 margin_size  17 csv_mode  then Atelier's: 18 merge_method  19 merge_primary (A)
    20 merge_secondary (B)  21 merge_tertiary (C)

A type is an axis name (any case) or an index into A1111's axis list of the tab, for the indices
that list fixes (`A1111_TXT2IMG_AXES`, `A1111_IMG2IMG_AXES`): A1111 filters one list per tab, so an
index means another axis in img2img (there 5 is CFG Scale, 6 Image CFG Scale, 24 Denoising).
The tab is the request's: an img2img `p` (its request an `Img2ImgRequest`) plans with img2img's
axes, and each cell keeps the init images and the mask.

Extensions add axes as in A1111: this module (found through `scripts.scripts_data`, where this
Script's `__module__` is A1111's "xyz_grid.py") has `axis_options`, `AxisOption` and the `apply_*` /
`format_*` helpers (modules.extension_host.xyz.extension_axes). The module is loaded once per app,
so `axis_options` is that app's list: Atelier's axes first, then what extensions appended.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from modules import scripts
from modules.generation.requests import Img2ImgRequest
from modules.processing import GenerationResult, Processed
from modules.extension_host.xyz.extension_axes import (  # noqa: F401 - A1111's names, for extensions
    AxisOption,
    AxisOptionImg2Img,
    AxisOptionTxt2Img,
    apply_field,
    apply_override,
    boolean_choice,
    do_nothing,
    extension_axis_types,
    format_nothing,
    format_remove_path,
    format_value,
    format_value_add_label,
    format_value_join_list,
    str_permutations,
)
from modules.extension_host.xyz_grid import (
    MERGE_MULTIPLIER,
    NOTHING,
    SCRIPT_TITLE,
    AxisSpec,
    AxisValueError,
    GridOptions,
    GridResult,
    GridServices,
    MergeAxisSettings,
    axis_types,
    find_axis,
    join_csv,
    run_grid,
    split_csv,
)

# A1111's axis dropdowns (A1111.md §11, §13.11): one master list filtered per tab, "Nothing" first
# (A1111's Y and Z default to index 0). Fixed here up to the last entry before VAE: from VAE on
# (VAE, Styles, ..., Size) the index depends on the A1111 version (dev adds "Skip Early CFG"), so
# those go by name only. txt2img's list, indices 0-28:
A1111_TXT2IMG_AXES = (
    NOTHING, "Seed", "Var. seed", "Var. strength", "Steps", "Hires steps", "CFG Scale", "Prompt S/R",
    "Prompt order", "Sampler", "Hires sampler", "Checkpoint name", "Negative Guidance minimum sigma",
    "Sigma Churn", "Sigma min", "Sigma max", "Sigma noise", "Schedule type", "Schedule min sigma",
    "Schedule max sigma", "Schedule rho", "Beta schedule alpha", "Beta schedule beta", "Eta", "Clip skip",
    "Denoising", "Initial noise multiplier", "Extra noise", "Hires upscaler",
)
# img2img's, indices 0-27: the same master list without the txt2img-only entries (Hires steps, Hires
# sampler, Hires upscaler) and with the img2img-only ones where the master list has them: Image CFG
# Scale after CFG Scale, img2img's Sampler after Hires sampler (so at txt2img's Sampler place), Cond.
# Image Mask Weight after Hires upscaler.
A1111_IMG2IMG_AXES = (
    NOTHING, "Seed", "Var. seed", "Var. strength", "Steps", "CFG Scale", "Image CFG Scale", "Prompt S/R",
    "Prompt order", "Sampler", "Checkpoint name", "Negative Guidance minimum sigma", "Sigma Churn",
    "Sigma min", "Sigma max", "Sigma noise", "Schedule type", "Schedule min sigma", "Schedule max sigma",
    "Schedule rho", "Beta schedule alpha", "Beta schedule beta", "Eta", "Clip skip", "Denoising",
    "Initial noise multiplier", "Extra noise", "Cond. Image Mask Weight",
)
MERGE_METHOD_CHOICES = ("Weighted sum", "Add difference")

# A1111's list, this app's (see the module docstring); extensions append AxisOptions to it.
axis_options: list = list(axis_types())


def extra_axes() -> tuple:
    """The axes extensions appended to `axis_options`, as Atelier axis types."""
    return extension_axis_types(axis_options)
FILL_VALUES_SYMBOL = "\U0001f4d2"  # 📒, A1111's "fill values" button


def a1111_axes(is_img2img: bool) -> tuple[str, ...]:
    """A1111's axis list of the tab, as far as its indices are fixed."""
    return A1111_IMG2IMG_AXES if is_img2img else A1111_TXT2IMG_AXES


def axis_label(letter: str, axis_type: Any, is_img2img: bool = False) -> str:
    """The Atelier axis label an API `x_type`/`y_type`/`z_type` names: an index into A1111's list of
    the tab, or a name. AxisValueError names the type and what to send instead."""
    tab = "img2img" if is_img2img else "txt2img"
    if isinstance(axis_type, bool) or not isinstance(axis_type, (int, str)):
        raise AxisValueError(f"{letter} type must be an axis name or A1111's index, got {axis_type!r}")
    if isinstance(axis_type, str):
        if not axis_type.strip():
            return NOTHING
        try:
            return find_axis(axis_type, extra_axes(), is_img2img=is_img2img).label
        except AxisValueError as error:
            raise AxisValueError(f"{letter} type: {error}") from None
    known = a1111_axes(is_img2img)
    if not 0 <= axis_type < len(known):
        raise AxisValueError(
            f"{letter} type {axis_type} is not one of A1111's {tab} axis indices Atelier knows "
            f"(0-{len(known) - 1}); send the type by name instead, e.g. \"VAE\" or \"Size\"")
    label = known[axis_type]
    try:
        return find_axis(label, is_img2img=is_img2img).label
    except AxisValueError as error:
        if label.casefold() in {axis.label.casefold() for axis in axis_types()}:  # the other tab's axis
            raise AxisValueError(f"{letter} type {axis_type} is A1111's {tab} {label!r}: {error}") from None
        available = ", ".join(axis.label for axis in axis_types(extra_axes(), is_img2img=is_img2img))
        raise AxisValueError(f"{letter} type {axis_type} is A1111's {tab} {label!r}, which Atelier's X/Y/Z plot "
                             f"does not have yet; available: {available}") from None


@dataclass(frozen=True)
class XyzArguments:
    """The script's arguments, typed: three axes and the grid options."""

    x: AxisSpec
    y: AxisSpec
    z: AxisSpec
    options: GridOptions

    @classmethod
    def from_script_args(cls, args: Sequence[Any], is_img2img: bool = False) -> XyzArguments:
        """From A1111's positional `script_args` (module docstring), axis indices in the tab's list;
        AxisValueError names the bad one."""
        args = list(args) + [None] * max(0, 22 - len(args))
        csv_mode = bool(args[17])
        method, primary, secondary, tertiary = args[18:22]
        merge = MergeAxisSettings(str(primary), str(secondary), str(tertiary) if tertiary else None,
                                  str(method or MERGE_METHOD_CHOICES[0])) if primary and secondary else None
        axes = []
        for offset, letter in zip((0, 3, 6), "XYZ"):
            label = axis_label(letter, args[offset] if args[offset] is not None else NOTHING, is_img2img)
            values = axis_values(label, args[offset + 1], args[offset + 2], csv_mode, is_img2img)
            axes.append(AxisSpec(label, values, merge if label == MERGE_MULTIPLIER else None))
        try:
            margin = int(args[16] or 0)
            options = GridOptions(draw_legend=True if args[9] is None else bool(args[9]),
                                  include_lone_images=bool(args[10]), include_sub_grids=bool(args[11]),
                                  keep_minus_one_seeds=bool(args[12]), vary_seeds_x=bool(args[13]),
                                  vary_seeds_y=bool(args[14]), vary_seeds_z=bool(args[15]), margin_size=margin)
        except (TypeError, ValueError) as error:
            raise AxisValueError(f"margin_size: {error}") from None
        return cls(*axes, options)


def axis_values(label: str, text: Any, chosen: Any, csv_mode: bool, is_img2img: bool = False) -> str | list:
    """A1111's rule, lenient: an axis with choices takes the dropdown's list unless csv_mode is on;
    an empty list falls back to the text (API clients often send only the text)."""
    if find_axis(label, extra_axes(), is_img2img=is_img2img).choices is not None and not csv_mode and chosen:
        if not isinstance(chosen, (list, tuple)):
            raise AxisValueError(f"{label} values_dropdown must be a list, got {type(chosen).__name__}")
        return list(chosen)
    return "" if text is None else str(text)


def grid_services(job: scripts.ScriptJob) -> GridServices:
    """The app's services, with the job's engine so every cell runs the always-on scripts."""
    if job.context is None:
        raise RuntimeError(f"{SCRIPT_TITLE} runs inside the app (run_txt2img with its AppContext): it needs "
                           "the checkpoint list and model manager")
    return replace(GridServices.of(job.context), engine=job.engine, extra_axes=extra_axes())


def processed_of(p, result: GridResult, options: GridOptions) -> Processed:
    """A1111's result: the grid (and sub grids) first, then the cell images when asked; the grid's
    infotext is the first cell's with the plot's fields."""
    cells = sorted(result.cells, key=lambda c: (c.iz, c.iy, c.ix)) if options.include_lone_images else []
    grids = len(result.images) - sum(len(cell.images) for cell in cells)
    first = result.cells[0] if result.cells else None
    first_seed = first.seeds[0] if first is not None and first.seeds else p.seed
    per_image = [(cell.request, seed) for cell in cells for seed in cell.seeds]
    request = first.request if first is not None else p
    generation = GenerationResult(
        images=list(result.images), infotexts=list(result.infotexts),
        seeds=[first_seed] * grids + [seed for _, seed in per_image],
        subseeds=[request.subseed] * grids + [r.subseed for r, _ in per_image],
        prompts=[request.prompt] * grids + [r.prompt for r, _ in per_image],
        negative_prompts=[request.negative_prompt] * grids + [r.negative_prompt for r, _ in per_image],
        saved_paths=list(result.saved_paths), warnings=list(result.warnings), interrupted=result.interrupted)
    processed = Processed.from_result(p, generation)
    processed.index_of_first_image = grids
    return processed


class Script(scripts.Script):
    """A1111's "X/Y/Z plot" (selectable in txt2img and img2img, each with its tab's axes)."""

    __module__ = "xyz_grid.py"  # A1111's module name, which extensions look for in scripts_data

    def title(self):
        return SCRIPT_TITLE

    def show(self, is_img2img):
        return True

    def ui(self, is_img2img):
        import gradio as gr  # here, not at import: gradio takes seconds to import

        is_img2img = bool(is_img2img)
        labels = [axis.label for axis in axis_types(extra_axes(), is_img2img=is_img2img)]
        rows = []
        with gr.Column(elem_id=self.elem_id("axes")):
            for letter, default in (("x", "Seed"), ("y", NOTHING), ("z", NOTHING)):
                with gr.Row():
                    axis_type = gr.Dropdown(labels, value=default, label=f"{letter.upper()} type",
                                            elem_id=self.elem_id(f"{letter}_type"))
                    values = gr.Textbox(label=f"{letter.upper()} values", lines=1,
                                        elem_id=self.elem_id(f"{letter}_values"))
                    values_dropdown = gr.Dropdown([], value=[], label=f"{letter.upper()} values", multiselect=True,
                                                  visible=False, allow_custom_value=True,
                                                  elem_id=self.elem_id(f"{letter}_values_dropdown"))
                    fill = gr.Button(FILL_VALUES_SYMBOL, visible=False, min_width=40, scale=0,
                                     elem_id=f"xyz_grid_fill_{letter}_tool_button")
                rows.append((axis_type, values, values_dropdown, fill))
        with gr.Group(visible=False, elem_id=self.elem_id("merge")) as merge_group, gr.Row():
            merge_method = gr.Dropdown(list(MERGE_METHOD_CHOICES), value=MERGE_METHOD_CHOICES[0],
                                       label="Merge method (M = each Merge multiplier value)",
                                       elem_id=self.elem_id("merge_method"))
            merge_models = [
                gr.Dropdown([], value=None, label=label, allow_custom_value=True, elem_id=self.elem_id(f"merge_{name}"))
                for name, label in (("primary", "Primary model (A)"), ("secondary", "Secondary model (B)"),
                                    ("tertiary", "Tertiary model (C), Add difference only"))]
        with gr.Row(variant="compact", elem_id="axis_options"):
            with gr.Column():
                draw_legend = gr.Checkbox(label="Draw legend", value=True, elem_id=self.elem_id("draw_legend"))
                no_fixed_seeds = gr.Checkbox(label="Keep -1 for seeds", value=False,
                                             elem_id=self.elem_id("no_fixed_seeds"))
                with gr.Row():
                    vary_seeds = [gr.Checkbox(label=f"Vary seeds for {letter}", value=False, min_width=80,
                                              elem_id=self.elem_id(f"vary_seeds_{letter.lower()}"))
                                  for letter in "XYZ"]
            with gr.Column():
                include_lone_images = gr.Checkbox(label="Include Sub Images", value=False,
                                                  elem_id=self.elem_id("include_lone_images"))
                include_sub_grids = gr.Checkbox(label="Include Sub Grids", value=False,
                                                elem_id=self.elem_id("include_sub_grids"))
                csv_mode = gr.Checkbox(label="Use text inputs instead of dropdowns", value=False,
                                       elem_id=self.elem_id("csv_mode"))
            with gr.Column():
                margin_size = gr.Slider(label="Grid margins (px)", minimum=0, maximum=500, value=0, step=2,
                                        elem_id=self.elem_id("margin_size"))
        with gr.Row(variant="compact", elem_id="swap_axes"):
            swaps = [(gr.Button(f"Swap {a.upper()}/{b.upper()} axes", elem_id=f"{a}{b}_grid_swap_axes_button"), i, j)
                     for a, b, i, j in (("x", "y", 0, 1), ("y", "z", 1, 2), ("x", "z", 0, 2))]

        self._wire(gr, rows, csv_mode, merge_group, merge_models, swaps, is_img2img)
        x, y, z = ([axis_type, values, values_dropdown] for axis_type, values, values_dropdown, _ in rows)
        return [*x, *y, *z, draw_legend, include_lone_images, include_sub_grids, no_fixed_seeds, *vary_seeds,
                margin_size, csv_mode, merge_method, *merge_models]

    def _wire(self, gr, rows, csv_mode, merge_group, merge_models, swaps, is_img2img: bool = False) -> None:
        """The events: a type change shows the textbox or the dropdown (with the axis's choices), the
        fill button, and the merge settings while an axis is Merge multiplier; swaps exchange axes.
        The handlers look axes up in the list of the tab this UI is for."""

        def select_axis(label, text, chosen, text_mode):
            return self.select_axis(label, text, chosen, text_mode, is_img2img)

        def fill(label, text_mode):
            choices = self._choices(label, is_img2img) or []
            return (gr.update(value=join_csv(choices)), gr.update()) if text_mode else (gr.update(), choices)

        def show_merge(*labels):
            merging = MERGE_MULTIPLIER in labels
            checkpoints = self._choices("Checkpoint name") if merging else None
            model_updates = [gr.update(choices=checkpoints) if checkpoints is not None else gr.update()
                             for _ in merge_models]
            return [gr.update(visible=merging), *model_updates]

        types = [row[0] for row in rows]
        for axis_type, values, values_dropdown, fill_button in rows:
            axis_type.change(select_axis, inputs=[axis_type, values, values_dropdown, csv_mode],
                             outputs=[fill_button, values, values_dropdown], show_progress="hidden", queue=False)
            axis_type.change(show_merge, inputs=types, outputs=[merge_group, *merge_models],
                             show_progress="hidden", queue=False)
            fill_button.click(fill, inputs=[axis_type, csv_mode], outputs=[values, values_dropdown],
                              show_progress="hidden", queue=False)

        def change_mode(text_mode, *state):
            updates = []
            for index in range(3):
                updates += select_axis(*state[index * 3:index * 3 + 3], text_mode)
            return updates

        state = [component for row in rows for component in row[:3]]
        csv_mode.change(change_mode, inputs=[csv_mode, *state],
                        outputs=[component for row in rows for component in (row[3], row[1], row[2])],
                        show_progress="hidden", queue=False)

        def swap(type_a, values_a, chosen_a, type_b, values_b, chosen_b):
            return type_b, values_b, chosen_b, type_a, values_a, chosen_a

        for button, i, j in swaps:
            pair = [*rows[i][:3], *rows[j][:3]]
            button.click(swap, inputs=pair, outputs=pair, show_progress="hidden", queue=False)

    def select_axis(self, label, text, chosen, text_mode, is_img2img: bool = False):
        """Updates for (fill button, values textbox, values dropdown) when axis `label` is chosen or the
        text mode changes: A1111's rule, values moved between the two and kept where they are choices."""
        import gradio as gr

        choices = self._choices(label, is_img2img)
        if choices is None:
            return gr.update(visible=False), gr.update(visible=True, value=text), gr.update(visible=False)
        if text_mode and chosen:
            text, chosen = join_csv([value for value in chosen if value in choices]), []
        elif not text_mode and text:
            text, chosen = "", [value for value in split_csv(text) if value in choices]
        return (gr.update(visible=True), gr.update(visible=text_mode, value=text),
                gr.update(choices=choices, visible=not text_mode, value=chosen or []))

    def _choices(self, label: str, is_img2img: bool = False) -> list[str] | None:
        """The dropdown values of axis `label` (in the tab's list), or None: no choices, or no app
        bound to list them."""
        axis = find_axis(label, extra_axes(), is_img2img=is_img2img)
        if axis.choices is None or (self.app is None and axis.p_apply is None):
            return None
        return list(axis.choices(GridServices.of(self.app) if self.app is not None else None))

    def run(self, p, *args):
        job = scripts.job_of(p)
        request = p.to_request()
        try:
            # The tab is the request's: img2img's axis list (and A1111's img2img indices) for an
            # Img2ImgRequest; every cell is built from it, init images and mask included.
            arguments = XyzArguments.from_script_args(args, is_img2img=isinstance(request, Img2ImgRequest))
            result = run_grid(grid_services(job), request, arguments.x, arguments.y, arguments.z,
                              arguments.options, job.control,
                              save=job.save is not False and not p.do_not_save_samples)
        except AxisValueError as error:
            raise scripts.ScriptArgumentError(f"{SCRIPT_TITLE}: {error}") from None
        return processed_of(p, result, arguments.options)
