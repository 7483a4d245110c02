"""The first page does not wait for the model stack: building the served app (flags, context with its
file lists, extensions, API, web UI) and answering `/` import neither torch nor diffusers nor
transformers. webui.main imports them on a background thread once the server listens
(docs/BENCHMARKS.md, "Start-up"). Checked in a fresh interpreter, since this test process has torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

from modules.library.safetensors_io import save_file
from modules.library.synthetic_checkpoints import write_checkpoint

REPO_ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "diffusers", "transformers")

# Runs webui.compose (what webui.main runs before it listens), then the server's lifespan and `GET /`.
PROBE = r"""
import json, sys
import webui
from fastapi.testclient import TestClient
from modules.serving.cmd_args import parse_args
from modules.extension_host.extensions import parser_with_preloads

argv = sys.argv[1:]
args = parse_args(argv, parser=parser_with_preloads(argv))
context, app = webui.compose(args)
with TestClient(app) as client:
    page = client.get("/")
context.jobs.shutdown()
print(json.dumps({
    "status": page.status_code,
    "gradio_page": "gradio" in page.text.lower(),
    "checkpoints": context.checkpoints.titles(),
    "loras": [info.name for info in context.loras.list()],
    "hypernetworks": context.hypernetworks.names(),
    "extensions": [ext.name for ext in context.extensions.active()],
    "heavy": sorted(name for name in sys.modules if name.partition(".")[0] in HEAVY),
}))
""".replace("HEAVY", repr(HEAVY))


def _data_dir(root: Path) -> Path:
    """A data folder with one of each kind of file the start-up lists or reads."""
    models = root / "models"
    (models / "Stable-diffusion").mkdir(parents=True)
    write_checkpoint(models / "Stable-diffusion" / "tiny.safetensors", "sd1", size="tiny", seed=0)
    (models / "VAE").mkdir(parents=True)
    save_file({"decoder.conv_in.weight": torch.zeros(4, 4, 3, 3)}, models / "VAE" / "tiny.vae.safetensors")
    (models / "Lora").mkdir(parents=True)
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(2, 8)},
              models / "Lora" / "tiny-lora.safetensors", metadata={"ss_output_name": "tiny-lora"})
    (models / "hypernetworks").mkdir(parents=True)
    torch.save({768: [], "layer_structure": [1, 2, 1]}, models / "hypernetworks" / "tiny-hn.pt")
    (root / "embeddings").mkdir(parents=True)
    save_file({"emb_params": torch.zeros(2, 768)}, root / "embeddings" / "tiny-embedding.safetensors")
    return root


def test_first_page_is_served_without_the_model_stack(tmp_path):
    data_dir = _data_dir(tmp_path)
    done = subprocess.run([sys.executable, "-c", PROBE, "--data-dir", str(data_dir), "--api"], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=600,
                          env={**_env(), "PYTHONPATH": str(REPO_ROOT)})
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    # The app is the whole one: the web UI page, the files listed, the built-in X/Y/Z extension loaded.
    assert report["status"] == 200 and report["gradio_page"]
    assert [title.split(" [")[0] for title in report["checkpoints"]] == ["tiny.safetensors"]
    assert report["loras"] == ["tiny-lora"] and report["hypernetworks"] == ["tiny-hn"]
    assert "xyz-grid" in report["extensions"]
    assert report["heavy"] == [], f"imported before the first page: {report['heavy'][:20]}"


def _env() -> dict[str, str]:
    import os

    return {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}


def test_the_model_stack_waits_for_the_first_response():
    """webui.main starts the model stack from FirstResponseWatch: once, after the first response is
    sent (so the first page does not share the GIL with torch's import), never again."""
    from fastapi.testclient import TestClient

    from modules.serving.listen import FirstResponseWatch

    events = []

    async def page(scope, receive, send):
        events.append(f"request {scope['path']}")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"first part", "more_body": True})
        events.append("body sent, more to come")
        await send({"type": "http.response.body", "body": b"last part"})

    client = TestClient(FirstResponseWatch(page, lambda: events.append("model stack started")))
    assert client.get("/").text == "first partlast part"
    client.get("/again")
    assert events == ["request /", "body sent, more to come", "model stack started", "request /again",
                      "body sent, more to come"]
