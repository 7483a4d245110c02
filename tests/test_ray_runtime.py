"""The Ray flags, installing Ray on first use, and starting a local Ray (modules/cluster/ray_runtime.py).

The tests that start Ray do it in a fresh interpreter: Ray fixes its network settings when it is
first imported, and the local cluster must come up on loopback whatever this test process imported.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from modules.cluster import ray_runtime
from modules.cluster.ray_runtime import RAY_REQUIREMENT, RayOptions, ensure_ray, ray_requested
from modules.serving.cmd_args import build_parser, parse_args

REPO_ROOT = Path(__file__).resolve().parent.parent
needs_ray = pytest.mark.skipif(not ray_runtime.ray_installed(),
                               reason=f"Ray is not installed (requirements-test.txt installs {RAY_REQUIREMENT})")


def _parse_error(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        parse_args(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


# --- flags ---------------------------------------------------------------------------------------------


def test_without_ray_flags_nothing_asks_for_ray():
    args = parse_args([])
    assert (args.ray_address, args.ray_local, args.ray_workers, args.ray_worker_cpus) == (None, None, None, 1)
    assert not ray_requested(args)
    assert RayOptions.from_args(args) is None


@pytest.mark.parametrize("address", ["auto", "ray://head:10001", "ray://ray-head.atelier.svc.cluster.local:10001",
                                     "192.168.1.10:6379", "head-node:6379", "[::1]:6379", "ray://[fd00::5]:10001"])
def test_ray_address_forms_are_accepted(address):
    args = parse_args(["--ray-address", address, "--ray-workers", "3", "--ray-worker-cpus", "2"])
    assert (args.ray_address, args.ray_workers, args.ray_worker_cpus) == (address, 3, 2)
    assert ray_requested(args)


@pytest.mark.parametrize("address", ["head", "ray://head", "http://head:10001", "head:0", "head:65536", "head:port",
                                     "ray://:10001", "", "head name:6379", "-head:6379", "ray://head:10001/x"])
def test_malformed_ray_address_is_refused_with_the_forms(address, capsys):
    error = _parse_error([f"--ray-address={address}"], capsys)
    assert "--ray-address" in error and repr(address) in error
    assert "auto" in error and "ray://HOST:PORT" in error


@pytest.mark.parametrize(("flag", "value", "low", "high"), [
    ("--ray-local", "0", 1, 64), ("--ray-local", "65", 1, 64), ("--ray-local", "two", 1, 64),
    ("--ray-workers", "0", 1, 1024), ("--ray-worker-cpus", "0", 1, 1024), ("--ray-worker-cpus", "1.5", 1, 1024)])
def test_out_of_range_counts_are_refused_with_the_range(flag, value, low, high, capsys):
    argv = [flag, value] if flag != "--ray-workers" else ["--ray-address", "auto", flag, value]
    error = _parse_error(argv, capsys)
    assert flag in error and value in error and f"{low}-{high}" in error


def test_ray_address_and_ray_local_together_are_refused_naming_both(capsys):
    error = _parse_error(["--ray-address", "auto", "--ray-local", "2"], capsys)
    assert "--ray-address auto" in error and "--ray-local 2" in error


@pytest.mark.parametrize("extra", [[], ["--ray-local", "2"]])
def test_ray_workers_needs_ray_address(extra, capsys):
    error = _parse_error(["--ray-workers", "2", *extra], capsys)
    assert "--ray-workers 2 needs --ray-address" in error


def test_ray_flags_are_in_their_own_help_group():
    help_text = build_parser().format_help()
    section = help_text[help_text.index("distributed (Ray):"):]
    for flag in ("--ray-address", "--ray-local", "--ray-workers", "--ray-worker-cpus"):
        assert flag in section


# --- RayOptions ------------------------------------------------------------------------------------------


def test_options_from_local_flag():
    options = RayOptions.from_args(parse_args(["--ray-local", "3", "--ray-worker-cpus", "2"]))
    assert options == RayOptions(address=None, local_workers=3, workers=None, worker_cpus=2, cpu_only=False)


def test_options_from_address_flags_with_use_cpu():
    options = RayOptions.from_args(parse_args(["--ray-address", "ray://head:10001", "--ray-workers", "4",
                                               "--use-cpu", "all"]))
    assert options == RayOptions(address="ray://head:10001", local_workers=None, workers=4, worker_cpus=1,
                                 cpu_only=True)


@pytest.mark.parametrize("fields", [
    {"address": None, "local_workers": None, "workers": None},
    {"address": "auto", "local_workers": 2, "workers": None},
    {"address": None, "local_workers": 0, "workers": None},
    {"address": "auto", "local_workers": None, "workers": 0},
    {"address": "auto", "local_workers": None, "workers": None, "worker_cpus": 0}])
def test_inconsistent_options_are_refused(fields):
    with pytest.raises(ValueError, match="RayOptions"):
        RayOptions(**fields)


def _cluster(options: RayOptions, gpus: float) -> ray_runtime.RayCluster:
    """A RayCluster over a stand-in for the `ray` module whose cluster has `gpus` GPUs."""
    fake_ray = SimpleNamespace(cluster_resources=lambda: {"CPU": 64.0, "GPU": gpus}, is_initialized=lambda: False)
    return ray_runtime.RayCluster(options=options, ray=fake_ray, started_here=options.local_workers is not None)


@pytest.mark.parametrize(("options", "gpus", "workers", "actor"), [
    # One worker per GPU of the cluster, each asking for a whole GPU.
    (RayOptions(address="auto", local_workers=None, workers=None), 4, 4, {"num_gpus": 1}),
    (RayOptions(address="auto", local_workers=None, workers=2), 4, 2, {"num_gpus": 1}),
    # No GPUs: one CPU worker unless --ray-workers says more; --ray-worker-cpus CPUs each.
    (RayOptions(address="auto", local_workers=None, workers=None, worker_cpus=3), 0, 1, {"num_cpus": 3}),
    (RayOptions(address="auto", local_workers=None, workers=5, worker_cpus=2), 0, 5, {"num_cpus": 2}),
    # --use-cpu: CPU workers even where the cluster has GPUs.
    (RayOptions(address="auto", local_workers=None, workers=None, cpu_only=True), 4, 1, {"num_cpus": 1}),
    # --ray-local N: N workers, but no more than the GPUs when they use GPUs (each takes a whole one).
    (RayOptions(address=None, local_workers=3, workers=None), 0, 3, {"num_cpus": 1}),
    (RayOptions(address=None, local_workers=4, workers=None), 2, 2, {"num_gpus": 1}),
    (RayOptions(address=None, local_workers=2, workers=None), 2, 2, {"num_gpus": 1})])
def test_worker_count_and_resources(options, gpus, workers, actor):
    cluster = _cluster(options, gpus)
    assert cluster.gpus() == gpus
    assert (cluster.desired_workers(), cluster.actor_options()) == (workers, actor)


def test_deciding_on_ray_imports_no_ray():
    """Parsing the flags and asking whether Ray is wanted (what the embedded mode does) leaves Ray
    unimported, with and without a Ray flag."""
    probe = ("import json, sys\n"
             "from modules.serving.cmd_args import parse_args\n"
             "from modules.cluster.ray_runtime import RayOptions, ray_requested\n"
             "results = []\n"
             "for argv in ([], ['--ray-local', '2'], ['--ray-address', 'auto']):\n"
             "    args = parse_args(argv)\n"
             "    results.append([ray_requested(args), RayOptions.from_args(args) is not None])\n"
             "print(json.dumps({'results': results, 'ray': sorted(m for m in sys.modules if m.split('.')[0] == 'ray')}))\n")
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report == {"results": [[False, False], [True, True], [True, True]], "ray": []}


# --- ensure_ray ------------------------------------------------------------------------------------------


def test_missing_ray_without_install_names_the_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    with pytest.raises(RuntimeError) as error:
        ensure_ray(install=False)
    message = str(error.value)
    assert f"{sys.executable} -m pip install" in message and RAY_REQUIREMENT in message


def test_failed_install_is_announced_then_names_the_command(monkeypatch, tmp_path, caplog):
    """The installer runs (after a warning) and fails: the error names the command and its status."""
    monkeypatch.setitem(sys.modules, "ray", None)
    marker = tmp_path / "installer-ran"
    fake = [sys.executable, "-c", f"import pathlib, sys; pathlib.Path({str(marker)!r}).touch(); sys.exit(3)"]
    monkeypatch.setattr(ray_runtime, "install_command", lambda requirement=RAY_REQUIREMENT: [*fake, requirement])
    with caplog.at_level(logging.WARNING, logger=ray_runtime.__name__), pytest.raises(RuntimeError) as error:
        ensure_ray()
    assert marker.exists()
    assert "exit status 3" in str(error.value) and RAY_REQUIREMENT in str(error.value)
    assert fake[0] in str(error.value)
    assert any("installing" in record.getMessage() and RAY_REQUIREMENT in record.getMessage()
               for record in caplog.records)


def test_install_that_leaves_ray_unimportable_is_an_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    monkeypatch.setattr(ray_runtime, "install_command",
                        lambda requirement=RAY_REQUIREMENT: [sys.executable, "-c", "pass", requirement])
    with pytest.raises(RuntimeError, match="was installed but it does not import"):
        ensure_ray()


@needs_ray
def test_ray_client_needs_the_client_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "grpc", None)
    with pytest.raises(RuntimeError) as error:
        ensure_ray(install=False, client=True)
    assert "grpcio" in str(error.value) and ray_runtime.RAY_CLIENT_REQUIREMENT in str(error.value)


# --- a real local Ray -------------------------------------------------------------------------------------

LOCAL_PROBE = r"""
import json, os, subprocess, sys
import psutil
from modules.cluster.ray_runtime import RayOptions, connect

