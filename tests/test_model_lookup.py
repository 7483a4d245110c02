"""Look-ups against the fake Civitai and Hugging Face hosts: what each source says, read into RemoteModel.

Expected values come from what the test gave the fakes (bytes, names, flags), hashed here with hashlib.
"""

import hashlib
import re

import pytest

from modules.model_sources.civitai import CivitaiClient
from modules.model_sources.huggingface import CHECKPOINT_MIN_BYTES, HuggingFaceClient, infer_type, lookup_url
from modules.model_sources.refs import CivitaiRef, HuggingFaceRef, UrlRef, parse_source
from modules.model_sources.types import CONTENT_LEVELS, ModelSourceError, RemoteFile
from tests.fake_model_hosts.civitai import CivitaiFileSpec, random_safetensors, tiny_png
from tests.fake_model_hosts.server import FakeHost, Reply

pytest_plugins = ["tests.fake_model_hosts.fixtures"]  # fake_civitai, fake_hub

MAIN = random_safetensors(seed=1)
FULL = random_safetensors(size_floats=512, seed=2)
OLD = random_safetensors(seed=3)
PNG = tiny_png()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def catalogue(fake_civitai):
    """A LoRA with an old and a new version (two files in the new one), previews of several ratings."""
    model_id, old_version = fake_civitai.add_model(
        "Tiny LoRA", type="LORA", base_model="SD 1.5", files=[("tiny-v1.safetensors", OLD)], trained_words=["old"],
        description="<p>model text</p>", allow_commercial_use=["Image"], allow_derivatives=False,
        allow_no_credit=False, allow_different_license=True)
    new_version = fake_civitai.add_version(
        model_id, version_name="v2.0", base_model="SDXL 1.0", description="<p>version text</p>",
        files=[CivitaiFileSpec("tiny-v2.safetensors", MAIN, fp="fp16", size="pruned"),
               CivitaiFileSpec("tiny-v2-full.safetensors", FULL, fp="fp32", size="full", pickle_scan="Pending")],
        trained_words=["tnyx", " ", "tnyx", "glow"], images=[(PNG, 16), (PNG, 2), (PNG, 1, "video")])
    return fake_civitai, model_id, old_version, new_version


@pytest.fixture
def client_for(guarded_http_for):
    def make(civitai, **kwargs) -> CivitaiClient:
        return CivitaiClient(guarded_http_for(civitai=civitai, **kwargs), base_url=civitai.base_url)

    return make


# ----- Civitai


def test_civitai_model_id_gives_the_newest_version_with_what_civitai_publishes(catalogue, client_for):
    civitai, model_id, _, new_version = catalogue
    remote = client_for(civitai).lookup(parse_source(str(model_id)))

    assert (remote.source, remote.name, remote.model_type) == ("civitai", "Tiny LoRA", "LORA")
    assert (remote.version_name, remote.base_model) == ("v2.0", "SDXL 1.0")
    assert (remote.model_id, remote.version_id) == (str(model_id), str(new_version))
    assert remote.trigger_words == ("tnyx", "glow")
    assert remote.description == "<p>version text</p>"  # the version's, before the model's
    assert remote.page_url == f"{civitai.base_url}/models/{model_id}?modelVersionId={new_version}"
    main, full = remote.files
    assert (main.name, main.sha256, main.size) == ("tiny-v2.safetensors", sha256(MAIN), len(MAIN))
    assert not main.exact_size  # Civitai publishes KB
    assert (main.format, main.precision, main.size_kind, main.primary) == ("SafeTensor", "fp16", "pruned", True)
    assert (full.sha256, full.precision, full.size_kind, full.pickle_scan) == (sha256(FULL), "fp32", "full", "Pending")
    assert remote.default_file() == main
    assert "no commercial use" not in remote.license and "commercial use: Image" in remote.license
    assert "credit the creator" in remote.license and "no sharing of merges" in remote.license
    assert [(p.nsfw_level, p.media_type) for p in remote.previews] == [(16, "image"), (2, "image"), (1, "video")]
    # the chosen version in the shape /model-versions/{id} gives, for <name>.civitai.info
    assert {k: v for k, v in remote.raw_version.items() if k != "index"} == civitai.version_json(new_version)


