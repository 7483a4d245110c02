"""The Extras API (A1111.md §14.6): `POST /sdapi/v1/extra-single-image`, `POST /sdapi/v1/extra-batch-images`,
`GET /sdapi/v1/upscalers`, `GET /sdapi/v1/realesrgan-models`.

Both POST routes take A1111's fields and defaults and run one `ExtrasRequest` (modules.postprocessing)
as a job of kind "extras" on the queue, the Upscale step on (`max_side_length` 0) and nothing saved.
The images come back re-encoded in `samples_format` with their text: a PNG carries the source's
text chunks and `postprocessing`, a JPEG or WebP an EXIF UserComment with the source's `parameters`
(A1111's encoding). `upscale_first` is accepted and ignored (as in A1111: the order is the steps').

Where Atelier answers differently, on purpose:
- an unknown upscaler is a 422 "could not find upscaler named 'X'; available: ..." (A1111: an
  AssertionError, 500);
- `gfpgan_visibility` or `codeformer_visibility` above 0 is a 422: Atelier has no face restoration,
  and an image returned without it would look like success;
- an upscale whose result would exceed `upscale_max_pixels` is a 422 before any work;
- Scale to (`resize_mode` 1) takes `upscaling_resize_w` and `_h` of 64 to 8192 (the tab's range; A1111:
  any number from 1); a number out of its range is a 422 naming the field;
- images are decoded with the API's limits (modules.api.images: base64 or an allowed URL, at most
  8192x8192 each, the images of one batch request together at most twice that), and `imageList`
  holds at most `MAX_EXTRAS_IMAGES` (checked before any is decoded);
- the results of one request together may not exceed twice `upscale_max_pixels` (a 422 before any
  work: modules.postprocessing.extras's output budget).
"""

from __future__ import annotations

import base64
import io
from typing import Any, Literal

from fastapi import APIRouter, Request
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from modules.serving.accounts import caller
from modules.api.errors import bad_request, describe_validation_error, exception_to_api_error
from modules.api.images import MAX_API_IMAGE_PIXELS, PixelBudget, decode_input_image
from modules.api.state import require_running_queue
from modules.serving.accounts import SHARED_USER, User

# All images of one batch request together (as img2img's init images and mask).
MAX_BATCH_REQUEST_PIXELS = 2 * MAX_API_IMAGE_PIXELS


class ExtrasBaseRequest(BaseModel):
    """A1111's `ExtrasBaseRequest` fields and defaults."""

    model_config = ConfigDict(extra="ignore")

    resize_mode: Literal[0, 1] = Field(0, description="0 = scale by upscaling_resize, 1 = scale to "
                                                      "upscaling_resize_w x upscaling_resize_h")
    show_extras_results: bool = Field(True, description="Accepted for A1111's clients; the API always returns the "
                                                        "images")
    gfpgan_visibility: float = Field(0, ge=0, le=1, description="Must be 0: Atelier has no face restoration")
    codeformer_visibility: float = Field(0, ge=0, le=1, description="Must be 0: Atelier has no face restoration")
    codeformer_weight: float = Field(0, ge=0, le=1)
    upscaling_resize: float = Field(2, gt=0, description="Scale by: the factor")
    upscaling_resize_w: int = Field(512, ge=1, description="Scale to: the width")
    upscaling_resize_h: int = Field(512, ge=1, description="Scale to: the height")
    upscaling_crop: bool = Field(True, description="Scale to: crop to the box, centred")
    upscaler_1: str = Field("None", description="An upscaler name from /sdapi/v1/upscalers; \"None\" skips upscaling")
    upscaler_2: str = Field("None", description="A second upscaler blended over the first")
    extras_upscaler_2_visibility: float = Field(0, ge=0, le=1)
    upscale_first: bool = Field(False, description="Accepted and ignored (as in A1111)")


class ExtrasSingleImageRequest(ExtrasBaseRequest):
    image: str = Field("", description="The image: base64 (a data: URL prefix is allowed) or an http(s) URL")


class FileData(BaseModel):
    data: str = Field(description="The image, base64")
    name: str = Field("", description="The file name (unused)")


class ExtrasBatchImagesRequest(ExtrasBaseRequest):
    imageList: list[FileData] = Field(description="The images")


class ExtrasSingleImageResponse(BaseModel):
    html_info: str
    image: str | None = None


class ExtrasBatchImagesResponse(BaseModel):
    html_info: str
    images: list[str]


class UpscalerItem(BaseModel):
    name: str
    model_name: str | None = None
    model_path: str | None = None
    model_url: str | None = None
    scale: float | None = None


class RealesrganItem(BaseModel):
    name: str
    path: str | None = None
    scale: int | None = None


def _script_args(body: ExtrasBaseRequest) -> dict[str, dict[str, Any]]:
    from modules.postprocessing.a1111 import refuse_face_restoration, upscale_args
    from modules.postprocessing.upscale import UPSCALE_SCRIPT

    try:
        refuse_face_restoration(body.gfpgan_visibility, body.codeformer_visibility)
    except ValueError as error:
        raise bad_request(str(error)) from None
    return {UPSCALE_SCRIPT: upscale_args(body.resize_mode, body.upscaling_resize, 0, body.upscaling_resize_w,
                                         body.upscaling_resize_h, body.upscaling_crop, body.upscaler_1,
                                         body.upscaler_2, body.extras_upscaler_2_visibility)}


