"""The downloader against fake hosts that misbehave: drops, Range ignored, 416, auth errors, login
pages, rate limits, expired signed URLs, wrong bytes, a full disk, a cancel.

Bytes re-sent on a resume are read from the host's request log (the Range header), hashes are
computed from the in-memory files.
"""

from __future__ import annotations

import errno
import hashlib
import secrets
import threading

import numpy as np
import pytest
from safetensors.numpy import save as save_safetensors

from modules.common.atomic_files import DiskFullError
from modules.model_sources import downloader
from modules.model_sources.downloader import (DownloadCancelled, DownloadProgress, DownloadSpec, _Meter, download,
                                              part_path)
from modules.model_sources.http import GuardedHttp, HostCredential, HttpStatusError
from modules.model_sources.sniff import BodyRefused
from modules.model_sources.types import ModelSourceError
from tests.fake_model_hosts.server import Blob, BlobKnobs, FakeHost, Reply, serve_blob

MiB = 1 << 20
HINT = "this file needs a Civitai API key: Settings → Model sources"


def model_bytes(megabytes: float = 3) -> bytes:
    """A real safetensors file of about `megabytes`, random content."""
    count = int(megabytes * MiB) // 4
    return save_safetensors({"w": np.random.default_rng(0).standard_normal(count).astype(np.float32)})


@pytest.fixture
def cdn():
    host = FakeHost("cdn")
    yield host
    host.close()


@pytest.fixture
def api():
    host = FakeHost("api")
    yield host
    host.close()


@pytest.fixture
def http():
    return GuardedHttp(allow_private=True, timeout=10)


def serve(host: FakeHost, data: bytes, path: str = "/files/model.safetensors", **knobs) -> Blob:
    blob = Blob(path.rsplit("/", 1)[-1], data, BlobKnobs(**knobs))
    host.route("GET", path, lambda request: serve_blob(request, blob))
    return blob


def ranges(host: FakeHost) -> list[str | None]:
    return [r.headers.get("range") for r in host.log]


def test_a_download_is_verified_and_renamed_into_place(cdn, http, tmp_path):
    data = model_bytes()
    blob = serve(cdn, data)
    seen: list[DownloadProgress] = []
    destination = tmp_path / "Stable-diffusion" / "model.safetensors"

    result = download(DownloadSpec(f"{cdn.base_url}/files/model.safetensors", destination,
                                   expected_sha256=blob.sha256.upper(), expected_size=len(data)), http,
                      progress=seen.append)

    assert destination.read_bytes() == data and not part_path(destination).exists()
    assert (result.path, result.sha256, result.size, result.resumed_from) == (
        destination, hashlib.sha256(data).hexdigest(), len(data), 0)
    assert seen[-1].bytes_done == len(data) and seen[-1].total == len(data)
    assert ranges(cdn) == [None]


def test_dropped_connections_resume_from_what_is_on_disk(cdn, http, tmp_path):
    data = model_bytes()
    blob = serve(cdn, data, drop_after=MiB, drops=2)
    result = download(DownloadSpec(f"{cdn.base_url}/files/model.safetensors", tmp_path / "m.safetensors",
                                   expected_sha256=blob.sha256), http, backoff=0)
    assert result.sha256 == blob.sha256 and (tmp_path / "m.safetensors").read_bytes() == data
    # Each drop cut the body after 1 MiB; each retry asked for the rest only.
    assert ranges(cdn) == [None, f"bytes={MiB}-", f"bytes={2 * MiB}-"]


def test_failures_in_a_row_end_the_download_but_keep_the_part_for_a_later_resume(cdn, http, tmp_path):
    data = model_bytes()
    blob = Blob("m.safetensors", data, BlobKnobs(drop_after=MiB, drops=1))
    overloaded = [True]
    cdn.route("GET", "/m", lambda r: Reply.json({"error": "upstream timeout"}, 503)
              if overloaded[0] and blob.served else serve_blob(r, blob))
    spec = DownloadSpec(f"{cdn.base_url}/m", tmp_path / "m.safetensors", expected_sha256=blob.sha256)
    # 1 MiB, then two 503s in a row: more than retries=1.
    with pytest.raises(ModelSourceError, match=r"failed 2 times in a row.*partial file \(1048576 bytes\) is kept"):
        download(spec, http, retries=1, backoff=0)
    assert part_path(spec.destination).read_bytes() == data[:MiB]

    overloaded[0] = False
    cdn.log.clear()
    result = download(spec, http, backoff=0)
    assert result.resumed_from == MiB and spec.destination.read_bytes() == data
    assert ranges(cdn) == [f"bytes={MiB}-"]