@pytest.mark.parametrize("form", [
    "{model}@{old}", "https://civitai.com/models/{model}/tiny-lora?modelVersionId={old}",
    "https://civitai.com/model-versions/{old}", "https://civitai.com/api/download/models/{old}",
    "urn:air:sd1:lora:civitai:{model}@{old}", "civitai.com/api/v1/model-versions/{old}",
])
def test_civitai_each_form_naming_a_version_gives_that_version(catalogue, form, client_for):
    civitai, model_id, old_version, _ = catalogue
    remote = client_for(civitai).lookup(parse_source(form.format(model=model_id, old=old_version)))
    assert (remote.version_id, remote.version_name, remote.base_model) == (str(old_version), "v1.0", "SD 1.5")
    assert [(f.name, f.sha256) for f in remote.files] == [("tiny-v1.safetensors", sha256(OLD))]
    assert remote.trigger_words == ("old",)
    assert remote.description == "<p>model text</p>"  # the version has none: the model's
    assert remote.raw_version == civitai.version_json(old_version)
    assert remote.license.startswith("Civitai permissions:")


def test_civitai_download_link_query_and_air_file_id_pick_one_file(catalogue, client_for):
    civitai, model_id, _, new_version = catalogue
    client = client_for(civitai)
    by_query = client.lookup(parse_source(
        f"https://civitai.com/api/download/models/{new_version}?type=Model&format=SafeTensor&fp=fp32"))
    assert [f.name for f in by_query.files] == ["tiny-v2-full.safetensors"]
    file_id = civitai.file_id("tiny-v2-full.safetensors")
    by_air = client.lookup(parse_source(f"urn:air:sdxl:lora:civitai:{model_id}@{new_version}+{file_id}"))
    assert [f.name for f in by_air.files] == ["tiny-v2-full.safetensors"]
    with pytest.raises(ModelSourceError, match="no file with format=PickleTensor.*tiny-v2.safetensors"):
        client.lookup(parse_source(f"https://civitai.com/api/download/models/{new_version}?format=PickleTensor"))


def test_civitai_version_of_another_model_is_refused(catalogue, client_for):
    civitai, model_id, old_version, _ = catalogue
    other_model, _ = civitai.add_model("Other", files=[("other.safetensors", MAIN)])
    with pytest.raises(ModelSourceError, match=f"belongs to model {model_id}, not {other_model}"):
        client_for(civitai).lookup(CivitaiRef(str(other_model), str(old_version)))


def test_civitai_archived_model_says_why_nothing_can_be_downloaded(fake_civitai, client_for):
    model_id, _ = fake_civitai.add_model("Gone", files=[])
    fake_civitai.models[model_id]["mode"] = "Archived"
    with pytest.raises(ModelSourceError, match="Gone v1.0 has nothing to download: the creator archived it"):
        client_for(fake_civitai).lookup(CivitaiRef(str(model_id), None))


def test_civitai_unknown_ids_say_they_do_not_exist(fake_civitai, client_for):
    client = client_for(fake_civitai)
    with pytest.raises(ModelSourceError, match="Civitai has no model with id 999999") as caught:
        client.lookup(CivitaiRef("999999", None))
    assert caught.value.status == 404
    with pytest.raises(ModelSourceError, match="no model version with id 888888"):
        client.lookup(CivitaiRef(None, "888888"))


def test_civitai_ids_are_checked_before_they_reach_a_url(fake_civitai, client_for):
    with pytest.raises(ModelSourceError, match="not a Civitai model id"):
        client_for(fake_civitai).lookup(CivitaiRef("1/../../admin", None))
    assert fake_civitai.api.log == []


