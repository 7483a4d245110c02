"""A1111's name for extensions: `modules.shared` (Atelier's own code never imports it).

`opts` and `state` are views with no state of their own; `sd_model`, `cmd_opts`, `device`,
`prompt_styles` and the other per-app names are read from the running app each time they are read
(modules.extension_host.environment, .options, .shared_names).
"""

# ruff: noqa: F401
from modules.extension_host.options import OptionHTML, OptionInfo, Options, options_section
from modules.extension_host.a1111_models import SdModelView
from modules.extension_host.shared_names import State, listfiles, opts, state, total_tqdm, walk_files
from modules.extension_host.shared_names import module_getattr as __getattr__
