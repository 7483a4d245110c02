"""Settings: a typed schema, immutable values, and the one owner of `config.json`.

`config.json` keeps A1111's flat format (`{"sd_model_checkpoint": "...", "sd_vae": "Automatic", ...}`,
indented by 4, non-ASCII kept) so an A1111 data folder can be pointed at with `--data-dir`. Only keys
that were set are written; keys this schema does not know (an extension's, A1111's) are kept and
written back untouched. Per-request overrides never mutate the store: `Settings.with_overrides`
returns a new object.

Loading follows A1111 (A1111.md §10): a `config.json` that is not a JSON object is moved to
`tmp/config.json` beside it and the defaults are used; a stored value of the wrong type is ignored
with a warning; the old keys `quicksettings` (comma-separated) and `sd_vae_as_default` are read as
`quicksettings_list` and `sd_vae_overrides_per_model_preferences`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Mapping

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SettingSpec:
    """One setting: A1111's key and default, a label for the Settings tab and the rules a value obeys.

    The type is the default's: bool, int, float, str, or tuple (a list of text items, stored as a
    JSON list). `step` makes the Settings tab show a slider between `minimum` and `maximum`.
    `check` is an extra rule: it returns what is wrong with a value of the right type, or None.
    """

    key: str
    default: Any
    label: str
    section: str  # a key of SECTIONS
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] | None = None  # fixed choices; dynamic ones (checkpoints, VAEs) are checked elsewhere
    step: float | None = None
    info: str = ""  # a line of help under the field
    visible: bool = True  # False: kept by the program (e.g. the loaded checkpoint's hash), not edited
    needs_restart: bool = False  # read when the UI is built, so it takes effect after a restart
    # Not changeable through the API (A1111's restrict_api): settings that guard the API itself.
    restrict_api: bool = False
    # A credential (a token, an API key): shown and returned as SECRET_MASK, never as its value; the
    # mask sent back means "unchanged" (modules.serving.settings_change).
    secret: bool = False
    check: Callable[[Any], str | None] | None = field(default=None, compare=False, repr=False)

    def validate(self, value: Any) -> Any:
        """The value converted to the setting's type, or a ValueError that names key, value and rule."""
        expected = type(self.default)
        if expected is bool:
            if not isinstance(value, bool):
                raise ValueError(f"setting {self.key!r} must be true or false, got {value!r}")
        elif expected in (int, float):
            value = self._number(value, expected)
        elif expected is str:
            if not isinstance(value, str):
                raise ValueError(f"setting {self.key!r} must be text, got {value!r}")
            if self.choices is not None and value not in self.choices:
                raise ValueError(f"setting {self.key!r} must be one of {list(self.choices)}, got {value!r}")
        elif expected is tuple:
            if isinstance(value, str) or not isinstance(value, (list, tuple)) \
                    or not all(isinstance(item, str) for item in value):
                raise ValueError(f"setting {self.key!r} must be a list of text items, got {value!r}")
            value = tuple(value)
            unknown = [item for item in value if self.choices is not None and item not in self.choices]
            if unknown:
                raise ValueError(f"setting {self.key!r}: {unknown} not among the choices {list(self.choices)}")
        if self.check is not None:
            problem = self.check(value)
            if problem:
                raise ValueError(f"setting {self.key!r} {problem}")
        return value

    def _number(self, value: Any, expected: type) -> int | float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"setting {self.key!r} must be a number, got {value!r}")
        if not math.isfinite(value):  # NaN passes every range check, and inf has no int
            raise ValueError(f"setting {self.key!r} must be a finite number, got {value!r}")
        if expected is int:
            if float(value) != int(value):
                raise ValueError(f"setting {self.key!r} must be a whole number, got {value!r}")
            value = int(value)
        else:
            value = float(value)
        low, high = self.minimum, self.maximum
        if (low is not None and value < low) or (high is not None and value > high):
            if low is not None and high is not None:
                rule = f"between {_number_text(low)} and {_number_text(high)}"
            elif low is not None:
                rule = f"at least {_number_text(low)}"
            else:
                rule = f"at most {_number_text(high)}"
            raise ValueError(f"setting {self.key!r} must be {rule}, got {_number_text(value)}")
        return value


def _number_text(number: float) -> str:
    return str(int(number)) if float(number).is_integer() else str(number)


def _image_format(value: str) -> str | None:
    """Problem with an image file extension (samples_format, grid_format), or None."""
    from PIL import Image  # only when a format is checked: Pillow's registry of writers

    extension = "." + value.lower().lstrip(".")
    image_format = Image.registered_extensions().get(extension)
    if image_format is None or image_format not in Image.SAVE:
        return f"must be an image file extension Pillow can write, such as png, jpg, webp or gif; got {value!r}"
    return None


