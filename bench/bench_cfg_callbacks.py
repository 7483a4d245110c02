"""What A1111's CFG callbacks cost per generation: none registered (the denoiser's plain path), and
no-op `on_cfg_denoiser` + `on_cfg_denoised` + `on_cfg_after_cfg` callbacks (params objects built and
checked at every model evaluation).

    python bench/bench_cfg_callbacks.py [--runs 5] [--steps 20] [--size 64]

The tiny synthetic SD1 model makes the UNet cheap, so the callbacks' share is far larger than on a
real model: an upper bound. The two modes alternate within each round; median of --runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT_DIR, machine_description, median  # noqa: E402

NOOP_EXTENSION = """
from modules import script_callbacks

script_callbacks.on_cfg_denoiser(lambda params: None)
script_callbacks.on_cfg_denoised(lambda params: None)
script_callbacks.on_cfg_after_cfg(lambda params: None)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()

    import torch

    from modules.extension_host.extensions import ExtensionFolders, load_extensions, parser_with_preloads
    from modules.generation.engine import GenerationRequest, generate
    from modules.library.model_loader import load_checkpoint
    from modules.library.synthetic_checkpoints import write_checkpoint
    from modules.serving.settings import SettingsStore

    class Engine:
        def __init__(self, model):
            self.model = model

        def generate(self, request, control=None, *, save=None, hooks=None):
            return generate(self.model, request, control=control, hooks=hooks)

    root = Path(tempfile.mkdtemp(prefix="bench-cfg-"))
    model = load_checkpoint(write_checkpoint(root / "tiny.safetensors", "sd1", dtype=torch.float32))
    runtimes = {}
    for mode, source in (("no CFG callbacks", None), ("3 no-op CFG callbacks", NOOP_EXTENSION)):
        data = root / mode.replace(" ", "-")
        (data / "builtin").mkdir(parents=True)
        if source:
            (data / "extensions" / "noop" / "scripts").mkdir(parents=True)
            (data / "extensions" / "noop" / "scripts" / "noop.py").write_text(source, encoding="utf-8")
        argv = ["--data-dir", str(data)]
        runtimes[mode] = load_extensions(SettingsStore(data / "config.json"), parser_with_preloads(argv).parse_args(argv),
                                         ExtensionFolders(user=data / "extensions", builtin=data / "builtin"))
    request = GenerationRequest(prompt="a red cat AND a dog", negative_prompt="blurry", steps=args.steps,
                                width=args.size, height=args.size, sampler_name="Euler", seed=1)
    engine = Engine(model)
    for runtime in runtimes.values():  # warm-up
        runtime.scripts.generate(engine, request)
    times: dict[str, list[float]] = {mode: [] for mode in runtimes}
    for _ in range(args.runs):
        for mode, runtime in runtimes.items():
            started = time.perf_counter()
            runtime.scripts.generate(engine, request)
            times[mode].append(time.perf_counter() - started)
    machine = machine_description()
    print(f"{machine}; {args.size}x{args.size}, {args.steps} steps Euler, 2 AND parts, median of {args.runs}")
    base = median(times["no CFG callbacks"])
    for mode, values in times.items():
        print(f"{mode:24s} {median(values) * 1000:8.1f} ms  ({median(values) / base:.3f}x)")
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    (OUT_DIR / "cfg_callbacks.json").write_text(json.dumps({"machine": machine, "times": times}, indent=2))


if __name__ == "__main__":
    main()
