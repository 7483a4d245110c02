"""A1111's name for extensions: `modules.launch_utils` (what install.py scripts call). The code lives
in `modules.extension_host.a1111_launch` and `modules.serving.bootstrap`."""

# ruff: noqa: F401
from modules.extension_host.a1111_launch import (
    commit_hash,
    dir_repos,
    git,
    git_tag,
    index_url,
    is_installed,
    python,
    repo_dir,
    run,
    run_pip,
    run_python,
    script_path,
)