def test_civitai_by_hash_finds_the_version_or_none(catalogue, client_for):
    civitai, model_id, old_version, new_version = catalogue
    client = client_for(civitai)
    found = client.by_hash(sha256(FULL))
    assert (found.version_id, found.name) == (str(new_version), "Tiny LoRA")
    assert found.raw_version == civitai.version_json(new_version)
    assert client.by_hash(sha256(OLD).upper()).version_id == str(old_version)
    assert client.by_hash(sha256(b"not published")) is None
    with pytest.raises(ModelSourceError, match="not a file hash"):
        client.by_hash("../../api/v1/me")


def test_civitai_401_says_an_api_key_is_needed(catalogue, client_for):
    civitai, model_id, _, _ = catalogue
    civitai.fail_api(401, body={"error": "Unauthorized"})
    with pytest.raises(ModelSourceError, match="needs a Civitai API key: Settings → Model sources"):
        client_for(civitai).lookup(CivitaiRef(str(model_id), None))
    civitai.fail_api(403, body={"error": "Forbidden"})
    with pytest.raises(ModelSourceError, match="with the API key in Settings → Model sources") as caught:
        client_for(civitai, civitai_key="wrong-key-123456").lookup(CivitaiRef(str(model_id), None))
    assert "wrong-key-123456" not in str(caught.value)


def test_civitai_429_with_a_short_retry_after_is_waited_out(catalogue, guarded_http_for):
    civitai, model_id, _, _ = catalogue
    civitai.fail_api(429, headers=[("Retry-After", "2")])
    waits = []
    remote = CivitaiClient(guarded_http_for(civitai=civitai, sleep=waits.append),
                           base_url=civitai.base_url).lookup(CivitaiRef(str(model_id), None))
    assert remote.name == "Tiny LoRA" and waits == [2.0]


def test_civitai_key_goes_as_bearer_to_the_api_only_never_in_a_url(fake_civitai, guarded_http_for):
    model_id, _ = fake_civitai.add_model("Locked", files=[("locked.safetensors", MAIN)], requires_key=True)
    key = fake_civitai.api_key
    http = guarded_http_for(civitai=fake_civitai, civitai_key=key)
    client = CivitaiClient(http, base_url=fake_civitai.base_url)
    file = client.lookup(CivitaiRef(str(model_id), None)).default_file()
    with http.open(client.fresh_download_url(file)) as response:
        assert response.status == 200 and sha256(response.read()) == sha256(MAIN)
        assert response.redirects and response.url.startswith(fake_civitai.storage.base_url)

    assert fake_civitai.api.log and fake_civitai.storage.log
    assert all(r.headers.get("authorization") == f"Bearer {key}" for r in fake_civitai.api.log)
    assert all("authorization" not in r.headers for r in fake_civitai.storage.log)
    for request in fake_civitai.api.log + fake_civitai.storage.log:
        assert key not in request.path and key not in str(request.query)


def test_fake_civitai_answers_a_locked_download_like_civitai(fake_civitai, guarded_http_for):
    """What the downloader must recognise: JSON 401 for a client, a login page for a browser."""
    model_id, _ = fake_civitai.add_model("Locked", files=[("locked.safetensors", MAIN)], requires_key=True)
    http = guarded_http_for(civitai=fake_civitai)
    file = CivitaiClient(http, base_url=fake_civitai.base_url).lookup(CivitaiRef(str(model_id), None)).default_file()
    with http.open(file.download_url) as response:
        assert response.status == 401 and response.content_type.startswith("application/json")
    with http.open(file.download_url, headers={"User-Agent": "Mozilla/5.0 (X11; Linux x86_64)"}) as response:
        assert response.status == 200 and response.content_type.startswith("text/html")
        assert b"Sign in" in response.read()


