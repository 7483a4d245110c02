"""Command-line flags, with A1111's names and meanings for the ones that exist so far.

`parse_args(argv)` returns an `argparse.Namespace`; nothing here is global. Later features add their
flags here (one parser, one place to read what a flag does).
"""

from __future__ import annotations

import argparse
import re
from typing import Sequence


# Upscaler families with their own model folder: (A1111's class name minus "Upscaler", folder under models/).
# A1111 names each flag after the family (--esrgan-models-path, ...); HAT has a folder but no flag.
UPSCALER_FOLDERS = (("ESRGAN", "ESRGAN"), ("RealESRGAN", "RealESRGAN"), ("SwinIR", "SwinIR"), ("DAT", "DAT"),
                    ("ScuNET", "ScuNET"), ("LDSR", "LDSR"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="launch.py",
        description="Atelier: a Stable Diffusion web UI in the AUTOMATIC1111 style.",
    )
    paths = parser.add_argument_group("paths")
    paths.add_argument("--data-dir", type=str, default=None,
                       help="base folder for user data: models/, embeddings/, config.json, outputs/ (default: the repo)")
    paths.add_argument("--models-dir", type=str, default=None, help="models folder (default: <data-dir>/models)")
    paths.add_argument("--ckpt-dir", type=str, default=None,
                       help="extra folder with checkpoints, scanned before models/Stable-diffusion "
                            "(point it at an existing A1111 models/Stable-diffusion)")
    paths.add_argument("--ckpt", type=str, default=None,
                       help="checkpoint to load at start; it is listed first")
    paths.add_argument("--vae-dir", type=str, default=None, help="extra folder with VAE files")
    paths.add_argument("--vae-path", type=str, default=None,
                       help="VAE file to use for every checkpoint; disables the SD VAE setting")
    paths.add_argument("--embeddings-dir", type=str, default=None,
                       help="textual-inversion embeddings folder (default: <data-dir>/embeddings)")
    paths.add_argument("--hypernetwork-dir", type=str, default=None,
                       help="hypernetworks folder (default: <models-dir>/hypernetworks)")
    paths.add_argument("--lora-dir", type=str, default=None, help="LoRA folder (default: <models-dir>/Lora)")
    # Upscaler model folders, A1111's flag per upscaler family: scanned before <models-dir>/<Family>.
    for family, folder in UPSCALER_FOLDERS:
        paths.add_argument(f"--{family.lower()}-models-path", type=str, default=None,
                           help=f"extra folder with {family} upscaler models, scanned before <models-dir>/{folder}")
    paths.add_argument("--bsrgan-models-path", type=str, default=None,
                       help="accepted for A1111 compatibility; nothing uses it (as in A1111)")
    paths.add_argument("--styles-file", type=str, action="append", default=[], metavar="FILE",
                       help="prompt styles file, or a wildcard such as styles/*.csv; may be given several times "
                            "(default: <data-dir>/styles.csv); new styles are saved in the first")

    server = parser.add_argument_group("server")
    server.add_argument("--port", type=int, default=None, help="port to listen on (default 7860)")
    server.add_argument("--listen", action="store_true",
                        help="listen on 0.0.0.0, so other machines on the network can connect")
    server.add_argument("--server-name", type=str, default=None, help="address to bind (overrides --listen)")
    server.add_argument("--api", action="store_true", help="serve A1111's REST API (/sdapi/v1) beside the web UI")
    server.add_argument("--nowebui", action="store_true",
                        help="serve the API only, without the web UI (port 7861 unless --port)")
    server.add_argument("--api-auth", type=str, default=None, metavar="USER:PASS[,USER:PASS...]",
                        help="HTTP Basic credentials for the API and its docs (default: those of --gradio-auth)")
    server.add_argument("--api-log", action="store_true", help="log every API request")
    server.add_argument("--gradio-auth", type=str, default=None, metavar="USER:PASS[,USER:PASS...]",
                        help="HTTP Basic credentials for the web UI (and for the API without --api-auth)")
    server.add_argument("--gradio-auth-path", type=str, default=None, metavar="FILE",
                        help="file with USER:PASS pairs separated by commas or newlines; adds to --gradio-auth")
    server.add_argument("--multi-user", action="store_true",
                        help="keep the users of --gradio-auth/--api-auth apart: each has private outputs "
                             "(outputs/<user>/), their own checkpoint/VAE/clip-skip choice and their own queue; "
                             "jobs are taken round-robin between users")
    server.add_argument("--admin-users", type=str, default=None, metavar="USER[,USER...]",
                        help="with --multi-user: the operators, who see and cancel every job and change global "
                             "settings (no one else may)")
    server.add_argument("--tls-keyfile", type=str, default=None, metavar="KEY.pem",
                        help="serve HTTPS with this PEM private key (unencrypted); needs --tls-certfile. Use it "
                             "with --listen and auth, or passwords cross the network in clear text")
    server.add_argument("--tls-certfile", type=str, default=None, metavar="CERT.pem",
                        help="serve HTTPS with this PEM certificate (a chain may follow it); needs --tls-keyfile")
    server.add_argument("--disable-tls-verify", action="store_true",
                        help="accepted for A1111 compatibility (extensions read it): in A1111 it stops Gradio's "
                             "launch() from verifying the certificate when it calls its own server. Atelier makes "
                             "no such calls, so it changes nothing here; clients of a self-signed server must "
                             "trust its certificate or turn off their own verification")
    server.add_argument("--cors-allow-origins", type=str, default=None, metavar="ORIGIN[,ORIGIN...]",
                        help="other sites (e.g. http://localhost:3000) whose pages may call this server from a "
                             "browser; without it only Atelier's own page may change anything")
    server.add_argument("--cors-allow-origins-regex", type=str, default=None, metavar="REGEX",
                        help="like --cors-allow-origins, for origins matching the regular expression")
    server.add_argument("--max-body-size", type=float, default=None, metavar="MB",
                        help="largest request body (API JSON, uploads) in MiB; larger ones get 413 (default 32)")
    server.add_argument("--enable-insecure-extension-access", action="store_true",
                        help="allow installing, updating, enabling and disabling extensions from the UI (and "
                             "the extension settings from the API) even with --listen")
    server.add_argument("--hide-ui-dir-config", action="store_true",
                        help="output folders and filename patterns cannot be changed from the UI or the API, "
                             "and img2img Batch takes uploads only, no server folders (for a server others use; "
                             "edit config.json instead); implied by --listen and --server-name unless "
                             "--allow-ui-dir-config")
    server.add_argument("--allow-ui-dir-config", action="store_true",
                        help="with --listen or --server-name, still let UI and API users change output folders "
                             "and filename patterns (within the rules of --allow-output-dir), and name server "
                             "folders in img2img Batch (read any folder the server can read, write outside the "
                             "program's own folders)")
    server.add_argument("--allow-output-dir", action="append", default=[], metavar="DIR",
                        help="a folder (with its subfolders) that UI and API users may set as an output folder, "
                             "besides <data-dir>/outputs; repeat for more")
    server.add_argument("--allow-output-dirs-anywhere", action="store_true",
                        help="UI and API users may set any folder the server can write as an output folder "
                             "(absolute paths and '..'); without it, only folders inside <data-dir>/outputs or "
                             "an --allow-output-dir")

    extensions = parser.add_argument_group("extensions")
    extensions.add_argument("--disable-all-extensions", action="store_true",
                            help="do not load any extension, built-in ones included (for this run)")
    extensions.add_argument("--disable-extra-extensions", action="store_true",
                            help="load only the built-in extensions (for this run)")

    device = parser.add_argument_group("device and precision")
    device.add_argument("--use-cpu", nargs="*", default=[], metavar="MODULE",
                        help="run on the CPU: 'all' or module names (A1111 form); any value means the CPU here")
    device.add_argument("--no-half", action="store_true", help="keep weights in fp32 on the GPU")
    device.add_argument("--no-half-vae", action="store_true", help="keep the VAE in fp32")
    device.add_argument("--precision", choices=("full", "half", "autocast"), default="autocast",
                        help="'full' = fp32 everywhere (same as --no-half)")
    device.add_argument("--device-id", type=str, default=None, help="CUDA device index to use")

    models = parser.add_argument_group("models")
    models.add_argument("--disable-safe-unpickle", action="store_true",
                        help="load .ckpt/.pt files with full pickle; only for files you trust (runs code in them)")
    models.add_argument("--no-hashing", action="store_true", help="do not compute sha256 of checkpoints")
    models.add_argument("--skip-load-model-at-start", action="store_true",
                        help="start the server without loading a checkpoint")
    models.add_argument("--enable-model-downloads", action="store_true",
                        help="allow downloading models and writing converted checkpoints from the Models tab and "
                             "/atelier/v1/models on a server others can reach (with --listen); needs an auth flag. "
                             "--enable-insecure-extension-access allows it too")
    models.add_argument("--no-demo-checkpoint", action="store_true",
                        help="with no checkpoints found, do not create the random-weights demo checkpoint")

    # A1111's attention and VRAM flags (modules/attention_backends.py, modules/offload.py,
    # modules/vae_decode.py say what each does here).
    perf = parser.add_argument_group("attention and VRAM")
    perf.add_argument("--xformers", action="store_true",
                      help="use xformers attention on CUDA when it is installed and its kernels work with this "
                           "torch (tested at start; otherwise a warning and SDPA)")
    perf.add_argument("--force-enable-xformers", action="store_true",
                      help="use xformers even if its start-up test fails (not when it does not import or "
                           "there is no CUDA); implies --xformers")
    perf.add_argument("--opt-sdp-attention", action="store_true",
                      help="torch scaled-dot-product attention (SDPA); the default already")
    perf.add_argument("--opt-sdp-no-mem-attention", action="store_true",
                      help="SDPA limited to the flash and math kernels (no memory-efficient kernel; A1111's "
                           "deterministic choice); may use more VRAM")
    perf.add_argument("--disable-opt-split-attention", action="store_true",
                      help="plain attention (whole attention matrix in memory) unless another attention flag "
                           "is given; for comparisons, not for use")
    for legacy in ("--opt-split-attention", "--opt-split-attention-v1", "--opt-split-attention-invokeai",
                   "--opt-sub-quad-attention"):
        perf.add_argument(legacy, action="store_true",
                          help="accepted for A1111 compatibility; SDPA is used (it needs no slicing)")
    perf.add_argument("--medvram", action="store_true",
                      help="keep text encoders, UNet and VAE in RAM and move each to the GPU only while it runs")
    perf.add_argument("--medvram-sdxl", action="store_true", help="--medvram for SDXL models only")
    perf.add_argument("--lowvram", action="store_true",
                      help="like --medvram, and the UNet moves block by block (slow; for 2-4 GB GPUs); wins "
                           "over --medvram")
    perf.add_argument("--upcast-sampling", action="store_true",
                      help="keep the sampler's latents in fp32 and run only the UNet call in fp16 (already the "
                           "case with the default --precision autocast; matters with --precision half)")
    perf.add_argument("--disable-nan-check", action="store_true",
                      help="do not check VAE output for NaNs (no fp32 retry; NaNs become grey)")

    # Generation and merge workers as Ray actors (modules/cluster/, docs/SCALING.md). Ray is installed
    # when one of these flags is first used; without them nothing of Ray is imported.
    ray = parser.add_argument_group("distributed (Ray)")
    ray.add_argument("--ray-address", type=ray_address, default=None, metavar="ADDR",
                     help="run generation and merge jobs on the workers of an existing Ray cluster: 'auto' (the "
                          "cluster this machine belongs to), ray://HOST:10001 (Ray Client) or HOST:6379 (the head's "
                          "address); this server keeps the UI, API and queue. Every node needs Atelier at the same "
                          "path and the model folders on shared storage (docs/SCALING.md)")
    ray.add_argument("--ray-local", type=_bounded_int("--ray-local", 1, MAX_RAY_LOCAL_WORKERS), default=None,
                     metavar="N",
                     help=f"start a Ray on this machine (loopback only) with N workers (1-{MAX_RAY_LOCAL_WORKERS}): "
                          "on a GPU machine one GPU each (at most as many workers as GPUs), else CPU workers; "
                          "with --use-cpu always CPU workers")
    ray.add_argument("--ray-workers", type=_bounded_int("--ray-workers", 1, MAX_RAY_WORKERS), default=None,
                     metavar="N",
                     help="with --ray-address: how many workers to run (default: one per GPU in the cluster, or 1 "
                          "without GPUs)")
    ray.add_argument("--ray-worker-cpus", type=_bounded_int("--ray-worker-cpus", 1, MAX_RAY_WORKER_CPUS), default=1,
                     metavar="K", help="CPU threads of each CPU worker (default 1)")
    return parser


MAX_RAY_LOCAL_WORKERS = 64
MAX_RAY_WORKERS = 1024
MAX_RAY_WORKER_CPUS = 1024
_HOST_PATTERN = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?)$")


