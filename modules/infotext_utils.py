"""A1111's name for extensions: `modules.infotext_utils`. The code lives in `modules.outputs.infotext`
(reading and writing infotexts) and `modules.extension_host.paste_fields` (paste destinations and
"Send to" buttons); Atelier's own code imports it from there (docs/ARCHITECTURE.md)."""

# ruff: noqa: F401, F403
from modules.outputs.infotext import *

from modules.extension_host.paste_fields import (
    ParamBinding,
    PasteField,
    add_paste_fields,
    bind_buttons,
    connect_paste,
    connect_paste_params_buttons,
    create_buttons,
    register_paste_params_button,
)
from modules.extension_host.paste_fields import module_getattr as __getattr__