# The Upscale step's argument names as this API's fields, for the step's refusals ("upscale_to_width:
# 9000 is out of range" reads "upscaling_resize_w: ..." to an API client).
API_FIELDS = {"upscale_mode": "resize_mode", "upscale_by": "upscaling_resize", "upscale_to_width": "upscaling_resize_w",
              "upscale_to_height": "upscaling_resize_h", "upscaler_2_visibility": "extras_upscaler_2_visibility"}


def _api_field_names(message: str) -> str:
    for argument, api_field in API_FIELDS.items():
        message = message.replace(f"{argument}: ", f"{api_field}: ")
    return message


def encode_result(image: Image.Image, settings) -> str:
    """`image` as base64 in `samples_format`, with its text (module docstring)."""
    from modules.outputs.images import SaveOptions, write_image_with_geninfo

    extension = "." + str(settings["samples_format"]).lower().lstrip(".")
    chunks = {key: value for key, value in (image.info or {}).items()
              if isinstance(key, str) and isinstance(value, str)}
    buffer = io.BytesIO()
    options = SaveOptions.from_settings(settings)
    if extension == ".png":
        write_image_with_geninfo(image, buffer, extension, None, options, existing_pnginfo=chunks)
    else:
        write_image_with_geninfo(image, buffer, extension, chunks.get("parameters"), options)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def run_request(context, body: ExtrasBaseRequest, images: list[tuple[str, Image.Image]], mode: int,
                user: User = SHARED_USER):
    """Queue the Extras run for `images` as `user`'s job and wait for it; its ExtrasResult, or an
    ApiError (429 for a user of a shared server at their limit of waiting jobs)."""
    from modules.postprocessing.extras import ExtrasRequest, submit_extras, take_extras_result

    script_args = _script_args(body)
    try:
        request = ExtrasRequest(mode=mode, images=images, script_args=script_args, save=False,
                                show_results=body.show_extras_results)
    except ValidationError as error:
        raise bad_request(describe_validation_error(error)) from None
    require_running_queue(context.jobs)
    try:
        job = submit_extras(context, request, owner=user.owner)
    except ValueError as error:
        raise bad_request(_api_field_names(str(error))) from None
    job.wait()
    if job.exception is not None:
        raise exception_to_api_error(job.exception)
    return take_extras_result(job)


def single_image(context, body: ExtrasSingleImageRequest, user: User = SHARED_USER) -> dict[str, Any]:
    settings = context.settings.current()
    if not body.image:
        raise bad_request("image: no image sent; send the image as base64 (or an http(s) URL)")
    image = decode_input_image(body.image, settings, field="image")
    result = run_request(context, body, [("", image)], mode=0, user=user)
    return {"html_info": result.html_info,
            "image": encode_result(result.images[0], settings) if result.images else None}


def batch_images(context, body: ExtrasBatchImagesRequest, user: User = SHARED_USER) -> dict[str, Any]:
    settings = context.settings.current()
    from modules.postprocessing.extras import MAX_EXTRAS_IMAGES

    if not body.imageList:
        raise bad_request("imageList: no images sent; send a list of {data: <base64>, name: <file name>}")
    if len(body.imageList) > MAX_EXTRAS_IMAGES:
        raise bad_request(f"imageList: {len(body.imageList)} images; one request takes at most {MAX_EXTRAS_IMAGES}: "
                          "split them into several requests")
    budget = PixelBudget(MAX_BATCH_REQUEST_PIXELS)
    images = [(item.name, decode_input_image(item.data, settings, field=f"imageList[{index}]", budget=budget))
              for index, item in enumerate(body.imageList)]
    result = run_request(context, body, images, mode=1, user=user)
    return {"html_info": result.html_info, "images": [encode_result(image, settings) for image in result.images]}


def _upscalers(context):
    upscalers = getattr(context, "upscalers", None)
    if upscalers is None:
        raise exception_to_api_error(RuntimeError("this server has no upscaler library (context.upscalers)"))
    return upscalers


def build_router(context, state) -> APIRouter:
    router = APIRouter(prefix="/sdapi/v1", tags=["extras"])

    @router.post("/extra-single-image", response_model=ExtrasSingleImageResponse)
    async def extra_single_image(body: ExtrasSingleImageRequest, request: Request) -> dict[str, Any]:
        """A1111's Extras on one image: upscale by or to a size with one or two upscalers. Runs on the
        queue with the generations; nothing is saved."""
        user = caller(context, request)
        return await state.blocking(lambda: single_image(context, body, user))

    @router.post("/extra-batch-images", response_model=ExtrasBatchImagesResponse)
    async def extra_batch_images(body: ExtrasBatchImagesRequest, request: Request) -> dict[str, Any]:
        """A1111's Extras on several images (`imageList`), each as extra-single-image; extra images
        steps make are included."""
        user = caller(context, request)
        return await state.blocking(lambda: batch_images(context, body, user))

    @router.get("/upscalers", response_model=list[UpscalerItem])
    def upscalers() -> list[dict[str, Any]]:
        """The upscalers in A1111's order: None, Lanczos, Nearest, then the models by name."""
        return [entry.api_row() for entry in _upscalers(context).registry.entries()]

    @router.get("/realesrgan-models", response_model=list[RealesrganItem])
    def realesrgan_models() -> list[dict[str, Any]]:
        """A1111's six Real-ESRGAN models, whatever `realesrgan_enabled_models` says."""
        return _upscalers(context).registry.realesrgan_models()

    return router
