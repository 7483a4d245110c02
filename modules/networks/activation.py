"""Extra networks for one job: `<hypernet:…>` and `<lora:…>` tags attached, embeddings chosen.

`activate_extra_networks` is the one place a job turns parsed prompt tags into changes on the model.
Everything it attaches is scoped to the `with` block and undone in `finally`; unknown names and
unsupported files become warnings in the job's info rather than errors (A1111 skips them too, but
only in its console).
"""

from __future__ import annotations

import logging
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Iterator, Mapping, Sequence

from modules.library.model_detection import ModelFamily

log = logging.getLogger(__name__)

KNOWN_NETWORKS = ("hypernet", "lora")


@dataclass
class ActiveNetworks:
    """What a job runs with: hypernetworks and LoRAs in effect, warnings, infotext fields."""

    hypernetworks: list[tuple[str, float]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    infotext: dict[str, str] = field(default_factory=dict)


def embedding_widths(model) -> dict[str, int]:
    """The vector widths a loaded model's text encoders take, keyed as embedding files key them."""
    widths = [encoder.config.hidden_size for encoder in model.text_encoders]
    family = model.architecture.family
    if family == ModelFamily.SDXL:
        return {"clip_l": widths[0], "clip_g": widths[1]}
    if family == ModelFamily.SDXL_REFINER:
        return {"clip_g": widths[0]}
    return {"default": widths[0]}


def _hypernetwork_requests(params_list, warnings: list[str]) -> list[tuple[str, float]]:
    requests = []
    for params in params_list:
        if not params.positional:
            warnings.append("<hypernet:…> tag without a name ignored")
            continue
        name = params.positional[0]
        try:
            multiplier = float(params.positional[1]) if len(params.positional) > 1 else 1.0
        except ValueError:
            warnings.append(f"hypernetwork {name!r}: multiplier {params.positional[1]!r} is not a number; ignored")
            continue
        requests.append((name, multiplier))
    return requests


@contextmanager
def activate_extra_networks(model, networks: Mapping[str, Sequence], hypernetworks=None,
                            loras=None) -> Iterator[ActiveNetworks]:
    """Attach the networks named in a batch's prompt tags (`extra_networks.parse_prompts`) to `model`
    for the duration of the block. `hypernetworks` is a HypernetworkRegistry, `loras` a LoraRegistry;
    either may be None (that network type is then reported as unavailable)."""
    from modules.networks.hypernetwork_files import HypernetworkNotFoundError
    from modules.networks.hypernetworks import attach_hypernetworks
    from modules.networks.lora import LoraError, apply_loras, lora_requests_from_params

    active = ActiveNetworks()
    for name, params in networks.items():
        if name not in KNOWN_NETWORKS and params:
            active.warnings.append(f"unknown extra network <{name}:…>; known: {', '.join(KNOWN_NETWORKS)}")

    entries = []
    for name, multiplier in _hypernetwork_requests(networks.get("hypernet", ()), active.warnings):
        if hypernetworks is None:
            active.warnings.append(f"hypernetwork {name!r} ignored: no hypernetwork folder configured")
            continue
        try:
            entries.append((hypernetworks.load(name, model.device, model.dtype), multiplier))
            active.hypernetworks.append((name, multiplier))
        except HypernetworkNotFoundError as e:
            active.warnings.append(str(e))
        except ValueError as e:  # a damaged or unsafe file: the job goes on without it
            active.warnings.append(f"hypernetwork {name!r} not used: {e}")

    lora_params = networks.get("lora", ())
    try:
        lora_requests = lora_requests_from_params(lora_params) if lora_params else []
    except LoraError as e:
        active.warnings.append(str(e))
        lora_requests = []
    if lora_requests and loras is None:
        active.warnings.append("LoRA tags ignored: no LoRA folder configured")
        lora_requests = []

    with ExitStack() as stack:
        if entries:
            stack.enter_context(attach_hypernetworks(model.unet, entries, device=model.device))
        if lora_requests:
            # On a GPU, unfused adapters halved the denoising speed of SD1.5 (H100: 38 → 20 it/s) while
            # merging for the job costs a weight backup in VRAM; on the CPU the merge and backup cost
            # more than the adapters do (docs/BENCHMARKS.md).
            # Offloaded weights sit in RAM between uses: merging there would be slow; keep adapters.
            offloaded = any(hasattr(m, "_hf_hook") for m in model.unet.modules())
            fuse = model.device.type == "cuda" and not offloaded
            applied = stack.enter_context(apply_loras(model, lora_requests, loras, fuse=fuse))
            active.warnings.extend(applied.warnings)
            if applied.loaded:
                # Plain text: the infotext writer quotes a value holding `:` or `,` (once).
                active.infotext["Lora hashes"] = applied.infotext_hashes()
        for warning in active.warnings:
            log.warning("%s", warning)
        yield active
