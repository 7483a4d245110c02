"""A1111's name for extensions: `modules.sd_models` (the running app's checkpoint list and model
switching). The code lives in `modules.extension_host.a1111_models`; its docstring says what differs
from A1111."""

# ruff: noqa: F401
from modules.extension_host.a1111_models import (
    CheckpointInfo,
    SkipWritingToConfig,
    __dir__,
    __getattr__,
    checkpoint_tiles,
    get_closet_checkpoint_match,
    list_models,
    model_data,
    model_hash,
    reload_model_weights,
    select_checkpoint,
    unload_model_weights,
)
