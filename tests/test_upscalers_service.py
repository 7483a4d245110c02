"""`Upscalers`: files read through spandrel (tiny random models in the real key layouts, pickles only
through the safe unpickler), A1111's upscale arithmetic (multiples of 8, up to 3 passes, LANCZOS to
the target), Lanczos/Nearest as Pillow's resize, the pixel limit before any work, errors that say
what a file is, the model cache (LRU, free) and the device rule."""

from __future__ import annotations

import argparse
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from modules.library.safe_unpickle import UnsafeCheckpointError
from modules.upscaling.loader import UpscalerDevice, UpscalerModelError, build_model, read_state_dict
from modules.upscaling.registry import UnknownUpscalerError, UpscalerRegistry
from modules.upscaling.service import UpscaleTooLargeError, Upscalers
from modules.upscaling.synthetic import (compact_state_dict, rrdbnet_state_dict, swinir_state_dict,
                                         write_state_dict)

SETTINGS = {"realesrgan_enabled_models": ("R-ESRGAN 4x+",), "dat_enabled_models": ("DAT x2",),
            "upscale_max_pixels": 8192 * 8192, "upscaler_models_limit": 1,
            "ESRGAN_tile": 0, "ESRGAN_tile_overlap": 8, "DAT_tile": 0, "DAT_tile_overlap": 8,
            "SWIN_tile": 192, "SWIN_tile_overlap": 8, "SCUNET_tile": 256, "SCUNET_tile_overlap": 8}


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("upscalers")
    write_state_dict(root / "ESRGAN" / "rrdb-new.pth", rrdbnet_state_dict(layout="new"), wrap="params_ema")
    write_state_dict(root / "ESRGAN" / "rrdb-old.pth", rrdbnet_state_dict(layout="old", seed=1))
    write_state_dict(root / "ESRGAN" / "rrdb-2x.safetensors", rrdbnet_state_dict(layout="old", scale=2, seed=2))
    write_state_dict(root / "RealESRGAN" / "RealESRGAN_x4plus.pth", rrdbnet_state_dict(seed=3), wrap="params_ema")
    write_state_dict(root / "ESRGAN" / "compact.safetensors", compact_state_dict(seed=4))
    write_state_dict(root / "SwinIR" / "swin.pth", swinir_state_dict())
    return root


def make_service(root: Path, **settings) -> Upscalers:
    current = dict(SETTINGS, **settings)
    return Upscalers(UpscalerRegistry(lambda family: [root / family], lambda: current), lambda: current)