def test_a_server_ignoring_range_restarts_cleanly_from_zero(cdn, http, tmp_path):
    data = model_bytes()
    blob = serve(cdn, data, ignore_range=True)
    destination = tmp_path / "m.safetensors"
    part_path(destination).write_bytes(b"stale bytes of another download" * 1000)  # not a prefix of data
    result = download(DownloadSpec(f"{cdn.base_url}/files/model.safetensors", destination,
                                   expected_sha256=blob.sha256), http)
    assert destination.read_bytes() == data and result.resumed_from == 0
    assert ranges(cdn) == [f"bytes={len(b'stale bytes of another download') * 1000}-"]  # one request, 200


def test_416_for_a_complete_part_verifies_it_without_downloading(cdn, http, tmp_path):
    data = model_bytes()
    blob = serve(cdn, data, always_416=True)
    destination = tmp_path / "m.safetensors"
    part_path(destination).write_bytes(data)
    result = download(DownloadSpec(f"{cdn.base_url}/files/model.safetensors", destination,
                                   expected_sha256=blob.sha256), http)
    assert result.resumed_from == len(data) and destination.read_bytes() == data
    assert ranges(cdn) == [f"bytes={len(data)}-"]  # answered 416: no body sent


def test_a_complete_part_of_known_size_needs_no_request(cdn, http, tmp_path):
    data = model_bytes(1)
    blob = serve(cdn, data)
    destination = tmp_path / "m.safetensors"
    part_path(destination).write_bytes(data)
    download(DownloadSpec(f"{cdn.base_url}/files/model.safetensors", destination, expected_sha256=blob.sha256,
                          expected_size=len(data)), http)
    assert destination.read_bytes() == data and cdn.log == []


def test_416_for_a_stale_part_restarts_from_zero(cdn, http, tmp_path):
    data = model_bytes()
    blob = serve(cdn, data, always_416=True)  # every Range request: 416
    destination = tmp_path / "m.safetensors"
    part_path(destination).write_bytes(data[:1000])
    result = download(DownloadSpec(f"{cdn.base_url}/files/model.safetensors", destination,
                                   expected_sha256=blob.sha256), http)
    assert destination.read_bytes() == data and result.resumed_from == 0
    assert ranges(cdn) == ["bytes=1000-", None]


@pytest.mark.parametrize("status", [401, 403])
def test_auth_errors_as_json_name_the_status_and_the_hint(api, http, tmp_path, status):
    api.route("GET", "/api/download/models/1",
              lambda r: Reply.json({"error": "The creator requires you to be logged in"}, status))
    destination = tmp_path / "m.safetensors"
    with pytest.raises(HttpStatusError) as error:
        download(DownloadSpec(f"{api.base_url}/api/download/models/1", destination, hint_401=HINT), http)
    message = str(error.value)
    assert error.value.status_code == status and f"HTTP {status}" in message
    assert "The creator requires you to be logged in" in message and HINT in message
    assert not destination.exists() and not part_path(destination).exists()


def login_or_json(request):
    """Civitai's habit: a browser gets a login page, an API client a JSON 401."""
    if "Mozilla" in request.headers.get("user-agent", ""):
        return Reply.redirect("/login?returnUrl=/api/download/models/1")
    return Reply.json({"error": "Unauthorized"}, 401)


