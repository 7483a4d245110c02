"""What a user pastes as a model source: every accepted form, and what an attacker might paste."""

import pytest

from modules.model_sources.refs import MAX_SOURCE_LENGTH, CivitaiRef, HuggingFaceRef, UrlRef, parse_source
from modules.model_sources.types import ModelSourceError


@pytest.mark.parametrize("text, expected", [
    ("stabilityai/sdxl-turbo", HuggingFaceRef("stabilityai/sdxl-turbo", None)),
    ("  org/name  ", HuggingFaceRef("org/name", None)),
    ("org/name:model.safetensors", HuggingFaceRef("org/name", "model.safetensors")),
    ("org/name:sub/dir/model.ckpt", HuggingFaceRef("org/name", "sub/dir/model.ckpt")),
    ("org/name@v1.0", HuggingFaceRef("org/name", None, "v1.0")),
    ("org/name@refs/pr/2:model.safetensors", HuggingFaceRef("org/name", "model.safetensors", "refs/pr/2")),
    ("org/name/sub/model.safetensors", HuggingFaceRef("org/name", "sub/model.safetensors")),
    ("org/name/v1-inference.yaml", HuggingFaceRef("org/name", "v1-inference.yaml")),
    ("https://huggingface.co/org/name", HuggingFaceRef("org/name", None)),
    ("https://huggingface.co/org/name/blob/main/model.safetensors",
     HuggingFaceRef("org/name", "model.safetensors", "main")),
    ("https://huggingface.co/org/name/resolve/abc123/sub/m.safetensors?download=true",
     HuggingFaceRef("org/name", "sub/m.safetensors", "abc123")),
    ("https://hf.co/org/name/tree/dev", HuggingFaceRef("org/name", None, "dev")),
    ("https://huggingface.co/org/name/blob/refs%2Fpr%2F3/a%20b.safetensors",
     HuggingFaceRef("org/name", "a b.safetensors", "refs/pr/3")),
    ("huggingface.co/org/name/raw/main/config.yaml", HuggingFaceRef("org/name", "config.yaml", "main")),
    ("4384", CivitaiRef("4384", None)),
    ("4384@128713", CivitaiRef("4384", "128713")),
    ("https://civitai.com/models/4384", CivitaiRef("4384", None)),
    ("https://civitai.com/models/4384/dreamshaper?modelVersionId=128713", CivitaiRef("4384", "128713")),
    ("civitai.com/models/4384?modelVersionId=128713", CivitaiRef("4384", "128713")),
    ("https://www.civitai.com/model-versions/128713", CivitaiRef(None, "128713")),
    ("https://civitai.com/api/download/models/128713", CivitaiRef(None, "128713")),
    ("https://civitai.com/api/download/models/128713?type=Model&format=SafeTensor&size=pruned&fp=fp16",
     CivitaiRef(None, "128713", file_type="Model", file_format="SafeTensor", file_precision="fp16",
                file_size_kind="pruned")),
    ("https://civitai.com/api/v1/model-versions/128713", CivitaiRef(None, "128713")),
    ("https://civitai.com/api/v1/models/4384", CivitaiRef("4384", None)),
    ("urn:air:sd1:checkpoint:civitai:4384@128713", CivitaiRef("4384", "128713")),
    ("air:sdxl:lora:civitai:4384@128713", CivitaiRef("4384", "128713")),
    ("sdxl:checkpoint:civitai:827184@2514310", CivitaiRef("827184", "2514310")),
    ("urn:air:sdxl:checkpoint:civitai:827184@2514310+2402203",
     CivitaiRef("827184", "2514310", file_id="2402203")),
    ("urn:air:sd1:checkpoint:civitai:4384.safetensor", CivitaiRef("4384", None, file_format="SafeTensor")),
    ("urn:air:model:huggingface:stabilityai/sdxl-vae", HuggingFaceRef("stabilityai/sdxl-vae", None)),
    ("https://example.com/files/model.safetensors", UrlRef("https://example.com/files/model.safetensors")),
    ("https://example.com/dl?id=5#section", UrlRef("https://example.com/dl?id=5")),
])
def test_accepted_forms(text, expected):
    assert parse_source(text) == expected


@pytest.mark.parametrize("text, says", [
    ("", "Enter a model source"),
    ("   \t ", "Enter a model source"),
    ("javascript:alert(1)", "javascript: links are not accepted"),
    ("JavaScript://%0aalert(1)", "javascript: links are not accepted"),
    ("file:///etc/passwd", "file: links are not accepted"),
    ("data:application/octet-stream;base64,AAAA", "data: links are not accepted"),
    ("ftp://example.com/model.safetensors", "ftp: links are not accepted"),
    ("http://example.com/model.safetensors", "plain http:// is not accepted"),
    ("https://user:secret@example.com/model.safetensors", "user name or password"),
    ("https://civitai.com@evil.example/models/1", "user name or password"),
    ("https://token@huggingface.co/org/name", "user name or password"),
    ("https://example.com/a b.safetensors", "spaces or control characters"),
    ("org/name\n:x.safetensors", "spaces or control characters"),
    ("org/name\x00", "spaces or control characters"),
    ("https://[::1/model", "not a valid URL"),
    ("https://example.com:99999/model", "not a valid URL"),
    ("0123", "positive number"),
    ("gpt2", "neither an id"),
    ("org/name:", "nothing follows ':'"),
    ("org/name:../../etc/passwd", "not a file path"),
    ("org/name:sub/../x.safetensors", "not a file path"),
    ("org/na--me", "not a Hugging Face repo id"),
    ("org/name/sub/folder", "org/name:path/model.safetensors"),
    ("org/name@..:x.safetensors", "not a revision"),
    ("https://huggingface.co/datasets/org/name", "datasets are not models"),
    ("https://huggingface.co/org", "names a repo"),
    ("https://huggingface.co/org/name/commits/main", "links are not files"),
    ("https://civitai.com/images/123", "not a model"),
    ("https://civitai.com/models/abc", "not a Civitai id"),
    ("https://civitai.com/models/1?modelVersionId=1;DROP", "not a Civitai id"),
    ("urn:air:sd1:model:openai:dalle@2", "'openai' is not one Atelier reads"),
    ("urn:air:sd1:checkpoint:civitai:abc", "is not '<modelId>[@<versionId>]'"),
])
def test_refused_forms_say_why_and_show_examples(text, says):
    with pytest.raises(ModelSourceError) as caught:
        parse_source(text)
    message = str(caught.value)
    assert says in message
    assert caught.value.status == 400
    if text.strip():
        assert "Examples:" in message and "civitai.com/models/" in message


def test_huge_input_is_refused_before_any_parsing_and_not_echoed_whole():
    text = "https://example.com/" + "a" * (MAX_SOURCE_LENGTH * 50)
    with pytest.raises(ModelSourceError) as caught:
        parse_source(text)
    assert f"at most {MAX_SOURCE_LENGTH}" in str(caught.value)
    assert len(str(caught.value)) < 2000


def test_control_characters_are_escaped_in_the_error():
    with pytest.raises(ModelSourceError) as caught:
        parse_source("org/name\x1b[31mred")
    assert "\x1b" not in str(caught.value)


def test_non_text_is_refused():
    with pytest.raises(ModelSourceError, match="must be text"):
        parse_source(4384)  # type: ignore[arg-type]


def test_a_civitai_ref_needs_an_id():
    with pytest.raises(ModelSourceError, match="model id or a model-version id"):
        CivitaiRef(None, None)
