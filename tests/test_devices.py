"""GPU-path choices tested on the CPU: attention backends, offload hooks, VAE fp32 retry, memory figures.

Every model is a tiny random checkpoint in the real single-file layout. What these tests cannot show
on a CPU-only machine (weights really moving between devices, lower peak VRAM, xformers kernels) is
listed in the report of the change and checked on a GPU separately.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from argparse import Namespace

import pytest
import torch

from modules.library.attention_backends import (
    AttentionBackend,
    XformersStatus,
    apply_attention_backend,
    make_processor,
    probe_xformers,
    select_attention_backend,
)
from modules.serving.cmd_args import parse_args
from modules.library.devices import MemoryStats, memory_stats, reset_peak_memory, sampling_dtype
from modules.library.model_loader import load_checkpoint
from modules.library.offload import (
    OffloadMode,
    ResidencyHook,
    batch_cond_uncond_allowed,
    enable_offload,
    hooked_modules,
    select_offload_mode,
    unet_block_units,
)
from modules.library.synthetic_checkpoints import write_checkpoint
from modules.generation.vae_decode import NAN_RETRY_MESSAGE, VaeNaNError, decode_latents

CPU = torch.device("cpu")
CUDA = torch.device("cuda")


@pytest.fixture(scope="module")
def loaded_sd1(tmp_path_factory):
    path = write_checkpoint(tmp_path_factory.mktemp("ckpt") / "sd1.safetensors", "sd1", size="tiny",
                            dtype=torch.float32, seed=3)
    return load_checkpoint(path)


@pytest.fixture
def model(loaded_sd1):
    """A private copy of the tiny model: tests change processors, hooks and dtypes."""
    unet, vae = copy.deepcopy(loaded_sd1.unet), copy.deepcopy(loaded_sd1.vae)
    encoders = tuple(copy.deepcopy(e) for e in loaded_sd1.text_encoders)
    return dataclasses.replace(loaded_sd1, unet=unet, vae=vae, text_encoders=encoders, builtin_vae=vae)


def _unet_inputs(model, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 4, 8, 8, generator=g)
    context = torch.randn(2, 77, model.unet.config.cross_attention_dim, generator=g)
    return x, torch.tensor([10.0, 500.0]), context


@torch.no_grad()
def _run_all(model) -> dict[str, torch.Tensor]:
    """One forward of every component, as the engine calls them."""
    x, t, context = _unet_inputs(model)
    ids = torch.randint(0, 1000, (1, 77), generator=torch.Generator().manual_seed(1))
    return {
        "text": model.text_encoders[0](ids, output_hidden_states=True).last_hidden_state,
        "unet": model.unet(x, t, encoder_hidden_states=context).sample,
        "vae": model.vae.decode(x[:1]).sample,
    }


# --- flags ---------------------------------------------------------------------------------------


def test_a1111_flags_parse():
    args = parse_args(["--xformers", "--force-enable-xformers", "--opt-sdp-attention", "--opt-sdp-no-mem-attention",
                       "--disable-opt-split-attention", "--medvram", "--medvram-sdxl", "--lowvram",
                       "--upcast-sampling", "--no-half-vae", "--disable-nan-check", "--opt-sub-quad-attention",
                       "--opt-split-attention"])
    for name in ("xformers", "force_enable_xformers", "opt_sdp_attention", "opt_sdp_no_mem_attention",
                 "disable_opt_split_attention", "medvram", "medvram_sdxl", "lowvram", "upcast_sampling",
                 "no_half_vae", "disable_nan_check"):
        assert getattr(args, name) is True, name
    defaults = parse_args([])
    assert not (defaults.xformers or defaults.medvram or defaults.lowvram or defaults.opt_sdp_no_mem_attention)


# --- attention backend selection -------------------------------------------------------------------


def _args(*flags: str) -> Namespace:
    return parse_args(list(flags))


WORKS = XformersStatus(True, True, "xformers 0.0.35")
BROKEN = XformersStatus(False, True, "xformers 0.0.35 imports but its kernels fail on torch 2.11")
MISSING = XformersStatus(False, False, "xformers does not import")


@pytest.mark.parametrize("flags, device, probe, expected", [
    ((), CUDA, None, AttentionBackend.SDPA),
    ((), CPU, None, AttentionBackend.SDPA),
    (("--opt-sdp-attention",), CUDA, None, AttentionBackend.SDPA),
    (("--opt-sdp-no-mem-attention",), CUDA, None, AttentionBackend.SDPA_NO_MEM),
    (("--opt-sdp-no-mem-attention", "--opt-sdp-attention"), CUDA, None, AttentionBackend.SDPA_NO_MEM),
    (("--disable-opt-split-attention",), CUDA, None, AttentionBackend.PLAIN),
    (("--disable-opt-split-attention", "--opt-sdp-attention"), CUDA, None, AttentionBackend.SDPA),
    (("--opt-sub-quad-attention",), CUDA, None, AttentionBackend.SDPA),
    (("--xformers",), CUDA, WORKS, AttentionBackend.XFORMERS),
    (("--xformers",), CUDA, BROKEN, AttentionBackend.SDPA),
    (("--xformers",), CUDA, MISSING, AttentionBackend.SDPA),
    (("--xformers", "--opt-sdp-no-mem-attention"), CUDA, BROKEN, AttentionBackend.SDPA_NO_MEM),
    (("--xformers", "--opt-sdp-no-mem-attention"), CUDA, WORKS, AttentionBackend.XFORMERS),
    (("--xformers", "--disable-opt-split-attention"), CUDA, WORKS, AttentionBackend.XFORMERS),
    (("--force-enable-xformers",), CUDA, WORKS, AttentionBackend.XFORMERS),
    (("--force-enable-xformers",), CUDA, BROKEN, AttentionBackend.XFORMERS),
    (("--force-enable-xformers",), CUDA, MISSING, AttentionBackend.SDPA),
    (("--force-enable-xformers",), CPU, BROKEN, AttentionBackend.SDPA),
])
def test_attention_backend_decision_table(flags, device, probe, expected):
    calls: list[torch.device] = []

    def fake_probe(dev: torch.device) -> XformersStatus:
        calls.append(dev)
        return probe

    assert select_attention_backend(_args(*flags), device, xformers_probe=fake_probe) is expected
    # The probe (a CUDA kernel call) runs only when xformers is asked for.
    assert calls == ([device] if probe is not None else [])


def test_failed_xformers_warns_with_the_reason(caplog):
    with caplog.at_level(logging.WARNING, logger="modules.library.attention_backends"):
        backend = select_attention_backend(_args("--xformers"), CUDA, xformers_probe=lambda d: BROKEN)
    assert backend is AttentionBackend.SDPA
    assert "--xformers ignored" in caplog.text and "kernels fail on torch 2.11" in caplog.text


def test_xformers_probe_without_cuda_or_xformers():
    status = probe_xformers(CPU)
    assert not status.usable and "CUDA only" in status.detail
    try:
        import xformers.ops  # noqa: F401
    except Exception:  # noqa: BLE001 - any failure means "not importable", which is what is tested
        status = probe_xformers(CUDA)  # stops at the import: no CUDA call is made
        assert not status.usable and not status.importable and "does not import" in status.detail


def test_processors_per_backend():
    from diffusers.models.attention_processor import (
        AttnProcessor,
        AttnProcessor2_0,
        XFormersAttnProcessor,
    )

    assert type(make_processor(AttentionBackend.SDPA)) is AttnProcessor2_0
    assert type(make_processor(AttentionBackend.PLAIN)) is AttnProcessor
    assert type(make_processor(AttentionBackend.XFORMERS)) is XFormersAttnProcessor
    assert isinstance(make_processor(AttentionBackend.SDPA_NO_MEM), AttnProcessor2_0)
    with pytest.raises(ValueError, match="unknown attention backend 'sdp'"):
        make_processor("sdp")


# --- attention backend application ---------------------------------------------------------------


@pytest.mark.parametrize("backend", [AttentionBackend.PLAIN, AttentionBackend.SDPA_NO_MEM])
def test_backends_compute_the_same_attention(model, backend):
    reference = _run_all(model)
    applied = apply_attention_backend(model, backend)
    expected_type = type(make_processor(backend))
    for component in (model.unet, model.vae):
        processors = component.attn_processors.values()
        assert processors and all(type(p) is expected_type for p in processors)
    outputs = _run_all(model)
    for name in ("unet", "vae"):
        torch.testing.assert_close(outputs[name], reference[name], atol=1e-5, rtol=1e-5)
    assert set(applied.components) == {"unet", "vae"}


def test_restore_puts_back_the_previous_processor_objects(model):
    before = {name: dict(m.attn_processors) for name, m in (("unet", model.unet), ("vae", model.vae))}
    with apply_attention_backend(model, AttentionBackend.PLAIN):
        assert all(type(p).__name__ == "AttnProcessor" for p in model.unet.attn_processors.values())
    for name, module in (("unet", model.unet), ("vae", model.vae)):
        after = module.attn_processors
        assert after.keys() == before[name].keys()
        assert all(after[k] is before[name][k] for k in after)


def test_custom_processors_are_kept(model, caplog):
    class CustomProcessor:  # e.g. an IP-Adapter processor: carries behaviour plain attention lacks
        def __call__(self, attn, hidden_states, *args, **kwargs):
            return hidden_states

    layer = next(m for m in model.unet.modules() if hasattr(m, "set_processor"))
    custom = CustomProcessor()
    layer.set_processor(custom)
    with caplog.at_level(logging.WARNING, logger="modules.library.attention_backends"):
        apply_attention_backend(model, AttentionBackend.PLAIN)
    assert layer.get_processor() is custom
    assert "keep their own processor (CustomProcessor" in caplog.text


def test_sdpa_no_mem_disables_the_memory_efficient_kernel_only_during_the_call(model):
    apply_attention_backend(model, AttentionBackend.SDPA_NO_MEM)
    attention = next(m for m in model.unet.modules() if hasattr(m, "set_processor"))
    seen: list[tuple[bool, bool, bool]] = []

    def record(module, inputs, output):  # to_q runs inside the processor's call
        seen.append((torch.backends.cuda.mem_efficient_sdp_enabled(), torch.backends.cuda.flash_sdp_enabled(),
                     torch.backends.cuda.math_sdp_enabled()))

    handle = attention.to_q.register_forward_hook(record)
    try:
        _run_all(model)
    finally:
        handle.remove()
    assert seen and all(s == (False, True, True) for s in seen)
    assert torch.backends.cuda.mem_efficient_sdp_enabled()  # the context restored the selection


def test_apply_rejects_a_non_backend(model):
    with pytest.raises(TypeError, match="got 'sdpa'"):
        apply_attention_backend(model, "sdpa")


# --- offload ------------------------------------------------------------------------------------


@pytest.mark.parametrize("flags, is_sdxl, device, expected", [
    ((), False, CUDA, OffloadMode.NONE),
    (("--medvram",), False, CUDA, OffloadMode.MEDVRAM),
    (("--medvram",), True, CUDA, OffloadMode.MEDVRAM),
    (("--medvram-sdxl",), False, CUDA, OffloadMode.NONE),
    (("--medvram-sdxl",), True, CUDA, OffloadMode.MEDVRAM),
    (("--lowvram",), False, CUDA, OffloadMode.LOWVRAM),
    (("--lowvram", "--medvram"), False, CUDA, OffloadMode.LOWVRAM),
    (("--lowvram", "--medvram-sdxl"), True, CUDA, OffloadMode.LOWVRAM),
    (("--medvram",), False, CPU, OffloadMode.NONE),
    (("--lowvram",), True, CPU, OffloadMode.NONE),
])
def test_offload_mode_decision_table(flags, is_sdxl, device, expected):
    mode = select_offload_mode(_args(*flags), is_sdxl, device)
    assert mode is expected
    assert batch_cond_uncond_allowed(mode) is (mode is OffloadMode.NONE)


def _hook_names(model) -> set[str]:
    return {m._hf_hook.name for m in hooked_modules(model.modules().values())}


def test_medvram_hooks_whole_components_and_keeps_outputs(model):
    reference = _run_all(model)
    with enable_offload(model, OffloadMode.MEDVRAM, CPU) as handle:
        assert _hook_names(model) == {"text_encoder", "unet", "vae"}
        assert all(isinstance(m._hf_hook, ResidencyHook) for m in hooked_modules([model.unet]))
        assert handle.units["unet"] is model.unet and handle.units["vae"] is model.vae
        outputs = _run_all(model)
        # vae.decode is not forward: diffusers' @apply_forward_hook runs the hook for it.
        assert handle.resident is model.vae
        assert handle.moves == 3
        _run_all(model)  # the same order again: each component moves once more, never twice in a row
        assert handle.moves == 6
        with torch.no_grad():
            model.vae.decode(torch.zeros(1, 4, 8, 8))
        assert handle.moves == 6  # already resident: nothing moves
    for name in reference:
        assert torch.equal(outputs[name], reference[name]), name


def test_lowvram_hooks_unet_blocks_and_keeps_outputs(model):
    reference = _run_all(model)
    unet_units = unet_block_units(model.unet)
    with enable_offload(model, OffloadMode.LOWVRAM, CPU) as handle:
        names = _hook_names(model)
        assert names == {"text_encoder", "vae"} | {f"unet.{name}" for name, _ in unet_units}
        assert "unet" not in names
        # The UNet's ends stay on the execution device without hooks.
        for end in (model.unet, model.unet.conv_in, model.unet.time_embedding, model.unet.conv_out):
            assert not hasattr(end, "_hf_hook")
        # Every UNet weight is in exactly one unit or in the resident ends.
        unit_params = {id(p) for _, unit in unet_units for p in unit.parameters()}
        end_params = {id(p) for child in (model.unet.conv_in, model.unet.time_embedding, model.unet.conv_norm_out,
                                          model.unet.conv_out) for p in child.parameters()}
        assert unit_params.isdisjoint(end_params)
        assert unit_params | end_params == {id(p) for p in model.unet.parameters()}
        outputs = _run_all(model)
        # Each unit became resident once per forward (text encoder + every UNet unit + VAE).
        assert handle.moves == 1 + len(unet_units) + 1
    for name in reference:
        assert torch.equal(outputs[name], reference[name]), name


@pytest.mark.parametrize("mode", [OffloadMode.MEDVRAM, OffloadMode.LOWVRAM])
def test_remove_restores_modules_exactly(model, mode):
    components = model.modules()
    state = {name: {k: v.clone() for k, v in m.state_dict().items()} for name, m in components.items()}
    forwards_before = {id(m) for c in components.values() for m in c.modules() if "forward" in m.__dict__}
    device_before = model.device
    handle = enable_offload(model, mode, CPU)
    assert handle.active and hooked_modules(components.values())
    _run_all(model)
    handle.remove()
    handle.remove()  # idempotent
    assert not handle.active and handle.resident is None
    assert hooked_modules(components.values()) == []
    for component in components.values():
        for m in component.modules():
            assert not hasattr(m, "_old_forward")
            assert ("forward" in m.__dict__) == (id(m) in forwards_before)
    assert model.device == device_before
    for name, m in components.items():
        for key, value in m.state_dict().items():
            assert value.device == state[name][key].device and torch.equal(value, state[name][key]), key
    # And it can be enabled again (e.g. after a VAE swap).
    enable_offload(model, mode, CPU).remove()


def test_offload_sets_model_device_to_the_execution_device(model):
    model.device = torch.device("cpu")
    execution = torch.device("cpu", 0)  # a distinguishable CPU device object
    with enable_offload(model, OffloadMode.MEDVRAM, execution):
        assert model.device == execution
    assert model.device == torch.device("cpu")


def test_none_mode_changes_nothing(model):
    handle = enable_offload(model, OffloadMode.NONE, CPU)
    assert not handle.active and hooked_modules(model.modules().values()) == []
    handle.remove()


def test_enabling_twice_is_refused(model):
    with enable_offload(model, OffloadMode.MEDVRAM, CPU), \
            pytest.raises(ValueError, match="already has accelerate hooks"):
        enable_offload(model, OffloadMode.LOWVRAM, CPU)


def test_component_on_several_devices_is_refused(model):
    model.vae.decoder.conv_out.register_buffer("stray", torch.empty(1, device="meta"))
    with pytest.raises(ValueError, match=r"vae has tensors on several devices \(\['cpu', 'meta'\]\)"):
        enable_offload(model, OffloadMode.MEDVRAM, CPU)
    assert hooked_modules(model.modules().values()) == []


def test_bad_mode_is_named(model):
    with pytest.raises(TypeError, match="got 'medvram'"):
        enable_offload(model, "medvram", CPU)


# --- VAE decode ---------------------------------------------------------------------------------


def _nan_in(dtypes: tuple[torch.dtype, ...]):
    """Forward hook for the decoder's last conv: NaN in its output when it runs in one of `dtypes`
    (what an fp16 VAE overflowing does)."""
    def hook(module, inputs, output):
        if output.dtype in dtypes:
            output = output.clone()
            output[:, :, :4, :4] = float("nan")
        return output
    return hook


def _latents(seed: int = 0) -> torch.Tensor:
    return torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(seed))


def test_decode_fp32_needs_no_retry(model):
    result = decode_latents(model, _latents())
    assert not result.retried_in_fp32 and result.message is None
    assert result.images.shape == (1, 3, 64, 64) and result.images.dtype == torch.float32
    assert 0 <= result.images.min() and result.images.max() <= 1
    expected = model.vae.decode(_latents() / model.vae.config.scaling_factor).sample
    torch.testing.assert_close(result.images, ((expected + 1) / 2).clamp(0, 1))


def test_half_vae_nan_is_retried_in_fp32_and_dtype_restored(model):
    reference = decode_latents(model, _latents()).images
    model.vae.to(torch.bfloat16)
    weights = {k: v.clone() for k, v in model.vae.state_dict().items()}
    handle = model.vae.decoder.conv_out.register_forward_hook(_nan_in((torch.float16, torch.bfloat16)))
    try:
        result = decode_latents(model, _latents())
    finally:
        handle.remove()
    assert result.retried_in_fp32 and result.message == NAN_RETRY_MESSAGE
    assert "--no-half-vae" in result.message
    assert torch.isfinite(result.images).all()
    # The retry ran with bf16-rounded weights cast up to fp32, so it is close to, not equal to, fp32.
    torch.testing.assert_close(result.images, reference, atol=0.05, rtol=0)
    state = model.vae.state_dict()
    assert all(state[k].dtype == v.dtype and torch.equal(state[k], v) for k, v in weights.items())


def test_half_vae_without_nan_is_not_retried(model):
    model.vae.to(torch.bfloat16)
    result = decode_latents(model, _latents())
    assert not result.retried_in_fp32 and result.message is None
    assert next(model.vae.parameters()).dtype == torch.bfloat16


def test_nan_in_fp32_raises(model):
    model.vae.decoder.conv_out.register_forward_hook(_nan_in((torch.float32, torch.bfloat16)))
    with pytest.raises(VaeNaNError, match="in fp32"):
        decode_latents(model, _latents())
    model.vae.to(torch.bfloat16)
    with pytest.raises(VaeNaNError, match="again in fp32"):
        decode_latents(model, _latents())
    assert next(model.vae.parameters()).dtype == torch.bfloat16


def test_disabled_nan_check_returns_grey_for_nan(model):
    model.vae.decoder.conv_out.register_forward_hook(_nan_in((torch.float32,)))
    result = decode_latents(model, _latents(), nan_check=False)
    assert not result.retried_in_fp32
    assert torch.isfinite(result.images).all()
    assert torch.all(result.images[:, :, 0, 0] == 0.5)  # NaN → 0 in [-1, 1] → 0.5


def test_decode_under_medvram_moves_the_vae_in(model):
    expected = decode_latents(model, _latents()).images
    with enable_offload(model, OffloadMode.MEDVRAM, CPU) as handle:
        result = decode_latents(model, _latents())
        assert handle.resident is model.vae
    assert torch.equal(result.images, expected)


def test_decode_rejects_bad_latents(model):
    with pytest.raises(ValueError, match=r"got shape \(4, 8, 8\)"):
        decode_latents(model, torch.zeros(4, 8, 8))


# --- precision and memory -------------------------------------------------------------------------


@pytest.mark.parametrize("flags, unet_dtype, expected", [
    ((), torch.float16, torch.float32),  # --precision autocast (default)
    (("--precision", "half"), torch.float16, torch.float16),
    (("--precision", "half", "--upcast-sampling"), torch.float16, torch.float32),
    (("--precision", "half", "--upcast-sampling"), torch.bfloat16, torch.float32),
    (("--no-half",), torch.float32, torch.float32),
    (("--precision", "half"), torch.float32, torch.float32),  # CPU: fp32 weights
])
def test_sampling_dtype(flags, unet_dtype, expected):
    assert sampling_dtype(_args(*flags), unet_dtype) is expected


def test_sampling_dtype_names_a_bad_precision():
    with pytest.raises(ValueError, match="'quarter'"):
        sampling_dtype(Namespace(precision="quarter", upcast_sampling=False), torch.float16)


def test_cpu_memory_stats_report_rss():
    reset_peak_memory(CPU)
    block = torch.ones(32 * 1024 * 1024 // 4)  # 32 MiB, touched
    stats = memory_stats(CPU)
    del block
    assert stats.rss > 0 and stats.peak_allocated is None and stats.device_total is None
    if stats.peak_rss is not None:
        assert stats.peak_rss >= stats.rss
    assert stats.summary().startswith("RAM: ")


def test_cuda_summary_has_a1111_form():
    gib = 1024 ** 3
    stats = MemoryStats(device="cuda:0", rss=gib, peak_rss=None, peak_allocated=int(2.54 * gib),
                        peak_reserved=int(3.61 * gib), allocated=gib, reserved=gib,
                        device_used=int(4.5 * gib), device_total=24 * gib)
    assert stats.summary() == "A: 2.54 GB, R: 3.61 GB, Sys: 4.5/24.0 GB (18.8%)"


# --- on a GPU (skipped without CUDA): what the CPU stand-ins above cannot show ----------------------

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture
def cuda_model(loaded_sd1):
    from modules.library.model_loader import LoadOptions

    fp16 = LoadOptions(device=CUDA, dtype=torch.float16, vae_dtype=torch.float16)
    model = load_checkpoint(loaded_sd1.path, fp16)
    yield model
    del model
    torch.cuda.empty_cache()


def _devices(module: torch.nn.Module) -> set[str]:
    return {p.device.type for p in module.parameters()}


@torch.no_grad()
def _peak_of_all(model) -> tuple[int, dict[str, torch.Tensor]]:
    """(peak bytes allocated on the GPU, weights included, while every component runs once; outputs)"""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    x, t, context = (v.to(CUDA) for v in _unet_inputs(model))
    ids = torch.randint(0, 1000, (1, 77), generator=torch.Generator().manual_seed(1)).to(CUDA)
    outputs = {
        "text": model.text_encoders[0](ids, output_hidden_states=True).last_hidden_state,
        "unet": model.unet(x.half(), t.to(CUDA), encoder_hidden_states=context.half()).sample,
        "vae": model.vae.decode(x[:1].half()).sample,
    }
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated(), outputs


@needs_cuda
@pytest.mark.parametrize("mode", [OffloadMode.MEDVRAM, OffloadMode.LOWVRAM])
def test_cuda_offload_moves_weights_and_lowers_peak_vram(cuda_model, mode):
    model = cuda_model
    peak_plain, reference = _peak_of_all(model)
    # Measured after a first run: cuBLAS's workspace (32 MiB on an H100) comes from the same
    # allocator and would otherwise dwarf a tiny model's weights (seen on the H100: 34.6 MB vs 12.9 MB).
    before = torch.cuda.memory_allocated()
    weights = sum(p.numel() * p.element_size() for c in model.modules().values() for p in c.parameters())
    with enable_offload(model, mode, CUDA) as handle:
        # Weights waiting in RAM: most of them leave VRAM; only the resident UNet ends stay.
        assert before - torch.cuda.memory_allocated() > weights / 2
        assert _devices(model.vae) == {"cpu"} and _devices(model.text_encoders[0]) == {"cpu"}
        peak_offload, outputs = _peak_of_all(model)
        # The last unit used (the VAE) is on the GPU, everything else of the text encoder is not.
        assert _devices(model.vae) == {"cuda"} and _devices(model.text_encoders[0]) == {"cpu"}
        if mode is OffloadMode.MEDVRAM:
            assert _devices(model.unet) == {"cpu"}
        else:
            assert _devices(model.unet.conv_in) == {"cuda"} and _devices(model.unet.mid_block) == {"cpu"}
        assert handle.moves >= 3
    for name in reference:
        torch.testing.assert_close(outputs[name], reference[name], atol=1e-3, rtol=1e-3)
    # The same computation with only one unit's weights on the GPU at a time.
    assert peak_offload < peak_plain
    assert all(_devices(m) == {"cuda"} for m in model.modules().values())
    assert hooked_modules(model.modules().values()) == []


@needs_cuda
def test_cuda_xformers_probe_and_outputs(cuda_model):
    status = probe_xformers(CUDA)
    if not status.usable:
        pytest.skip(f"xformers not usable here: {status.detail}")
    _, reference = _peak_of_all(cuda_model)
    apply_attention_backend(cuda_model, AttentionBackend.XFORMERS)
    _, outputs = _peak_of_all(cuda_model)
    for name in ("unet", "vae"):
        torch.testing.assert_close(outputs[name], reference[name], atol=2e-2, rtol=2e-2)


@needs_cuda
def test_cuda_sdpa_no_mem_matches_sdpa(cuda_model):
    _, reference = _peak_of_all(cuda_model)
    apply_attention_backend(cuda_model, AttentionBackend.SDPA_NO_MEM)
    _, outputs = _peak_of_all(cuda_model)
    for name in ("unet", "vae"):
        torch.testing.assert_close(outputs[name], reference[name], atol=1e-2, rtol=1e-2)


@needs_cuda
def test_cuda_memory_stats_and_fp16_decode(cuda_model):
    reset_peak_memory(CUDA)
    result = decode_latents(cuda_model, _latents().to(CUDA))
    stats = memory_stats(CUDA)
    assert result.images.device.type == "cuda" and torch.isfinite(result.images).all()
    assert next(cuda_model.vae.parameters()).dtype == torch.float16
    assert stats.peak_allocated and stats.peak_allocated >= stats.allocated
    assert stats.summary().startswith("A: ") and "Sys: " in stats.summary()
