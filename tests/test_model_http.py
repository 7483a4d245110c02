"""GuardedHttp and the first-bytes check, against fake hosts on separate loopback ports.

Two ports of 127.0.0.1 are two origins: a redirect between them is cross-origin, which is what the
credential rules are about. Address refusals use a resolver that answers what DNS would, and (for a
refusal further down a redirect chain) a policy that counts 127.0.0.1 alone as "the internet".
"""

from __future__ import annotations

import io
import json
import pickle
import zipfile

import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import save as save_safetensors

from modules.common.net_guard import is_public_address
from modules.model_sources.http import (GuardedHttp, HostCredential, HttpStatusError, TransientHttpError, redact,
                                        shown_url)
from modules.model_sources.sniff import BodyRefused, check_body, expected_kind
from modules.model_sources.types import ModelSourceError
from tests.fake_model_hosts.server import FakeHost, Reply

LOGIN_PAGE = ("<!DOCTYPE html><html><head><title>Sign in</title></head><body><h1>Sign in to continue</h1>"
              "<form method=post><input name=user><input type=password name=password></form></body></html>")


@pytest.fixture
def hosts():
    api, cdn = FakeHost("api"), FakeHost("cdn")
    yield api, cdn
    api.close()
    cdn.close()


def only_loopback_is_public(address: str) -> bool:
    """127.0.0.1 plays a public host; every other address gets the real verdict."""
    return address == "127.0.0.1" or is_public_address(address)


def test_redirect_across_ports_sends_the_credential_only_to_its_host(hosts):
    api, cdn = hosts
    api.route("GET", "/download", lambda r: Reply.redirect(f"{cdn.base_url}/blob?X-Amz-Signature=abc"))
    cdn.route("GET", "/blob", lambda r: Reply(200, [("Content-Type", "application/octet-stream")], b"weights"))
    http = GuardedHttp(allow_private=True,
                       credentials=[HostCredential("127.0.0.1", "Authorization", "Bearer key-for-api", port=api.port)])

    with http.open(f"{api.base_url}/download", headers={"Cookie": "session=1", "X-Trace": "t"}) as response:
        assert response.status == 200 and response.read() == b"weights"
        assert response.url == f"{cdn.base_url}/blob?X-Amz-Signature=abc"
        assert response.redirects == [f"{api.base_url}/download"]

    sent_to_api, sent_to_cdn = api.log[0].headers, cdn.log[0].headers
    assert sent_to_api["authorization"] == "Bearer key-for-api" and sent_to_api["cookie"] == "session=1"
    assert "authorization" not in sent_to_cdn and "cookie" not in sent_to_cdn
    assert sent_to_cdn["x-trace"] == "t"  # only secrets are dropped
    assert cdn.log[0].query == {"X-Amz-Signature": "abc"}


def test_the_credential_replaces_a_callers_header_of_the_same_name(hosts):
    api, _ = hosts
    api.route("GET", "/x", lambda r: Reply.json({}))
    http = GuardedHttp(allow_private=True,
                       credentials=[HostCredential("127.0.0.1", "Authorization", "Bearer right", port=api.port)])
    http.get_json(f"{api.base_url}/x", headers={"authorization": "Bearer wrong"})
    assert api.log[0].headers["authorization"] == "Bearer right"


def test_a_credential_without_port_goes_over_https_only(hosts):
    api, _ = hosts
    api.route("GET", "/x", lambda r: Reply.json({}))
    http = GuardedHttp(allow_private=True, credentials=[
        HostCredential("127.0.0.1", "Authorization", "Bearer any-port"),  # no port: https only
        HostCredential("127.0.0.1", "X-Other", "other-port", port=api.port + 1 if api.port < 65535 else 1),
    ])
    http.get_json(f"{api.base_url}/x")
    assert "authorization" not in api.log[0].headers and "x-other" not in api.log[0].headers


def test_relative_redirects_and_303_are_followed(hosts):
    api, _ = hosts
    api.route("POST", "/start", lambda r: Reply.redirect("../done?x=1", status=303))
    api.route("GET", "/done", lambda r: Reply.json({"ok": True, "method": r.method, "q": r.query}))
    http = GuardedHttp(allow_private=True)
    with http.open(f"{api.base_url}/a/start".replace("/a/start", "/start"), method="POST") as response:
        assert json.loads(response.read()) == {"ok": True, "method": "GET", "q": {"x": "1"}}


def test_redirect_loops_are_cut(hosts):
    api, _ = hosts
    api.route("GET", "/loop", lambda r: Reply.redirect("/loop"))
    with pytest.raises(ModelSourceError, match="redirected more than 3 times"):
        GuardedHttp(allow_private=True, max_redirects=3).open(f"{api.base_url}/loop")
    assert len(api.log) == 4