def test_a_login_page_is_never_saved_as_a_model(api, tmp_path):
    api.route("GET", "/api/download/models/1", login_or_json)
    api.route("GET", "/login", lambda r: Reply.text(
        "<!DOCTYPE html><html><head><title>Sign in | Models</title></head><body><form action=/signin>"
        "<input type=password name=password></form></body></html>", content_type="text/html; charset=utf-8"))
    destination = tmp_path / "m.safetensors"
    browser = GuardedHttp(allow_private=True, user_agent="Mozilla/5.0 (X11; Linux x86_64) Firefox/140.0")
    with pytest.raises(BodyRefused) as refused:
        download(DownloadSpec(f"{api.base_url}/api/download/models/1", destination, hint_401=HINT), browser)
    message = str(refused.value)
    assert "a login page" in message and "Sign in | Models" in message and "text/html" in message
    assert "nothing was saved" in message
    assert not destination.exists() and not part_path(destination).exists()
    # The same link as an API client: the JSON 401, with the hint.
    with pytest.raises(HttpStatusError, match="Unauthorized.*Settings → Model sources"):
        download(DownloadSpec(f"{api.base_url}/api/download/models/1", destination, hint_401=HINT),
                 GuardedHttp(allow_private=True))


def test_an_html_body_is_refused_for_a_safetensors_file(cdn, http, tmp_path):
    serve(cdn, b"<html><body><h1>Model temporarily unavailable</h1></body></html>", content_type="text/html")
    destination = tmp_path / "m.safetensors"
    with pytest.raises(BodyRefused, match="a web page.*Model temporarily unavailable.*instead of a safetensors file"):
        download(DownloadSpec(f"{cdn.base_url}/files/model.safetensors", destination), http)
    assert not destination.exists() and not part_path(destination).exists()


def test_a_ckpt_destination_refuses_safetensors_bytes(cdn, http, tmp_path):
    serve(cdn, model_bytes(0.1), path="/files/model.ckpt")
    with pytest.raises(BodyRefused, match="instead of a PyTorch checkpoint"):
        download(DownloadSpec(f"{cdn.base_url}/files/model.ckpt", tmp_path / "m.ckpt"), http)


def test_404_says_what_to_check(cdn, http, tmp_path):
    with pytest.raises(HttpStatusError, match="HTTP 404.*check the model/version id") as error:
        download(DownloadSpec(f"{cdn.base_url}/files/missing.safetensors", tmp_path / "m.safetensors"), http)
    assert error.value.status == 404 and not part_path(tmp_path / "m.safetensors").exists()


def test_429_with_a_short_retry_after_is_waited_out(cdn, http, tmp_path):
    data = model_bytes(1)
    blob = Blob("m.safetensors", data)
    answers = [Reply.json({"error": "Too Many Requests"}, 429, headers=[("Retry-After", "0")])]
    cdn.route("GET", "/m", lambda r: answers.pop(0) if answers else serve_blob(r, blob))
    result = download(DownloadSpec(f"{cdn.base_url}/m", tmp_path / "m.safetensors", expected_sha256=blob.sha256),
                      http, backoff=0)
    assert result.sha256 == blob.sha256 and len(cdn.log) == 2


def test_429_with_a_long_retry_after_is_reported(cdn, http, tmp_path):
    cdn.route("GET", "/m", lambda r: Reply.json({"error": "Too Many Requests"}, 429,
                                                headers=[("Retry-After", "7200")]))
    with pytest.raises(HttpStatusError, match="try again in 7200 s"):
        download(DownloadSpec(f"{cdn.base_url}/m", tmp_path / "m.safetensors"), http, backoff=0)
    assert len(cdn.log) == 1


class SignedStorage:
    """Signed URLs that can be expired, answered like S3: 403 XML `Request has expired`."""

    def __init__(self, host: FakeHost, blob: Blob):
        self.host, self.blob, self.valid, self.issued = host, blob, set(), 0
        host.route("GET", "/signed/m.safetensors", self.answer)

    def sign(self) -> str:
        signature = secrets.token_hex(8)
        self.valid.add(signature)
        self.issued += 1
        return f"{self.host.base_url}/signed/m.safetensors?X-Amz-Expires=60&X-Amz-Signature={signature}"

    def expire_all(self) -> None:
        self.valid.clear()

    def answer(self, request):
        if request.query.get("X-Amz-Signature") not in self.valid:
            return Reply(403, [("Content-Type", "application/xml")],
                         b"<?xml version='1.0'?><Error><Code>AccessDenied</Code><Message>Request has expired"
                         b"</Message></Error>")
        return serve_blob(request, self.blob)


