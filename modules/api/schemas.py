"""The request and response bodies of `/sdapi/v1`, with A1111's field names, types and API defaults.

These are the wire format only. Handlers map them explicitly onto the core types
(`GenerationRequest`, `MergeRequest`, settings) and back; nothing here is used by the core.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class GenerationApiRequest(BaseModel):
    """What A1111's txt2img and img2img requests share: the `StableDiffusionProcessing` fields and
    the API extras (A1111.md §8, §13.9).

    Defaults are A1111's API defaults, not the UI's: Euler (through `sampler_index`), 50 steps,
    `save_images` false. Unknown fields are accepted and ignored, as A1111 does (clients send fields
    of newer A1111 versions and of forks); the server logs them.
    """

    model_config = ConfigDict(extra="allow")

    prompt: str = ""
    negative_prompt: str = ""
    styles: list[str] | None = None
    seed: int = -1
    subseed: int = -1
    subseed_strength: float = 0.0
    seed_resize_from_h: int = -1
    seed_resize_from_w: int = -1
    sampler_name: str | None = None
    scheduler: str | None = None
    batch_size: int = 1
    n_iter: int = 1
    steps: int = 50
    cfg_scale: float = 7.0
    width: int = 512
    height: int = 512
    restore_faces: bool | None = None
    tiling: bool | None = None
    do_not_save_samples: bool = False
    do_not_save_grid: bool = False
    eta: float | None = None
    denoising_strength: float | None = 0.75
    s_min_uncond: float | None = None
    s_churn: float | None = None
    s_tmax: float | None = None
    s_tmin: float | None = None
    s_noise: float | None = None
    override_settings: dict[str, Any] | None = None
    override_settings_restore_afterwards: bool = True
    refiner_checkpoint: str | None = None
    refiner_switch_at: float | None = None
    disable_extra_networks: bool = False
    comments: dict[str, Any] | None = None
    force_task_id: str | None = None
    sampler_index: str = "Euler"
    script_name: str | None = None
    script_args: list[Any] = Field(default_factory=list)
    send_images: bool = True
    save_images: bool = False
    alwayson_scripts: dict[str, Any] = Field(default_factory=dict)
    infotext: str | None = None


class Txt2ImgApiRequest(GenerationApiRequest):
    """A1111's txt2img request (`StableDiffusionProcessingTxt2Img` fields + API extras, A1111.md §8):
    the shared fields plus the hires fix's."""

    firstpass_image: str | None = None
    enable_hr: bool = False
    firstphase_width: int = 0
    firstphase_height: int = 0
    hr_scale: float = 2.0
    hr_upscaler: str | None = None
    hr_second_pass_steps: int = 0
    hr_resize_x: int = 0
    hr_resize_y: int = 0
    hr_checkpoint_name: str | None = None
    hr_sampler_name: str | None = None
    hr_scheduler: str | None = None
    hr_prompt: str = ""
    hr_negative_prompt: str = ""


class Img2ImgApiRequest(GenerationApiRequest):
    """A1111's img2img request (`StableDiffusionProcessingImg2Img` fields + API extras, A1111.md
    §13.2, §13.9). No hires fields (A1111's img2img model has none: sent, they are ignored as unknown).

    The size is the request's (512x512 by default), never the image's. The inpainting defaults are
    the API's, not the UI's: fill, Only masked, padding 0. Images are base64 (optionally a
    `data:image/...;base64,` URL) or http(s) URLs when the server allows them.
    """

    init_images: list[str] | None = Field(None, description="base64 images (a data: URL prefix is allowed) or "
                                                            "http(s) URLs; one is used for the whole batch")
    resize_mode: int = Field(0, description="0 just resize, 1 crop and resize, 2 resize and fill, "
                                            "3 just resize (latent upscale)")
    image_cfg_scale: float | None = Field(None, description="instruct-pix2pix checkpoints only")
    mask: str | None = Field(None, description="base64 mask (or URL): white (or opaque) pixels are repainted")
    mask_blur_x: int = 4
    mask_blur_y: int = 4
    mask_blur: int | None = Field(None, ge=0, le=64, description="sets mask_blur_x and mask_blur_y; null keeps them")
    mask_round: bool = True
    inpainting_fill: int = Field(0, description="0 fill, 1 original, 2 latent noise, 3 latent nothing")
    inpaint_full_res: bool = Field(True, description="true: Only masked; false: Whole picture")
    inpaint_full_res_padding: int = 0
    inpainting_mask_invert: int = Field(0, description="1 repaints what the mask leaves out")
    initial_noise_multiplier: float | None = Field(None, description="null: the setting of that name")
    latent_mask: str | None = Field(None, description="not supported: only null (A1111 never decodes it either)")
    include_init_images: bool = Field(False, description="echo init_images and mask in the response's parameters")


