"""A1111's processing objects for extension scripts: `p`, `Processed` and `process_images`.

`StableDiffusionProcessingTxt2Img` is a plain mutable object with A1111's field names, built from a
`GenerationRequest` (`from_request`) and turned back into one (`to_request`) wherever the engine
takes a request: at `process_images(p)` (after `before_process`) and after the always-on scripts'
`process`. While a generation runs, the per-image lists (`all_prompts`, `all_negative_prompts`,
`all_seeds`, `all_subseeds`), the current batch's (`prompts`, `seeds`, ...) and
`extra_generation_params` mirror the engine's `GenerationPlan` (modules.generation.engine), so what a
script writes there reaches conditioning, noise and the infotext.

Fields A1111 has and Atelier does not use (restore_faces, s_churn, refiner, ...) are accepted and
kept on the object, and have no effect. `modules.generation.engine` re-exports these names, so
`from modules.generation.engine import process_images, Processed` works as in A1111.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from modules.generation.engine import GenerationRequest, GenerationResult

REQUEST_FIELDS = tuple(GenerationRequest.model_fields)

# A1111 fields without a GenerationRequest counterpart, with A1111's defaults.
_A1111_DEFAULTS: dict[str, Any] = {
    "sd_model": None, "outpath_samples": "", "outpath_grids": "", "restore_faces": False,
    "do_not_save_samples": False, "do_not_save_grid": False, "do_not_reload_embeddings": False,
    "seed_enable_extras": True, "s_min_uncond": 0.0, "s_churn": 0.0, "s_tmax": None, "s_tmin": 0.0,
    "s_noise": 1.0, "override_settings_restore_afterwards": True, "sampler_index": None,
    "refiner_checkpoint": None, "refiner_switch_at": None, "token_merging_ratio": 0, "token_merging_ratio_hr": 0,
    "disable_extra_networks": False, "firstpass_image": None, "sampler": None,
    "is_using_inpainting_conditioning": False, "is_hr_pass": False, "user": None, "is_api": False,
    "sd_model_name": None, "sd_model_hash": None, "sd_vae_name": None, "sd_vae_hash": None,
    "hr_checkpoint_name": None, "hr_sampler_name": None, "hr_scheduler": None, "hr_prompt": "",
    "hr_negative_prompt": "", "force_task_id": None, "firstphase_width": 0, "firstphase_height": 0,
    "scripts": None, "script_args": (), "iteration": 0, "batch_index": 0,
    "all_prompts": None, "all_negative_prompts": None, "all_seeds": None, "all_subseeds": None,
    "prompts": None, "negative_prompts": None, "seeds": None, "subseeds": None,
    "main_prompt": None, "main_negative_prompt": None, "extra_network_data": None,
}


class StableDiffusionProcessing:
    """A1111's `p`. Construct with keyword arguments of A1111's names, or `from_request`."""

    def __init__(self, **fields: Any):
        for name, spec in GenerationRequest.model_fields.items():
            setattr(self, name, spec.get_default(call_default_factory=True))
        for name, value in _A1111_DEFAULTS.items():
            setattr(self, name, value)
        self.extra_generation_params: dict[str, Any] = {}
        self.comments = {}
        self._atelier_execution = None  # set by modules.extension_host.scripts while a request runs
        for name, value in fields.items():
            setattr(self, name, value)

    @classmethod
    def from_request(cls, request: GenerationRequest, **fields: Any):
        values = {name: getattr(request, name) for name in REQUEST_FIELDS}
        values["styles"] = list(request.styles)
        values["override_settings"] = dict(request.override_settings)
        return cls(**values, **fields)

    def copy_with(self, request: GenerationRequest) -> "StableDiffusionProcessing":
        """A shallow copy of this `p` holding `request`'s fields (A1111's scripts run each grid cell on
        `copy(p)`, so what always-on scripts put on `p` in setup() reaches every cell)."""
        p = copy.copy(self)
        for name in REQUEST_FIELDS:
            setattr(p, name, getattr(request, name))
        p.styles = list(request.styles)
        p.override_settings = dict(request.override_settings)
        p.extra_generation_params = dict(getattr(self, "extra_generation_params", None) or {})
        return p

    def to_request(self) -> GenerationRequest:
        """The request these fields describe; pydantic's ValidationError (a ValueError) names a
        field a script set to an unusable value."""
        values = {name: getattr(self, name) for name in REQUEST_FIELDS}
        values["styles"] = tuple(values["styles"] or ())
        values["override_settings"] = dict(values["override_settings"] or {})
        values["sampler_name"] = values["sampler_name"] or GenerationRequest.model_fields["sampler_name"].default
        values["scheduler"] = values["scheduler"] or "Automatic"
        for name in ("seed", "subseed", "steps", "width", "height", "batch_size", "n_iter"):
            if isinstance(values[name], float) and values[name].is_integer():
                values[name] = int(values[name])
        return GenerationRequest(**values)

    # A1111 helpers scripts call.

    def setup_prompts(self) -> None:
        n_images = self.batch_size * self.n_iter
        if self.all_prompts is None:
            self.all_prompts = [self.prompt] * n_images
        if self.all_negative_prompts is None:
            self.all_negative_prompts = [self.negative_prompt] * n_images
        self.main_prompt, self.main_negative_prompt = self.all_prompts[0], self.all_negative_prompts[0]

    def close(self) -> None:
        pass

    def js(self) -> str:
        return json.dumps({name: getattr(self, name) for name in REQUEST_FIELDS}, default=str)


class StableDiffusionProcessingTxt2Img(StableDiffusionProcessing):
    pass


class StableDiffusionProcessingImg2Img(StableDiffusionProcessing):
    """Exists so `isinstance(p, StableDiffusionProcessingImg2Img)` checks work; Atelier has no img2img yet."""

    def __init__(self, **fields: Any):
        super().__init__(**fields)
        for name in ("init_images", "mask", "image_mask"):
            setattr(self, name, fields.get(name))
        self.resize_mode = fields.get("resize_mode", 0)
        self.inpainting_fill = fields.get("inpainting_fill", 0)


class Processed:
    """A1111's result object: images, infotexts and what made them."""

    def __init__(self, p: StableDiffusionProcessing, images_list: list, seed: int = -1, info: str = "",
                 subseed: int | None = None, all_prompts=None, all_negative_prompts=None, all_seeds=None,
                 all_subseeds=None, index_of_first_image: int = 0, infotexts=None, comments: str = ""):
        self.images = images_list
        self.prompt = p.prompt
        self.negative_prompt = p.negative_prompt
        self.seed = seed
        self.subseed = subseed
        self.subseed_strength = p.subseed_strength
        self.info = info
        self.comments = comments
        self.width, self.height = p.width, p.height
        self.sampler_name = p.sampler_name
        self.cfg_scale = p.cfg_scale
        self.steps = p.steps
        self.batch_size = p.batch_size
        self.restore_faces = p.restore_faces
        self.face_restoration_model = None
        self.sd_model_name, self.sd_model_hash = p.sd_model_name, p.sd_model_hash
        self.sd_vae_name, self.sd_vae_hash = p.sd_vae_name, p.sd_vae_hash
        self.seed_resize_from_w, self.seed_resize_from_h = p.seed_resize_from_w, p.seed_resize_from_h
        self.denoising_strength = p.denoising_strength
        self.extra_generation_params = dict(p.extra_generation_params)
        self.index_of_first_image = index_of_first_image
        self.styles = list(p.styles or ())
        self.job_timestamp = ""
        self.clip_skip = p.clip_skip
        self.eta = p.eta
        self.all_prompts = list(all_prompts or p.all_prompts or [self.prompt])
        self.all_negative_prompts = list(all_negative_prompts or p.all_negative_prompts or [self.negative_prompt])
        self.all_seeds = list(all_seeds or p.all_seeds or [self.seed])
        self.all_subseeds = list(all_subseeds or p.all_subseeds or [self.subseed])
        self.infotexts = list(infotexts or [info] * len(images_list))
        self.version = "atelier"
        self._atelier_result: GenerationResult | None = None

    @classmethod
    def from_result(cls, p: StableDiffusionProcessing, result: GenerationResult) -> "Processed":
        processed = cls(p, list(result.images), seed=result.seeds[0] if result.seeds else -1,
                        info=result.infotexts[0] if result.infotexts else "",
                        subseed=result.subseeds[0] if result.subseeds else None, all_prompts=result.prompts,
                        all_negative_prompts=result.negative_prompts, all_seeds=result.seeds,
                        all_subseeds=result.subseeds, infotexts=result.infotexts)
        processed._atelier_result = result
        return processed

    def to_result(self) -> GenerationResult:
        """A GenerationResult with this object's images and infotexts (a script may have changed
        them or built this object itself); one infotext per image."""
        base = self._atelier_result or GenerationResult()
        infotexts = list(self.infotexts)[:len(self.images)]
        infotexts += [self.info] * (len(self.images) - len(infotexts))
        return GenerationResult(images=list(self.images), seeds=list(self.all_seeds), subseeds=list(self.all_subseeds),
                                prompts=list(self.all_prompts), negative_prompts=list(self.all_negative_prompts),
                                infotexts=infotexts, saved_paths=list(base.saved_paths), warnings=list(base.warnings),
                                interrupted=base.interrupted, timings=dict(base.timings),
                                index_of_first_image=int(self.index_of_first_image or 0))

    def js(self) -> str:
        fields = {name: value for name, value in vars(self).items() if name not in ("images", "_atelier_result")}
        return json.dumps(fields, default=str)

    def infotext(self, p: StableDiffusionProcessing, index: int) -> str:
        return self.infotexts[index] if 0 <= index < len(self.infotexts) else self.info


def process_images(p: StableDiffusionProcessing) -> Processed:
    """Generate what `p` describes, running the always-on scripts' hooks (A1111's entry point).
    Works inside a script's `run(p, *args)` or any hook of a request being run."""
    execution = getattr(p, "_atelier_execution", None)
    if execution is None:
        raise RuntimeError("process_images(p) needs a p from a running request (the `p` a script's run() or "
                           "hook receives, or a copy of it); Atelier has no global model to run on")
    return execution.process_images(p)


def get_fixed_seed(seed) -> int:
    from modules.generation.rng import get_fixed_seed as fixed

    return fixed(seed)


def fix_seed(p: StableDiffusionProcessing) -> None:
    """A1111: replace -1 seeds by random ones, so every run of a script loop uses the same seeds."""
    p.seed = get_fixed_seed(p.seed)
    p.subseed = get_fixed_seed(p.subseed)


A1111_NAMES = ("StableDiffusionProcessing", "StableDiffusionProcessingTxt2Img", "StableDiffusionProcessingImg2Img",
               "Processed", "process_images", "fix_seed", "get_fixed_seed")