def test_an_expired_signed_url_is_refreshed_on_resume(cdn, http, tmp_path):
    data = model_bytes()
    blob = Blob("m.safetensors", data, BlobKnobs(drop_after=MiB, drops=1))
    storage = SignedStorage(cdn, blob)
    first_url = storage.sign()

    def refresh() -> str:
        storage.expire_all()  # by the time a resume happens, the first URL has expired
        return storage.sign()

    result = download(DownloadSpec(first_url, tmp_path / "m.safetensors", expected_sha256=blob.sha256,
                                   refresh_url=refresh), http, backoff=0)
    assert result.sha256 == blob.sha256 and storage.issued == 2
    assert ranges(cdn) == [None, f"bytes={MiB}-"]
    assert cdn.log[0].query["X-Amz-Signature"] != cdn.log[1].query["X-Amz-Signature"]


def test_a_signed_url_that_expired_before_the_start_is_refreshed_once(cdn, http, tmp_path):
    blob = Blob("m.safetensors", model_bytes(1))
    storage = SignedStorage(cdn, blob)
    stale = storage.sign()
    storage.expire_all()
    download(DownloadSpec(stale, tmp_path / "m.safetensors", expected_sha256=blob.sha256,
                          refresh_url=storage.sign), http, backoff=0)
    assert storage.issued == 2 and len(cdn.log) == 2

    # A refreshed URL that is still refused is a real refusal: reported with the hint.
    def refused_again() -> str:
        url = storage.sign()
        storage.expire_all()
        return url

    with pytest.raises(HttpStatusError, match=f"HTTP 403.*Request has expired.*{HINT}"):
        download(DownloadSpec(stale, tmp_path / "n.safetensors", refresh_url=refused_again, hint_401=HINT),
                 http, backoff=0)


def test_a_wrong_hash_removes_the_file_and_says_so(cdn, http, tmp_path):
    data = model_bytes()
    tampered = data[:-1] + bytes([data[-1] ^ 1])  # valid header, one bit off at the end
    serve(cdn, tampered)
    destination = tmp_path / "m.safetensors"
    with pytest.raises(ModelSourceError, match="sha256 mismatch.*The file was removed") as error:
        download(DownloadSpec(f"{cdn.base_url}/files/model.safetensors", destination,
                              expected_sha256=hashlib.sha256(data).hexdigest()), http)
    assert hashlib.sha256(tampered).hexdigest() in str(error.value)
    assert not destination.exists() and not part_path(destination).exists()


def test_a_kept_part_that_is_not_the_file_fails_the_hash_and_is_removed(cdn, http, tmp_path):
    data = model_bytes()
    blob = serve(cdn, data)
    destination = tmp_path / "m.safetensors"
    part_path(destination).write_bytes(bytes(MiB))  # zeros: the start of some other file
    with pytest.raises(ModelSourceError, match="sha256 mismatch"):
        download(DownloadSpec(f"{cdn.base_url}/files/model.safetensors", destination, expected_sha256=blob.sha256),
                 http)
    assert ranges(cdn) == [f"bytes={MiB}-"]  # resumed after the kept bytes, which the hash covered
    assert not part_path(destination).exists() and not destination.exists()


def test_an_existing_destination_is_never_overwritten(cdn, http, tmp_path):
    data = model_bytes(1)
    blob = serve(cdn, data)
    destination = tmp_path / "m.safetensors"
    destination.write_bytes(b"the user's own file")
    with pytest.raises(ModelSourceError, match="already exists") as error:
        download(DownloadSpec(f"{cdn.base_url}/files/model.safetensors", destination), http)
    assert error.value.status == 409 and destination.read_bytes() == b"the user's own file" and cdn.log == []

    # A file that appears under the name while downloading is not replaced either.
    other = tmp_path / "other.safetensors"

    def appear(progress: DownloadProgress) -> None:
        if not other.exists():
            other.write_bytes(b"appeared meanwhile")

    with pytest.raises(ModelSourceError, match="appeared while downloading; it was not overwritten"):
        download(DownloadSpec(f"{cdn.base_url}/files/model.safetensors", other, expected_sha256=blob.sha256),
                 http, progress=appear)
    assert other.read_bytes() == b"appeared meanwhile" and part_path(other).read_bytes() == data