class TextToImageResponse(BaseModel):
    images: list[str] | None = Field(None, description="base64 PNGs (the grid first, when one was made)")
    parameters: dict[str, Any]
    info: str = Field(description="JSON text: A1111's Processed.js() plus Atelier's job_id and warnings")


class ImageToImageResponse(TextToImageResponse):
    """As txt2img's; `parameters.init_images` and `mask` are null unless `include_init_images`."""


class PNGInfoRequest(BaseModel):
    image: str = Field(description="base64 image (a data: URL prefix is allowed) or an http(s) URL")


class PNGInfoResponse(BaseModel):
    info: str
    items: dict[str, Any] = Field(default_factory=dict)
    parameters: dict[str, Any] = Field(default_factory=dict)


class ProgressState(BaseModel):
    skipped: bool = False
    interrupted: bool = False
    stopping_generation: bool = False
    job: str = ""
    job_count: int = 0
    job_timestamp: str = "0"
    job_no: int = 0
    sampling_step: int = 0
    sampling_steps: int = 0


class ProgressResponse(BaseModel):
    progress: float
    eta_relative: float
    state: ProgressState
    current_image: str | None = None
    textinfo: str | None = None
    current_task: str | None = None


class JobStatus(BaseModel):
    """Atelier's per-job view (A1111 has none): any client can follow the job it submitted."""

    id: str
    kind: str
    description: str
    state: str
    queue_position: int | None
    step: int
    total_steps: int
    progress: float
    eta_relative: float | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    error: str | None
    info: list[str]
    client_task_id: str | None = Field(None, description="the request's force_task_id, if it sent one")
    result: dict[str, Any] | None = None
    owner: str | None = Field(None, description="the user whose job it is on a server shared with --multi-user; "
                                                "null on a single-user server")


class SDModelItem(BaseModel):
    title: str
    model_name: str
    hash: str | None
    sha256: str | None
    filename: str
    config: str | None


class SDVaeItem(BaseModel):
    model_name: str
    filename: str


class SamplerItem(BaseModel):
    name: str
    aliases: list[str]
    options: dict[str, Any]


class SchedulerItem(BaseModel):
    name: str
    label: str
    aliases: list[str] | None
    default_rho: float | None
    need_inner_model: bool | None


class EmbeddingItem(BaseModel):
    step: int | None
    sd_checkpoint: str | None
    sd_checkpoint_name: str | None
    shape: int
    vectors: int


class EmbeddingsResponse(BaseModel):
    loaded: dict[str, EmbeddingItem]
    skipped: dict[str, EmbeddingItem]


class HypernetworkItem(BaseModel):
    name: str
    path: str | None


class LoraItem(BaseModel):
    name: str
    alias: str
    path: str
    metadata: dict[str, Any]


class PromptStyleItem(BaseModel):
    name: str
    prompt: str | None
    negative_prompt: str | None


class ScriptsList(BaseModel):
    txt2img: list[str]
    img2img: list[str]


class ExtensionItem(BaseModel):
    name: str
    remote: str | None
    branch: str | None
    commit_hash: str | None
    version: str | None
    commit_date: int | None
    enabled: bool


class MergeResponse(BaseModel):
    title: str
    sha256: str
    filename: str
    timings: dict[str, float]
    job_id: str