def test_civitai_fresh_download_url_gives_a_new_signed_url_after_expiry(catalogue, guarded_http_for):
    civitai, model_id, _, _ = catalogue
    http = guarded_http_for(civitai=civitai)
    client = CivitaiClient(http, base_url=civitai.base_url)
    file = client.lookup(CivitaiRef(str(model_id), None)).default_file()
    with http.open(file.download_url) as first:
        signed = first.url
    civitai.expire_signed_urls()
    with http.open(signed) as stale:
        assert stale.status == 403 and b"Request has expired" in stale.read()
    with http.open(client.fresh_download_url(file)) as fresh:
        assert fresh.status == 200 and fresh.url != signed and sha256(fresh.read()) == sha256(MAIN)


def test_fake_civitai_signed_urls_can_be_made_single_use(catalogue, guarded_http_for):
    """The knob a resume test needs: the signed URL of a dropped transfer no longer works."""
    civitai, model_id, _, new_version = catalogue
    civitai.signed_url_max_uses = 1
    http = guarded_http_for(civitai=civitai)
    with http.open(f"{civitai.base_url}/api/download/models/{new_version}") as first:
        assert first.status == 200 and sha256(first.read()) == sha256(MAIN)
    with http.open(first.url) as again:
        assert again.status == 403 and again.content_type == "application/xml"
    with http.open(f"{civitai.base_url}/api/download/models/{new_version}?fp=fp32") as other:
        assert other.status == 200 and sha256(other.read()) == sha256(FULL)  # the query picks the file


def test_civitai_answers_of_unexpected_shape_do_not_crash_the_look_up(catalogue, client_for):
    civitai, model_id, _, _ = catalogue
    version = civitai.models[model_id]["modelVersions"][0]
    version["files"][0]["hashes"] = ["not", "a", "mapping"]
    version["files"].append("not a file")
    version["images"] = "not a list"
    version["trainedWords"] = {"not": "a list"}
    remote = client_for(civitai).lookup(CivitaiRef(str(model_id), None))
    assert [f.sha256 for f in remote.files] == [None, sha256(FULL)]
    assert (remote.previews, remote.trigger_words) == ((), ())
    civitai.models[model_id]["modelVersions"] = "nothing"
    with pytest.raises(ModelSourceError, match="no published versions"):
        client_for(civitai).lookup(CivitaiRef(str(model_id), None))


def test_civitai_legacy_and_missing_image_ratings(fake_civitai, client_for):
    model_id, _ = fake_civitai.add_model("Old API", files=[("a.safetensors", MAIN)], legacy_nsfw=True,
                                         images=[(PNG, 1), (PNG, 2), (PNG, 4), (PNG, 8)])
    remote = client_for(fake_civitai).lookup(CivitaiRef(str(model_id), None))
    # "None"/"Soft"/"Mature"/"X" read back as the levels they stand for
    assert [p.nsfw_level for p in remote.previews] == [1, 2, 4, 8]
    version = fake_civitai.models[model_id]["modelVersions"][0]
    del version["images"][0]["nsfw"]
    remote = client_for(fake_civitai).lookup(CivitaiRef(str(model_id), None))
    assert remote.previews[0].nsfw_level == CONTENT_LEVELS["XXX"]  # unrated counts as the highest


# ----- Hugging Face


@pytest.fixture
def hub_repo(fake_hub):
    config = b"model:\n  target: ldm.models.diffusion.ddpm.LatentDiffusion\n"
    fake_hub.add_repo(
        "org/tiny-lora", files={"tiny.safetensors": MAIN, "sub/tiny-fp16.safetensors": FULL, "tiny.yaml": config,
                                "notes.txt": b"not a model"},
        card={"license": "openrail++", "base_model": "stabilityai/stable-diffusion-xl-base-1.0",
              "instance_prompt": "tnyx style", "tags": ["lora", "text-to-image"],
              "widget": [{"text": "a cat", "output": {"url": "images/cat.png"}}]},
        readme="# Tiny LoRA\nTrained on tiny things.")
    return fake_hub, config