def _filename_pattern(value: str) -> str | None:
    """Problem with a file or folder name pattern, or None (see modules.outputs.images.pattern_problem)."""
    from modules.outputs.images import pattern_problem

    return pattern_problem(value)


# Settings tab sections, in display order: id -> title (A1111's section names where it has them).
SECTIONS: Mapping[str, str] = MappingProxyType({
    "saving": "Saving images/grids",
    "paths": "Paths for saving",
    "saving-to-dirs": "Saving to a directory",
    "infotext": "Infotext",
    "checkpoints": "Checkpoints",
    "vae": "VAE",
    "sampling": "Sampling",
    "extra-networks": "Extra Networks",
    "ui": "User interface",
    "live-previews": "Live previews",
    "api": "API",
    "sharing": "Sharing (--multi-user)",
    "model-sources": "Model sources",
    "upscaling": "Upscaling",
    "postprocessing": "Postprocessing",
})

SECRET_MASK = "<redacted>"  # what a secret setting shows instead of its value (the API's cmd-flags mark too)


def _colour(value: str) -> str | None:
    """Problem with a colour such as '#ffffff', or None."""
    from PIL import ImageColor

    try:
        ImageColor.getrgb(value)
    except ValueError:
        return "must be a colour such as '#ffffff'"
    return None


def _no_line_breaks(value: str) -> str | None:
    """Problem with a token sent as an HTTP header value, or None."""
    if any(ch in value for ch in "\r\n\0") or value != value.strip():
        return "must be one line without surrounding spaces (it is sent as an HTTP header)"
    return None

