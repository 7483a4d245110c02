"""Settings from the Settings tab reach the engine: saving format and folders, infotext fields."""

from __future__ import annotations

import torch

from modules.library.checkpoints import CheckpointRegistry
from modules.library.hashes import HashCache
from modules.outputs.infotext import parse_generation_parameters
from modules.library.model_loader import LoadOptions
from modules.library.model_manager import ModelManager
from modules.generation.engine import GenerationRequest, Txt2ImgEngine
from modules.serving.settings import SettingsStore
from modules.library.synthetic_checkpoints import write_checkpoint

REQUEST = GenerationRequest(prompt="a cat", steps=2, width=64, height=64, seed=3, sampler_name="Euler")


def make_engine(tmp_path):
    folder = tmp_path / "Stable-diffusion"
    folder.mkdir()
    write_checkpoint(folder / "a.safetensors", "sd1", dtype=torch.float32, seed=0)
    registry = CheckpointRegistry([folder], HashCache(tmp_path / "cache.json"))
    registry.refresh()
    models = ModelManager(registry, LoadOptions())
    models.load("a")
    store = SettingsStore(tmp_path / "config.json")
    return Txt2ImgEngine(models, store, save_dir=str(tmp_path / "data")), store


def test_saving_settings_choose_format_and_folder(tmp_path):
    engine, store = make_engine(tmp_path)
    store.apply({"samples_format": "jpg", "outdir_txt2img_samples": str(tmp_path / "mine"), "save_to_dirs": False})
    engine.generate(REQUEST, save=True)
    saved = list((tmp_path / "mine").iterdir())
    assert [p.suffix for p in saved] == [".jpg"]


def test_infotext_settings_drop_model_fields(tmp_path):
    engine, store = make_engine(tmp_path)
    with_all = parse_generation_parameters(engine.generate(REQUEST, save=False).infotexts[0])
    assert with_all["Model"] == "a" and "Model hash" in with_all
    store.apply({"add_model_hash_to_info": False, "add_model_name_to_info": False})
    without = engine.generate(REQUEST, save=False).infotexts[0]
    assert "Model hash:" not in without and "Model:" not in without