def test_hf_repo_lists_weights_and_configs_with_sha256_and_exact_sizes(hub_repo):
    hub, config = hub_repo
    remote = HuggingFaceClient(endpoint=hub.endpoint).lookup(parse_source("org/tiny-lora"))
    commit = hub.repos["org/tiny-lora"].sha

    assert (remote.source, remote.name, remote.model_id, remote.version_id) == (
        "huggingface", "tiny-lora", "org/tiny-lora", commit)
    by_name = {f.name: f for f in remote.files}
    assert list(by_name) == ["tiny.safetensors", "sub/tiny-fp16.safetensors", "tiny.yaml"]  # root files first
    assert remote.default_file().name == "tiny.safetensors"
    assert (by_name["tiny.safetensors"].sha256, by_name["tiny.safetensors"].size) == (sha256(MAIN), len(MAIN))
    assert by_name["tiny.safetensors"].exact_size and by_name["tiny.safetensors"].format == "SafeTensor"
    assert by_name["sub/tiny-fp16.safetensors"].sha256 == sha256(FULL)
    assert by_name["sub/tiny-fp16.safetensors"].precision == "fp16"
    assert (by_name["tiny.yaml"].size, by_name["tiny.yaml"].file_type, by_name["tiny.yaml"].sha256) == (
        len(config), "Config", None)
    assert by_name["tiny.safetensors"].download_url == f"{hub.endpoint}/org/tiny-lora/resolve/{commit}/tiny.safetensors"
    assert (remote.license, remote.base_model, remote.trigger_words) == ("openrail++", "SDXL 1.0", ("tnyx style",))
    assert remote.model_type == "LORA"  # the repo's tags say so
    assert remote.description == "# Tiny LoRA\nTrained on tiny things."
    assert remote.page_url == f"{hub.endpoint}/org/tiny-lora"
    assert [p.url for p in remote.previews] == [f"{hub.endpoint}/org/tiny-lora/resolve/{commit}/images/cat.png"]


def test_hf_listing_without_lfs_details_takes_the_sha256_from_the_file_answer(hub_repo):
    hub, _ = hub_repo
    hub.repos["org/tiny-lora"].list_lfs = False
    remote = HuggingFaceClient(endpoint=hub.endpoint).lookup(HuggingFaceRef("org/tiny-lora", None))
    by_name = {f.name: f for f in remote.files}
    # X-Linked-Etag / X-Linked-Size of the default file's HEAD; the others stay unknown
    assert (by_name["tiny.safetensors"].sha256, by_name["tiny.safetensors"].size) == (sha256(MAIN), len(MAIN))
    assert by_name["tiny.safetensors"].exact_size
    assert by_name["sub/tiny-fp16.safetensors"].sha256 is None


def test_hf_link_to_one_file_gives_that_file(hub_repo):
    hub, _ = hub_repo
    remote = HuggingFaceClient(endpoint=hub.endpoint).lookup(
        parse_source("https://huggingface.co/org/tiny-lora/blob/main/sub/tiny-fp16.safetensors"))
    assert [(f.name, f.sha256) for f in remote.files] == [("sub/tiny-fp16.safetensors", sha256(FULL))]


def test_hf_missing_file_lists_the_repo_files(hub_repo):
    hub, _ = hub_repo
    with pytest.raises(ModelSourceError, match="no file 'nope.safetensors'.*sub/tiny-fp16.safetensors, "
                                               "tiny.safetensors, tiny.yaml") as caught:
        HuggingFaceClient(endpoint=hub.endpoint).lookup(HuggingFaceRef("org/tiny-lora", "nope.safetensors"))
    assert caught.value.status == 404


def test_hf_gated_repo_says_how_to_get_access(hub_repo):
    hub, _ = hub_repo
    repo = hub.repos["org/tiny-lora"]
    repo.gated = "auto"
    with pytest.raises(ModelSourceError, match="gated: accept its terms.*needs a Hugging Face token: Settings → "
                                               "Model sources") as caught:
        HuggingFaceClient(endpoint=hub.endpoint).lookup(HuggingFaceRef("org/tiny-lora", None))
    assert caught.value.status == 403
    repo.granted = False
    with pytest.raises(ModelSourceError, match="has no access yet") as caught:
        HuggingFaceClient(endpoint=hub.endpoint, token=hub.token).lookup(HuggingFaceRef("org/tiny-lora", None))
    assert hub.token not in str(caught.value)
    repo.granted = True
    remote = HuggingFaceClient(endpoint=hub.endpoint, token=hub.token).lookup(HuggingFaceRef("org/tiny-lora", None))
    assert remote.default_file().sha256 == sha256(MAIN)