def test_cancel_keeps_the_part_and_a_later_call_resumes(cdn, http, tmp_path):
    data = model_bytes(4)
    blob = serve(cdn, data)
    destination = tmp_path / "m.safetensors"
    cancel = threading.Event()
    spec = DownloadSpec(f"{cdn.base_url}/files/model.safetensors", destination, expected_sha256=blob.sha256)
    # The first progress report comes once the first bytes passed the check: cancel there.
    with pytest.raises(DownloadCancelled, match="partial file is kept"):
        download(spec, http, cancel=cancel, progress=lambda p: cancel.set())
    kept = part_path(destination).stat().st_size
    assert 0 < kept < len(data) and data.startswith(part_path(destination).read_bytes())

    result = download(spec, http)
    assert result.resumed_from == kept and destination.read_bytes() == data
    # The resume asked for the rest only: len(data) - kept bytes re-sent, not the whole file.
    assert ranges(cdn) == [None, f"bytes={kept}-"]


def test_credentials_go_to_the_api_host_but_not_to_the_cdn(api, cdn, tmp_path):
    data = model_bytes(1)
    blob = serve(cdn, data)
    api.route("GET", "/api/download/models/5",
              lambda r: Reply.redirect(f"{cdn.base_url}/files/model.safetensors?X-Amz-Signature=s", status=307))
    http = GuardedHttp(allow_private=True, credentials=[
        HostCredential("127.0.0.1", "Authorization", "Bearer api-key-123456", port=api.port)])
    download(DownloadSpec(f"{api.base_url}/api/download/models/5", tmp_path / "m.safetensors",
                          expected_sha256=blob.sha256), http)
    assert api.log[0].headers["authorization"] == "Bearer api-key-123456"
    assert all("authorization" not in r.headers for r in cdn.log)


def test_private_addresses_are_refused_unless_allowed(cdn, tmp_path):
    serve(cdn, model_bytes(0.1))
    destination = tmp_path / "m.safetensors"
    with pytest.raises(ModelSourceError, match="non-public address.*model_sources_allow_private"):
        download(DownloadSpec(f"{cdn.base_url}/files/model.safetensors", destination), GuardedHttp())
    # A public-looking name that resolves to a LAN address.
    lan = GuardedHttp(resolver=lambda host, port: ["192.168.1.20"])
    with pytest.raises(ModelSourceError, match="'mirror.example' resolves to a non-public address"):
        download(DownloadSpec(f"http://mirror.example:{cdn.port}/files/model.safetensors", destination), lan)
    assert cdn.log == [] and not part_path(destination).exists()


def test_a_redirect_to_a_private_address_is_refused_mid_chain(api, cdn, tmp_path):
    serve(cdn, model_bytes(0.1))
    api.route("GET", "/dl", lambda r: Reply.redirect(f"http://internal.example:{cdn.port}/files/model.safetensors"))
    http = GuardedHttp(resolver=lambda host, port: ["10.0.0.8"] if host == "internal.example" else ["127.0.0.1"],
                       address_allowed=lambda address: address == "127.0.0.1")  # 127.0.0.1 plays "public"
    with pytest.raises(ModelSourceError, match="'internal.example' .*a redirect from.*non-public address"):
        download(DownloadSpec(f"{api.base_url}/dl", tmp_path / "m.safetensors"), http)
    assert len(api.log) == 1 and cdn.log == []


def test_tokens_are_absent_from_download_errors(api, tmp_path):
    key = "civitai-secret-key-abcdef0123"
    api.route("GET", "/dl", lambda r: Reply.json({"error": f"key {r.headers.get('authorization')} revoked"}, 403))
    http = GuardedHttp(allow_private=True,
                       credentials=[HostCredential("127.0.0.1", "Authorization", f"Bearer {key}", port=api.port)])
    with pytest.raises(HttpStatusError) as error:
        download(DownloadSpec(f"{api.base_url}/dl?token={key}", tmp_path / "m.safetensors", hint_401=HINT), http)
    assert key not in str(error.value) and key not in error.value.body_text and "revoked" in str(error.value)


