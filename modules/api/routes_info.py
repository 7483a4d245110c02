"""Read-only facts about the server: samplers, schedulers, PNG info, flags, memory, scripts,
extensions and prompt styles (A1111's routes and shapes)."""

from __future__ import annotations

import io
import os
from typing import Any

from fastapi import APIRouter

from modules.api.errors import bad_request
from modules.api.images import image_bytes
from modules.api.schemas import (
    ExtensionItem,
    PNGInfoRequest,
    PNGInfoResponse,
    PromptStyleItem,
    SamplerItem,
    SchedulerItem,
    ScriptsList,
)

# Flags whose values are credentials or point at them: never echoed (A1111's cmd-flags shows them).
SECRET_FLAGS = frozenset({"api_auth", "gradio_auth", "gradio_auth_path", "tls_keyfile"})
REDACTED = "<redacted>"


def public_flags(args) -> dict[str, Any]:
    return {key: (REDACTED if key in SECRET_FLAGS and value else value) for key, value in vars(args).items()}


def _json_safe_items(items: dict[str, Any]) -> dict[str, Any]:
    """An image's other metadata, without binary blobs (EXIF, ICC profiles) that JSON cannot carry."""
    safe: dict[str, Any] = {}
    for key, value in items.items():
        if isinstance(value, (str, int, float, bool)) or value is None:
            safe[str(key)] = value
        elif isinstance(value, tuple) and all(isinstance(v, (int, float)) for v in value):
            safe[str(key)] = list(value)
    return safe


def memory_report(device) -> dict[str, Any]:
    """A1111's `memory` shape: process RAM, and CUDA figures or `{"error": ...}`."""
    import psutil

    from modules.library.devices import memory_stats

    process = psutil.Process(os.getpid())
    rss = process.memory_info().rss
    total = psutil.virtual_memory().total
    ram = {"free": total - rss, "used": rss, "total": total}
    stats = memory_stats(device)
    if stats.device_total is None:
        cuda: dict[str, Any] = {"error": f"unavailable (models run on {stats.device})"}
    else:
        cuda = {
            "system": {"free": stats.device_total - stats.device_used, "used": stats.device_used,
                       "total": stats.device_total},
            "active": {"current": stats.allocated, "peak": stats.peak_allocated},
            "allocated": {"current": stats.allocated, "peak": stats.peak_allocated},
            "reserved": {"current": stats.reserved, "peak": stats.peak_reserved},
        }
    return {"ram": ram, "cuda": cuda}


def build_router(context) -> APIRouter:
    router = APIRouter(prefix="/sdapi/v1", tags=["info"])

    @router.get("/samplers", response_model=list[SamplerItem])
    def samplers() -> list[SamplerItem]:
        """The samplers txt2img accepts, in A1111's order (those Atelier lacks are left out)."""
        from modules.generation.sampling.registry import SAMPLERS

        return [SamplerItem(name=s.name, aliases=list(s.aliases), options=s.a1111_options)
                for s in SAMPLERS if s.implemented]

    @router.get("/schedulers", response_model=list[SchedulerItem])
    def schedulers() -> list[SchedulerItem]:
        from modules.generation.sampling.registry import SCHEDULERS

        return [SchedulerItem(name=s.name, label=s.label, aliases=list(s.aliases) or None,
                              default_rho=s.default_rho, need_inner_model=False) for s in SCHEDULERS]

    @router.get("/latent-upscale-modes")
    def latent_upscale_modes() -> list[dict[str, str]]:
        from modules.generation.engine import LATENT_UPSCALE_MODES

        return [{"name": name} for name in LATENT_UPSCALE_MODES]

    @router.post("/png-info", response_model=PNGInfoResponse)
    def png_info(body: PNGInfoRequest) -> PNGInfoResponse:
        """The infotext an image carries, parsed as the PNG Info tab shows it."""
        from modules.outputs.image_metadata import ImageMetadataError, read_image_metadata
        from modules.outputs.infotext import parse_generation_parameters

        if not body.image.strip():
            return PNGInfoResponse(info="")
        data = image_bytes(body.image, context.settings.current())
        try:
            # Only the metadata is read: the pixels are never decoded, whatever the image's size.
            geninfo, items, _ = read_image_metadata(io.BytesIO(data))
        except ImageMetadataError as e:
            raise bad_request(f"image: {e}") from None
        geninfo = geninfo or ""
        return PNGInfoResponse(info=geninfo, items=_json_safe_items(items),
                               parameters=parse_generation_parameters(geninfo) if geninfo else {})

    @router.get("/cmd-flags")
    def cmd_flags() -> dict[str, Any]:
        """The command-line flags, with credentials shown as "<redacted>"."""
        return public_flags(context.args)

    @router.get("/memory")
    def memory() -> dict[str, Any]:
        return memory_report(context.models.options.device)

    @router.get("/scripts", response_model=ScriptsList)
    def scripts() -> ScriptsList:
        """Script titles usable as `script_name` / `alwayson_scripts` keys (lowercase, as A1111)."""
        runtime = context.extensions
        if runtime is None:
            return ScriptsList(txt2img=[], img2img=[])
        return ScriptsList(**runtime.scripts.api_titles())

    @router.get("/extensions", response_model=list[ExtensionItem])
    def extensions() -> list[ExtensionItem]:
        """The extensions found at start-up (built-in and the user's), with git facts and whether
        each is enabled."""
        runtime = context.extensions
        return [ExtensionItem(**item) for item in runtime.api_items()] if runtime is not None else []

    @router.get("/prompt-styles", response_model=list[PromptStyleItem])
    def prompt_styles() -> list[PromptStyleItem]:
        """The styles in `styles.csv`; txt2img's `styles` applies them by name."""
        styles = context.prompt_styles.styles
        return [PromptStyleItem(name=s.name, prompt=s.prompt, negative_prompt=s.negative_prompt)
                for s in styles.values()]

    return router
