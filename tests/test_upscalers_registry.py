"""The upscaler list: A1111's names and order (None, Lanczos, Nearest, then by lower-cased name), its
folders (flag folder first, recursive, symlinks followed, hidden folders and broken links skipped),
the built-ins listed only when their download file is here, the enabled-model settings, the API rows,
the app context's owner and A1111's `shared.sd_upscalers` / `modules.upscaler` names."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from modules.upscaling.registry import REALESRGAN_BUILTINS, UnknownUpscalerError, UpscalerRegistry

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_ENABLED = {"realesrgan_enabled_models": ("R-ESRGAN 4x+", "R-ESRGAN 4x+ Anime6B"),
                   "dat_enabled_models": ("DAT x2", "DAT x3", "DAT x4")}


def touch(path: Path) -> Path:
    """Listing reads names only, so any bytes do."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not read by the listing")
    return path


def registry(models: Path, settings=None, extra: dict | None = None) -> UpscalerRegistry:
    extra = extra or {}
    current = dict(DEFAULT_ENABLED, **(settings or {}))
    return UpscalerRegistry(lambda family: [*extra.get(family, []), models / family], lambda: current)


def test_empty_folders_list_the_three_builtins(tmp_path):
    reg = registry(tmp_path)
    assert reg.names() == ["None", "Lanczos", "Nearest"]
    assert [row["scale"] for row in (e.api_row() for e in reg.entries())] == [4, 4, 4]


def test_model_files_are_listed_by_stem_sorted_by_lower_cased_name(tmp_path):
    for name in ("b.pth", "A.safetensors", "c10.pt", "c2.pth", "notes.txt", "model.ckpt"):
        touch(tmp_path / "ESRGAN" / name)
    touch(tmp_path / "HAT" / "Zeta.pth")
    touch(tmp_path / "SwinIR" / "alpha.pth")
    # A1111 sorts the whole list by name.lower() (plain string order: "c10" before "c2")
    assert registry(tmp_path).names() == ["None", "Lanczos", "Nearest", "A", "alpha", "b", "c10", "c2", "Zeta"]


def test_folders_are_walked_recursively_following_links_skipping_hidden_folders_and_broken_links(tmp_path):
    esrgan = tmp_path / "ESRGAN"
    touch(esrgan / "sub" / "deep" / "nested.pth")
    touch(esrgan / ".hidden" / "secret.pth")
    touch(tmp_path / "elsewhere" / "linked.pth")
    os.symlink(tmp_path / "elsewhere", esrgan / "link")
    os.symlink(tmp_path / "missing.pth", esrgan / "broken.pth")
    names = registry(tmp_path).names()
    assert "nested" in names and "linked" in names
    assert "secret" not in names and "broken" not in names


def test_realesrgan_builtins_need_their_download_file_and_follow_the_enabled_setting(tmp_path):
    folder = tmp_path / "RealESRGAN"
    for name in ("RealESRGAN_x4plus.pth", "RealESRGAN_x2plus.pth", "realesr-animevideov3.pth", "mine.pth"):
        touch(folder / name)
    # 4x+ Anime6B is enabled by default but its file is absent; 2x+ and AnimeVideo are present but
    # not enabled. Their files are not listed by stem either: they belong to the built-in names.
    assert registry(tmp_path).names()[3:] == ["mine", "R-ESRGAN 4x+"]
    enabled = registry(tmp_path, {"realesrgan_enabled_models": ("R-ESRGAN 2x+", "R-ESRGAN AnimeVideo")})
    assert enabled.names()[3:] == ["mine", "R-ESRGAN 2x+", "R-ESRGAN AnimeVideo"]
    two = enabled.get("R-ESRGAN 2x+")
    assert (two.family, two.path, two.scale) == ("RealESRGAN", folder / "RealESRGAN_x2plus.pth", 2)
    assert enabled.get("R-ESRGAN AnimeVideo").scale == 4


def test_dat_lists_files_by_stem_and_the_enabled_builtins_whose_file_is_here(tmp_path):
    touch(tmp_path / "DAT" / "DAT_x2.pth")
    touch(tmp_path / "DAT" / "my-dat.safetensors")
    reg = registry(tmp_path)
    assert reg.names()[3:] == ["DAT x2", "DAT_x2", "my-dat"]
    assert (reg.get("DAT x2").scale, reg.get("DAT_x2").scale, reg.get("my-dat").scale) == (2, None, None)
    assert reg.get("DAT x2").path == reg.get("DAT_x2").path
    assert registry(tmp_path, {"dat_enabled_models": ()}).names()[3:] == ["DAT_x2", "my-dat"]