def test_loopback_is_refused_unless_private_addresses_are_allowed(hosts):
    api, _ = hosts
    api.route("GET", "/x", lambda r: Reply.json({}))
    with pytest.raises(ModelSourceError, match="model_sources_allow_private") as refused:
        GuardedHttp().get_json(f"{api.base_url}/x")
    assert "127.0.0.1" in str(refused.value) and refused.value.status == 403
    assert api.log == []  # refused before connecting
    assert GuardedHttp(allow_private=True).get_json(f"{api.base_url}/x") == {}


@pytest.mark.parametrize("address", ["10.1.2.3", "192.168.0.7", "169.254.169.254", "::1", "::ffff:127.0.0.1",
                                     "fd00::1", "0.0.0.0"])
def test_a_name_resolving_to_a_private_address_is_refused(hosts, address):
    api, _ = hosts
    api.route("GET", "/x", lambda r: Reply.json({}))
    # One answer public, one private: any private answer refuses (the connection may use either).
    http = GuardedHttp(resolver=lambda host, port: ["93.184.216.34", address])
    with pytest.raises(ModelSourceError, match=r"'mirror\.example' resolves to a non-public address"):
        http.open("https://mirror.example/model.safetensors")


def test_a_redirect_to_a_private_address_is_refused_mid_chain(hosts):
    api, cdn = hosts
    api.route("GET", "/download", lambda r: Reply.redirect(f"http://metadata.internal:{cdn.port}/latest"))
    cdn.route("GET", "/latest", lambda r: Reply.json({"secret": "cloud credentials"}))

    def resolver(host, port):
        return ["169.254.169.254"] if host == "metadata.internal" else ["127.0.0.1"]

    http = GuardedHttp(resolver=resolver, address_allowed=only_loopback_is_public)
    with pytest.raises(ModelSourceError, match="metadata.internal.*non-public address.*169.254.169.254") as refused:
        http.open(f"{api.base_url}/download")
    assert "a redirect from" in str(refused.value)
    assert len(api.log) == 1 and cdn.log == []


def test_a_certificate_that_does_not_verify_is_a_refusal_not_a_network_error(tmp_path):
    import shutil
    import ssl
    import subprocess
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a self-signed certificate")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    server = HTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        with pytest.raises(ModelSourceError, match="certificate that does not verify") as refused:
            GuardedHttp(allow_private=True).open(f"https://127.0.0.1:{server.server_address[1]}/m.safetensors")
        assert not isinstance(refused.value, TransientHttpError)  # a downloader does not retry it
    finally:
        server.shutdown()
        server.server_close()


def test_urls_with_userinfo_or_other_schemes_are_refused_without_echoing_passwords():
    http = GuardedHttp(allow_private=True)
    with pytest.raises(ModelSourceError, match="user name or password") as refused:
        http.open("https://user:hunter2secret@example.com/m.safetensors")
    assert "hunter2secret" not in str(refused.value)
    with pytest.raises(ModelSourceError, match="not an http"):
        http.open("file:///etc/passwd")


def test_get_json_errors_name_the_status_and_message_with_the_hint(hosts):
    api, _ = hosts
    api.route("GET", "/api/v1/models/1", lambda r: Reply.json({"error": "Unauthorized: provide an API key"}, 401))
    api.route("GET", "/api/v1/models/2", lambda r: Reply.json({"error": "No model with id 2"}, 404))
    http = GuardedHttp(allow_private=True)
    with pytest.raises(HttpStatusError) as error:
        http.get_json(f"{api.base_url}/api/v1/models/1", hint="this file needs a Civitai API key")
    message = str(error.value)
    assert error.value.status_code == 401 and "401" in message
    assert "Unauthorized: provide an API key" in message and "this file needs a Civitai API key" in message
    with pytest.raises(HttpStatusError, match="No model with id 2") as missing:
        http.get_json(f"{api.base_url}/api/v1/models/2")
    assert missing.value.status_code == 404 and missing.value.status == 404


def test_get_json_waits_out_a_short_retry_after(hosts):
    api, _ = hosts
    answers = [Reply.json({"error": "Too Many Requests"}, 429, headers=[("Retry-After", "2")]),
               Reply.json({"error": "Too Many Requests"}, 429, headers=[("Retry-After", "1")]),
               Reply.json({"id": 7})]
    api.route("GET", "/api/v1/models/7", lambda r: answers.pop(0))
    waited = []
    assert GuardedHttp(allow_private=True, sleep=waited.append).get_json(f"{api.base_url}/api/v1/models/7") == {"id": 7}
    assert waited == [2.0, 1.0] and len(api.log) == 3


def test_get_json_reports_a_long_retry_after_instead_of_waiting(hosts):
    api, _ = hosts
    api.route("GET", "/limited", lambda r: Reply.json({"error": "Too Many Requests"}, 429,
                                                     headers=[("Retry-After", "3600")]))
    waited = []
    with pytest.raises(HttpStatusError, match="try again in 3600 s") as error:
        GuardedHttp(allow_private=True, sleep=waited.append).get_json(f"{api.base_url}/limited")
    assert waited == [] and error.value.retry_after == 3600 and error.value.status == 429