SCHEMA: tuple[SettingSpec, ...] = (
    # Checkpoints
    SettingSpec("sd_model_checkpoint", "", "Stable Diffusion checkpoint", "checkpoints"),
    SettingSpec("sd_checkpoint_hash", "", "SHA256 hash of the current checkpoint", "checkpoints", visible=False),
    SettingSpec("sd_checkpoints_limit", 1, "Maximum number of checkpoints loaded at the same time", "checkpoints",
                minimum=1, maximum=10, step=1),
    SettingSpec("sd_checkpoints_keep_in_cpu", True, "Only keep one model on device", "checkpoints",
                info="The other loaded checkpoints wait in RAM"),
    # VAE
    SettingSpec("sd_vae", "Automatic", "SD VAE", "vae"),
    SettingSpec("sd_vae_overrides_per_model_preferences", True,
                "Selected VAE overrides per-model preferences", "vae",
                info="Off: a VAE named after the checkpoint, or set in its .json, wins over the SD VAE choice"),
    # Sampling
    SettingSpec("randn_source", "GPU", "Random number generator source", "sampling", choices=("GPU", "CPU", "NV"),
                info="Changes seeds drastically; CPU gives the same images on every kind of device"),
    SettingSpec("eta_noise_seed_delta", 0, "Eta noise seed delta (ENSD)", "sampling", minimum=0, maximum=2**32,
                info="Does not improve anything; only to reproduce images made with it (NovelAI used 31337)"),
    SettingSpec("eta_ancestral", 1.0, "Eta for k-diffusion ancestral/SDE samplers", "sampling", minimum=0, maximum=1,
                step=0.01),
    SettingSpec("eta_ddim", 0.0, "Eta for DDIM", "sampling", minimum=0, maximum=1, step=0.01),
    SettingSpec("CLIP_stop_at_last_layers", 1, "Clip skip", "sampling", minimum=1, maximum=12, step=1),
    SettingSpec("sdxl_clip_l_skip", False, "Clip skip applies to SDXL's CLIP-L", "sampling"),
    SettingSpec("emphasis", "Original", "Emphasis mode", "sampling", choices=("Original", "No norm", "Ignore", "None"),
                info="How (text:1.1) changes the text encoder's output"),
    SettingSpec("comma_padding_backtrack", 20, "Prompt word wrap length limit (comma backtrack)", "sampling",
                minimum=0, maximum=74, step=1,
                info="In tokens: a 75-token chunk is cut at the last comma within this many tokens of its end"),
    SettingSpec("pad_cond_uncond", False, "Pad prompt/negative prompt", "sampling",
                info="Pads the shorter of prompt and negative prompt with empty-prompt chunks: one UNet call "
                     "instead of two when their lengths differ; changes images"),
    SettingSpec("pad_cond_uncond_v0", False, "Pad prompt/negative prompt (v0)", "sampling",
                info="A1111 before 1.6.0: repeats the negative prompt's last vector, or cuts it when longer; "
                     "wins over the above; changes images"),
    SettingSpec("prompt_max_length", 20_000, "Longest prompt accepted (characters; 0 = no limit)", "sampling",
                minimum=0, maximum=10_000_000, restrict_api=True,
                info="Longer prompts and negative prompts are refused before they reach the queue: encoding a "
                     "huge prompt holds the one worker for seconds"),
    SettingSpec("img2img_fix_steps", False, "With img2img, do exactly the amount of steps the slider specifies",
                "sampling", info="Off: denoising strength d runs about d × steps steps; on: the schedule is stretched "
                                 "so all of them run"),
    SettingSpec("initial_noise_multiplier", 1.0, "Noise multiplier for img2img", "sampling", minimum=0.0,
                maximum=1.5, step=0.01, info="Scales the noise added to the init image; below 1 keeps more of it"),
    SettingSpec("inpainting_mask_weight", 1.0, "Inpainting conditioning mask strength", "sampling", minimum=0.0,
                maximum=1.0, step=0.01, info="Inpainting checkpoints: 1 hides the masked area from the model, 0 "
                                             "shows it the whole original"),
    SettingSpec("img2img_extra_noise", 0.0, "Extra noise multiplier for img2img and hires fix", "sampling",
                minimum=0.0, maximum=1.0, step=0.01, info="0 = off; more adds detail (A1111's infotext \"Extra noise\")"),
    SettingSpec("img2img_color_correction", False, "Apply color correction to img2img results to match original "
                "colors", "sampling"),
    SettingSpec("img2img_background_color", "#ffffff", "With img2img, fill transparent parts of the input image "
                "with this color", "sampling", check=_colour),
    # Saving images/grids
    SettingSpec("samples_save", True, "Always save all generated images", "saving"),
    SettingSpec("samples_format", "png", "File format for images", "saving", check=_image_format),
    SettingSpec("samples_filename_pattern", "", "Images filename pattern", "saving", check=_filename_pattern,
                info="Empty: [seed] (with subfolders) or [seed]-[prompt_spaces]; tags such as [seed], [prompt_words], "
                     "[model_name], [date], [datetime<%Y%m%d>]"),
    SettingSpec("save_images_add_number", True, "Add number to filename when saving", "saving"),
    SettingSpec("save_images_replace_action", "Replace", "Saving the image to an existing file", "saving",
                choices=("Replace", "Add number suffix")),
    SettingSpec("grid_save", True, "Always save all generated image grids", "saving"),
    SettingSpec("grid_format", "png", "File format for grids", "saving", check=_image_format),
    SettingSpec("grid_extended_filename", False, "Add extended info (seed, prompt) to filename when saving grid",
                "saving"),
    SettingSpec("grid_prevent_empty_spots", False, "Prevent empty spots in grid (when set to autodetect)", "saving"),
    SettingSpec("n_rows", -1, "Grid row count; -1 for autodetect, 0 for the batch size", "saving",
                minimum=-1, maximum=16, step=1),
    SettingSpec("save_txt", False, "Create a text file with the infotext next to every image", "saving"),
    SettingSpec("jpeg_quality", 80, "Quality for saved jpeg and webp images", "saving", minimum=1, maximum=100, step=1),
    SettingSpec("webp_lossless", False, "Use lossless compression for webp images", "saving"),
    SettingSpec("export_for_4chan", True, "Save copy of large images as JPG", "saving",
                info="When the file is larger than the limit below, or either side is larger than the side limit"),
    SettingSpec("img_downscale_threshold", 4.0, "File size limit for the above option, MB", "saving", minimum=0),
    SettingSpec("target_side_length", 4000, "Width/height limit for the above option, in pixels", "saving",
                minimum=0),
    SettingSpec("save_images_before_highres_fix", False, "Save copy of image before applying highres fix",
                "saving"),
    SettingSpec("use_original_name_batch", True, "Use original name for output filename during batch process in "
                "extras tab", "saving"),
    SettingSpec("override_settings_restore_afterwards", True,
                "Restore settings (and the checkpoint) after a request that overrides them", "saving"),
    # Paths for saving (relative paths are under the data folder)
    SettingSpec("outdir_samples", "", "Output directory for images; if empty, defaults to the folder below",
                "paths"),
    SettingSpec("outdir_txt2img_samples", "outputs/txt2img-images", "Output directory for txt2img images", "paths"),
    SettingSpec("outdir_grids", "", "Output directory for grids; if empty, defaults to the folder below", "paths"),
    SettingSpec("outdir_txt2img_grids", "outputs/txt2img-grids", "Output directory for txt2img grids", "paths"),
    SettingSpec("outdir_img2img_samples", "outputs/img2img-images", "Output directory for img2img images", "paths"),
    SettingSpec("outdir_img2img_grids", "outputs/img2img-grids", "Output directory for img2img grids", "paths"),
    SettingSpec("outdir_extras_samples", "outputs/extras-images", "Output directory for images from extras tab",
                "paths"),
    # Saving to a directory
    SettingSpec("save_to_dirs", True, "Save images to a subdirectory", "saving-to-dirs"),
    SettingSpec("grid_save_to_dirs", True, "Save grids to a subdirectory", "saving-to-dirs"),
    SettingSpec("directories_filename_pattern", "[date]", "Directory name pattern", "saving-to-dirs",
                check=_filename_pattern, info="Empty: [prompt_words]; one folder level (no / or \\)"),
    SettingSpec("directories_max_prompt_words", 8, "Max prompt words for [prompt_words] pattern", "saving-to-dirs",
                minimum=1, maximum=20, step=1),
    # Infotext
    SettingSpec("enable_pnginfo", True, "Write infotext to metadata of the generated image", "infotext"),
    SettingSpec("add_model_hash_to_info", True, "Add model hash to infotext", "infotext"),
    SettingSpec("add_model_name_to_info", True, "Add model name to infotext", "infotext"),
    SettingSpec("add_vae_name_to_info", True, "Add VAE name to infotext", "infotext"),
    # User interface
    SettingSpec("img2img_batch_show_results_limit", 32, "Show the first N batch img2img results in UI", "ui",
                minimum=-1, maximum=1000, step=1, info="0: none, -1: all images; too many images can make the page slow"),
    SettingSpec("hires_fix_show_sampler", False, "Hires fix: show hires checkpoint and sampler selection", "ui",
                info="Shows the Hires sampling method in txt2img's Hires. fix (Atelier has no separate hires "
                     "checkpoint); applies to pages opened after the change"),
    SettingSpec("send_seed", True, "Send seed when sending prompt or image to other interface", "ui"),
    SettingSpec("send_size", True, "Send size when sending prompt or image to another interface", "ui"),
    SettingSpec("return_grid", True, "Show grid in gallery", "ui",
                info="With more than one image, the gallery starts with their grid (as saved with the grid option)"),
    # Ctrl+Up/Down in a prompt box (modules.ui.shortcuts; the page reads these from `opts`)
    SettingSpec("keyedit_precision_attention", 0.1, "Precision for (attention:1.1) when editing the prompt with "
                "Ctrl+up/down", "ui", minimum=0.01, maximum=0.2, step=0.001),
    SettingSpec("keyedit_precision_extra", 0.05, "Precision for <extra networks:0.9> when editing the prompt with "
                "Ctrl+up/down", "ui", minimum=0.01, maximum=0.2, step=0.001),
    SettingSpec("keyedit_delimiters", r".,\/!?%^*;:{}=`~() ", "Word delimiters when editing the prompt with "
                "Ctrl+up/down", "ui", info="With nothing selected, the word at the cursor ends at these characters"),
    SettingSpec("keyedit_delimiters_whitespace", ("Tab", "Carriage Return", "Line Feed"),
                "Ctrl+up/down whitespace delimiters", "ui", choices=("Tab", "Carriage Return", "Line Feed")),
    SettingSpec("keyedit_move", True, "Alt+left/right moves prompt elements", "ui",
                info="Alt+Left/Right in a prompt box moves the comma-separated element at the cursor"),
    SettingSpec("quicksettings_list", ("sd_model_checkpoint", "sd_vae", "CLIP_stop_at_last_layers"),
                "Quicksettings list", "ui", needs_restart=True,
                info="Settings shown at the top of the page instead of in this tab (the checkpoint always is)"),
    # Extra Networks (modules.ui.extra_networks_panel: the text a card puts into the prompt)
    SettingSpec("extra_networks_default_multiplier", 1.0, "Default multiplier for extra networks", "extra-networks",
                minimum=0.0, maximum=2.0, step=0.01,
                info="The weight a card writes into the prompt, as <lora:name:1> (a LoRA's preferred weight, when "
                     "its card sets one, wins)"),
    # Live previews (A1111's keys and defaults; modules.generation.live_preview makes the previews).
    # The ones marked "not used by Atelier" are kept so A1111's config.json and extensions read them.
    SettingSpec("show_progressbar", True, "Show progressbar", "live-previews",
                info="Off: the bar under the buttons is hidden; the Generate button still shows the progress"),
    SettingSpec("live_previews_enable", True, "Show live previews of the created image", "live-previews"),
    SettingSpec("live_previews_image_format", "png", "Live preview file format", "live-previews",
                choices=("jpeg", "png", "webp"),
                info="Not used by Atelier: the page receives previews through Gradio, and the API's progress "
                     "sends PNG"),
    SettingSpec("show_progress_grid", True, "Show previews of all images generated in a batch as a grid",
                "live-previews", info="Off: the first image of the batch only"),
    SettingSpec("show_progress_every_n_steps", 10, "Live preview display period", "live-previews",
                minimum=-1, maximum=32, step=1,
                info="In sampling steps: a new preview once this many steps passed since the last one; "
                     "0 = every step, -1 = no previews"),
    SettingSpec("show_progress_type", "Approx NN", "Live preview method", "live-previews",
                choices=("Full", "Approx NN", "Approx cheap", "TAESD"),
                info="Full = the VAE decodes each preview (slow, pretty); Approx cheap = a fixed colour map of the "
                     "latents (instant, coarse). Atelier has no Approx NN or TAESD model: those use Approx cheap"),
    SettingSpec("live_preview_content", "Prompt", "Live preview subject", "live-previews",
                choices=("Combined", "Prompt", "Negative prompt"),
                info="Prompt / Negative prompt = that prompt's own prediction; Combined = the guided result the "
                     "sampler keeps"),
    SettingSpec("live_preview_refresh_period", 1000, "Progressbar and preview update period", "live-previews",
                # The bound keeps one user's setting from leaving every page without progress for ever.
                minimum=0, maximum=60000,
                info="In milliseconds: how often the page reads a running job's progress and preview (at least "
                     "every 50 ms, at most every 10 s; a finished job shows at once)"),
    SettingSpec("live_preview_fast_interrupt", False, "Return image with chosen live preview method on interrupt",
                "live-previews",
                info="Not used by Atelier yet: an interrupted image is always decoded with the full VAE"),
    # API (modules.api.images reads these for image URLs in requests; A1111's names and defaults)
    SettingSpec("api_enable_requests", True, "Allow http:// and https:// URLs for input images in API", "api",
                restrict_api=True),
    SettingSpec("api_forbid_local_requests", True, "Forbid URLs to local resources", "api", restrict_api=True,
                info="Refuses image URLs that resolve to loopback, private or link-local addresses"),
    # Sharing one server between users (modules.serving.accounts, modules.serving.jobs)
    SettingSpec("queue_order", "round-robin", "Order of waiting jobs between users", "sharing",
                choices=("round-robin", "fifo"),
                info="round-robin: users take turns, so one user's long batch does not hold back the others; "
                     "fifo: strictly in the order jobs were submitted. With one user both are the same"),
    SettingSpec("multi_user_queue_limit", 4, "Waiting jobs a user may have (--multi-user)", "sharing",
                minimum=0, maximum=1000,
                info="More are refused with a message until one starts; 0: no limit"),
    # Model sources (modules.model_sources: the Models tab's look-ups and downloads)
    SettingSpec("hf_token", "", "Hugging Face token", "model-sources", secret=True, check=_no_line_breaks,
                info="For gated and private repositories; sent only to the Hugging Face host. Empty: the HF_TOKEN "
                     "environment variable"),
    SettingSpec("civitai_api_key", "", "Civitai API key", "model-sources", secret=True, check=_no_line_breaks,
                info="For files that need a login on Civitai; sent only to civitai.com. Empty: the CIVITAI_API_KEY "
                     "environment variable"),
    SettingSpec("model_preview_max_rating", "PG-13", "Highest content rating of a downloaded preview image",
                "model-sources", choices=("PG", "PG-13", "R", "X", "XXX"),
                info="Civitai's ratings; the first preview of the model within it is saved, videos never"),
    SettingSpec("model_sources_allow_private", False, "Allow model downloads from local and private addresses",
                "model-sources", restrict_api=True,
                info="For a mirror on your LAN; off, every hop of every redirect must be a public address"),
    # Upscaling (modules.upscaling; A1111's keys, ranges and defaults)
    SettingSpec("ESRGAN_tile", 192, "Tile size for ESRGAN upscalers", "upscaling", minimum=0, maximum=512, step=16,
                info="0 = no tiling (the whole image in one pass: fast, needs much more memory)"),
    SettingSpec("ESRGAN_tile_overlap", 8, "Tile overlap for ESRGAN upscalers", "upscaling", minimum=0, maximum=48,
                step=1, info="Low values = visible seam"),
    SettingSpec("realesrgan_enabled_models", ("R-ESRGAN 4x+", "R-ESRGAN 4x+ Anime6B"),
                "Select which Real-ESRGAN models to show in the web UI", "upscaling",
                choices=("R-ESRGAN General 4xV3", "R-ESRGAN General WDN 4xV3", "R-ESRGAN AnimeVideo", "R-ESRGAN 4x+",
                         "R-ESRGAN 4x+ Anime6B", "R-ESRGAN 2x+"),
                info="Listed when their file (named as in A1111's download URL) is in models/RealESRGAN"),
    SettingSpec("dat_enabled_models", ("DAT x2", "DAT x3", "DAT x4"), "Select which DAT models to show in the web UI",
                "upscaling", choices=("DAT x2", "DAT x3", "DAT x4"),
                info="Listed when their file (named as in A1111's download URL) is in models/DAT"),
    SettingSpec("DAT_tile", 192, "Tile size for DAT upscalers", "upscaling", minimum=0, maximum=512, step=16,
                info="0 = no tiling"),
    SettingSpec("DAT_tile_overlap", 8, "Tile overlap for DAT upscalers", "upscaling", minimum=0, maximum=48, step=1,
                info="Low values = visible seam"),
    SettingSpec("SWIN_tile", 192, "Tile size for all SwinIR", "upscaling", minimum=16, maximum=512, step=16),
    SettingSpec("SWIN_tile_overlap", 8, "Tile overlap, in pixels for SwinIR", "upscaling", minimum=0, maximum=48,
                step=1, info="Low values = visible seam"),
    SettingSpec("SCUNET_tile", 256, "Tile size for SCUNET upscalers", "upscaling", minimum=0, maximum=512, step=16,
                info="0 = no tiling"),
    SettingSpec("SCUNET_tile_overlap", 8, "Tile overlap for SCUNET upscalers", "upscaling", minimum=0, maximum=64,
                step=1, info="Low values = visible seam"),
    SettingSpec("upscaler_for_img2img", "None", "Upscaler for img2img", "upscaling",
                info="Used by img2img's resize modes when the size changes; \"None\" = Lanczos"),
    SettingSpec("set_scale_by_when_changing_upscaler", False,
                "Automatically set the Scale by factor based on the name of the selected Upscaler", "upscaling"),
    SettingSpec("upscale_max_pixels", 8192 * 8192, "Largest upscale result, in pixels", "upscaling", minimum=64 * 64,
                maximum=2 ** 31 - 1, restrict_api=True,
                info="Atelier's limit (A1111 has none): an upscale whose result would be larger is refused before "
                     "any work; 8192×8192 by default"),
    SettingSpec("upscaler_models_limit", 1, "Upscaler models kept loaded", "upscaling", minimum=0, maximum=16, step=1,
                info="Loaded upscaler models stay in memory for the next image up to this many; 0 = load for "
                     "every image"),
    # Postprocessing (the Extras tab's scripts: modules.postprocessing)
    SettingSpec("postprocessing_disable_in_extras", (), "Disable postprocessing operations in extras tab",
                "postprocessing", needs_restart=True),
    SettingSpec("postprocessing_operation_order", (), "Postprocessing operation order", "postprocessing",
                needs_restart=True),
    SettingSpec("upscaling_max_images_in_cache", 5, "Maximum number of images in upscaling cache", "postprocessing",
                minimum=0, maximum=10, step=1),
    SettingSpec("postprocessing_existing_caption_action", "Ignore",
                "Action for existing captions", "postprocessing", choices=("Ignore", "Keep", "Prepend", "Append"),
                info="when generating captions using postprocessing; Ignore = use generated; Keep = use original; "
                     "Prepend/Append = combine both"),
    # Extensions (edited in the Extensions tab; modules.extension_host.extensions)
    SettingSpec("disabled_extensions", (), "Disabled extensions", "ui", visible=False),
    SettingSpec("disable_all_extensions", "none", "Disable all extensions", "ui", choices=("none", "extra", "all"),
                visible=False),
)
SCHEMA_BY_KEY: Mapping[str, SettingSpec] = MappingProxyType({spec.key: spec for spec in SCHEMA})
# What `--hide-ui-dir-config` takes out of the UI's and the API's reach (A1111's restricted_opts):
# where files are written on the server.
DIR_CONFIG_SETTINGS = frozenset({
    "samples_filename_pattern", "directories_filename_pattern", "outdir_samples", "outdir_txt2img_samples",
    "outdir_grids", "outdir_txt2img_grids", "outdir_img2img_samples", "outdir_img2img_grids", "outdir_extras_samples",
})


