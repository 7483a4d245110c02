"""Start Atelier: prepare ./venv with the requirements (first run only), run the enabled extensions'
install.py (once per version of each), then serve the web UI.

    python3 launch.py [flags]      # flags as A1111's; see `python3 launch.py --help`

Extensions' install.py scripts import this module as A1111's: `launch.is_installed(name)`,
`launch.run_pip("install x", "x")`, `launch.run(command)`.
"""

import os
import sys

from modules.serving.bootstrap import ensure_environment
# install.py API: A1111's `launch.<name>` (modules.launch_utils)
from modules.extension_host.a1111_launch import (  # noqa: F401
    commit_hash, git, git_tag, index_url, is_installed, python, repo_dir, run, run_pip, run_python,
)

if __name__ == "__main__":
    # As A1111's webui.sh, which changes to the install folder before starting Python: extensions
    # open paths such as `extensions/<name>/...` and `models/...` relative to the working folder,
    # and relative paths in the flags mean the same as in A1111.
    install_root = os.path.dirname(os.path.abspath(__file__))
    if os.path.realpath(os.getcwd()) != os.path.realpath(install_root):
        print(f"Working folder: {install_root} (relative paths in flags are relative to it, as in A1111)", flush=True)
        os.chdir(install_root)
    ensure_environment(["requirements.txt"])

    if os.environ.get("ATELIER_SKIP_INSTALL") != "1":
        from modules.extension_host.extensions import run_installers

        run_installers(sys.argv[1:])
    import webui

    webui.main()
