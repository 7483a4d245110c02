"""A1111's `modules.launch_utils` (and the names `launch.py` re-exports) for extensions'
install.py: install packages and run commands with this Python. Standard library only: install.py
runs in a subprocess before anything heavy is imported.

`is_installed`, `run` and `run_pip` are Atelier's start-up helpers (modules.serving.bootstrap).
`git`, `index_url` and `python` follow A1111's environment variables (`GIT`, `INDEX_URL`);
`repo_dir(name)` is `<install>/repositories/<name>` (Atelier clones no repositories there).
"""

from __future__ import annotations

import os
import subprocess
import sys

from modules.extension_host.module_files import REPO_ROOT
from modules.serving.bootstrap import is_installed, run, run_pip  # noqa: F401  (re-exported)

python = sys.executable
git = os.environ.get("GIT", "git")
index_url = os.environ.get("INDEX_URL", "")
dir_repos = "repositories"
script_path = str(REPO_ROOT)


def repo_dir(name: str) -> str:
    return os.path.join(script_path, dir_repos, name)


def _git_output(*arguments: str) -> str | None:
    try:
        done = subprocess.run([git, "-C", script_path, *arguments], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 and done.stdout.strip() else None


def commit_hash() -> str:
    """The install's git commit, or "<none>" (A1111's value when git cannot tell)."""
    return _git_output("rev-parse", "HEAD") or "<none>"


def git_tag() -> str:
    """`git describe --tags` of the install, else "<none>"."""
    return _git_output("describe", "--tags") or "<none>"


def run_python(code: str, desc: str | None = None, errdesc: str | None = None) -> str:
    """Run `code` with this Python (A1111's `launch.run_python`)."""
    return run([python, "-c", code], desc=desc, errdesc=errdesc, live=False)
