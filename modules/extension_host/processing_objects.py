"""A1111's processing objects for extension scripts: `p`, `Processed` and `process_images`.

`StableDiffusionProcessingTxt2Img` (and `StableDiffusionProcessingImg2Img`) is a plain mutable
object with A1111's field names, built from a `GenerationRequest` (an `Img2ImgRequest`) with
`from_request` and turned back into one with `to_request` wherever the engine takes a request: at
`process_images(p)` (after `before_process`) and after the always-on scripts' `process`, so a
script that changes `p.init_images` or `p.denoising_strength` there is seen by the engine.
`processing_for(request)` makes the right class for a request.

While a generation runs, the per-image lists (`all_prompts`, `all_negative_prompts`, `all_seeds`,
`all_subseeds`), the current batch's (`prompts`, `seeds`, ...) and `extra_generation_params` mirror
the engine's `GenerationPlan` (modules.generation.engine), so what a script writes there reaches
conditioning, noise and the infotext.

Fields A1111 has and Atelier does not use (restore_faces, s_churn, refiner, ...) are accepted and
kept on the object, and have no effect. `modules.generation.engine` re-exports these names, so
`from modules.generation.engine import process_images, Processed` works as in A1111.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from modules.generation.engine import GenerationRequest, GenerationResult
from modules.generation.requests import Img2ImgRequest

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

    request_type: type[GenerationRequest] = GenerationRequest
    # Request fields held under another attribute name (A1111's img2img `p` keeps `mask` as `image_mask`).
    field_attributes: dict[str, str] = {}

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
    def request_fields(cls) -> tuple[str, ...]:
        return tuple(cls.request_type.model_fields)

    @classmethod
    def from_request(cls, request: GenerationRequest, **fields: Any):
        values = {cls.field_attributes.get(name, name): _mutable(getattr(request, name))
                  for name in cls.request_fields()}
        return cls(**values, **fields)

    def copy_with(self, request: GenerationRequest) -> "StableDiffusionProcessing":
        """A shallow copy of this `p` holding `request`'s fields (A1111's scripts run each grid cell on
        `copy(p)`, so what always-on scripts put on `p` in setup() reaches every cell). A request of
        the other kind (an Img2ImgRequest for a txt2img `p`) gives a `p` of its kind, with this one's
        other attributes."""
        p = copy.copy(self)
        cls = processing_class_for(request)
        if type(p) is not cls:
            before, fresh = type(self)(), cls()
            p.__class__ = cls
            for name in set(vars(before)).difference(vars(fresh)):
                vars(p).pop(name, None)  # the other kind's attributes (init_images, latent_mask on a txt2img p)
            for name, value in vars(fresh).items():
                vars(p).setdefault(name, value)
        for name in cls.request_fields():
            setattr(p, cls.field_attributes.get(name, name), _mutable(getattr(request, name)))
        p.extra_generation_params = dict(getattr(self, "extra_generation_params", None) or {})
        return p

    def to_request(self) -> GenerationRequest:
        """The request these fields describe; pydantic's ValidationError (a ValueError) names a
        field a script set to an unusable value."""
        values = {name: getattr(self, self.field_attributes.get(name, name)) for name in self.request_fields()}
        values["styles"] = tuple(values["styles"] or ())
        values["override_settings"] = dict(values["override_settings"] or {})
        values["sampler_name"] = values["sampler_name"] or GenerationRequest.model_fields["sampler_name"].default
        values["scheduler"] = values["scheduler"] or "Automatic"
        for name in _INT_FIELDS:
            if isinstance(values.get(name), (float, bool)) and float(values[name]).is_integer():
                values[name] = int(values[name])
        return self.request_type(**values)

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
        return json.dumps({name: getattr(self, self.field_attributes.get(name, name), None)
                           for name in self.request_fields() if name not in _IMAGE_FIELDS}, default=str)


# Fields scripts may set to a float or bool (a slider's 3.0, a checkbox's True) that the request takes as int.
_INT_FIELDS = ("seed", "subseed", "steps", "width", "height", "batch_size", "n_iter", "resize_mode", "mask_blur_x",
               "mask_blur_y", "inpainting_fill", "inpaint_full_res_padding", "inpainting_mask_invert")
_IMAGE_FIELDS = ("init_images", "mask")  # left out of `js()`: pixels, not parameters


def _mutable(value: Any) -> Any:
    """A request's value as A1111's `p` holds it: lists and dicts a script may edit in place."""
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, dict):
        return dict(value)
    return value


class StableDiffusionProcessingTxt2Img(StableDiffusionProcessing):
    pass


# A1111's img2img attributes that are not request fields: set by its `init()` (the latent masks, the
# crop for "Only masked", the overlays and colour references), read by some scripts. Atelier's
# engine keeps them to itself: they stay None here, except `init_latent` (set before sampling).
_IMG2IMG_STATE: dict[str, Any] = {
    "mask": None, "latent_mask": None, "nmask": None, "init_latent": None, "image_conditioning": None,
    "paste_to": None, "overlay_images": None, "mask_for_overlay": None, "color_corrections": None,
}


class StableDiffusionProcessingImg2Img(StableDiffusionProcessing):
    """A1111's img2img `p` (A1111.md §13.2): `init_images` (a list of PIL images), `image_mask` (the
    request's `mask`: A1111 moves the constructor's `mask` there; `p.mask` is its latent keep-mask,
    None here), `mask_blur_x`/`mask_blur_y` and the `mask_blur` property, `mask_round`,
    `resize_mode`, `denoising_strength`, `image_cfg_scale`, `inpainting_fill`, `inpaint_full_res`,
    `inpaint_full_res_padding`, `inpainting_mask_invert`, `initial_noise_multiplier`,
    `inpainting_mask_weight`; `to_request()` gives an `Img2ImgRequest`.

    `latent_mask` (a separate mask for the latent blend) is accepted and not used: the engine blends
    through `image_mask` (a script that sets it gets a warning from the script host)."""

    request_type = Img2ImgRequest
    field_attributes = {"mask": "image_mask"}

    def __init__(self, **fields: Any):
        mask_blur = fields.pop("mask_blur", None)
        if "mask" in fields:  # A1111's constructor argument; `p.mask` is the latent keep-mask later
            fields.setdefault("image_mask", fields.pop("mask"))
        defaults = {name: spec.get_default(call_default_factory=True)
                    for name, spec in Img2ImgRequest.model_fields.items()
                    if name not in GenerationRequest.model_fields and not spec.is_required()}
        defaults.pop("mask", None)
        defaults["denoising_strength"] = Img2ImgRequest.model_fields["denoising_strength"].default
        super().__init__(**{"init_images": None, "image_mask": None, **defaults, **_IMG2IMG_STATE, **fields})
        if mask_blur is not None:
            self.mask_blur = mask_blur

    @property
    def mask_blur(self) -> int | None:
        """A1111: both axes' blur when they are equal, else None."""
        return self.mask_blur_x if self.mask_blur_x == self.mask_blur_y else None

    @mask_blur.setter
    def mask_blur(self, value: int) -> None:
        if value is not None:
            self.mask_blur_x = self.mask_blur_y = value

    def to_request(self) -> Img2ImgRequest:
        if self.init_images is None or (isinstance(self.init_images, (list, tuple)) and not self.init_images):
            raise ValueError("init_images is empty; an img2img p needs at least one image")
        return super().to_request()


def processing_class_for(request: GenerationRequest) -> type[StableDiffusionProcessing]:
    """The `p` class for `request`: img2img for an Img2ImgRequest, else txt2img."""
    return StableDiffusionProcessingImg2Img if isinstance(request, Img2ImgRequest) else StableDiffusionProcessingTxt2Img


def processing_for(request: GenerationRequest, **fields: Any) -> StableDiffusionProcessing:
    """A1111's `p` for `request` (`StableDiffusionProcessingImg2Img` for an Img2ImgRequest)."""
    return processing_class_for(request).from_request(request, **fields)


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