def locked_settings(args) -> frozenset[str]:
    """Settings the UI and the API may not change on this server (its command line decides:
    modules.serving.cmd_args.dir_config_locked; modules.serving.settings_policy has the whole rule)."""
    from modules.serving.cmd_args import dir_config_locked

    return DIR_CONFIG_SETTINGS if dir_config_locked(args) else frozenset()


def redact_secrets(values: Mapping[str, Any], specs: Mapping[str, SettingSpec] = SCHEMA_BY_KEY) -> dict[str, Any]:
    """`values` with every secret setting that holds something replaced by SECRET_MASK (what the API's
    options, the page's `opts` and the Settings tab show)."""
    return {key: (SECRET_MASK if value and key in specs and specs[key].secret else value)
            for key, value in values.items()}


def secrets_unchanged(changes: Mapping[str, Any], specs: Mapping[str, SettingSpec] = SCHEMA_BY_KEY) -> dict[str, Any]:
    """`changes` without secret settings sent back as SECRET_MASK (a client posting what it read)."""
    return {key: value for key, value in changes.items()
            if not (value == SECRET_MASK and key in specs and specs[key].secret)}


class SettingsValidationError(ValueError):
    """One or more values broke their setting's rules; `errors` maps each key to its message."""

    def __init__(self, errors: Mapping[str, str]):
        self.errors = MappingProxyType(dict(errors))
        super().__init__("; ".join(self.errors.values()))

    def __reduce__(self):
        return type(self), (dict(self.errors),)


