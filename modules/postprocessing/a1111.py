"""A1111's `modules.postprocessing` functions for extensions: `run_postprocessing`, `run_extras`,
`run_postprocessing_webui`, over `ExtrasRequest` (modules.postprocessing.extras).

They run in the app of the caller (modules.extension_host.environment) and wait for the result;
the work runs on the job worker. They return A1111's `(images, html_info, "")`. As in A1111, images
are saved unless `save_output=False`.
"""

from __future__ import annotations

import os
from typing import Any

from PIL import Image

from modules.postprocessing.upscale import UPSCALE_SCRIPT


def _request(extras_mode: int, image: Any, image_folder: Any, input_dir: str, output_dir: str,
             show_extras_results: bool, script_args: dict[str, dict[str, Any]], save_output: bool):
    from modules.postprocessing.extras import ExtrasRequest, load_upload

    images: list[tuple[str, Image.Image]] = []
    files: list[tuple[str, str]] = []
    if extras_mode == 1:
        items = list(image_folder or ())
        # Gradio files: their temp paths, named by their original names when Gradio kept them; read
        # on the worker one at a time. Mixed with images, they are decoded here to keep their order.
        mixed = any(isinstance(item, Image.Image) for item in items)
        for item in items:
            if isinstance(item, Image.Image):
                images.append((getattr(item, "filename", "") or "", item))
                continue
            path = str(getattr(item, "name", item))
            name = getattr(item, "orig_name", None) or os.path.basename(path)
            if mixed:
                images.append(load_upload(path, name))
            else:
                files.append((name, path))
    elif extras_mode == 0 and image is not None:
        images.append(("", image))
    return ExtrasRequest(mode=extras_mode, images=images, files=files, input_dir=input_dir if extras_mode == 2 else "",
                         output_dir=output_dir if extras_mode == 2 else "", show_results=bool(show_extras_results),
                         script_args=script_args, save=save_output)


def _app():
    from modules.extension_host.environment import current_app

    return current_app()


def _answer(result) -> tuple[list, str, str]:
    return list(result.images), result.html_info, ""


def _positional_script_args(context, args: tuple) -> dict[str, dict[str, Any]]:
    """A1111's flat argument list mapped back to each step's keyword arguments, through the
    `args_from`/`args_to` and `controls` the Extras tab recorded on the steps."""
    from modules.postprocessing.runner import postprocessing_scripts

    if len(args) == 1 and isinstance(args[0], dict):
        return args[0]
    mapped: dict[str, dict[str, Any]] = {}
    for script in postprocessing_scripts(context):
        if script.args_from is None or script.args_to is None or not script.controls:
            continue
        values = args[script.args_from:script.args_to]
        mapped[script.name] = dict(zip(script.controls, values))
    if args and not mapped:
        raise ValueError("run_postprocessing: positional step arguments need the Extras tab's layout (no step "
                         "recorded args_from/args_to); pass one dict {step name: {argument: value}} instead")
    return mapped


def run_postprocessing(extras_mode, image, image_folder, input_dir, output_dir, show_extras_results, *args,
                       save_output: bool = True):
    """A1111's `run_postprocessing`: the Extras tab's run with the steps' flat arguments (or one dict
    by step name)."""
    from modules.postprocessing.extras import run_extras_now

    context = _app()
    request = _request(extras_mode, image, image_folder, input_dir, output_dir, show_extras_results,
                       _positional_script_args(context, args), save_output)
    return _answer(run_extras_now(context, request))


def run_postprocessing_webui(id_task, *args, **kwargs):
    """A1111's Gradio handler name: `run_postprocessing` without the task id."""
    return run_postprocessing(*args, **kwargs)


def run_extras(extras_mode, resize_mode, image, image_folder, input_dir, output_dir, show_extras_results,
               gfpgan_visibility, codeformer_visibility, codeformer_weight, upscaling_resize, upscaling_resize_w,
               upscaling_resize_h, upscaling_crop, extras_upscaler_1, extras_upscaler_2,
               extras_upscaler_2_visibility, upscale_first: bool, save_output: bool = True,
               max_side_length: int = 0):
    """A1111's `run_extras` (what its API calls): the Upscale step from these values; `upscale_first`
    is ignored (A1111 ignores it too). Face restoration is not part of Atelier: a visibility above 0
    is refused."""
    from modules.postprocessing.extras import run_extras_now

    refuse_face_restoration(gfpgan_visibility, codeformer_visibility)
    context = _app()
    script_args = {UPSCALE_SCRIPT: upscale_args(resize_mode, upscaling_resize, max_side_length, upscaling_resize_w,
                                                upscaling_resize_h, upscaling_crop, extras_upscaler_1,
                                                extras_upscaler_2, extras_upscaler_2_visibility)}
    request = _request(extras_mode, image, image_folder, input_dir, output_dir, show_extras_results, script_args,
                       save_output)
    return _answer(run_extras_now(context, request))


def upscale_args(resize_mode, upscaling_resize, max_side_length, upscaling_resize_w, upscaling_resize_h,
                 upscaling_crop, upscaler_1, upscaler_2, upscaler_2_visibility) -> dict[str, Any]:
    """The Upscale step's keyword arguments from A1111's `run_extras` / API field values."""
    return {"upscale_enabled": True, "upscale_mode": int(resize_mode), "upscale_by": float(upscaling_resize),
            "max_side_length": int(max_side_length or 0), "upscale_to_width": int(upscaling_resize_w),
            "upscale_to_height": int(upscaling_resize_h), "upscale_crop": bool(upscaling_crop),
            "upscaler_1_name": upscaler_1, "upscaler_2_name": upscaler_2,
            "upscaler_2_visibility": float(upscaler_2_visibility)}


def refuse_face_restoration(gfpgan_visibility: float, codeformer_visibility: float) -> None:
    asked = [name for name, value in (("gfpgan_visibility", gfpgan_visibility),
                                      ("codeformer_visibility", codeformer_visibility)) if value and value > 0]
    if asked:
        raise ValueError(f"{', '.join(asked)}: Atelier has no face restoration (GFPGAN, CodeFormer); send 0 "
                         "(the default) and restore faces with an extension")
