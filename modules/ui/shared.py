"""What the tabs of the UI share, and the element ids the browser tests rely on.

Each tab has one builder, `build(context, shared)`, called inside its `gr.Tab` by `modules.ui.app`.
`UiShared` carries the components one tab needs from another (after a merge the checkpoint dropdown
must list the result; PNG Info sends parameters to txt2img's fields). Builders fill in what they own.

Element ids follow A1111's where A1111 has one, so users' custom CSS/JS keeps working:
  page        tabs, tab_txt2img, tab_img2img, tab_extras, tab_pnginfo, tab_modelmerger, tab_models,
              tab_<extension tab id>, tab_settings, tab_extensions (A1111's tab panels)
  top bar     quicksettings (the row), setting_sd_model_checkpoint, refresh_sd_model_checkpoint, setting_sd_vae,
              refresh_sd_vae, setting_CLIP_stop_at_last_layers, model_status
  txt2img     txt2img_toprow, txt2img_actions_column, txt2img_settings (the left column),
              txt2img_script_container, script_list, txt2img_prompt, txt2img_neg_prompt, txt2img_token_counter,
              txt2img_negative_token_counter, txt2img_generate, txt2img_interrupt, txt2img_skip,
              txt2img_sampling, txt2img_scheduler, txt2img_steps, txt2img_width, txt2img_height,
              txt2img_batch_count, txt2img_batch_size, txt2img_cfg_scale, txt2img_seed,
              txt2img_random_seed, txt2img_reuse_seed, txt2img_subseed, txt2img_subseed_strength,
              txt2img_hr, txt2img_gallery, html_info_txt2img, html_log_txt2img (the buttons' messages),
              txt2img_progress, paste (A1111's id for the ↙️ button),
              open_folder_txt2img, txt2img_extra_networks (items: class `extra-network-item`,
              attribute data-name)
              txt2img_send_to_img2img, txt2img_send_to_inpaint (under the gallery)
  img2img     the same ids as txt2img with the img2img_ prefix (img2img_prompt, img2img_generate, img2img_gallery,
              img2img_seed, html_info_img2img, html_log_img2img, img2img_paste, open_folder_img2img, img2img_send_to_img2img,
              img2img_send_to_inpaint, ...), mode_img2img (the mode sub-tabs) with img2img_img2img_tab
              (img2img_image), img2img_img2img_sketch_tab (img2img_sketch), img2img_inpaint_tab (img2maskimg),
              img2img_inpaint_sketch_tab (inpaint_sketch), img2img_inpaint_upload_tab (img_inpaint_base,
              img_inpaint_mask), img2img_batch_tab; resize_mode, img2img_denoising_strength,
              img2img_image_cfg_scale, img2img_mask_blur, img2img_mask_mode, img2img_inpainting_fill,
              img2img_inpaint_full_res, img2img_inpaint_full_res_padding, img2img_mask_alpha,
              img2img_scale, img2img_outpaint
  Extras      tab_extras, mode_extras with extras_single_tab (extras_image), extras_batch_process_tab
              (extras_image_batch), extras_batch_directory_tab (extras_batch_input_dir, extras_batch_output_dir,
              extras_show_extras_results); extras_generate, extras_interrupt, extras_skip, extras_progress,
              extras_gallery, html_info_extras, extras_send_to_img2img, extras_send_to_inpaint; the Upscale step's
              extras_upscale, extras_upscaler_1, ... (modules.ui.extras_upscale_ui); txt2img_send_to_extras,
              img2img_send_to_extras (under the galleries)
  PNG Info    pnginfo_image, pnginfo_generation_info, pnginfo_send_to_txt2img, pnginfo_send_to_img2img,
              pnginfo_send_to_inpaint, pnginfo_send_to_extras
  Merger      modelmerger_primary_model_name, modelmerger_secondary_model_name,
              modelmerger_tertiary_model_name, modelmerger_interp_method, modelmerger_interp_amount,
              modelmerger_custom_name, modelmerger_checkpoint_format, modelmerger_save_as_half,
              modelmerger_config_method, modelmerger_bake_in_vae, modelmerger_discard_weights,
              modelmerger_save_metadata, modelmerger_block_weights, modelmerger_merge,
              modelmerger_merge_and_load, modelmerger_result
  Settings    settings_submit, settings_result, settings_restart_gradio (Reload UI), and setting_<key> per setting
  Models      models_source, models_lookup, models_card, models_file, models_download, models_downloads,
              models_cancel_id, models_cancel (the rest: modules.ui.models_tab)
Tab labels: "txt2img", "img2img", "Extras", "PNG Info", "Checkpoint Merger", "Models", "Settings".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class UiShared:
    """Components created by one builder and used by others (gradio components, typed as Any so
    this module does not import gradio)."""

    checkpoint_dropdown: Any = None  # top bar: refreshed after a merge
    checkpoint_switched: Any = None  # top bar: the dropdown's switch event, to chain `.then(...)` on
    model_status: Any = None  # top bar: the "Loaded ..." line, refreshed after "Merge and load"
    model_status_ticks: Any = None  # top bar: its status timer's event (runs while a load is under way)
    txt2img_fields: dict[str, Any] = field(default_factory=dict)  # GenerationRequest field -> component
    txt2img_html_info: Any = None  # txt2img: the infotext under the gallery
    txt2img_html_log: Any = None  # txt2img: the buttons' messages under it (notes after a paste)
    tabs: Any = None  # the gr.Tabs, to switch to txt2img after "send to txt2img"
    # txt2img: the scripts' `infotext_fields`, `(component, infotext key or function)`, that a paste fills
    txt2img_paste_fields: list = field(default_factory=list)
    txt2img_results: Any = None  # txt2img: modules.ui.generation_form.ResultsColumn (its send-to buttons)
    txt2img_generation_state: Any = None  # txt2img: the gr.State of the last generation (selected image)
    # img2img (modules.ui.img2img.Img2ImgTab): its fields, image inputs and sub-tabs, for the send-to buttons
    img2img: Any = None
    extras: Any = None  # modules.ui.extras_tab.ExtrasTab: its image and sub-tabs, for "Send to Extras"
    # (function, outputs) run when a page opens: the Blocks are built once at start-up, so anything
    # that changes later (checkpoint lists, loaded model) is refreshed here. Any builder may append.
    page_loads: list[tuple[Callable[[], Any], list[Any]]] = field(default_factory=list)
