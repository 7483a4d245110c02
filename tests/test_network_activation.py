"""A job's prompt tags end to end: parse, attach hypernetworks and LoRAs, encode with embeddings,
and leave the model exactly as it was."""

from __future__ import annotations

import pytest
import torch

from modules.generation.conditioning import TextConditioner
from modules.networks.syntax import parse_prompts
from modules.networks.hypernetwork_files import HypernetworkRegistry
from modules.networks.lora import LoraRegistry
from modules.library.model_loader import load_checkpoint
from modules.networks.activation import activate_extra_networks, embedding_widths
from modules.library.synthetic_checkpoints import write_checkpoint
from modules.networks.textual_inversion import EmbeddingDatabase, save_embedding
from tests.test_hypernetworks import relu_hypernetwork_file
from tests.test_lora import kohya_lora, unet_out, write_lora


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("networks")
    model = load_checkpoint(write_checkpoint(root / "m.safetensors", "sd1", dtype=torch.float32))
    (root / "hypernetworks").mkdir()
    relu_hypernetwork_file(root / "hypernetworks" / "anime.pt", dims=[model.unet.config.cross_attention_dim])
    hypernetworks = HypernetworkRegistry(root / "hypernetworks")
    hypernetworks.refresh()
    (root / "Lora").mkdir()
    write_lora(root / "Lora", "style", kohya_lora(model, seed=3))
    loras = LoraRegistry([root / "Lora"])
    loras.refresh()
    return model, hypernetworks, loras, root


def _params(model):
    return {name: p.detach().clone() for name, p in model.unet.named_parameters()}


def test_tags_are_stripped_attached_and_undone(setup):
    model, hypernetworks, loras, _ = setup
    prompts, networks = parse_prompts(["a cat <hypernet:anime:0.7>, <lora:style:0.8>"])
    assert "<" not in prompts[0] and "a cat" in prompts[0]
    base = unet_out(model)
    with activate_extra_networks(model, networks, hypernetworks, loras) as active:
        changed = unet_out(model)
        assert active.warnings == []
        assert active.hypernetworks == [("anime", 0.7)]
        assert active.infotext["Lora hashes"].startswith("style: ")  # unquoted: the infotext writer quotes
    assert not torch.allclose(changed, base)
    assert torch.equal(unet_out(model), base)


def test_hypernetwork_multiplier_changes_output(setup):
    model, hypernetworks, _, _ = setup
    base = unet_out(model)
    outputs = []
    for multiplier in ("0", "0.5", "1"):
        _, networks = parse_prompts([f"x <hypernet:anime:{multiplier}>"])
        with activate_extra_networks(model, networks, hypernetworks, None):
            outputs.append(unet_out(model))
    assert torch.equal(outputs[0], base)
    assert not torch.allclose(outputs[1], base) and not torch.allclose(outputs[1], outputs[2])
    assert torch.equal(unet_out(model), base)


def test_unknown_names_are_warnings_not_errors(setup):
    model, hypernetworks, loras, _ = setup
    _, networks = parse_prompts(["x <hypernet:nope> <lora:nada:1> <foo:bar> <hypernet:anime:lots>"])
    base = unet_out(model)
    with activate_extra_networks(model, networks, hypernetworks, loras) as active:
        assert torch.equal(unet_out(model), base)
    text = "\n".join(active.warnings)
    assert "nope" in text and "nada" in text and "<foo" in text and "lots" in text
    assert len(active.warnings) == 4


def test_embeddings_follow_the_model_and_new_files_appear(setup, tmp_path):
    model, _, _, _ = setup
    folder = tmp_path / "embeddings"
    folder.mkdir()
    width = model.text_encoders[0].config.hidden_size
    save_embedding(folder / "goodemb.pt", {"default": torch.randn(2, width)}, name="goodemb")
    save_embedding(folder / "xlemb.safetensors", {"clip_l": torch.randn(1, 768), "clip_g": torch.randn(1, 1280)},
                   name="xlemb")
    database = EmbeddingDatabase([folder])
    database.refresh()
    found = database.for_model(embedding_widths(model))
    assert set(found.loaded) == {"goodemb"} and "xlemb" in found.skipped
    conditioner = TextConditioner(model, found.loaded)
    assert conditioner.tokenizer.chunks("goodemb")[0][0].fixes  # recognised in the prompt
    save_embedding(folder / "later.pt", {"default": torch.randn(1, width)}, name="later")
    database.refresh()
    assert "later" in database.for_model(embedding_widths(model)).loaded


def test_lora_hashes_are_quoted_once_in_the_infotext(setup):
    """A1111 writes `Lora hashes: "style: <12 hex>"`: the value plain, quoted once by the infotext
    writer; reading the infotext back gives the plain value."""
    from modules.outputs.infotext import parse_generation_parameters
    from modules.generation.engine import GenerationRequest, GenerationResources, generate

    model, _, loras, _ = setup
    result = generate(model, GenerationRequest(prompt="a cat <lora:style:0.8>", width=64, height=64, steps=1,
                                               seed=1), resources=GenerationResources(loras=loras))
    value = parse_generation_parameters(result.infotexts[0])["Lora hashes"]
    name, _, short = value.partition(": ")
    assert name == "style" and len(short) == 12 and int(short, 16) >= 0
    assert f'Lora hashes: "{value}"' in result.infotexts[0]
