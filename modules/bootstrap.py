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

REPO_ROOT = Path(__file__).resolve().parent.parent
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