def test_hf_private_or_missing_repo_mentions_the_token(hub_repo):
    hub, _ = hub_repo
    hub.repos["org/tiny-lora"].private = True
    with pytest.raises(ModelSourceError, match="or it is private, which needs a Hugging Face token"):
        HuggingFaceClient(endpoint=hub.endpoint).lookup(HuggingFaceRef("org/tiny-lora", None))
    assert HuggingFaceClient(endpoint=hub.endpoint, token=hub.token).lookup(
        HuggingFaceRef("org/tiny-lora", None)).name == "tiny-lora"
    with pytest.raises(ModelSourceError, match="no revision 'v9'"):
        HuggingFaceClient(endpoint=hub.endpoint, token=hub.token).lookup(HuggingFaceRef("org/tiny-lora", None, "v9"))


def test_hf_diffusers_repo_is_refused_with_the_reason(fake_hub):
    fake_hub.add_repo("org/pipeline", files={"model_index.json": b"{}",
                                             "unet/diffusion_pytorch_model.safetensors": MAIN,
                                             "vae/diffusion_pytorch_model.safetensors": FULL})
    with pytest.raises(ModelSourceError, match="diffusers format.*single-file checkpoints.*\\.safetensors at the "
                                               "repo root"):
        HuggingFaceClient(endpoint=fake_hub.endpoint).lookup(HuggingFaceRef("org/pipeline", None))
    # the same layout with a single file at the root: that file is offered, the components are not
    fake_hub.add_repo("org/both", files={"model_index.json": b"{}", "unet/diffusion_pytorch_model.safetensors": MAIN,
                                         "model.safetensors": FULL})
    remote = HuggingFaceClient(endpoint=fake_hub.endpoint).lookup(HuggingFaceRef("org/both", None))
    assert [f.name for f in remote.files] == ["model.safetensors"]


def test_hf_token_goes_to_the_hub_only_not_to_the_cdn(hub_repo, guarded_http_for):
    hub, _ = hub_repo
    hub.repos["org/tiny-lora"].private = True
    remote = HuggingFaceClient(endpoint=hub.endpoint, token=hub.token).lookup(HuggingFaceRef("org/tiny-lora", None))
    http = guarded_http_for(hub=hub, hf_token=hub.token)
    with http.open(remote.default_file().download_url) as response:
        assert response.status == 200 and sha256(response.read()) == sha256(MAIN)
        assert response.url.startswith(hub.cdn.base_url)
    assert all(r.headers.get("authorization") == f"Bearer {hub.token}" for r in hub.hub.log)
    assert hub.cdn.log and all("authorization" not in r.headers for r in hub.cdn.log)


def test_hf_bad_repo_id_or_listing_is_a_clear_error(fake_hub):
    client = HuggingFaceClient(endpoint=fake_hub.endpoint)
    with pytest.raises(ModelSourceError, match="not a Hugging Face repo id") as caught:
        client.lookup(HuggingFaceRef("org/../../etc", None))
    assert caught.value.status == 400
    # a listing whose file entry lacks `rfilename`, answered before the fake's own route
    fake_hub.hub.routes.insert(0, ("GET", re.compile(r"/api/models/org/broken"),
                                   lambda r: Reply.json({"id": "org/broken", "siblings": [{"size": 1}]})))
    with pytest.raises(ModelSourceError, match="not a model listing"):
        client.lookup(HuggingFaceRef("org/broken", None))


def test_hf_offline_mode_is_explained(hub_repo, monkeypatch):
    from huggingface_hub import constants

    hub, _ = hub_repo
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelSourceError, match="HF_HUB_OFFLINE is set"):
        HuggingFaceClient(endpoint=hub.endpoint).lookup(HuggingFaceRef("org/tiny-lora", None))


