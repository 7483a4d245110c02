"""HTTPS with --tls-keyfile / --tls-certfile: the flags are checked before anything starts, the page,
the API and the `webuiapi` client work over HTTPS, plain HTTP on that port gets no page, and a LAN
server with passwords and no TLS is warned about. Certificates are made here, self-signed, with the
openssl command."""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
import warnings
from pathlib import Path

import pytest

from modules.serving.cmd_args import parse_args
from modules.serving.listen import plain_http_warning

REPO_ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None,
                                reason="needs the openssl command to make a self-signed certificate")


def make_pair(folder: Path, name: str) -> tuple[Path, Path]:
    """A self-signed certificate for localhost and 127.0.0.1, and its key (EC: quick to make)."""
    key, cert = folder / f"{name}.key", folder / f"{name}.crt"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "2", "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"], check=True, capture_output=True)
    return key, cert


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[Path, Path]:
    return make_pair(tmp_path_factory.mktemp("tls"), "server")


def refusal(capsys, argv: list[str]) -> str:
    """What parse_args says when it stops the start."""
    with pytest.raises(SystemExit) as stop:
        parse_args(argv)
    assert stop.value.code == 2
    return capsys.readouterr().err


def test_a_matching_pair_is_accepted(pair):
    key, cert = pair
    args = parse_args(["--tls-keyfile", str(key), "--tls-certfile", str(cert), "--disable-tls-verify"])
    assert (args.tls_keyfile, args.tls_certfile, args.disable_tls_verify) == (str(key), str(cert), True)


def test_one_flag_without_the_other_is_refused(capsys, pair):
    key, cert = pair
    message = refusal(capsys, ["--tls-keyfile", str(key)])
    assert f"--tls-keyfile {key} is given without --tls-certfile" in message
    message = refusal(capsys, ["--tls-certfile", str(cert)])
    assert f"--tls-certfile {cert} is given without --tls-keyfile" in message


def test_missing_and_unusable_files_are_named(capsys, pair, tmp_path):
    key, cert = pair
    assert f"--tls-keyfile {tmp_path}/nope.key: no such file" in refusal(
        capsys, ["--tls-keyfile", str(tmp_path / "nope.key"), "--tls-certfile", str(cert)])
    assert f"--tls-certfile {tmp_path} is not a file" in refusal(
        capsys, ["--tls-keyfile", str(key), "--tls-certfile", str(tmp_path)])
    # The key where the certificate belongs, and the other way round.
    assert f"--tls-certfile {key} is not a PEM certificate" in refusal(
        capsys, ["--tls-keyfile", str(key), "--tls-certfile", str(key)])
    assert f"--tls-keyfile {cert} is not a PEM private key" in refusal(
        capsys, ["--tls-keyfile", str(cert), "--tls-certfile", str(cert)])
    encrypted = tmp_path / "encrypted.key"
    subprocess.run(["openssl", "pkey", "-in", str(key), "-aes256", "-passout", "pass:secret", "-out", str(encrypted)],
                   check=True, capture_output=True)
    assert f"--tls-keyfile {encrypted} is encrypted with a passphrase" in refusal(
        capsys, ["--tls-keyfile", str(encrypted), "--tls-certfile", str(cert)])


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads files whatever their mode")
def test_an_unreadable_key_is_named(capsys, pair, tmp_path):
    key, cert = pair
    locked = tmp_path / "locked.key"
    shutil.copy(key, locked)
    locked.chmod(0)
    assert f"--tls-keyfile {locked} cannot be read" in refusal(
        capsys, ["--tls-keyfile", str(locked), "--tls-certfile", str(cert)])


def test_a_key_of_another_certificate_is_refused(capsys, pair, tmp_path):
    key, cert = pair
    other_key, _ = make_pair(tmp_path, "other")
    message = refusal(capsys, ["--tls-keyfile", str(other_key), "--tls-certfile", str(cert)])
    assert f"--tls-keyfile {other_key} is not the private key of the certificate in --tls-certfile {cert}" in message


