"""A1111's name for extensions: `modules.sd_samplers`. The code lives in
`modules.extension_host.a1111_samplers` (see its docstring for what differs from A1111)."""

# ruff: noqa: F401
from modules.extension_host.a1111_samplers import (
    SamplerData,
    __dir__,
    __getattr__,
    create_sampler,
    find_sampler_config,
    get_sampler_and_scheduler,
    visible_sampler_names,
)
