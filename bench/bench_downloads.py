"""Model download throughput on loopback: Atelier's downloader vs huggingface_hub vs curl, and the
time to finish a download killed at 50 %.

    python bench/bench_downloads.py [--size-gib 2] [--runs 3]

A file of `--size-gib` (a valid safetensors header, random body) is written to a temp folder and
served from disk by a small Range-capable server in its own process (`os.sendfile`, so the server
costs next to no CPU). The server also answers as a Hugging Face endpoint
(`/{repo}/resolve/{revision}/{file}` with `X-Repo-Commit`, `ETag` = sha256, `Content-Length`), so
`huggingface_hub.hf_hub_download` runs its real code path (HEAD for metadata, then its `http_get`)
with `HF_ENDPOINT` pointed at it and Xet disabled.

Peers, interleaved within each round, medians of `--runs`:
- atelier: `modules.model_sources.downloader.download` with sha256 and size verified (and fsync +
  rename at the end, as it always does);
- hf_hub_download: into a fresh cache folder each run (it checks size only, no sha256);
- curl -o: no hash, no fsync;  curl -o + sync FILE: the same, then flushed to disk as ours is;
  curl | tee | sha256sum: the bytes hashed and written (`curl -s URL | tee FILE | sha256sum`).

Resume: a child process downloads with our downloader and is killed with SIGKILL once its `.part`
holds half the file; then the resumed `download()` call is timed (it hashes the kept half, then
fetches the rest with Range) and the bytes it asked for are taken from the server's log.
"""

from __future__ import annotations

import argparse
import hashlib
import http.server
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT_DIR, REPO_ROOT, machine_description, median  # noqa: E402

SCRIPT = Path(__file__).resolve()
COMMIT = "0123456789abcdef0123456789abcdef01234567"
_RANGE = re.compile(r"bytes=(\d+)-(\d*)$")


# -- the server (its own process) --------------------------------------------------------------------


def serve(path: str, port_file: str, log_file: str) -> None:
    file_path = Path(path)
    size = file_path.stat().st_size
    sha256 = Path(str(file_path) + ".sha256").read_text().strip()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:
            pass

        def do_HEAD(self) -> None:
            self._answer(head=True)

        def do_GET(self) -> None:
            self._answer(head=False)

        def _answer(self, head: bool) -> None:
            with open(log_file, "a") as log:
                log.write(json.dumps({"path": self.path, "range": self.headers.get("Range")}) + "\n")
            start, end = 0, size - 1
            wanted = self.headers.get("Range")
            match = _RANGE.match(wanted.strip()) if wanted else None
            if match:
                start = int(match.group(1))
                end = int(match.group(2)) if match.group(2) else size - 1
                if start >= size:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{size}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
            self.send_response(206 if match else 200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(end - start + 1))
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("ETag", f'"{sha256}"')
            self.send_header("X-Repo-Commit", COMMIT)
            if match:
                self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            self.end_headers()
            if head:
                return
            try:
                with open(file_path, "rb") as f:
                    offset, left = start, end - start + 1
                    while left > 0:
                        sent = os.sendfile(self.connection.fileno(), f.fileno(), offset, min(left, 1 << 30))
                        if not sent:
                            break
                        offset += sent
                        left -= sent
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    Path(port_file).write_text(str(server.server_address[1]))
    server.serve_forever()


# -- peers -----------------------------------------------------------------------------------------------


def make_file(folder: Path, size: int) -> tuple[Path, str]:
    """A safetensors file of exactly `size` bytes: one U8 tensor, random body, written in 64 MiB pieces."""
    header = b""
    for _ in range(3):  # the header's length changes the body's length: settle it
        body = size - 8 - len(header)
        header = json.dumps({"blob": {"dtype": "U8", "shape": [body], "data_offsets": [0, body]}}).encode()
        header += b" " * ((8 - len(header) % 8) % 8)
    body = size - 8 - len(header)
    path = folder / "served.safetensors"
    digest = hashlib.sha256()
    piece = os.urandom(64 << 20)
    with open(path, "wb") as f:
        start = len(header).to_bytes(8, "little") + header
        f.write(start)
        digest.update(start)
        left = body
        while left:
            chunk = memoryview(piece)[:min(left, len(piece))]
            f.write(chunk)
            digest.update(chunk)
            left -= len(chunk)
    sha256 = digest.hexdigest()
    Path(str(path) + ".sha256").write_text(sha256)
    return path, sha256


def run_atelier(url: str, destination: Path, sha256: str, size: int) -> float:
    from modules.model_sources.downloader import DownloadSpec, download
    from modules.model_sources.http import GuardedHttp

    started = time.perf_counter()
    result = download(DownloadSpec(url, destination, expected_sha256=sha256, expected_size=size),
                      GuardedHttp(allow_private=True))
    elapsed = time.perf_counter() - started
    assert result.sha256 == sha256 and result.size == size
    return elapsed


def run_hf(endpoint: str, cache: Path, size: int) -> float:
    from huggingface_hub import hf_hub_download

    started = time.perf_counter()
    path = hf_hub_download("bench/model", "served.safetensors", endpoint=endpoint, cache_dir=cache, token=False)
    elapsed = time.perf_counter() - started
    assert Path(path).stat().st_size == size
    return elapsed


def run_curl(url: str, destination: Path, size: int) -> float:
    started = time.perf_counter()
    subprocess.run(["curl", "-sSf", "-o", str(destination), url], check=True)
    elapsed = time.perf_counter() - started
    assert destination.stat().st_size == size
    return elapsed


def run_curl_sync(url: str, destination: Path, size: int) -> float:
    started = time.perf_counter()
    subprocess.run(["curl", "-sSf", "-o", str(destination), url], check=True)
    subprocess.run(["sync", str(destination)], check=True)  # coreutils: fsync of that file
    elapsed = time.perf_counter() - started
    assert destination.stat().st_size == size
    return elapsed


