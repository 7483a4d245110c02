"""Ray itself: whether the flags ask for it, installing it on first use, and joining or starting a
cluster (`--ray-address`, `--ray-local`). See docs/SCALING.md.

Nothing here imports Ray at module level: the embedded mode calls `ray_requested` and stays free of it.

Security of the local cluster (`--ray-local N`). Ray runs any code a connected client sends, so its
ports must be out of reach of anyone else:
- Ray 2.60 resolves `_node_ip_address="127.0.0.1"` to the machine's network address and its servers
  (GCS, raylet, workers) listen on every interface. Only with `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`
  (read when `ray` is first imported) do they keep to loopback; `connect` sets it before the import
  and checks after the start that the node is on loopback, else it stops the cluster and raises.
- Loopback is still reachable by every local user, so the cluster also requires a token. Ray 2.60's
  default for a new local cluster is token auth with a token it writes to `~/.ray/auth_token`, kept
  forever, shared by every later cluster of that user and readable by others where the home folder
  is. Instead `connect` gives each run its own random token through `RAY_AUTH_TOKEN` (inherited by
  the processes Ray starts; nothing is written to disk) and removes it at `shutdown`. An operator's
  own `RAY_AUTH_MODE`, `RAY_AUTH_TOKEN` or `RAY_AUTH_TOKEN_PATH` is respected.
For `--ray-address` the cluster's operator sets the token (docs/SCALING.md, "Security").
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import ipaddress
import logging
import os
import secrets
import stat
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

log = logging.getLogger(__name__)

RAY_VERSION = "2.60.0"
RAY_REQUIREMENT = f"ray=={RAY_VERSION}"  # tested here; Ray publishes wheels for Python 3.10-3.12
# `ray://` addresses go through Ray Client, which needs the `client` extra (grpcio).
RAY_CLIENT_REQUIREMENT = f"ray[client]=={RAY_VERSION}"
RAY_NAMESPACE = "atelier"
# Set in every worker process Ray starts for Atelier (runtime_env), so code can tell it runs on a worker.
WORKER_ENV_VAR = "ATELIER_RAY_WORKER"
REPO_ROOT = Path(__file__).resolve().parents[2]

_CLUSTER_ENV_VAR = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # "0": a single-machine Ray on loopback
_AUTH_ENV_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")
# The server log and the workers' lines it shows (log_to_driver) share one format.
WORKER_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def ray_requested(args: argparse.Namespace) -> bool:
    """Whether the flags ask for Ray workers (`--ray-address` or `--ray-local`). Imports nothing."""
    return getattr(args, "ray_address", None) is not None or getattr(args, "ray_local", None) is not None


def ray_installed() -> bool:
    """Whether Ray can be imported here, found without importing it (importing it first would fix
    its network settings before `connect` chooses them: see the module docstring)."""
    return importlib.util.find_spec("ray") is not None


def install_command(requirement: str = RAY_REQUIREMENT) -> list[str]:
    """The pip command that installs `requirement` into this Python's environment (the venv)."""
    return [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", requirement]


def ensure_ray(install: bool = True, client: bool = False) -> ModuleType:
    """Import Ray, installing `RAY_REQUIREMENT` (with `client`: `RAY_CLIENT_REQUIREMENT`, which
    `ray://` addresses need) into this environment first when it is missing and `install` is set.

    Raises RuntimeError naming the command to run by hand when Ray cannot be imported or installed.
    """
    requirement = RAY_CLIENT_REQUIREMENT if client else RAY_REQUIREMENT
    # Each worker's log lines on their own ("[repeated 2x across cluster]" hides which worker said
    # what), and no colour codes in a log that goes to a file. Read by Ray when it is imported or
    # prints; an operator's own values win.
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    if not sys.stderr.isatty():
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")
    problem = _import_problem(client)
    if problem is None:
        return _imported_ray()
    command = install_command(requirement)
    by_hand = " ".join(f'"{part}"' if " " in part or "[" in part else part for part in command)
    if not install:
        raise RuntimeError(f"Ray is needed for --ray-address/--ray-local and {problem}. Install it with: {by_hand}")
    log.warning("Ray is needed for --ray-address/--ray-local and %s: installing %s into %s now (a few hundred MB, "
                "once) with: %s", problem, requirement, sys.prefix, by_hand)
    done = subprocess.run(command, check=False)
    importlib.invalidate_caches()
    if done.returncode != 0:
        raise RuntimeError(f"Installing Ray failed (pip exit status {done.returncode}; its output is above). "
                           f"Install it by hand with: {by_hand}  (Ray {RAY_VERSION} has wheels for Python "
                           f"3.10-3.12; this is Python {sys.version_info.major}.{sys.version_info.minor})")
    problem = _import_problem(client)
    if problem is not None:
        raise RuntimeError(f"Ray was installed but {problem}. Install it by hand with: {by_hand}")
    return _imported_ray()


def _import_problem(client: bool) -> str | None:
    """Why Ray (with `client`: Ray Client) cannot be used here, or None when it imports."""
    try:
        importlib.import_module("ray")
    except ImportError as e:
        return f"it does not import ({e})"
    if client:
        try:
            importlib.import_module("grpc")
        except ImportError as e:
            return f"Ray Client (ray:// addresses) needs grpcio, which does not import ({e})"
    return None


def _imported_ray() -> ModuleType:
    ray = importlib.import_module("ray")
    if getattr(ray, "__version__", RAY_VERSION) != RAY_VERSION:
        log.warning("Ray %s is installed; Atelier is tested with %s. Every node of a cluster needs the same Ray "
                    "version (and Python version) as this server.", ray.__version__, RAY_VERSION)
    return ray


@dataclass(frozen=True)
class RayOptions:
    """The Ray flags. `address`: `--ray-address`; `local_workers`: `--ray-local N`; `workers`:
    `--ray-workers`; `worker_cpus`: `--ray-worker-cpus`; `cpu_only`: `--use-cpu` was given, so the
    workers ask Ray for CPUs, never GPUs."""

    address: str | None
    local_workers: int | None
    workers: int | None
    worker_cpus: int = 1
    cpu_only: bool = False

    def __post_init__(self) -> None:
        if (self.address is None) == (self.local_workers is None):
            raise ValueError(f"RayOptions needs exactly one of address ({self.address!r}) and local_workers "
                             f"({self.local_workers!r}): --ray-address joins a cluster, --ray-local starts one")
        for name in ("local_workers", "workers"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"RayOptions.{name} is {value}; it must be at least 1")
        if self.worker_cpus < 1:
            raise ValueError(f"RayOptions.worker_cpus is {self.worker_cpus}; it must be at least 1")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> RayOptions | None:
        """The options the flags give, or None without a Ray flag (the embedded mode)."""
        if not ray_requested(args):
            return None
        return cls(address=getattr(args, "ray_address", None), local_workers=getattr(args, "ray_local", None),
                   workers=getattr(args, "ray_workers", None), worker_cpus=getattr(args, "ray_worker_cpus", 1) or 1,
                   cpu_only=bool(getattr(args, "use_cpu", None)))


@dataclass
class RayCluster:
    """A connection to a Ray cluster (what `connect` returns). `started_here`: this process started
    the cluster (`--ray-local`), so `shutdown` stops it; otherwise `shutdown` only disconnects and the
    cluster runs on. `node_ip`: the address of this process's Ray node ("" for a ray:// client)."""

    options: RayOptions
    ray: ModuleType
    started_here: bool
    node_ip: str = ""
    _restore_env: dict[str, str | None] = field(default_factory=dict, repr=False)

    def gpus(self) -> int:
        """GPUs in the cluster now (nodes may come and go)."""
        return int(self.ray.cluster_resources().get("GPU", 0))

    def usable_gpus(self) -> int:
        """GPUs the workers may ask for: none with `--use-cpu`."""
        return 0 if self.options.cpu_only else self.gpus()

    def desired_workers(self) -> int:
        """How many worker actors to run: `--ray-local N` → N (on a GPU machine at most one per GPU:
        each worker asks for a whole GPU, so more would wait forever); `--ray-address` →
        `--ray-workers`, else one per GPU in the cluster, else 1."""
        if self.options.local_workers is not None:
            return min(self.options.local_workers, self.usable_gpus() or self.options.local_workers)
        return self.options.workers or self.usable_gpus() or 1

    def actor_options(self) -> dict[str, Any]:
        """Resources of one worker actor (for `ray.remote(...).options(**...)`): a whole GPU when the
        cluster has GPUs (and no `--use-cpu`), else `--ray-worker-cpus` CPUs."""
        if self.usable_gpus() > 0:
            return {"num_gpus": 1}
        return {"num_cpus": self.options.worker_cpus}

    def shutdown(self) -> None:
        """Stop the cluster if this process started it, else disconnect from it; idempotent."""
        if self.ray.is_initialized():
            self.ray.shutdown()
        if self._restore_env:
            _restore_environment(self._restore_env)
            _reread_ray_settings(self.ray)
        self._restore_env = {}


def connect(options: RayOptions) -> RayCluster:
    """Start a local Ray (`options.local_workers`) or join the cluster at `options.address`.

    Worker processes get `PYTHONPATH=<this repo>` (so every node needs Atelier at the same path:
    docs/SCALING.md) and `ATELIER_RAY_WORKER=1`, and log in the server's format; their lines appear
    in the server's log prefixed with the actor and its pid.
    """
    if options.local_workers is not None:
        return _start_local(options)
    return _join(options)


def runtime_env() -> dict[str, Any]:
    """What every Atelier worker process gets from Ray."""
    return {
        "env_vars": {"PYTHONPATH": str(REPO_ROOT), WORKER_ENV_VAR: "1"},
        # Run in each worker process before any task: the workers' log records reach the server's log
        # (log_to_driver) in the server's own format instead of being dropped (no handler).
        "worker_process_setup_hook": f"{__name__}.configure_worker_logging",
    }


def configure_worker_logging() -> None:
    """Logging of an Atelier worker process (Ray's `worker_process_setup_hook`)."""
    logging.basicConfig(level=logging.INFO, format=WORKER_LOG_FORMAT, datefmt="%H:%M:%S")


def _start_local(options: RayOptions) -> RayCluster:
    workers = options.local_workers
    assert workers is not None
    restore = _set_environment(_local_cluster_environment())
    try:
        ray = ensure_ray()
        _refuse_if_initialized(ray)
        constants = getattr(getattr(ray, "_private", None), "ray_constants", None)
        if getattr(constants, "ENABLE_RAY_CLUSTER", False):
            raise RuntimeError(_OFF_LOOPBACK_HELP.format(where="the machine's network address"))
        _reread_ray_settings(ray)
        gpus = 0 if options.cpu_only else min(_local_gpu_count(), workers)
        if 0 < gpus < workers:
            log.warning("--ray-local %d on a machine with %d GPU(s): %d GPU worker(s), one per GPU (start with "
                        "--use-cpu for %d CPU workers instead)", workers, gpus, gpus, workers)
        context = ray.init(address="local", num_cpus=max(workers * options.worker_cpus, workers), num_gpus=gpus,
                           include_dashboard=False, _node_ip_address="127.0.0.1", namespace=RAY_NAMESPACE,
                           runtime_env=runtime_env(), log_to_driver=True, logging_level=logging.WARNING,
                           _temp_dir=str(private_temp_dir()))
        cluster = RayCluster(options=options, ray=ray, started_here=True,
                             node_ip=context.address_info.get("node_ip_address", ""), _restore_env=restore)
    except BaseException:
        _restore_environment(restore)
        raise
    if not _is_loopback(cluster.node_ip):  # the check above should have caught it; never serve off loopback
        cluster.shutdown()
        raise RuntimeError(_OFF_LOOPBACK_HELP.format(where=cluster.node_ip) + " (it was started, and stopped)")
    log.info("Started a local Ray on loopback: %d worker(s), %d GPU(s), %d CPU(s), token auth %s",
             workers, gpus, max(workers * options.worker_cpus, workers),
             "on" if os.environ.get("RAY_AUTH_MODE", "").lower() == "token" else "OFF")
    return cluster


def _join(options: RayOptions) -> RayCluster:
    address = options.address
    assert address is not None
    ray = ensure_ray(client=address.startswith("ray://"))
    _refuse_if_initialized(ray)
    try:
        context = ray.init(address=address, namespace=RAY_NAMESPACE, runtime_env=runtime_env(), log_to_driver=True,
                           logging_level=logging.WARNING)
    except Exception as e:
        raise RuntimeError(f"Could not join the Ray cluster at --ray-address {address}: {e}. Is the head running "
                           "(`ray start --head` there), with the same Ray and Python versions as this server, "
                           "and, with token auth, is RAY_AUTH_TOKEN (or ~/.ray/auth_token) the cluster's token? "
                           "See docs/SCALING.md") from e
    info = getattr(context, "address_info", None) or {}
    cluster = RayCluster(options=options, ray=ray, started_here=False, node_ip=info.get("node_ip_address", ""))
    log.info("Joined the Ray cluster at %s: %d GPU(s), %s CPU(s)", address, cluster.gpus(),
             ray.cluster_resources().get("CPU", 0))
    return cluster


_OFF_LOOPBACK_HELP = (
    "The local Ray would listen on {where}, not on loopback only: Ray reads " + _CLUSTER_ENV_VAR + "=0 only "
    "when it is first imported, and something (an extension?) imported it earlier in this process. Start the "
    "server with " + _CLUSTER_ENV_VAR + "=0 in its environment, or start a Ray yourself "
    "(docs/SCALING.md) and use --ray-address")


def private_temp_dir() -> Path:
    """Where the local Ray keeps its session (sockets, logs, runtime files): a folder only this user
    can enter. Ray's default, /tmp/ray, and the folders it makes there are writable by every local
    user, and its logs readable. Short, because Ray's unix socket paths have a length limit."""
    if not hasattr(os, "getuid"):  # Windows: the temp folder is the user's own already
        folder = Path(tempfile.gettempdir()) / "atelier-ray"
        folder.mkdir(exist_ok=True)
        return folder / "r"
    folder = Path(tempfile.gettempdir()) / f"atelier-ray-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    info = folder.lstat()
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise RuntimeError(f"{folder} is not a folder of this user (uid {os.getuid()}); remove it, or start a Ray "
                           "yourself (docs/SCALING.md) and use --ray-address")
    if info.st_mode & 0o077:
        folder.chmod(0o700)
    # Ray makes the folder it is given mode 0777: give it one inside the private one.
    return folder / "r"


def _refuse_if_initialized(ray: ModuleType) -> None:
    if ray.is_initialized():
        raise RuntimeError("Ray is already initialised in this process (by an extension?); Atelier starts or joins "
                           "its own cluster from --ray-local/--ray-address and cannot share a connection")


def _local_cluster_environment() -> dict[str, str]:
    """Environment changes for a loopback-only local cluster with a token for this run only."""
    changes = {_CLUSTER_ENV_VAR: "0"}
    if not any(name in os.environ for name in _AUTH_ENV_VARS):
        changes["RAY_AUTH_MODE"] = "token"
        changes["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    elif os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        log.warning("RAY_AUTH_MODE=disabled: the local Ray takes commands from any local user without a token")
    return changes


def _set_environment(changes: dict[str, str]) -> dict[str, str | None]:
    previous = {name: os.environ.get(name) for name in changes}
    os.environ.update(changes)
    return previous


def _restore_environment(previous: dict[str, str | None]) -> None:
    for name, value in previous.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def _reread_ray_settings(ray: ModuleType) -> None:
    """Make this process's Ray read the auth settings from the environment again, as Ray does itself
    when it turns token auth on. It keeps the mode and the token it read first for the life of the
    process: a Ray imported before `connect` set RAY_AUTH_MODE, or a second local cluster in one
    process (tests), would present no token, or the first run's, and its cluster would refuse it."""
    raylet = getattr(ray, "_raylet", None)
    config = getattr(raylet, "Config", None)
    if config is not None:
        config.initialize("")
    loader = getattr(raylet, "AuthenticationTokenLoader", None)
    if loader is not None:
        loader.instance().reset_cache()


def _local_gpu_count() -> int:
    """CUDA devices this process sees (CUDA_VISIBLE_DEVICES respected); 0 without torch or CUDA."""
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
