"""The ModelSources service end to end against fake Civitai and Hugging Face hosts on loopback:
folders by type, cards beside the file, tokens only to their host, files already here, name
clashes, card look-ups by hash, and checkpoint tools listing what they write."""

from __future__ import annotations

import hashlib
import json
import time

import pytest
import torch

from modules.library.synthetic_checkpoints import write_checkpoint
from modules.model_sources.service import ModelSources
from modules.model_sources.types import ModelSourceError
from tests.fake_model_hosts.civitai import CivitaiFileSpec, random_safetensors, tiny_png
from tests.test_api_support import WAIT, make_context

pytest_plugins = ["tests.fake_model_hosts.fixtures"]


@pytest.fixture
def context(tmp_path):
    context = make_context(tmp_path, load=False, start_jobs=False)
    context.settings.apply({"model_sources_allow_private": True})
    return context


@pytest.fixture
def sources(context, fake_civitai):
    service = ModelSources(context, civitai_base_url=fake_civitai.base_url)
    context.model_sources = service
    yield service
    service.close()


def finished(service: ModelSources, download_id: str):
    deadline = time.monotonic() + WAIT
    while True:
        status = service.download_status(download_id)
        if not status.active:
            return status
        assert time.monotonic() < deadline, status
        time.sleep(0.02)


def page(model_id: int, version_id: int) -> str:
    return f"https://civitai.com/models/{model_id}?modelVersionId={version_id}"


def test_a_checkpoint_arrives_listed_with_its_hash_config_and_cards(context, sources, fake_civitai):
    data = random_safetensors(seed=11)
    config = b"model:\n  target: ldm.models.diffusion.ddpm.LatentDiffusion\n"
    safe_preview, explicit_preview = tiny_png((10, 200, 10)), tiny_png((250, 0, 0))
    model_id, version_id = fake_civitai.add_model(
        "Cards Model", type="Checkpoint", base_model="SDXL 1.0",
        files=[CivitaiFileSpec("cards.safetensors", data), CivitaiFileSpec("cards.yaml", config, type="Config",
                                                                            fp=None, size=None)],
        trained_words=["cardstyle", "cardword"],
        images=[(explicit_preview, 16), (b"not really a video", 1, "video"), (safe_preview, 2)])

    status = finished(sources, sources.start_download(page(model_id, version_id)).id)
    assert status.state == "done", status
    path = context.paths.checkpoints_dir / "cards.safetensors"
    assert path.read_bytes() == data

    info = context.checkpoints.find("cards")
    assert info.sha256 == hashlib.sha256(data).hexdigest()  # stored at once: no re-read to hash it
    cache = json.loads(context.paths.cache_file.read_text())
    assert cache["hashes"]["checkpoint/cards.safetensors"]["sha256"] == hashlib.sha256(data).hexdigest()

    assert (context.paths.checkpoints_dir / "cards.yaml").read_bytes() == config
    user_metadata = json.loads((context.paths.checkpoints_dir / "cards.json").read_text())
    assert user_metadata["activation text"] == "cardstyle, cardword"
    assert user_metadata["sd version"] == "SDXL" and hashlib.sha256(data).hexdigest() in user_metadata["notes"]
    info_file = json.loads((context.paths.checkpoints_dir / "cards.civitai.info").read_text())
    assert info_file["id"] == version_id and info_file["files"][0]["name"] == "cards.safetensors"

    # The first image within the default PG-13 limit, videos skipped: the green one.
    from PIL import Image

    with Image.open(context.paths.checkpoints_dir / "cards.preview.png") as preview:
        assert preview.convert("RGB").getpixel((0, 0)) == (10, 200, 10)