def run_curl_sha(url: str, destination: Path, sha256: str) -> float:
    started = time.perf_counter()
    out = subprocess.run(["bash", "-o", "pipefail", "-c", f"curl -sSf '{url}' | tee '{destination}' | sha256sum"],
                         check=True, capture_output=True, text=True).stdout
    elapsed = time.perf_counter() - started
    assert out.split()[0] == sha256
    return elapsed


def resume_after_kill(url: str, folder: Path, sha256: str, size: int, log_file: Path) -> dict:
    """Kill a downloading child at 50 %, then time the resumed download."""
    from modules.model_sources.downloader import part_path

    destination = folder / "resumed.safetensors"
    part = part_path(destination)
    code = ("import sys; sys.path.insert(0, %r)\n"
            "from pathlib import Path\n"
            "from modules.model_sources.downloader import DownloadSpec, download\n"
            "from modules.model_sources.http import GuardedHttp\n"
            "download(DownloadSpec(%r, Path(%r), expected_sha256=%r, expected_size=%d), GuardedHttp(allow_private=True))\n"
            % (str(REPO_ROOT), url, str(destination), sha256, size))
    child = subprocess.Popen([sys.executable, "-c", code])
    while not (part.exists() and part.stat().st_size >= size // 2):
        if child.poll() is not None:
            raise RuntimeError("the download finished before it could be killed")
        time.sleep(0.005)
    child.send_signal(signal.SIGKILL)
    child.wait()
    kept = part.stat().st_size
    log_file.write_text("")
    elapsed = run_atelier(url, destination, sha256, size)
    asked = [json.loads(line)["range"] for line in log_file.read_text().splitlines()]
    destination.unlink()
    return {"kept_bytes": kept, "seconds": elapsed, "ranges": asked}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-gib", type=float, default=2.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--folder", default=None, help="where to put the served file and downloads (default: a temp folder)")
    args = parser.parse_args()
    size = int(args.size_gib * (1 << 30))

    folder = Path(tempfile.mkdtemp(prefix="atelier-bench-downloads-", dir=args.folder))
    server = None
    try:
        if shutil.disk_usage(folder).free < size * 3.2:
            sys.exit(f"not enough free space in {folder} for a {args.size_gib} GiB benchmark (needs ~3.2x)")
        started = time.perf_counter()
        source, sha256 = make_file(folder, size)
        print(f"wrote {source.name} ({size} bytes) in {time.perf_counter() - started:.1f} s", flush=True)
        port_file, log_file = folder / "port", folder / "requests.log"
        server = subprocess.Popen([sys.executable, str(SCRIPT), "--serve", str(source), str(port_file), str(log_file)])
        while not port_file.exists() or not port_file.read_text():
            time.sleep(0.05)
        base = f"http://127.0.0.1:{port_file.read_text()}"
        url = f"{base}/files/served.safetensors"
        os.environ.update(HF_HUB_DISABLE_XET="1", HF_HUB_DISABLE_PROGRESS_BARS="1", HF_HUB_DISABLE_TELEMETRY="1")
        os.environ.pop("HF_HUB_OFFLINE", None)

        peers = {"atelier (sha256 + size verified)": [], "huggingface_hub.hf_hub_download": [], "curl -o": [],
                 "curl -o + sync FILE": [], "curl | tee | sha256sum": []}
        out = folder / "out"
        out.mkdir()
        for round_ in range(args.runs):
            for name in peers:
                target = out / f"{round_}.safetensors"
                if name.startswith("atelier"):
                    seconds = run_atelier(url, target, sha256, size)
                elif name.startswith("hugging"):
                    seconds = run_hf(base, out / f"hf-cache-{round_}", size)
                elif name == "curl -o":
                    seconds = run_curl(url, target, size)
                elif name == "curl -o + sync FILE":
                    seconds = run_curl_sync(url, target, size)
                else:
                    seconds = run_curl_sha(url, target, sha256)
                peers[name].append(seconds)
                print(f"round {round_ + 1} {name}: {seconds:.2f} s ({size / seconds / 1e6:.0f} MB/s)", flush=True)
                shutil.rmtree(out)
                out.mkdir()
        resume = resume_after_kill(url, out, sha256, size, log_file)
        resume_runs = [resume]
        for _ in range(args.runs - 1):
            resume_runs.append(resume_after_kill(url, out, sha256, size, log_file))

        results = {"machine": machine_description(), "size_bytes": size, "runs": args.runs, "peers": {}}
        print(f"\n{results['machine']}\nloopback download of {size} bytes, median of {args.runs}:")
        curl_median = median(peers["curl -o"])
        for name, times in peers.items():
            med = median(times)
            results["peers"][name] = {"seconds": times, "median_s": med, "mb_per_s": size / med / 1e6}
            print(f"  {name:38s} {med:6.2f} s  {size / med / 1e6:7.0f} MB/s  {curl_median / med:5.2f}x curl -o")
        resume_med = median([r["seconds"] for r in resume_runs])
        results["resume"] = {"runs": resume_runs, "median_s": resume_med}
        print(f"  resume after kill -9 at ~50%: {resume_med:.2f} s (kept {[r['kept_bytes'] for r in resume_runs]}, "
              f"asked {[r['ranges'] for r in resume_runs]}); full download {median(peers[next(iter(peers))]):.2f} s")
        OUT_DIR.mkdir(parents=True, exist_ok=True)
        (OUT_DIR / "downloads.json").write_text(json.dumps(results, indent=2))
    finally:
        if server is not None:
            server.kill()
            server.wait()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--serve":
        serve(*sys.argv[2:])
    else:
        main()