def test_swinir_scunet_and_esrgan_downloads_take_a1111s_names(tmp_path):
    touch(tmp_path / "SwinIR" / "SwinIR_4x.pth")
    touch(tmp_path / "ScuNET" / "ScuNET.pth")
    touch(tmp_path / "ScuNET" / "scunet_color_real_psnr.pth")
    touch(tmp_path / "ESRGAN" / "ESRGAN_4x.pth")
    reg = registry(tmp_path)
    assert reg.names()[3:] == ["ESRGAN_4x", "ScuNET GAN", "ScuNET PSNR", "SwinIR 4x"]
    assert reg.get("ScuNET PSNR").path.name == "scunet_color_real_psnr.pth"


def test_api_rows_have_a1111s_fields(tmp_path):
    path = touch(tmp_path / "ESRGAN" / "4x-Thing.pth")
    touch(tmp_path / "RealESRGAN" / "RealESRGAN_x4plus.pth")
    touch(tmp_path / "HAT" / "hat.pth")
    rows = {row["name"]: row for row in (e.api_row() for e in registry(tmp_path).entries())}
    assert rows["None"] == {"name": "None", "model_name": None, "model_path": None, "model_url": None, "scale": 4}
    assert rows["4x-Thing"] == {"name": "4x-Thing", "model_name": "ESRGAN_4x", "model_path": str(path),
                                "model_url": None, "scale": 4}
    assert rows["R-ESRGAN 4x+"]["model_name"] is None and rows["hat"]["model_name"] is None
    json.dumps(rows)  # what /sdapi/v1/upscalers sends


def test_the_flag_folder_comes_first_and_a_duplicate_name_keeps_the_first(tmp_path, caplog):
    flag = tmp_path / "flagged"
    first = touch(flag / "same.pth")
    touch(tmp_path / "ESRGAN" / "same.pth")
    touch(tmp_path / "DAT" / "same.safetensors")
    touch(tmp_path / "ESRGAN" / "Lanczos.pth")  # a file cannot replace a built-in either
    with caplog.at_level(logging.WARNING, logger="modules.upscaling.registry"):
        reg = registry(tmp_path, extra={"ESRGAN": [flag]})
        names = reg.names()
    assert names.count("same") == 1 and names.count("Lanczos") == 1
    assert reg.get("same").path == first
    assert reg.get("Lanczos").path is None
    assert sum("has the name of" in r.getMessage() for r in caplog.records) == 3
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="modules.upscaling.registry"):
        reg.refresh()  # a page load rescans: the same clashes are not logged again
        touch(tmp_path / "HAT" / "same.pth")
        reg.refresh()  # a new one is
    clashes = [r.getMessage() for r in caplog.records if "has the name of" in r.getMessage()]
    assert len(clashes) == 1 and str(tmp_path / "HAT" / "same.pth") in clashes[0]


def test_an_unknown_name_is_refused_with_the_choices(tmp_path):
    touch(tmp_path / "ESRGAN" / "real.pth")
    with pytest.raises(UnknownUpscalerError, match=r"could not find upscaler named 'fake'.*None, Lanczos, Nearest, real"):
        registry(tmp_path).get("fake")



def test_a1111s_downloadable_names_say_where_their_file_goes_or_which_setting_hides_it(tmp_path):
    reg = registry(tmp_path, settings={"realesrgan_enabled_models": ["R-ESRGAN 4x+"]})
    with pytest.raises(UnknownUpscalerError, match=r"RealESRGAN_x4plus\.pth .*models/RealESRGAN"):
        reg.get("R-ESRGAN 4x+")
    touch(tmp_path / "RealESRGAN" / "RealESRGAN_x4plus_anime_6B.pth")
    reg.refresh()
    with pytest.raises(UnknownUpscalerError, match=r"realesrgan_enabled_models hides it"):
        reg.get("R-ESRGAN 4x+ Anime6B")


