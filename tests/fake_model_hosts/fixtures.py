"""Pytest fixtures for the fake model hosts. A test module that uses them says

    pytest_plugins = ["tests.fake_model_hosts.fixtures"]

(importing this module as well makes pytest warn that it cannot rewrite its asserts: use the fixtures)

- `fake_civitai`: a started `FakeCivitai` (API + storage ports), closed after the test.
- `fake_hub`: a started `FakeHub` (Hub + CDN ports), closed after the test; for its duration
  huggingface_hub is online (tests/conftest.py sets HF_HUB_OFFLINE=1, which it reads at import),
  Xet is off (it would ignore the endpoint) and HF_ENDPOINT points at the fake.
- `guarded_http_for`: a factory, `guarded_http_for(civitai=..., civitai_key=..., hub=..., hf_token=...,
  **GuardedHttp keywords)` gives a GuardedHttp that allows
  loopback addresses and sends each secret only to its fake host's port, as the app binds them to
  civitai.com / the HF endpoint.
"""

from __future__ import annotations

import pytest

from modules.model_sources.http import GuardedHttp, HostCredential
from tests.fake_model_hosts.civitai import FakeCivitai
from tests.fake_model_hosts.huggingface import FakeHub


@pytest.fixture
def fake_civitai():
    civitai = FakeCivitai()
    try:
        yield civitai
    finally:
        civitai.close()


@pytest.fixture
def fake_hub(monkeypatch):
    from huggingface_hub import constants

    hub = FakeHub()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
    try:
        yield hub
    finally:
        hub.close()


@pytest.fixture
def guarded_http_for():
    return make_guarded_http


def make_guarded_http(*, civitai: FakeCivitai | None = None, civitai_key: str | None = None,
                     hub: FakeHub | None = None, hf_token: str | None = None, **kwargs) -> GuardedHttp:
    credentials = []
    if civitai is not None and civitai_key:
        credentials.append(HostCredential("127.0.0.1", "Authorization", f"Bearer {civitai_key}", port=civitai.api.port))
    if hub is not None and hf_token:
        credentials.append(HostCredential("127.0.0.1", "Authorization", f"Bearer {hf_token}", port=hub.hub.port))
    return GuardedHttp(allow_private=True, credentials=credentials, **kwargs)