cluster = connect(RayOptions(address=None, local_workers=2, workers=None, worker_cpus=1))
ray = cluster.ray
gcs = ray.get_runtime_context().gcs_address
listening = sorted({conn.laddr.ip for child in psutil.Process().children(recursive=True)
                    for conn in child.net_connections(kind="inet") if conn.status == psutil.CONN_LISTEN})
# A client of the same user without this run's token is turned away.
stranger_env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
stranger = subprocess.run([sys.executable, "-c", f"import ray; ray.init(address={gcs!r}); print('IN')"],
                          env=stranger_env, capture_output=True, text=True, timeout=120)
report = {
    "started_here": cluster.started_here, "node_ip": cluster.node_ip, "gpus": cluster.gpus(),
    "cpus": ray.cluster_resources().get("CPU"), "desired_workers": cluster.desired_workers(),
    "actor_options": cluster.actor_options(), "namespace": ray.get_runtime_context().namespace,
    "listening": listening, "stranger_rc": stranger.returncode, "stranger_in": "IN" in stranger.stdout,
}
cluster.shutdown()
report["initialized_after"] = ray.is_initialized()
report["token_after"] = "RAY_AUTH_TOKEN" in os.environ
print(json.dumps(report))
"""


def _run_probe(probe: str, home: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RAY_AUTH", "RAY_ADDRESS", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"))}
    env["HOME"] = str(home)  # where Ray's default token file would go
    return subprocess.run([sys.executable, "-c", probe], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=300)


@needs_ray
def test_local_ray_on_loopback_with_a_token_for_this_run(tmp_path):
    done = _run_probe(LOCAL_PROBE, tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    # Two CPU workers of one CPU each on a CPU-only Ray of 2 CPUs.
    assert report["started_here"] is True
    assert (report["gpus"], report["cpus"], report["desired_workers"]) == (0, 2.0, 2)
    assert report["actor_options"] == {"num_cpus": 1}
    assert report["namespace"] == ray_runtime.RAY_NAMESPACE
    # Every Ray server of this machine listens on loopback only.
    assert report["node_ip"] == "127.0.0.1"
    assert report["listening"] and all(ip in ("127.0.0.1", "::ffff:127.0.0.1") for ip in report["listening"])
    # Without the run's token another client is refused, and no token file was written.
    assert report["stranger_rc"] != 0 and not report["stranger_in"]
    assert not (tmp_path / ".ray").exists()
    assert report["initialized_after"] is False and report["token_after"] is False


@needs_ray
def test_local_ray_off_loopback_is_stopped_and_refused(tmp_path):
    """Ray imported before `connect` could choose its network settings would come up on the machine's
    address: `connect` refuses to start it and says how to start instead."""
    probe = ("import json, ray\n"
             "from modules.cluster.ray_runtime import RayOptions, connect\n"
             "try:\n"
             "    connect(RayOptions(address=None, local_workers=1, workers=None)).shutdown()\n"
             "    print(json.dumps({'error': None}))\n"
             "except RuntimeError as e:\n"
             "    print(json.dumps({'error': str(e), 'initialized': ray.is_initialized()}))\n")
    done = _run_probe(probe, tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0" in report["error"] and "not on loopback only" in report["error"]
    assert report["initialized"] is False


JOIN_PROBE = r"""
import json, sys
from modules.cluster.ray_runtime import RayOptions, connect