def test_refresh_sees_new_and_removed_files(tmp_path):
    reg = registry(tmp_path)
    added = touch(tmp_path / "ESRGAN" / "new.pth")
    assert "new" not in reg.names()
    reg.refresh()
    assert "new" in reg.names()
    added.unlink()
    reg.refresh()
    assert "new" not in reg.names()


def test_realesrgan_models_route_rows_list_all_six_whatever_is_enabled(tmp_path):
    local = touch(tmp_path / "RealESRGAN" / "RealESRGAN_x2plus.pth")
    rows = registry(tmp_path, {"realesrgan_enabled_models": ()}).realesrgan_models()
    assert [row["name"] for row in rows] == [b.name for b in REALESRGAN_BUILTINS]
    by_name = {row["name"]: row for row in rows}
    assert by_name["R-ESRGAN 2x+"] == {"name": "R-ESRGAN 2x+", "path": str(local), "scale": 2}
    assert by_name["R-ESRGAN 4x+"]["path"].endswith("/RealESRGAN_x4plus.pth")
    assert by_name["R-ESRGAN 4x+"]["path"].startswith("https://")


def test_listing_imports_no_torch(tmp_path):
    touch(tmp_path / "ESRGAN" / "a.pth")
    touch(tmp_path / "RealESRGAN" / "RealESRGAN_x4plus.pth")
    probe = (
        "import sys, json\n"
        "from pathlib import Path\n"
        "from modules.upscaling.registry import UpscalerRegistry\n"
        "from modules.upscaling.service import Upscalers\n"
        f"root = Path({str(tmp_path)!r})\n"
        "reg = UpscalerRegistry(lambda f: [root / f], lambda: {'realesrgan_enabled_models': ['R-ESRGAN 4x+'],"
        " 'dat_enabled_models': []})\n"
        "Upscalers(reg, lambda: {})\n"
        "print(json.dumps({'names': reg.names(), 'torch': 'torch' in sys.modules}))\n")
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out == {"names": ["None", "Lanczos", "Nearest", "a", "R-ESRGAN 4x+"], "torch": False}


def test_the_app_context_owns_the_upscalers_and_refreshes_them(tmp_path):
    from modules.extension_host.environment import app_scope
    from modules.serving.app_context import AppContext
    from modules.serving.cmd_args import parse_args

    flag = tmp_path / "my-esrgan"
    touch(flag / "flagged.pth")
    context = AppContext.from_args(parse_args(["--data-dir", str(tmp_path), "--no-demo-checkpoint",
                                               "--esrgan-models-path", str(flag)]))
    try:
        assert context.engine.upscalers is context.upscalers
        assert "flagged" in context.upscalers.registry.names()
        touch(tmp_path / "models" / "SwinIR" / "later.pth")
        context.refresh_listings()
        assert "later" in context.upscalers.registry.names()

        from modules import shared
        from modules.upscaler import Upscaler, UpscalerData

        with app_scope(context):
            entries = shared.sd_upscalers
        assert [e.name for e in entries] == context.upscalers.registry.names()
        assert all(isinstance(e, UpscalerData) and isinstance(e.scaler, Upscaler) for e in entries)
        flagged = next(e for e in entries if e.name == "flagged")
        assert (flagged.data_path, flagged.scale) == (str(flag / "flagged.pth"), 4)
        assert flagged.scaler.scalers[0].name == "flagged" and flagged.scaler.name == "ESRGAN"
        assert [e.data_path for e in entries[:3]] == [None, None, None]

        # extensions upscale through the entry's scaler, as in A1111: the app's service does the work
        from PIL import Image

        image = Image.new("RGB", (16, 24), (200, 10, 30))
        image.putpixel((3, 5), (0, 255, 0))
        lanczos = entries[1]
        with app_scope(context):
            out = lanczos.scaler.upscale(image, 2, lanczos.data_path)
        assert out.tobytes() == image.resize((32, 48), Image.Resampling.LANCZOS).tobytes()
        from modules.upscaler import UpscalerLanczos, UpscalerNearest, UpscalerNone

        assert [[d.name for d in cls().scalers] for cls in (UpscalerNone, UpscalerLanczos, UpscalerNearest)] == \
            [["None"], ["Lanczos"], ["Nearest"]]
    finally:
        context.jobs.shutdown()
