"""Crashes, full disks and concurrent writers, on real processes and real file systems.

- `kill -9` of a real server in the middle of a merge and in the middle of saving a batch of
  images: after a restart no partial file is listed or left, and config.json / cache.json are whole.
- A full disk, on a small tmpfs this test mounts (as root; skipped with the reason otherwise), while
  saving an image, writing config.json and writing a merge: a clear error naming the folder and the
  space needed, nothing partial, the previous config.json intact, the server still serving.
- 8 clients (the Settings tab and the API) writing settings at once: no update lost, config.json
  never torn.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from modules.api.server import create_app
from modules.serving.app_context import AppContext
from modules.serving.cmd_args import parse_args
from modules.library.synthetic_checkpoints import write_checkpoint
from tests.test_api_support import WAIT, LiveServer, make_context

REPO_ROOT = Path(__file__).resolve().parent.parent
SMALL = {"width": 64, "height": 64, "steps": 1}
START_TIMEOUT = 300.0  # a bound for a broken start on a loaded machine; never decides a result


# ------------------------------------------------------------------------------ real servers


class ServerProcess:
    """`webui.py --nowebui` on a free port in a process of its own, so that it can be killed."""

    def __init__(self, data_dir: Path, log: Path, *flags: str):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with open(log, "ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, str(REPO_ROOT / "webui.py"), "--data-dir", str(data_dir), "--port", str(self.port),
                 "--nowebui", "--no-demo-checkpoint", *flags], stdout=out, stderr=subprocess.STDOUT, env=env)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"the server exited at start:\n{self.log.read_text()[-4000:]}"
            try:
                with urllib.request.urlopen(self.url + "/sdapi/v1/options", timeout=5):
                    return
            except OSError:
                time.sleep(0.2)
        raise AssertionError(f"the server did not start in {START_TIMEOUT} s:\n{self.log.read_text()[-4000:]}")

    def request(self, method: str, path: str, body=None, timeout: float = WAIT):
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read() or b"null")

    def post_in_background(self, path: str, body) -> threading.Thread:
        """Send a request whose answer never comes (the server is killed meanwhile)."""
        def send() -> None:
            try:
                self.request("POST", path, body, timeout=START_TIMEOUT)
            except (OSError, ValueError):
                pass  # the connection dies with the server
        thread = threading.Thread(target=send, daemon=True)
        thread.start()
        return thread

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=WAIT)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


@contextmanager
def server(data_dir: Path, log: Path, *flags: str) -> Iterator[ServerProcess]:
    process = ServerProcess(data_dir, log, *flags)
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


def wait_for(condition, what: str, poll: float = 0.002):
    """Poll `condition()` until it returns something true; returns it. Fails after WAIT seconds."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out waiting for {what}")


def files_in(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir() if p.is_file()} if folder.exists() else set()