class Settings(Mapping[str, Any]):
    """An immutable snapshot of all settings (schema defaults + stored values + overrides)."""

    def __init__(self, values: Mapping[str, Any], extra_defaults: Mapping[str, Any] = MappingProxyType({})):
        """`extra_defaults`: the defaults of settings registered at run time (extensions' options)."""
        merged = {spec.key: spec.default for spec in SCHEMA}
        merged.update(extra_defaults)
        merged.update(values)
        self._values = MappingProxyType(merged)

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __iter__(self):
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __getattr__(self, key: str) -> Any:
        try:
            return self._values[key]
        except KeyError:
            raise AttributeError(f"no setting named {key!r}") from None

    def with_overrides(self, overrides: Mapping[str, Any],
                       specs: Mapping[str, SettingSpec] = SCHEMA_BY_KEY) -> "Settings":
        """A new snapshot with `overrides` applied (validated by `specs`); this one is unchanged."""
        return Settings({**self._values, **validate_changes(overrides, specs)})

    def to_dict(self) -> dict[str, Any]:
        return dict(self._values)


def validate_each(changes: Mapping[str, Any],
                  specs: Mapping[str, SettingSpec] = SCHEMA_BY_KEY) -> tuple[dict[str, Any], dict[str, str]]:
    """(valid values, {key: message} for the invalid ones) by the rules of `specs` (the built-in
    settings; `SettingsStore.specs_by_key()` adds the extensions' options). Unknown keys pass
    through as given."""
    clean, errors = {}, {}
    for key, value in changes.items():
        spec = specs.get(key)
        try:
            clean[key] = spec.validate(value) if spec else value
        except ValueError as e:
            errors[key] = str(e)
    return clean, errors


