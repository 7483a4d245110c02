"""What the cards cost: rendering the extra-networks panel with and without A1111's card files beside
each model, and answering a `/file=` request for a model's preview beside one for an output image.

    python bench/bench_extra_network_cards.py [--loras 500] [--runs 5]

Two LoRA folders of `--loras` tiny LoRA files each: one bare, one where every LoRA has a user
metadata `<name>.json` (a Civitai-sized HTML description, activation text, preferred weight) and a
`<name>.preview.png`. Measured, alternating within each run, median of `--runs`:
  render bare / render carded   `list_networks` + `render_html` (what a page load and the refresh
                                 button do): the cards read each model's .json and look for its preview;
  /file= output / /file= preview one GET through the real route (FastAPI TestClient) of an image in the
                                 output folder (a served root) and of a LoRA's preview (found through
                                 the listed models). Per request, mean of 200 requests.
Writes bench/out/bench_extra_network_cards.json.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT_DIR, machine_description  # noqa: E402

DESCRIPTION = ("<p>This LoRA adds <strong>fine detail</strong> to skin, fabric and hair.</p>"
               "<ul><li>Weight 0.4–0.8</li><li>Works with most SD 1.5 checkpoints</li></ul>" * 8)


def make_folder(root: Path, count: int, carded: bool) -> Path:
    import torch
    from PIL import Image

    from modules.library.safetensors_io import save_file

    root.mkdir(parents=True)
    png = io.BytesIO()
    Image.new("RGB", (512, 768), (120, 80, 200)).save(png, format="PNG")
    for index in range(count):
        path = root / f"lora_{index:04d}.safetensors"
        save_file({"lora_unet_x.lora_down.weight": torch.zeros(1, 4)}, path)
        if carded:
            (root / f"lora_{index:04d}.json").write_text(json.dumps({
                "description": DESCRIPTION, "activation text": f"tw{index}, style", "preferred weight": 0.7,
                "sd version": "SD1", "notes": "Source: https://civitai.com/models/1"}, indent=4))
            (root / f"lora_{index:04d}.preview.png").write_bytes(png.getvalue())
    return root


def context_for(data: Path, lora_dir: Path):
    from modules.networks.hypernetwork_files import HypernetworkRegistry
    from modules.networks.lora import LoraRegistry
    from modules.networks.textual_inversion import EmbeddingDatabase
    from modules.serving.cmd_args import parse_args
    from modules.serving.paths import Paths
    from modules.serving.settings import SettingsStore

    args = parse_args(["--data-dir", str(data)])
    loras = LoraRegistry([lora_dir])
    loras.refresh()
    (data / "hn").mkdir(exist_ok=True)
    hypernetworks = HypernetworkRegistry(data / "hn")
    hypernetworks.refresh()
    return SimpleNamespace(args=args, paths=Paths.from_args(args), settings=SettingsStore(data / "config.json"),
                           loras=loras, hypernetworks=hypernetworks, embeddings=EmbeddingDatabase([data / "emb"]),
                           checkpoints=SimpleNamespace(list=lambda: []), models=SimpleNamespace(current=lambda: None),
                           extensions=None)


def timed(fn, repeat: int = 1) -> float:
    started = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - started) / repeat


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--loras", type=int, default=500)
    parser.add_argument("--runs", type=int, default=5)
    options = parser.parse_args()

    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from modules.ui.extra_networks_panel import list_networks, preview_url, render_html
    from modules.ui.file_route import install_file_route

    with tempfile.TemporaryDirectory() as temp:
        temp = Path(temp)
        bare = context_for(temp / "bare", make_folder(temp / "bare" / "Lora", options.loras, carded=False))
        carded = context_for(temp / "carded", make_folder(temp / "carded" / "Lora", options.loras, carded=True))
        output = carded.paths.data_dir / "outputs" / "txt2img-images" / "2026-01-01"
        output.mkdir(parents=True)
        (output / "00001-1.png").write_bytes((temp / "carded" / "Lora" / "lora_0000.preview.png").read_bytes())
        app = FastAPI()
        install_file_route(app, carded)
        client = TestClient(app)
        middle = list_networks(carded).card("lora", f"lora_{options.loras // 2:04d}")
        preview = "/" + preview_url(middle.preview)
        image = f"/file={output / '00001-1.png'}"
        assert client.get(preview).status_code == 200 and client.get(image).status_code == 200

        results: dict[str, list[float]] = {"render bare": [], "render carded": [], "/file= output": [],
                                           "/file= preview": []}
        for _ in range(options.runs):
            results["render bare"].append(timed(lambda: render_html(list_networks(bare))))
            results["render carded"].append(timed(lambda: render_html(list_networks(carded))))
            results["/file= output"].append(timed(lambda: client.get(image), repeat=200))
            results["/file= preview"].append(timed(lambda: client.get(preview), repeat=200))

    medians = {name: statistics.median(values) for name, values in results.items()}
    print(f"{options.loras} LoRAs, median of {options.runs}; {machine_description()}")
    for name, value in medians.items():
        print(f"  {name:16s} {value * 1000:8.2f} ms")
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    (OUT_DIR / "bench_extra_network_cards.json").write_text(json.dumps(
        {"loras": options.loras, "runs": options.runs, "machine": machine_description(),
         "seconds": results, "median_seconds": medians}, indent=2))


if __name__ == "__main__":
    main()
