"""Shared pieces of the benchmarks: full-size random checkpoints, a local diffusers config folder
for the `from_single_file` baseline, and child-process measurement.

Benchmarks are not tests: they print tables and write JSON under bench/out/ (git-ignored), and the
figures go to docs/BENCHMARKS.md by hand, with the machine named.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = Path(os.environ.get("ATELIER_BENCH_DIR", REPO_ROOT / "bench" / "out"))

sys.path.insert(0, str(REPO_ROOT))

PIPELINES = {"sd1": "StableDiffusionPipeline", "sd2": "StableDiffusionPipeline", "sdxl": "StableDiffusionXLPipeline"}


def ensure_checkpoint(arch: str, size: str, seed: int, dtype_name: str = "float16") -> Path:
    """A random-weights checkpoint with the exact key set of a real file, written once and reused."""
    import torch

    from modules.library.synthetic_checkpoints import write_checkpoint

    OUT_DIR.mkdir(parents=True, exist_ok=True)
    path = OUT_DIR / f"{arch}-{size}-{dtype_name}-seed{seed}.safetensors"
    if not path.exists():
        started = time.perf_counter()
        write_checkpoint(path, arch, size=size, dtype=getattr(torch, dtype_name), seed=seed)
        print(f"wrote {path.name} ({path.stat().st_size / 1e9:.2f} GB) in {time.perf_counter() - started:.1f}s",
              flush=True)
    return path


def write_diffusers_config_folder(checkpoint: Path, folder: Path) -> Path:
    """The folder `from_single_file(config=...)` needs offline: model_index.json, each component's
    config and the tokenizer(s), made from Atelier's own configs for this checkpoint."""
    from transformers import CLIPTextConfig

    from modules.library.clip_tokenizer import load_clip_tokenizer
    from modules.library.model_config import build_model_config
    from modules.library.model_detection import ModelFamily, detect_architecture, normalize_keys
    from modules.library.safetensors_io import read_header

    if (folder / "model_index.json").exists():
        return folder
    shapes = read_header(checkpoint).shapes()
    canonical = normalize_keys(list(shapes), shapes)
    shapes = {c: shapes[f] for c, f in canonical.items()}
    arch = detect_architecture(shapes).architecture
    config = build_model_config(arch, shapes)
    sdxl = arch.family == ModelFamily.SDXL
    folder.mkdir(parents=True, exist_ok=True)

    def dump(sub: str, name: str, data: dict) -> None:
        (folder / sub).mkdir(exist_ok=True)
        (folder / sub / name).write_text(json.dumps(data, indent=2))

    dump("unet", "config.json", {"_class_name": "UNet2DConditionModel", **config.unet})
    dump("vae", "config.json", {"_class_name": "AutoencoderKL", **config.vae})
    dump("scheduler", "scheduler_config.json", {"_class_name": "EulerDiscreteScheduler", **config.scheduler})
    index = {
        "_class_name": "StableDiffusionXLPipeline" if sdxl else "StableDiffusionPipeline",
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
        "scheduler": ["diffusers", "EulerDiscreteScheduler"],
    }
    names = ["text_encoder", "text_encoder_2"]
    for name, spec in zip(names, config.text_encoders):
        text_config = CLIPTextConfig(**spec.config)
        text_config.architectures = ["CLIPTextModelWithProjection" if spec.with_projection else "CLIPTextModel"]
        (folder / name).mkdir(exist_ok=True)
        text_config.save_pretrained(folder / name)
        tokenizer_name = name.replace("text_encoder", "tokenizer")
        load_clip_tokenizer(spec.tokenizer_kind).save_pretrained(folder / tokenizer_name)
        index[name] = ["transformers", text_config.architectures[0]]
        index[tokenizer_name] = ["transformers", "CLIPTokenizer"]
    if not sdxl:
        index.update({"safety_checker": [None, None], "feature_extractor": [None, None],
                      "requires_safety_checker": False})
    else:
        index["force_zeros_for_empty_prompt"] = True
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    return folder


def peak_rss_bytes() -> int:
    """This process's peak RSS. VmHWM, not ru_maxrss: after fork + exec, ru_maxrss starts at the
    parent's RSS (Linux records the pre-exec image), which would inflate a child's figure."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def run_child(script: Path, args: list[str]) -> dict:
    """Run one measurement in a fresh process (so peak RSS is its own) and parse its JSON line."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    result = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, env=env)
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode != 0 or not lines:
        raise RuntimeError(f"child {args} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return json.loads(lines[-1])


def median(values: list[float]) -> float:
    return statistics.median(values)


def machine_description() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB RAM, {gpu}, torch {torch.__version__}"