def validate_changes(changes: Mapping[str, Any], specs: Mapping[str, SettingSpec] = SCHEMA_BY_KEY) -> dict[str, Any]:
    """Validate known keys; unknown keys (an extension's, A1111's) pass through as given.
    Raises `SettingsValidationError` naming every bad field."""
    clean, errors = validate_each(changes, specs)
    if errors:
        raise SettingsValidationError(errors)
    return clean


def describe_changes(changed: list[str] | tuple[str, ...]) -> str:
    """A1111's report after Apply: `2 settings changed: a, b.`"""
    noun = "setting" if len(changed) == 1 else "settings"
    return f"{len(changed)} {noun} changed" + (f": {', '.join(changed)}." if changed else ".")


def _migrate(data: dict[str, Any]) -> dict[str, Any]:
    """A1111's renamed keys: read the old ones when the new ones are absent (the old ones are kept)."""
    if isinstance(data.get("quicksettings"), str) and "quicksettings_list" not in data:
        data["quicksettings_list"] = [item.strip() for item in data["quicksettings"].split(",") if item.strip()]
    if data.get("sd_vae_as_default") is not None and "sd_vae_overrides_per_model_preferences" not in data:
        data["sd_vae_overrides_per_model_preferences"] = data["sd_vae_as_default"]
    return data