def test_warning_for_passwords_in_clear_on_the_network(pair):
    key, cert = pair
    lan_with_auth = ["--listen", "--gradio-auth", "user:secret"]
    warning = plain_http_warning(parse_args(lan_with_auth), None)
    assert warning is not None and "clear text" in warning and "--tls-keyfile" in warning
    assert plain_http_warning(parse_args(["--server-name", "192.168.1.5", "--api-auth", "u:p"]), None) is not None
    tls_args = parse_args(lan_with_auth + ["--tls-keyfile", str(key), "--tls-certfile", str(cert)])
    from modules.serving.listen import TlsFiles

    assert plain_http_warning(tls_args, TlsFiles.from_args(tls_args)) is None
    assert plain_http_warning(parse_args(["--gradio-auth", "user:secret"]), None) is None  # loopback only
    assert plain_http_warning(parse_args(["--listen"]), None) is None  # no password to leak


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(argv: list[str], data_dir: Path, until: str, timeout: float = 300) -> tuple[subprocess.Popen, str]:
    """webui.py with `argv`, read until a line contains `until`; returns the process and its output."""
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([sys.executable, str(REPO_ROOT / "webui.py"), "--data-dir", str(data_dir), *argv],
                               cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = []
    deadline = time.monotonic() + timeout
    for line in process.stdout:
        output.append(line)
        if until in line or time.monotonic() > deadline:
            break
    text = "".join(output)
    if until not in text:
        stop(process)
        pytest.fail(f"webui.py did not say {until!r}:\n{text[-4000:]}")
    return process, text


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=30)


def test_lan_server_without_tls_warns_at_start(tmp_path):
    port = free_port()
    process, output = start_server(["--nowebui", "--server-name", "127.0.0.1", "--port", str(port), "--gradio-auth",
                                    "user:secret", "--skip-load-model-at-start", "--no-demo-checkpoint"], tmp_path,
                                   until="Atelier running on")
    stop(process)
    assert f"Atelier running on http://127.0.0.1:{port}" in output
    assert "clear text" in output and "--tls-keyfile" in output


def test_page_api_and_webuiapi_over_https(pair, tmp_path, monkeypatch):
    key, cert = pair
    # requests lets these override Session.verify; a client that turns verification off must unset them.
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
    port = free_port()
    (tmp_path / "models" / "Stable-diffusion").mkdir(parents=True)
    from modules.library.synthetic_checkpoints import write_checkpoint

    write_checkpoint(tmp_path / "models" / "Stable-diffusion" / "tiny.safetensors", "sd1", size="tiny", seed=0)
    process, output = start_server(["--api", "--server-name", "127.0.0.1", "--port", str(port), "--gradio-auth",
                                    "user:secret", "--tls-keyfile", str(key), "--tls-certfile", str(cert),
                                    "--skip-load-model-at-start"], tmp_path, until="Atelier running on")
    try:
        assert f"Atelier running on https://127.0.0.1:{port}" in output
        assert "clear text" not in output
        trusting = ssl.create_default_context(cafile=str(cert))  # a client that trusts this certificate
        login = {"Authorization": "Basic " + base64.b64encode(b"user:secret").decode()}

        def get(path: str) -> tuple[int, str]:
            request = urllib.request.Request(f"https://127.0.0.1:{port}{path}", headers=login)
            with urllib.request.urlopen(request, context=trusting, timeout=60) as response:
                return response.status, response.read().decode()

        status, page = get("/")
        assert status == 200 and "gradio" in page.lower()
        status, body = get("/sdapi/v1/sd-models")
        assert status == 200 and [m["model_name"] for m in json.loads(body)] == ["tiny"]

        import webuiapi

        api = webuiapi.WebUIApi(host="127.0.0.1", port=port, use_https=True, username="user", password="secret")
        api.session.verify = False  # a self-signed certificate, as a LAN client would use it
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # urllib3's InsecureRequestWarning
            assert [m["model_name"] for m in api.get_sd_models()] == ["tiny"]

        # Plain HTTP on the HTTPS port: the handshake fails and no page is served.
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as response:
                plain = (response.status, response.read())
        except urllib.error.HTTPError as error:
            plain = (error.code, b"")
        except (OSError, ConnectionError) as error:  # reset, closed without a response
            plain = (None, repr(error).encode())
        assert plain[0] in (None, 400), plain
    finally:
        stop(process)