def picture(width: int, height: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


class CountingUpscalers(Upscalers):
    """Counts model passes (A1111's do_upscale calls)."""

    passes = 0

    def _model_pass(self, image, entry, control):
        self.passes += 1
        return super()._model_pass(image, entry, control)


@pytest.mark.parametrize("file, wrap, architecture, scale", [
    ("a.pth", "params_ema", "ESRGAN", 4),  # Real-ESRGAN's own files: BasicSR layout inside params_ema
    ("b.safetensors", None, "ESRGAN", 4),
])
def test_spandrel_identifies_the_basicsr_rrdbnet_layout(tmp_path, file, wrap, architecture, scale):
    path = write_state_dict(tmp_path / file, rrdbnet_state_dict(layout="new"), wrap=wrap)
    model = build_model(read_state_dict(path), path)
    assert (model.architecture.name, model.scale) == (architecture, scale)


@pytest.mark.parametrize("scale", [1, 2, 4, 8])
def test_spandrel_identifies_the_old_esrgan_layout_at_each_scale(tmp_path, scale):
    path = write_state_dict(tmp_path / "old.pth", rrdbnet_state_dict(layout="old", scale=scale))
    model = build_model(read_state_dict(path), path)
    assert (model.architecture.name, model.scale) == ("ESRGAN", scale)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
@pytest.mark.parametrize("make, architecture, scale", [
    (lambda: compact_state_dict(), "RealESRGAN Compact", 4),
    (lambda: compact_state_dict(scale=2), "RealESRGAN Compact", 2),
    (lambda: swinir_state_dict(), "SwinIR", 4),
    (lambda: swinir_state_dict(scale=2), "SwinIR", 2),
])
def test_spandrel_identifies_compact_and_swinir_files(tmp_path, suffix, make, architecture, scale):
    path = write_state_dict(tmp_path / f"model{suffix}", make())
    model = build_model(read_state_dict(path), path)
    assert (model.architecture.name, model.scale) == (architecture, scale)


@pytest.mark.parametrize("name, scale, size", [
    ("rrdb-new", 4, (80, 48)),          # a 4× model at 4×: one pass
    ("rrdb-old", 4, (80, 48)),
    ("compact", 4, (80, 48)),
    ("R-ESRGAN 4x+", 4, (80, 48)),
    ("rrdb-new", 2, (40, 24)),          # 4× made, then LANCZOS down to 2×
    ("rrdb-2x", 4, (80, 48)),           # a 2× model at 4×: two passes
    ("rrdb-new", 2.5, (48, 24)),        # 50×30 → floor(50/8)·8 × floor(30/8)·8
    ("swin", 4, (80, 48)),
])
def test_the_result_is_the_scale_rounded_down_to_multiples_of_8(models, name, scale, size):
    width, height = size
    image = picture(20, 12)
    out = make_service(models).upscale(image, name, scale)
    assert out.size == (int(20 * scale // 8 * 8), int(12 * scale // 8 * 8)) == size
    assert out.mode == "RGB"


def test_times_8_with_a_4x_model_runs_two_passes_and_a_2x_model_three(models):
    service = CountingUpscalers(make_service(models).registry, lambda: SETTINGS)
    assert service.upscale(picture(8, 8), "rrdb-new", 8).size == (64, 64)
    assert service.passes == 2  # 8 → 32 → 128, then LANCZOS to 64
    service.passes = 0
    assert service.upscale(picture(8, 8), "rrdb-2x", 8).size == (64, 64)
    assert service.passes == 3  # 8 → 16 → 32 → 64
    service.passes = 0
    assert service.upscale(picture(8, 8), "rrdb-2x", 16).size == (128, 128)
    assert service.passes == 3  # A1111 stops after 3 passes (64) and resizes the rest with LANCZOS


def test_the_model_output_is_the_models_not_a_resize(models):
    image = picture(16, 16)
    out = make_service(models).upscale(image, "rrdb-new", 4)
    assert out.size == (64, 64)
    assert np.abs(np.asarray(out, dtype=float) - np.asarray(image.resize((64, 64), Image.LANCZOS), dtype=float)).mean() > 5


@pytest.mark.parametrize("name, resample", [("Lanczos", Image.LANCZOS), ("Nearest", Image.NEAREST)])
def test_lanczos_and_nearest_are_pillows_resize(models, name, resample):
    service = make_service(models)
    image = picture(16, 24)
    assert np.array_equal(np.asarray(service.upscale(image, name, 2)), np.asarray(image.resize((32, 48), resample)))
    # 13×11 ×2 = 26×22 by the resample, then LANCZOS to the multiples of 8 (24×16), as A1111
    odd = picture(13, 11)
    expected = odd.resize((26, 22), resample).resize((24, 16), Image.LANCZOS)
    assert np.array_equal(np.asarray(service.upscale(odd, name, 2)), np.asarray(expected))


def test_none_only_resizes_to_the_target(models):
    image = picture(16, 24)
    assert np.array_equal(np.asarray(make_service(models).upscale(image, "None", 2)),
                          np.asarray(image.resize((32, 48), Image.LANCZOS)))


def test_resize_upscales_a_smaller_image_then_fits_it_exactly(models):
    service = make_service(models)
    image = picture(20, 10)
    out = service.resize(image, 50, 40, "compact")  # scale max(50/20, 40/10) = 4 → 80×40, then 50×40
    assert out.size == (50, 40)
    expected = service.upscale(image, "compact", 4).resize((50, 40), Image.LANCZOS)
    assert np.array_equal(np.asarray(out), np.asarray(expected))
    assert np.array_equal(np.asarray(service.resize(image, 50, 40, "None")),
                          np.asarray(image.resize((50, 40), Image.LANCZOS)))
    big = picture(64, 64)  # not smaller than the target: no upscaler, LANCZOS down
    assert np.array_equal(np.asarray(service.resize(big, 32, 32, "rrdb-new")),
                          np.asarray(big.resize((32, 32), Image.LANCZOS)))
    assert service.loaded() == [models / "ESRGAN" / "compact.safetensors"]


def test_an_unknown_name_is_refused(models):
    with pytest.raises(UnknownUpscalerError, match="could not find upscaler named 'ESRGAN_4x'"):
        make_service(models).upscale(picture(8, 8), "ESRGAN_4x", 2)


def test_the_pixel_limit_refuses_before_the_model_is_loaded(tmp_path):
    (tmp_path / "ESRGAN").mkdir()
    (tmp_path / "ESRGAN" / "junk.pth").write_bytes(b"would fail to load")
    service = make_service(tmp_path, upscale_max_pixels=100 * 100)
    with pytest.raises(UpscaleTooLargeError, match=r"128×128 = 16,384 pixels.*10,000.*upscale_max_pixels"):
        service.upscale(picture(32, 32), "junk", 4)
    assert service.loaded() == []
    with pytest.raises(UpscaleTooLargeError):
        service.resize(picture(32, 32), 200, 200, "junk")
    service.check_size(100, 100)  # at the limit is fine
    with pytest.raises(UpscaleTooLargeError):
        service.check_size(101, 100)


def test_a_pass_larger_than_the_limit_is_refused_before_it_runs(models):
    # 2× of 40×40 is 80×80 (under 90²), but a 4× model makes 160×160 first
    service = make_service(models, upscale_max_pixels=90 * 90)
    with pytest.raises(UpscaleTooLargeError, match="One pass of rrdb-new"):
        service.upscale(picture(40, 40), "rrdb-new", 2)


def test_a_file_spandrel_does_not_know_names_its_keys_and_the_architectures(tmp_path):
    from safetensors.torch import save_file

    folder = tmp_path / "ESRGAN"
    folder.mkdir()
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4, 3, 3),
               "first_stage_model.decoder.conv_in.weight": torch.zeros(4, 4, 3, 3)}, folder / "sd.safetensors")
    save_file({f"random.key{i}": torch.zeros(2) for i in range(10)}, folder / "random.safetensors")
    service = make_service(tmp_path)
    with pytest.raises(UpscalerModelError) as error:
        service.upscale(picture(16, 16), "sd", 2)
    text = str(error.value)
    assert "sd.safetensors" in text and "model.diffusion_model.input_blocks.0.0.weight [4, 4, 3, 3]" in text
    assert "Stable Diffusion checkpoint" in text
    assert "Supported architectures:" in text and "ESRGAN" in text and "SwinIR" in text and "DAT" in text
    with pytest.raises(UpscalerModelError, match=r"random\.safetensors.*random\.key0.*10 keys in all.*ESRGAN"):
        service.upscale(picture(16, 16), "random", 2)
    assert service.loaded() == []