class _FullDisk:
    """A .part whose writes fail with ENOSPC after `room` bytes, as a full file system does."""

    def __init__(self, real, room: int):
        self.real, self.room = real, room

    def write(self, data) -> int:
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return self.real.write(data)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.real.close()


def test_a_full_disk_mid_way_is_reported_and_the_part_removed(cdn, http, tmp_path, monkeypatch):
    data = model_bytes()
    serve(cdn, data)
    real_open = downloader._open_part
    monkeypatch.setattr(downloader, "_open_part", lambda path, mode: _FullDisk(real_open(path, mode), MiB + 4096))
    destination = tmp_path / "m.safetensors"
    with pytest.raises(DiskFullError, match="not enough free space") as error:
        download(DownloadSpec(f"{cdn.base_url}/files/model.safetensors", destination), http)
    assert error.value.folder == tmp_path
    assert not part_path(destination).exists() and not destination.exists()


def test_free_space_is_checked_before_downloading(cdn, http, tmp_path):
    serve(cdn, model_bytes(0.1))
    with pytest.raises(DiskFullError, match="not enough free space"):
        download(DownloadSpec(f"{cdn.base_url}/files/model.safetensors", tmp_path / "m.safetensors",
                              expected_size=1 << 60), http)
    assert cdn.log == []


def test_a_size_other_than_published_is_refused(cdn, http, tmp_path):
    data = model_bytes(0.5)
    serve(cdn, data)
    with pytest.raises(ModelSourceError, match=f"is {len(data)} bytes but the source published {len(data) + 1}"):
        download(DownloadSpec(f"{cdn.base_url}/files/model.safetensors", tmp_path / "m.safetensors",
                              expected_size=len(data) + 1), http)


def test_a_yaml_config_may_be_text(cdn, http, tmp_path):
    text = b"model:\n  target: ldm.models.diffusion.ddpm.LatentDiffusion\n"
    serve(cdn, text, path="/files/model.yaml", content_type="text/plain; charset=utf-8")
    result = download(DownloadSpec(f"{cdn.base_url}/files/model.yaml", tmp_path / "m.yaml"), http)
    assert result.path.read_bytes() == text


def test_progress_is_throttled_with_a_smoothed_speed_and_eta():
    now = [0.0]
    seen: list[DownloadProgress] = []
    meter = _Meter(seen.append, clock=lambda: now[0])
    meter.start(0, 1000)
    for step in range(1, 5):  # an update every 0.125 s, 10 bytes each: 80 bytes/s
        now[0] = step * 0.125
        meter.update(step * 10)
    # Reports: the start, then one per 0.25 s (at 0.25 s and 0.5 s), not one per update.
    assert [p.bytes_done for p in seen] == [0, 20, 40]
    assert seen[-1].speed == pytest.approx(80.0)
    assert seen[-1].eta == pytest.approx((1000 - 40) / 80.0)
    now[0] = 0.75  # a slower interval: 5 bytes in 0.25 s = 20 bytes/s, smoothed with the past
    meter.update(45)
    assert seen[-1].speed == pytest.approx(0.3 * 20 + 0.7 * 80)


def test_a_body_of_unknown_size_stops_at_the_cap_and_leaves_nothing(cdn, http, tmp_path):
    data = model_bytes(3)
    cdn.route("GET", "/endless.safetensors", lambda request: Reply(
        200, [("Content-Type", "application/octet-stream")], data, send_length=False))
    destination = tmp_path / "endless.safetensors"
    spec = DownloadSpec(f"{cdn.base_url}/endless.safetensors", destination, max_unknown_size=MiB)
    with pytest.raises(ModelSourceError, match="without saying how large"):
        download(spec, http, retries=0)
    assert not destination.exists() and not part_path(destination).exists()
    # Under the cap, the same unsized body is accepted.
    result = download(DownloadSpec(spec.url, destination, max_unknown_size=4 * MiB), http)
    assert result.path.read_bytes() == data