def test_each_type_lands_in_its_folder_and_its_list(context, sources, fake_civitai):
    lora_data = random_safetensors(seed=12)
    model_id, version_id = fake_civitai.add_model("A Lora", type="LORA", files=[("alora.safetensors", lora_data)])
    status = finished(sources, sources.start_download(page(model_id, version_id)).id)
    assert status.state == "done", status
    assert (context.paths.lora_dir / "alora.safetensors").read_bytes() == lora_data
    assert "alora" in context.loras.names()

    refused_id, refused_version = fake_civitai.add_model("A ControlNet", type="Controlnet",
                                                         files=[("cn.safetensors", random_safetensors(seed=13))])
    with pytest.raises(ModelSourceError, match="Controlnet"):
        sources.start_download(page(refused_id, refused_version))
    card = sources.lookup(page(refused_id, refused_version))
    assert card.kind is None and "Controlnet" in card.refusal


def test_the_api_key_goes_only_to_civitai_and_never_into_a_url(context, sources, fake_civitai):
    data = random_safetensors(seed=14)
    model_id, version_id = fake_civitai.add_model("Locked", type="Checkpoint", files=[("locked.safetensors", data)],
                                                  requires_key=True)
    refused = finished(sources, sources.start_download(page(model_id, version_id)).id)
    assert refused.state == "failed" and "Civitai API key" in refused.error
    assert not (context.paths.checkpoints_dir / "locked.safetensors").exists()

    context.settings.apply({"civitai_api_key": fake_civitai.api_key})
    status = finished(sources, sources.start_download(page(model_id, version_id)).id)
    assert status.state == "done", status
    sent = [r for r in fake_civitai.api.log if r.headers.get("authorization")]
    assert sent and all(r.headers["authorization"] == f"Bearer {fake_civitai.api_key}" for r in sent)
    assert not any("authorization" in r.headers for r in fake_civitai.storage.log)
    every_url = [r.path + json.dumps(r.query) for r in fake_civitai.api.log + fake_civitai.storage.log]
    assert not any(fake_civitai.api_key in url for url in every_url)
    assert fake_civitai.api_key not in json.dumps([s.to_json() for s in sources.downloads()])


def test_a_file_already_here_is_not_downloaded_again_and_a_clash_gets_a_suffix(context, sources, fake_civitai):
    data = random_safetensors(seed=15)
    folder = context.paths.checkpoints_dir
    (folder / "mine.safetensors").write_bytes(data)  # the same bytes under another name
    (folder / "clash.safetensors").write_bytes(random_safetensors(seed=16))  # other bytes under the name
    model_id, version_id = fake_civitai.add_model("Twice", files=[("mine-again.safetensors", data)])
    other_id, other_version = fake_civitai.add_model("Clash", files=[("clash.safetensors", random_safetensors(17))])

    assert sources.lookup(page(model_id, version_id)).existing == {}  # not hashed yet: look-ups never hash
    status = finished(sources, sources.start_download(page(model_id, version_id)).id)
    assert status.state == "exists" and status.destination == str(folder / "mine.safetensors")
    assert not fake_civitai.storage.requests_to("/model/")
    assert sources.lookup(page(model_id, version_id)).existing == {"mine-again.safetensors":
                                                                   str(folder / "mine.safetensors")}

    status = finished(sources, sources.start_download(page(other_id, other_version)).id)
    assert status.state == "done" and status.destination == str(folder / "clash-1.safetensors")
    notes = json.loads((folder / "clash-1.json").read_text())["notes"]  # the renamed file keeps its hash line
    assert hashlib.sha256(random_safetensors(17)).hexdigest() in notes
    assert (folder / "clash.safetensors").read_bytes() == random_safetensors(seed=16)


def test_a_plain_url_needs_a_type_and_then_goes_where_the_type_says(context, sources, fake_civitai):
    data = random_safetensors(seed=18)
    blob_host = fake_civitai.storage
    from tests.fake_model_hosts.server import Blob, serve_blob

    blob = Blob("plain.safetensors", data)
    blob_host.route("GET", r"/direct/plain.safetensors", lambda request: serve_blob(request, blob))
    url = f"{blob_host.base_url}/direct/plain.safetensors"
    with pytest.raises(ModelSourceError, match="choose its type"):
        sources.start_download(url)
    status = finished(sources, sources.start_download(url, model_type="LORA").id)
    assert status.state == "done", status
    assert (context.paths.lora_dir / "plain.safetensors").read_bytes() == data