def test_a_pickle_with_a_forbidden_global_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    folder = tmp_path / "ESRGAN"
    folder.mkdir()
    (folder / "evil.pth").write_bytes(pickle.dumps({"params_ema": Payload()}, protocol=2))
    with pytest.raises(UnsafeCheckpointError, match="evil.pth") as error:
        make_service(tmp_path).upscale(picture(16, 16), "evil", 2)
    assert any("system" in name for name in error.value.forbidden)
    assert not marker.exists()


def test_truncated_files_give_a_clear_error(tmp_path, models):
    folder = tmp_path / "ESRGAN"
    folder.mkdir()
    for source in (models / "ESRGAN" / "rrdb-old.pth", models / "ESRGAN" / "compact.safetensors"):
        data = source.read_bytes()
        (folder / source.name).write_bytes(data[:len(data) // 2])
    service = make_service(tmp_path)
    for name, file in (("rrdb-old", "rrdb-old.pth"), ("compact", "compact.safetensors")):
        with pytest.raises(ValueError, match=file):
            service.upscale(picture(16, 16), name, 2)
    assert service.loaded() == []


def test_models_are_cached_least_recently_used_first_out_and_freed(models):
    limit = {"upscaler_models_limit": 2}
    current = dict(SETTINGS, **limit)
    service = Upscalers(UpscalerRegistry(lambda f: [models / f], lambda: current), lambda: current)
    new, old, compact = (models / "ESRGAN" / n for n in ("rrdb-new.pth", "rrdb-old.pth", "compact.safetensors"))
    image = picture(8, 8)
    service.upscale(image, "rrdb-new", 4)
    first = service.load(service.registry.get("rrdb-new"))
    service.upscale(image, "rrdb-old", 4)
    assert service.loaded() == [new, old]
    assert service.load(service.registry.get("rrdb-new")) is first  # cached: the same model object
    assert service.loaded() == [old, new]
    service.upscale(image, "compact", 4)
    assert service.loaded() == [new, compact]  # rrdb-old was the least recently used
    current["upscaler_models_limit"] = 0
    service.free()
    assert service.loaded() == []
    service.upscale(image, "compact", 4)
    assert service.loaded() == []  # 0: loaded for the image, not kept


class Interrupted:
    interrupted = True


def test_an_interrupt_between_tiles_keeps_the_input_image(models):
    service = make_service(models, ESRGAN_tile=16, ESRGAN_tile_overlap=4)
    image = picture(40, 40)
    out = service.upscale(image, "rrdb-new", 2, control=Interrupted())
    # the pass gives back its input; A1111 then resizes it to the target like any result
    assert np.array_equal(np.asarray(out), np.asarray(image.resize((80, 80), Image.LANCZOS)))


def test_tiled_and_untiled_service_runs_agree_away_from_the_seams(models):
    image = picture(48, 24, seed=5)
    whole = np.asarray(make_service(models, ESRGAN_tile=0).upscale(image, "compact", 4), dtype=int)
    tiled = np.asarray(make_service(models, ESRGAN_tile=32, ESRGAN_tile_overlap=8).upscale(image, "compact", 4),
                       dtype=int)
    # tiles at x = 0 and x = 16 (ceil(40/24) = 2); the compact model reaches 4 input pixels, so
    # input columns 0..11 and 36..47 are far from every tile border they depend on. The image is
    # 24 high, less than a tile: A1111 pads each tile with black rows below it, which the model sees,
    # so only input rows 0..19 are far from that edge too.
    rows = slice(0, 20 * 4)
    assert np.abs(tiled[rows, :12 * 4] - whole[rows, :12 * 4]).max() <= 1
    assert np.abs(tiled[rows, 36 * 4:] - whole[rows, 36 * 4:]).max() <= 1


@pytest.mark.parametrize("flags, cuda, expected", [
    ([], False, UpscalerDevice("cpu", False)),
    ([], True, UpscalerDevice("cuda", True)),
    (["--no-half"], True, UpscalerDevice("cuda", False)),
    (["--precision", "full"], True, UpscalerDevice("cuda", False)),
    (["--use-cpu", "all"], True, UpscalerDevice("cpu", False)),
    (["--device-id", "1"], True, UpscalerDevice("cuda:1", True)),
])
def test_the_device_follows_the_sd_models_flags(flags, cuda, expected):
    from modules.serving.cmd_args import parse_args

    args: argparse.Namespace = parse_args(flags)
    assert UpscalerDevice.from_args(args, cuda_available=cuda) == expected


def test_models_see_a1111s_bgr_channel_order():
    """A1111 feeds upscaler models BGR (`pil_image_to_torch_bgr`) and flips the output back; so does
    Atelier, so a model gives the pixels A1111 users know."""
    import numpy as np

    from modules.upscaling.service import image_to_tensor, tensor_to_image

    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (6, 5, 3), dtype=np.uint8))
    tensor = image_to_tensor(image, "cpu", torch.float32)
    rgb = np.asarray(image)
    assert np.allclose(tensor[0, 0].numpy() * 255, rgb[:, :, 2], atol=1e-3)  # blue first
    assert np.allclose(tensor[0, 2].numpy() * 255, rgb[:, :, 0], atol=1e-3)
    as_8bit = (tensor * 255).round().to(torch.uint8)
    assert np.array_equal(np.asarray(tensor_to_image(as_8bit)), rgb)