def test_tokens_never_appear_in_messages(hosts):
    api, _ = hosts
    token = "civitai-key-0123456789abcdef"
    # A host that echoes what it got, as some error pages do.
    api.route("GET", "/echo", lambda r: Reply.json({"error": f"bad key {r.headers.get('authorization')}"}, 403))
    http = GuardedHttp(allow_private=True,
                       credentials=[HostCredential("127.0.0.1", "Authorization", f"Bearer {token}", port=api.port)])
    with pytest.raises(HttpStatusError) as error:
        http.get_json(f"{api.base_url}/echo?token=query-secret-value&X-Amz-Signature=sig-secret")
    text = f"{error.value} {error.value.body_text} {error.value.url}"
    assert api.log[0].headers["authorization"] == f"Bearer {token}"  # it was sent, to its host
    assert token not in text and "query-secret-value" not in text and "sig-secret" not in text
    assert "bad key" in str(error.value)
    assert token not in repr(http.credentials)


def test_redact_and_shown_url():
    text = "Authorization: Bearer abcdef123456 then hf_AbCdEfGhIjKlMnOpQrSt and mysecretvalue"
    assert redact(text, ["mysecretvalue"]) == "Authorization: Bearer <redacted> then <redacted> and <redacted>"
    assert shown_url("https://u:p@cdn.example/a/b.safetensors?sig=1#x") == "https://cdn.example/a/b.safetensors?…"


def test_get_bytes_returns_the_body_and_type_within_a_limit(hosts):
    api, _ = hosts
    api.route("GET", "/preview.png", lambda r: Reply(200, [("Content-Type", "image/png")], b"\x89PNG" + b"0" * 96))
    http = GuardedHttp(allow_private=True)
    assert http.get_bytes(f"{api.base_url}/preview.png", max_bytes=100) == (b"\x89PNG" + b"0" * 96, "image/png")
    with pytest.raises(ModelSourceError, match="more than 99 bytes"):
        http.get_bytes(f"{api.base_url}/preview.png", max_bytes=99)


# -- first bytes ----------------------------------------------------------------------------------------


def safetensors_bytes() -> bytes:
    return save_safetensors({"w": np.arange(6, dtype=np.float32)})


def png_bytes() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (4, 4), "red").save(out, format="PNG")
    return out.getvalue()


def torch_zip_bytes() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:  # torch.save's layout: a zip with archive/data.pkl
        archive.writestr("archive/data.pkl", pickle.dumps({"state_dict": {}}, protocol=2))
    return out.getvalue()


@pytest.mark.parametrize("name, body, content_type", [
    ("m.safetensors", safetensors_bytes(), "application/octet-stream"),
    ("m.ckpt", torch_zip_bytes(), "application/zip"),
    ("m.pt", pickle.dumps({"string_to_param": {}}, protocol=2), "binary/octet-stream"),
    ("m.yaml", b"model:\n  target: ldm.models.diffusion.ddpm.LatentDiffusion\n", "text/plain; charset=utf-8"),
    ("m.preview.png", png_bytes(), "image/png"),
    ("m.gguf", safetensors_bytes(), ""),
])
def test_real_files_pass_the_first_bytes_check(name, body, content_type):
    check_body(expected_kind(name), body[:4096], status=200, content_type=content_type)


@pytest.mark.parametrize("name, body, content_type, says", [
    ("m.safetensors", LOGIN_PAGE.encode(), "text/html", "a login page"),
    ("m.safetensors", b"<html><body><h1>404 Not Found</h1></body></html>", "application/octet-stream", "a web page"),
    ("m.safetensors", json.dumps({"error": "Model is in early access"}).encode(), "application/json",
     "Model is in early access"),
    ("m.safetensors", b"Access denied for this file", "text/plain", "Access denied for this file"),
    ("m.safetensors", torch_zip_bytes(), "application/octet-stream", "do not start like one"),
    ("m.ckpt", safetensors_bytes(), "application/octet-stream", "do not start like one"),
    ("m.safetensors", safetensors_bytes(), "text/plain", "text"),  # the host declares text
    ("m.yaml", LOGIN_PAGE.encode(), "text/html", "a login page"),
    ("m.preview.png", b"<?xml version='1.0'?><Error><Code>AccessDenied</Code></Error>", "application/xml",
     "do not start like one"),
    ("m.safetensors", b"", "application/octet-stream", "an empty body"),
])
def test_error_bodies_are_refused_with_what_came_back(name, body, content_type, says):
    with pytest.raises(BodyRefused) as refused:
        check_body(expected_kind(name), body[:4096], status=200, content_type=content_type,
                   url="https://cdn.example/m", hint="this file needs a Civitai API key: Settings → Model sources")
    message = str(refused.value)
    assert says in message and "nothing was saved" in message and "HTTP 200" in message
    # The access hint where the host sent a page or a message; bytes of another kind get other advice.
    hinted = message.endswith("this file needs a Civitai API key: Settings → Model sources.")
    assert hinted == (says not in ("do not start like one", "an empty body"))
