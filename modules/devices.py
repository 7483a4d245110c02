"""A1111's name for extensions: `modules.devices` (the running app's device and dtypes; torch is
imported only when one is asked for). The code lives in `modules.extension_host.a1111_devices`."""

# ruff: noqa: F401
from modules.extension_host.a1111_devices import (
    NansException,
    __dir__,
    __getattr__,
    autocast,
    cond_cast_float,
    cond_cast_unet,
    first_time_calculation,
    get_device_for,
    get_optimal_device,
    get_optimal_device_name,
    test_for_nans,
    torch_gc,
    unet_needs_upcast,
    without_autocast,
)
