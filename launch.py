"""Start Atelier: prepare ./venv with the requirements (first run only), run the enabled extensions'
install.py (once per version of each), then serve the web UI.

    python3 launch.py [flags]      # flags as A1111's; see `python3 launch.py --help`

Extensions' install.py scripts import this module as A1111's: `launch.is_installed(name)`,
`launch.run_pip("install x", "x")`, `launch.run(command)`.
"""

import sys

from modules.serving.bootstrap import ensure_environment, is_installed, run, run_pip  # noqa: F401  (install.py API)

python = sys.executable  # A1111's `launch.python`

if __name__ == "__main__":
    ensure_environment(["requirements.txt"])
    import os

    if os.environ.get("ATELIER_SKIP_INSTALL") != "1":
        from modules.extension_host.extensions import run_installers

        run_installers(sys.argv[1:])
    import webui

    webui.main()
