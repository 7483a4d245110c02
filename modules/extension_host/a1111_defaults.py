"""A1111 settings Atelier does not have, with A1111's defaults, for extensions that read them through
`shared.opts` (output folders of tabs Atelier lacks (Extras, init images, Save), UI and sampler options). They are
read-only: `opts.<key>` and `opts.data.get(key)` give the default; they are not saved, not in the
Settings tab and not in the API's options."""

from __future__ import annotations

from types import MappingProxyType

A1111_ONLY_DEFAULTS = MappingProxyType({
    "outdir_extras_samples": "outputs/extras-images",
    "outdir_save": "log/images",
    "outdir_init_images": "outputs/init-images",
    "temp_dir": "",
    "clean_temp_dir_at_start": False,
    "hide_samplers": [],
    "do_not_show_images": False,
    "js_modal_lightbox": True,
    "hidden_tabs": [],
    "ui_reorder_list": [],
    "grid_only_if_multiple": True,
    "use_save_to_dirs_for_ui": False,
    "save_selected_only": True,
    "lora_preferred_name": "Alias from file",
    "uni_pc_variant": "bh1",
    "uni_pc_skip_type": "time_uniform",
    "uni_pc_order": 3,
    "uni_pc_lower_order_final": True,
    "ui_config_file": "ui-config.json",
})