class SettingsStore:
    """The single owner of `config.json`: load, validate, apply, save atomically."""

    def __init__(self, path: Path, *, persist: bool = True):
        self.path = Path(path)
        # False on a Ray worker: its settings mirror the server's (`mirror`) and config.json belongs to
        # the server, so it is never written or moved aside from here.
        self.persist = persist
        self._lock = threading.Lock()
        self._stored = self._read()
        # Settings registered at run time (extensions' options, modules.extension_host.options), in
        # registration order. Their stored values were kept unvalidated by `_read` (unknown keys).
        self._registered: dict[str, SettingSpec] = {}

    def register(self, spec: SettingSpec) -> None:
        """Add a setting at run time (an extension's option): it has its default from now on, and
        its stored value is checked by its rules (a bad one is ignored with a warning, as at load).
        A built-in setting cannot be redefined: ValueError."""
        if spec.key in SCHEMA_BY_KEY:
            raise ValueError(f"setting {spec.key!r} is one of Atelier's own settings; an extension cannot "
                             "redefine it: choose another key (A1111 extensions prefix theirs with their name)")
        with self._lock:
            self._registered[spec.key] = spec
            if spec.key in self._stored:
                try:
                    self._stored = {**self._stored, spec.key: spec.validate(self._stored[spec.key])}
                except ValueError as e:
                    log.warning("%s: bad setting value ignored, the default is used: %s", self.path, e)
                    self._stored = {key: value for key, value in self._stored.items() if key != spec.key}

    def specs(self) -> tuple[SettingSpec, ...]:
        """Every setting: the built-in schema, then the ones registered at run time."""
        with self._lock:
            return SCHEMA + tuple(self._registered.values())

    def specs_by_key(self) -> Mapping[str, SettingSpec]:
        with self._lock:
            if not self._registered:
                return SCHEMA_BY_KEY
            return MappingProxyType({**SCHEMA_BY_KEY, **self._registered})

    def validate_each(self, changes: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
        """`validate_each` by the rules of every setting this store knows."""
        return validate_each(changes, self.specs_by_key())

    def _read(self) -> dict[str, Any]:
        try:
            text = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as e:
            # Not corrupt, just unreadable: moving it aside or overwriting it later would lose it.
            raise OSError(f"cannot read the settings file {self.path}: {e.strerror}; fix its permissions "
                          "or start with another --data-dir") from e
        try:
            data = json.loads(text.decode("utf-8"))
            if not isinstance(data, dict):
                raise ValueError(f"its top level is a JSON {type(data).__name__}, not an object")
        except ValueError as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            if not self.persist:
                log.warning("Could not load settings from %s (%s); using the defaults until the server's arrive",
                            self.path, e)
                return {}
            aside = self._move_aside()
            log.warning("Could not load settings: %s is likely corrupted (%s). It has been moved to %s; "
                        "using the default settings.", self.path, e, aside)
            return {}
        valid = {}
        for key, value in _migrate(data).items():
            spec = SCHEMA_BY_KEY.get(key)
            try:
                valid[key] = spec.validate(value) if spec else value
            except ValueError as e:
                log.warning("%s: bad setting value ignored, the default is used: %s", self.path, e)
        return valid

    def _move_aside(self) -> Path:
        """Move the corrupt file to `tmp/config.json` beside it (A1111's place), never over an earlier one."""
        folder = self.path.parent / "tmp"
        folder.mkdir(parents=True, exist_ok=True)
        aside = folder / self.path.name
        if aside.exists():
            aside = folder / f"{self.path.stem}-{time.strftime('%Y%m%d-%H%M%S')}{self.path.suffix}"
            counter = 1
            while aside.exists():
                aside = folder / f"{self.path.stem}-{time.strftime('%Y%m%d-%H%M%S')}-{counter}{self.path.suffix}"
                counter += 1
        os.replace(self.path, aside)
        return aside

    def current(self) -> Settings:
        with self._lock:
            return Settings(self._stored, {key: spec.default for key, spec in self._registered.items()})

    def apply(self, changes: Mapping[str, Any]) -> list[str]:
        """Validate and persist `changes`, all or nothing; returns the keys whose value changed.
        Raises `SettingsValidationError` (nothing saved) when any value is invalid."""
        return self._store(validate_changes(changes, self.specs_by_key()))

    def mirror(self, values: Mapping[str, Any]) -> list[str]:
        """Take another store's stored values whole (a Ray worker takes the server's before each job);
        returns the keys whose value in effect changed. Values the server validated are taken as
        they are; keys this store does not know are kept too (an extension's option)."""
        with self._lock:
            before = Settings(self._stored, {key: spec.default for key, spec in self._registered.items()})
            self._stored = dict(values)
            after = Settings(self._stored, {key: spec.default for key, spec in self._registered.items()})
        keys = set(before.keys()) | set(after.keys())
        return sorted(key for key in keys if before.get(key) != after.get(key))

    def stored(self) -> Mapping[str, Any]:
        """What config.json holds (no defaults filled in), as a read-only copy."""
        with self._lock:
            return MappingProxyType(dict(self._stored))

    def put_back(self, before: Mapping[str, Any], after: Mapping[str, Any]) -> list[str]:
        """Undo a change whose application failed (A1111's `opts.set` restores the old value when the
        setting's onchange raises). `after` holds the values the change stored, `before` the stored
        values it replaced (a key absent from `before` was not in config.json: it is removed again,
        so its default applies). A key that no longer holds its `after` value was changed since by
        someone else and is left alone. Returns the keys put back; saved before they take effect."""
        with self._lock:
            keys = [key for key in after if key in self._stored and self._stored[key] == after[key]]
            if keys:
                # In place, so config.json keeps its order.
                stored = {key: before[key] if key in keys else value for key, value in self._stored.items()
                          if key not in keys or key in before}
                self._save_locked(stored)
                self._stored = stored
        return keys

    def _store(self, clean: Mapping[str, Any]) -> list[str]:
        with self._lock:
            current = Settings(self._stored, {key: spec.default for key, spec in self._registered.items()})
            changed = [k for k, v in clean.items() if k not in current or current[k] != v]
            if changed:
                stored = {**self._stored, **{k: clean[k] for k in changed}}
                self._save_locked(stored)  # first: a failed write leaves the values in effect unchanged
                self._stored = stored
        return changed

    def _save_locked(self, stored: Mapping[str, Any]) -> None:
        """Write config.json whole or not at all (a full disk raises `DiskFullError` and leaves the
        previous file as it was)."""
        from modules.common.atomic_files import write_bytes

        if not self.persist:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = json.dumps(stored, indent=4, ensure_ascii=False).encode("utf-8")
        write_bytes(self.path, data, what=f"the settings file {self.path.name}")