def assert_whole_json(path: Path) -> dict:
    assert path.exists(), path
    data = json.loads(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def write_large_checkpoint(path: Path, seed: int, extra_elements: int) -> None:
    """A tiny SD1 checkpoint in the real layout plus one large float tensor that a merge streams
    block by block: big enough that the merge is caught while it writes, on any machine."""
    from modules.library.safetensors_io import SafetensorsReader, save_file

    small = write_checkpoint(path.with_name(f"small-{path.name}"), "sd1", dtype=torch.float32, seed=seed)
    with SafetensorsReader(small) as reader:
        tensors = {key: reader.read(key) for key in reader.keys()}
    generator = torch.Generator().manual_seed(seed)
    tensors["model.diffusion_model.zz_large_test_tensor"] = torch.rand(extra_elements, generator=generator)
    save_file(tensors, path)
    small.unlink()


# ------------------------------------------------------------------------------------ kill -9


def test_start_up_removes_the_unfinished_files_a_killed_run_left(tmp_path):
    """What each writer leaves when killed half-way (another process's temp names), in every folder
    the server writes to; files that only look alike are the user's and stay."""
    from modules.common.atomic_files import TEMP_MARK

    other_run = f".deadbeef{TEMP_MARK}"
    leftovers = [
        tmp_path / f".config.json{other_run}",
        tmp_path / f".cache.json{other_run}",
        tmp_path / "models" / "Stable-diffusion" / f".merged.safetensors{other_run}",
        tmp_path / "models" / "Stable-diffusion" / f"..merged.ckpt.stage{other_run}{other_run}",
        tmp_path / "cache" / "merge-trials" / f".trial.safetensors{other_run}",
        tmp_path / "outputs" / "txt2img-images" / "2024-07-27" / f".00012-5.png{other_run}",
        tmp_path / "outputs" / "txt2img-grids" / "2024-07-27" / f".grid-0003.png{other_run}",
        tmp_path / "outputs" / "mine" / "2024-07-27" / f".00001-5.txt{other_run}",
        # cards the Models tab writes beside model files, in subfolders too
        tmp_path / "models" / "Stable-diffusion" / "sdxl" / f".model.json{other_run}",
        tmp_path / "models" / "Lora" / "styles" / f".style.preview.png{other_run}",
        tmp_path / "embeddings" / f".neg.civitai.info{other_run}",
        tmp_path / "models" / "hypernetworks" / f".h.json{other_run}",
        tmp_path / "models" / "VAE" / f".v.json{other_run}",
    ]
    kept = [tmp_path / "models" / "Stable-diffusion" / "notes.tmp", tmp_path / "outputs" / ".hidden",
            tmp_path / "models" / "Lora" / "styles" / "style.safetensors.part",  # a download to resume
            tmp_path / "outputs" / "txt2img-images" / "2024-07-27" / "00011-5.png",
            tmp_path / "outputs" / "txt2img-images" / f"looks{TEMP_MARK}.png"]
    for path in leftovers + kept:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half")
    AppContext.from_args(parse_args(["--data-dir", str(tmp_path), "--no-demo-checkpoint"]))
    assert [p for p in leftovers if p.exists()] == []
    assert all(p.exists() for p in kept)


def test_kill_9_in_the_middle_of_a_merge_leaves_no_partial_checkpoint(tmp_path):
    data = tmp_path / "data"
    folder = data / "models" / "Stable-diffusion"
    folder.mkdir(parents=True)
    for seed, name in enumerate(("a", "b")):
        write_large_checkpoint(folder / f"{name}.safetensors", seed, extra_elements=48 << 20)  # +192 MiB
    inputs = files_in(folder)
    log = tmp_path / "server.log"
    first = ServerProcess(data, log, "--skip-load-model-at-start")
    try:
        first.wait_ready()
        first.request("POST", "/sdapi/v1/options", {"jpeg_quality": 77})
        first.post_in_background("/sdapi/v1/merge-checkpoints", {
            "primary_model_name": "a", "secondary_model_name": "b", "multiplier": 0.5, "custom_name": "merged"})

        def output_being_written():
            return [p for p in folder.iterdir() if p.name not in inputs and p.is_file() and p.stat().st_size > 0]

        partial = wait_for(output_being_written, "the merge to start writing its output")
        first.kill()
    finally:
        first.stop()
    written = files_in(folder) - inputs
    assert written, f"nothing was left half-written ({partial}); the merge ended before the kill"
    assert "merged.safetensors" not in written, "the merge finished before the kill; make the inputs larger"

    with server(data, log, "--skip-load-model-at-start") as second:
        titles = [model["title"] for model in second.request("GET", "/sdapi/v1/sd-models")]
        assert sorted(title.split(" [")[0] for title in titles) == ["a.safetensors", "b.safetensors"]
        assert files_in(folder) == inputs  # the unfinished file is gone
        assert second.request("GET", "/sdapi/v1/options")["jpeg_quality"] == 77
    assert assert_whole_json(data / "config.json")["jpeg_quality"] == 77
    if (data / "cache.json").exists():
        assert_whole_json(data / "cache.json")
    assert {p.name for p in data.iterdir() if p.is_file()} <= {"config.json", "cache.json"}


def test_kill_9_in_the_middle_of_a_batch_leaves_only_whole_images(tmp_path):
    data = tmp_path / "data"
    folder = data / "models" / "Stable-diffusion"
    folder.mkdir(parents=True)
    write_checkpoint(folder / "a.safetensors", "sd1", dtype=torch.float32)
    images = data / "outputs" / "txt2img-images"
    log = tmp_path / "server.log"
    count = 40
    first = ServerProcess(data, log)
    try:
        first.wait_ready()
        first.request("POST", "/sdapi/v1/options", {"jpeg_quality": 77, "save_txt": True})
        first.post_in_background("/sdapi/v1/txt2img", {"prompt": "a cat", "seed": 1, "n_iter": count,
                                                       "save_images": True, **SMALL})
        wait_for(lambda: list(images.glob("*/*.png")), "the first image of the batch", poll=0.001)
        first.kill()
    finally:
        first.stop()
    saved = sorted(images.glob("*/*.png"))
    assert 0 < len(saved) < count, "the kill did not land in the middle of the batch"

    with server(data, log, "--skip-load-model-at-start") as second:
        assert second.request("GET", "/sdapi/v1/options")["jpeg_quality"] == 77
    everything = [p for p in (data / "outputs").rglob("*") if p.is_file()]
    # Only whole images and their whole infotext files: every PNG decodes and carries its infotext.
    assert {p.suffix for p in everything} <= {".png", ".txt"}, everything
    for path in everything:
        if path.suffix == ".png":
            with Image.open(path) as image:
                image.load()
                assert image.text["parameters"].startswith("a cat\n")
        else:
            assert path.read_text(encoding="utf-8").startswith("a cat\n")
            assert path.with_suffix(".png").exists()
    assert assert_whole_json(data / "config.json")["jpeg_quality"] == 77


# --------------------------------------------------------------------------------- full disk


@contextmanager
def small_filesystem(path: Path, options: str = "size=1m") -> Iterator[Path]:
    """A tmpfs mounted at `path` for the test (unmounted after it); skips where mounting is not allowed."""
    if shutil.which("mount") is None:
        pytest.skip("no mount command here, so no small file system to fill up")
    path.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True,
                            text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill up ({result.stderr.strip() or 'mount failed'}); "
                    "the full-disk tests need root or CAP_SYS_ADMIN")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(folder: Path) -> Path:
    """Take every free byte of `folder`'s file system; returns the filler file (delete it to free)."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        for size in (1 << 16, 4096, 1):  # large writes first, then what a partial block can still take
            while True:
                try:
                    if os.write(fd, b"\0" * size) < size:
                        break
                except OSError:
                    break
    finally:
        os.close(fd)
    return filler


def assert_disk_full(response, folder: Path) -> str:
    assert response.status_code == 507, response.text
    message = response.json()["errors"]
    assert str(folder) in message and "not enough free space" in message and "needs" in message, message
    return message


@pytest.fixture
def api(tmp_path):
    context = make_context(tmp_path / "data", names=("a", "b"))
    yield context, TestClient(create_app(context, api=True))
    context.jobs.shutdown(timeout=WAIT)


def test_full_disk_while_saving_images(api):
    context, client = api
    outputs = context.paths.data_dir / "outputs"
    with small_filesystem(outputs):
        filler = fill(outputs)
        response = client.post("/sdapi/v1/txt2img", json={"prompt": "x", "seed": 3, "save_images": True, **SMALL})
        message = assert_disk_full(response, outputs / "txt2img-images")
        assert "the image 00000-3.png" in message
        assert [p for p in outputs.rglob("*") if p.is_file()] == [filler]  # nothing partial
        # The server keeps serving, and saves again once there is room.
        assert client.get("/sdapi/v1/options").status_code == 200
        filler.unlink()
        response = client.post("/sdapi/v1/txt2img", json={"prompt": "x", "seed": 3, "save_images": True, **SMALL})
        assert response.status_code == 200, response.text
        [saved] = outputs.glob("txt2img-images/*/*.png")
        with Image.open(saved) as image:
            image.load()


def test_full_disk_while_writing_config_json(tmp_path):
    from modules.ui.settings_tab import SettingsHandlers, tab_specs

    data = tmp_path / "data"
    with small_filesystem(data):
        context = AppContext.from_args(parse_args(["--data-dir", str(data), "--no-demo-checkpoint"]))
        client = TestClient(create_app(context, api=True))
        assert client.post("/sdapi/v1/options", json={"samples_format": "jpg"}).status_code == 200
        before = context.paths.config_file.read_bytes()
        filler = fill(data)
        assert_disk_full(client.post("/sdapi/v1/options", json={"jpeg_quality": 50}), data)
        assert context.paths.config_file.read_bytes() == before
        assert sorted(p.name for p in data.iterdir() if p.is_file()) == ["config.json", "filler"]
        assert client.get("/sdapi/v1/options").json()["jpeg_quality"] == 80  # the values in effect are unchanged
        handlers = SettingsHandlers(context, tab_specs(context.settings.current()))
        loaded = handlers.snapshot()
        report, _ = handlers.apply(loaded, *dict(loaded, jpeg_quality=60).values())
        assert "Not saved" in report and "not enough free space" in report and str(data) in report
        assert context.paths.config_file.read_bytes() == before
        filler.unlink()
        assert client.post("/sdapi/v1/options", json={"jpeg_quality": 50}).status_code == 200
        assert json.loads(context.paths.config_file.read_text())["jpeg_quality"] == 50


def test_full_disk_while_writing_a_merge(tmp_path):
    data = tmp_path / "data"
    merges = tmp_path / "merges"  # --ckpt-dir: where merges are saved
    with small_filesystem(merges):
        context = make_context(data, names=("a", "b"), args=("--ckpt-dir", str(merges)), load=False)
        try:
            client = TestClient(create_app(context, api=True))
            names = [m["model_name"] for m in client.get("/sdapi/v1/sd-models").json()]
            for format in ("safetensors", "ckpt"):
                response = client.post("/sdapi/v1/merge-checkpoints", json={
                    "primary_model_name": "a", "secondary_model_name": "b", "checkpoint_format": format})
                message = assert_disk_full(response, merges)
                assert "MiB" in message
                assert list(merges.iterdir()) == []  # nothing partial
            assert [m["model_name"] for m in client.get("/sdapi/v1/sd-models").json()] == names
            assert "the checkpoint 0.7(a) + 0.3(b).ckpt" in message
        finally:
            context.jobs.shutdown(timeout=WAIT)


def test_full_disk_in_the_middle_of_a_checkpoint_write(tmp_path):
    """Space taken by someone else after the writer checked it: the write fails with the same error
    and removes what it wrote."""
    from modules.common.atomic_files import DiskFullError
    from modules.library.safetensors_io import SafetensorsWriter

    folder = tmp_path / "small"
    with small_filesystem(folder, "size=2m"):
        specs = [(f"t{i}", torch.float32, (64 * 1024,)) for i in range(6)]  # 256 KiB each, 1.5 MiB in all
        with pytest.raises(DiskFullError) as raised:
            with SafetensorsWriter(folder / "out.safetensors", specs) as writer:
                filler = fill(folder)
                for name, dtype, shape in specs:
                    writer.write(name, torch.ones(shape, dtype=dtype))
                writer.commit()
        assert raised.value.folder == folder and raised.value.needed == writer.size
        assert [p.name for p in folder.iterdir()] == [filler.name]


def test_out_of_file_entries_is_a_full_disk_too(tmp_path):
    """A file system with bytes free but no inodes left refuses to create the file (ENOSPC)."""
    from modules.common.atomic_files import DiskFullError
    from modules.outputs.images import FilenameContext, save_image

    folder = tmp_path / "small"
    with small_filesystem(folder, "size=1m,nr_inodes=8"):
        made = 0
        with pytest.raises(OSError):
            while True:
                (folder / f"f{made}").touch()
                made += 1
        before = sorted(p.name for p in folder.iterdir())
        with pytest.raises(DiskFullError, match="no free inodes") as raised:
            save_image(Image.new("RGB", (8, 8)), folder, context=FilenameContext(seed=1), save_to_dirs=False)
        assert raised.value.folder == folder
        assert sorted(p.name for p in folder.iterdir()) == before


# ---------------------------------------------------------------------------------- concurrency


def test_concurrent_settings_writes_from_the_ui_and_the_api_lose_nothing(tmp_path):
    """8 clients x 20 writes, half through the Settings tab's Apply and half through POST options,
    each to a setting of its own: every client reads its own last value back, and config.json,
    read throughout, is always whole JSON."""
    from modules.ui.settings_tab import SettingsHandlers, tab_specs

    context = AppContext.from_args(parse_args(["--data-dir", str(tmp_path), "--no-demo-checkpoint"]))
    values = {  # setting -> the 20 values its client writes, in order
        "jpeg_quality": list(range(60, 80)), "comma_padding_backtrack": list(range(1, 21)),
        "directories_max_prompt_words": list(range(1, 21)), "eta_noise_seed_delta": list(range(100, 120)),
        "target_side_length": list(range(1000, 1020)), "img_downscale_threshold": [i / 4 for i in range(20)],
        "eta_ancestral": [i / 20 for i in range(20)], "eta_ddim": [i / 20 for i in range(1, 21)],
    }
    ui_keys = ["jpeg_quality", "directories_max_prompt_words", "target_side_length", "eta_ancestral"]
    barrier = threading.Barrier(len(values) + 1)
    failures: list[str] = []
    done = threading.Event()

    def ui_client(key: str) -> None:
        handlers = SettingsHandlers(context, tab_specs(context.settings.current()))
        loaded = handlers.snapshot()  # the page as it loaded; only this client's field is edited
        barrier.wait()
        for value in values[key]:
            report, loaded = handlers.apply(loaded, *dict(loaded, **{key: value}).values())
            if context.settings.current()[key] != value:
                failures.append(f"UI {key}: wrote {value}, read {context.settings.current()[key]} ({report})")

    def api_client(key: str, url: str) -> None:
        barrier.wait()
        for value in values[key]:
            request = urllib.request.Request(url + "/sdapi/v1/options", data=json.dumps({key: value}).encode(),
                                             headers={"Content-Type": "application/json"}, method="POST")
            with urllib.request.urlopen(request, timeout=WAIT) as response:
                assert response.status == 200
            with urllib.request.urlopen(url + "/sdapi/v1/options", timeout=WAIT) as response:
                read = json.loads(response.read())[key]
            if read != value:
                failures.append(f"API {key}: wrote {value}, read {read}")

    def reader() -> None:
        while not done.is_set():
            try:
                json.loads(context.paths.config_file.read_bytes())
            except FileNotFoundError:
                pass
            except ValueError as error:
                failures.append(f"config.json was not whole JSON while read: {error}")

    with LiveServer(create_app(context, api=True)) as live:
        threads = [threading.Thread(target=ui_client if key in ui_keys else api_client,
                                    args=(key,) if key in ui_keys else (key, live.url)) for key in values]
        watcher = threading.Thread(target=reader)
        for thread in (*threads, watcher):
            thread.start()
        barrier.wait()
        for thread in threads:
            thread.join(WAIT)
        done.set()
        watcher.join(WAIT)
    assert failures == []
    stored = json.loads(context.paths.config_file.read_text(encoding="utf-8"))
    assert {key: stored[key] for key in values} == {key: written[-1] for key, written in values.items()}
    assert {key: context.settings.current()[key] for key in values} == {k: v[-1] for k, v in values.items()}