def test_a_hugging_face_file_arrives_verified_and_the_token_goes_only_to_the_hub(context, fake_hub):
    data = random_safetensors(seed=22)
    fake_hub.add_repo("org/tiny-sd", files={"tiny.safetensors": data}, card={"license": "openrail++"}, private=True)
    context.settings.apply({"hf_token": fake_hub.token})
    service = ModelSources(context, hf_endpoint=fake_hub.endpoint)
    try:
        card = service.lookup("org/tiny-sd")
        assert card.remote.files[0].sha256 == hashlib.sha256(data).hexdigest() and card.remote.license
        status = finished(service, service.start_download("org/tiny-sd", model_type="Checkpoint").id)
        assert status.state == "done", status
        assert (context.paths.checkpoints_dir / "tiny.safetensors").read_bytes() == data
    finally:
        service.close()
    assert any(r.headers.get("authorization") == f"Bearer {fake_hub.token}" for r in fake_hub.hub.log)
    assert not any("authorization" in r.headers for r in fake_hub.cdn.log)


def test_private_addresses_are_refused_unless_the_setting_allows_them(context, sources, fake_civitai):
    model_id, version_id = fake_civitai.add_model("Local", files=[("local.safetensors", random_safetensors(19))])
    context.settings.apply({"model_sources_allow_private": False})
    with pytest.raises(ModelSourceError, match="private|non-public|local"):
        sources.lookup(page(model_id, version_id))


def test_downloads_cards_and_tools_are_refused_beyond_localhost_without_the_flags(tmp_path, fake_civitai):
    context = make_context(tmp_path, load=False, start_jobs=False, args=["--listen"])
    service = ModelSources(context, civitai_base_url=fake_civitai.base_url)
    try:
        for call in (lambda: service.start_download("123"), lambda: service.fetch_cards("lora"),
                     lambda: service.run_tool("fp16", "a")):
            with pytest.raises(ModelSourceError, match="--enable-model-downloads") as refused:
                call()
            assert refused.value.status == 403
    finally:
        service.close()


def test_cards_for_files_a_user_already_has_come_from_civitai_by_hash(context, sources, fake_civitai):
    data = random_safetensors(seed=20)
    (context.paths.lora_dir / "old-lora.safetensors").write_bytes(data)
    (context.paths.lora_dir / "unknown.safetensors").write_bytes(random_safetensors(seed=21))
    (context.paths.lora_dir / "old-lora.json").write_text(json.dumps({"notes": "my own notes"}))
    fake_civitai.add_model("Old Lora", type="LORA", files=[("whatever.safetensors", data)],
                           trained_words=["oldstyle"])
    context.loras.refresh()

    outcomes = dict(sources.fetch_cards("lora"))
    assert outcomes["unknown.safetensors"] == "not found on Civitai"
    assert outcomes["old-lora.safetensors"].startswith("card written")
    written = json.loads((context.paths.lora_dir / "old-lora.json").read_text())
    assert written["activation text"] == "oldstyle" and written["notes"] == "my own notes"
    assert (context.paths.lora_dir / "old-lora.civitai.info").exists()


def test_a_tool_writes_a_new_file_and_lists_it(context, sources):
    source = context.paths.checkpoints_dir / "full.safetensors"
    write_checkpoint(source, "sd1", size="tiny", dtype=torch.float32, seed=5)
    context.checkpoints.refresh()
    result = sources.run_tool("fp16", "full")
    assert result.path.exists() and result.path != source
    listed = context.checkpoints.find(result.path.name)
    assert listed.filename == result.path and listed.sha256 == hashlib.sha256(result.path.read_bytes()).hexdigest()
    report = sources.inspect(listed.title)
    assert report.architecture_name == "sd1" and "float16" in report.dtypes and "float32" not in report.dtypes
