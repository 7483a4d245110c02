"""Set up the Python environment before anything heavy is imported (standard library only).

`launch.py` and `run_tests.py` call `ensure_environment`: outside a virtual environment it creates
`./venv` and re-runs the same command inside it; inside, it installs the requirement files whenever
their content changed since the last install (a hash stamp in the venv), so a second start installs
nothing and starts at once.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
VENV_DIR = REPO_ROOT / "venv"


def _in_virtualenv() -> bool:
    return sys.prefix != sys.base_prefix


def _venv_python() -> Path:
    return VENV_DIR / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def ensure_environment(requirement_files: list[str], no_deps_files: tuple[str, ...] = ()) -> None:
    """Re-exec inside ./venv if needed, then install what changed. Set ATELIER_SKIP_INSTALL=1 to skip."""
    if os.environ.get("ATELIER_SKIP_INSTALL") == "1":
        return
    if not _in_virtualenv():
        if not _venv_python().exists():
            print(f"Creating virtual environment in {VENV_DIR} ...", flush=True)
            subprocess.check_call([sys.executable, "-m", "venv", str(VENV_DIR)])
        script = Path(sys.argv[0]).resolve()
        os.execv(str(_venv_python()), [str(_venv_python()), str(script), *sys.argv[1:]])

    for name, no_deps in [(f, False) for f in requirement_files] + [(f, True) for f in no_deps_files]:
        path = REPO_ROOT / name
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        stamp = Path(sys.prefix) / f".atelier-installed-{path.name}"
        if stamp.exists() and stamp.read_text().strip() == digest:
            continue
        print(f"Installing {name} ...", flush=True)
        command = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "-q", "-r", str(path)]
        if no_deps:
            command.insert(-2, "--no-deps")
        subprocess.check_call(command)
        stamp.write_text(digest)


# --- helpers extensions' install.py scripts call as `launch.<name>` (A1111's launch_utils) ------------


def is_installed(package: str) -> bool:
    """Whether a distribution named `package` is installed in this environment."""
    from importlib import metadata

    try:
        metadata.distribution(package)
    except metadata.PackageNotFoundError:
        return False
    return True


def run(command: str | list[str], desc: str | None = None, errdesc: str | None = None,
        custom_env: dict[str, str] | None = None, live: bool = True) -> str:
    """Run a shell command (A1111's `launch.run`): print `desc`, raise RuntimeError with `errdesc`
    and the output when it fails; returns its output ("" when `live`, which streams it instead)."""
    if desc:
        print(desc, flush=True)
    done = subprocess.run(command, shell=isinstance(command, str), env=custom_env or os.environ,
                          capture_output=not live, text=True)
    if done.returncode != 0:
        output = "" if live else f"\nstdout: {done.stdout}\nstderr: {done.stderr}"
        raise RuntimeError(f"{errdesc or 'Error running command'}.\nCommand: {command}\n"
                           f"Error code: {done.returncode}{output}")
    return "" if live else done.stdout or ""


def run_pip(command: str, desc: str | None = None, live: bool = True) -> str:
    """`pip <command>` with this Python (A1111's `launch.run_pip("install x", "x")`)."""
    return run(f'"{sys.executable}" -m pip {command} --prefer-binary --disable-pip-version-check',
               desc=f"Installing {desc}" if desc else None, errdesc=f"Couldn't install {desc or command}", live=live)