def ray_address(text: str) -> str:
    """`--ray-address`: `auto`, `ray://HOST:PORT` or `HOST:PORT` (an IPv6 host in brackets)."""
    value = text.strip()
    if value == "auto":
        return value
    host_port = value[len("ray://"):] if value.startswith("ray://") else value
    host, sep, port = host_port.rpartition(":")
    if not sep or not _HOST_PATTERN.match(host) or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a Ray address: use 'auto', ray://HOST:PORT (Ray Client, e.g. ray://head:10001) or "
            "HOST:PORT (the head's address, e.g. 192.168.1.10:6379)")
    return value


def _bounded_int(flag: str, low: int, high: int):
    """An argparse type for a whole number in [low, high] whose error names the flag's range."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number ({flag} takes {low}-{high})") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is out of range ({flag} takes {low}-{high})")
        return value

    return parse


def parse_args(argv: Sequence[str] | None = None, parser: argparse.ArgumentParser | None = None) -> argparse.Namespace:
    """Parse `argv` (default: sys.argv) with `parser` (default: `build_parser()`; webui passes the
    one extended by the extensions' preload.py) and check the values argparse cannot."""
    parser = parser or build_parser()
    args = parser.parse_args(argv)
    if args.port is not None and not 1 <= args.port <= 65535:
        parser.error(f"--port {args.port} is not a port number (1-65535)")
    from modules.api.auth import AuthPolicy
    from modules.api.request_guards import OriginPolicy
    from modules.serving.accounts import Accounts

    try:
        policy = AuthPolicy.from_args(args)  # an auth flag without credentials stops the start here
        Accounts.from_args(args, policy.user_names())
        OriginPolicy.from_args(args)
    except ValueError as e:
        parser.error(str(e))
    if args.max_body_size is not None and not args.max_body_size > 0:
        parser.error(f"--max-body-size {args.max_body_size:g} must be a positive number of MiB")
    from modules.serving.listen import TlsFiles

    try:
        TlsFiles.from_args(args)  # both files or neither, readable, and the key of the certificate
    except ValueError as e:
        parser.error(str(e))
    if args.ray_address is not None and args.ray_local is not None:
        parser.error(f"--ray-address {args.ray_address} and --ray-local {args.ray_local} exclude each other: "
                     "--ray-address joins a running cluster, --ray-local starts one on this machine; give one")
    if args.ray_workers is not None and args.ray_address is None:
        hint = (f"--ray-local {args.ray_local} already says how many workers"
                if args.ray_local is not None else "add --ray-address, or use --ray-local N on this machine")
        parser.error(f"--ray-workers {args.ray_workers} needs --ray-address ({hint})")
    return args


def is_non_local(args: argparse.Namespace) -> bool:
    """Whether other machines can reach the server (A1111's `webui_is_non_local`)."""
    return bool(args.listen or args.server_name)


def dir_config_locked(args: argparse.Namespace) -> bool:
    """Whether output folders and filename patterns are out of UI and API users' reach: with
    `--hide-ui-dir-config`, and on a server others can reach unless `--allow-ui-dir-config` (the
    rule `--enable-insecure-extension-access` follows for extensions)."""
    if getattr(args, "hide_ui_dir_config", False):
        return True
    non_local = getattr(args, "listen", False) or getattr(args, "server_name", None)  # is_non_local, for partial args
    return bool(non_local) and not getattr(args, "allow_ui_dir_config", False)


def extension_access_allowed(args: argparse.Namespace) -> bool:
    """Installing or updating extensions (code from the network) from the UI: only on a local server,
    unless `--enable-insecure-extension-access` (A1111's rule)."""
    return not is_non_local(args) or args.enable_insecure_extension_access


def model_downloads_refusal(args: argparse.Namespace) -> str | None:
    """Why downloading models and writing converted checkpoints is refused on this server, or None.

    Like extension installs (it fills the disk and fetches from the network on the server's behalf):
    always on a local server; beyond localhost only behind an auth flag and with
    `--enable-model-downloads` or `--enable-insecure-extension-access`."""
    if not is_non_local(args):
        return None
    authed = any(getattr(args, flag, None) for flag in ("gradio_auth", "gradio_auth_path", "api_auth"))
    allowed = getattr(args, "enable_model_downloads", False) or getattr(args, "enable_insecure_extension_access", False)
    if authed and allowed:
        return None
    missing = [text for ok, text in ((authed, "an auth flag (--gradio-auth or --api-auth)"),
                                     (allowed, "--enable-model-downloads")) if not ok]
    return ("model downloads and checkpoint conversions are off on this server: it listens beyond localhost "
            f"(--listen or --server-name); its owner can allow them by starting it with {' and '.join(missing)}, "
            "or put model files into the models folders on the server")