@pytest.mark.parametrize("tags, name, size, expected", [
    (["lora"], "x.safetensors", 10, "LORA"),
    (["textual_inversion"], "x.pt", 10, "TextualInversion"),
    ([], "sdxl_vae.safetensors", 334_000_000, "VAE"),
    ([], "model.safetensors", CHECKPOINT_MIN_BYTES, "Checkpoint"),
    ([], "model.safetensors", CHECKPOINT_MIN_BYTES - 1, None),
])
def test_hf_type_is_inferred_only_when_something_says_it(tags, name, size, expected):
    assert infer_type(tags, RemoteFile(name=name, download_url="https://x/y", size=size)) == expected


# ----- plain https links


@pytest.fixture
def file_host():
    host = FakeHost("files")
    try:
        yield host
    finally:
        host.close()


def test_url_name_from_content_disposition_and_exact_size(file_host, guarded_http_for):
    file_host.route("GET", r"/dl/1", lambda r: Reply(200, [("Content-Type", "application/octet-stream"), (
        "Content-Disposition", "attachment; filename=\"../../evil/Nice Model.safetensors\"")], MAIN))
    remote = lookup_url(UrlRef(f"{file_host.base_url}/dl/1?sig=abc"), guarded_http_for())
    (file,) = remote.files
    assert (file.name, file.size, file.exact_size, file.sha256) == ("Nice Model.safetensors", len(MAIN), True, None)
    assert (remote.source, remote.name, remote.model_type, file.format) == ("url", "Nice Model", None, "SafeTensor")
    assert file.download_url == f"{file_host.base_url}/dl/1?sig=abc" and "sig=" not in remote.page_url
    assert [r.method for r in file_host.log] == ["HEAD"]


def test_url_rfc5987_name_and_head_refused_falls_back_to_a_one_byte_get(file_host, guarded_http_for):
    def answer(request):
        if request.method == "HEAD":
            return Reply(405, [("Allow", "GET")])
        assert request.headers.get("range") == "bytes=0-0"
        return Reply(206, [("Content-Type", "application/octet-stream"), ("Content-Range", f"bytes 0-0/{len(FULL)}"),
                           ("Content-Disposition", "attachment; filename*=UTF-8''na%C3%AFve.ckpt")], FULL[:1])

    file_host.route("GET", r"/get", answer)
    (file,) = lookup_url(UrlRef(f"{file_host.base_url}/get"), guarded_http_for()).files
    assert (file.name, file.size, file.format) == ("naïve.ckpt", len(FULL), "PickleTensor")


def test_url_name_from_the_path_after_redirects(file_host, guarded_http_for):
    file_host.route("GET", r"/short", lambda r: Reply.redirect("/files/real-name.safetensors"))
    file_host.route("GET", r"/files/real-name.safetensors",
                    lambda r: Reply(200, [("Content-Type", "application/octet-stream")], MAIN))
    (file,) = lookup_url(UrlRef(f"{file_host.base_url}/short"), guarded_http_for()).files
    assert (file.name, file.size) == ("real-name.safetensors", len(MAIN))


def test_url_answering_a_web_page_is_refused(file_host, guarded_http_for):
    file_host.route("GET", r"/page", lambda r: Reply.text("<html>download here</html>", content_type="text/html"))
    with pytest.raises(ModelSourceError, match="text/html page, not a model file"):
        lookup_url(UrlRef(f"{file_host.base_url}/page"), guarded_http_for())


def test_url_to_a_private_address_is_refused_by_the_guard(file_host):
    from modules.model_sources.http import GuardedHttp

    file_host.route("GET", r"/x", lambda r: Reply(200, [], MAIN))
    with pytest.raises(ModelSourceError):
        lookup_url(UrlRef(f"{file_host.base_url}/x"), GuardedHttp())
    assert file_host.log == []