address = sys.argv[1]
first = connect(RayOptions(address=address, local_workers=None, workers=None))
report = {"started_here": first.started_here, "gpus": first.gpus(), "desired_workers": first.desired_workers(),
          "actor_options": first.actor_options(), "namespace": first.ray.get_runtime_context().namespace}
first.shutdown()
# Still running after the first connection's shutdown: it only disconnected.
second = connect(RayOptions(address=address, local_workers=None, workers=3, worker_cpus=2))
report.update(desired_with_workers=second.desired_workers(), options_with_cpus=second.actor_options(),
              cpus=second.ray.cluster_resources().get("CPU"))
second.shutdown()
print(json.dumps(report))
"""


@needs_ray
def test_joining_a_running_cluster_only_disconnects(tmp_path):
    """`ray start --head` (token auth, loopback) as an operator would run it; the server joins by
    address, and its shutdown leaves the cluster running."""
    with socket.socket() as probe_socket:
        probe_socket.bind(("127.0.0.1", 0))
        port = probe_socket.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH", "RAY_ADDRESS"))}
    env.update(HOME=str(tmp_path), RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32),
               RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    ray_cli = str(Path(sys.executable).parent / "ray")
    head = subprocess.Popen([ray_cli, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}",
                             "--include-dashboard=false", "--num-cpus=2", "--num-gpus=0", "--disable-usage-stats"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        address = f"127.0.0.1:{port}"
        for _ in range(120):  # until the head answers (`ray status` fails while it starts)
            if subprocess.run([ray_cli, "status", f"--address={address}"], env=env, capture_output=True).returncode == 0:
                break
            assert head.poll() is None, "ray start --head exited"
            time.sleep(0.5)
        done = subprocess.run([sys.executable, "-c", JOIN_PROBE, address], cwd=REPO_ROOT, env=env,
                              capture_output=True, text=True, timeout=300)
    finally:
        os.killpg(head.pid, signal.SIGTERM)  # its own session: the head and the processes it started
        head.wait(timeout=60)
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["started_here"] is False and report["namespace"] == ray_runtime.RAY_NAMESPACE
    # No GPUs, no --ray-workers: one worker of one CPU; with --ray-workers 3 --ray-worker-cpus 2: 3 of 2.
    assert (report["gpus"], report["desired_workers"], report["actor_options"]) == (0, 1, {"num_cpus": 1})
    assert (report["desired_with_workers"], report["options_with_cpus"]) == (3, {"num_cpus": 2})
    assert report["cpus"] == 2.0


def test_the_local_rays_folder_is_private_and_a_planted_link_is_refused(tmp_path, monkeypatch):
    import os
    import tempfile

    from modules.cluster.ray_runtime import private_temp_dir

    monkeypatch.setattr(tempfile, "gettempdir", lambda: str(tmp_path))
    given = private_temp_dir()
    private = given.parent
    assert private.stat().st_mode & 0o777 == 0o700 and given.name == "r"
    private.chmod(0o777)  # loosened by someone: tightened again
    assert private_temp_dir() == given and private.stat().st_mode & 0o777 == 0o700

    private.rmdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.symlink(elsewhere, private)  # another user planting a link where the folder goes
    with pytest.raises(RuntimeError, match="not a folder of this user"):
        private_temp_dir()
