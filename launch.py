"""Start Atelier: prepare ./venv with the requirements (first run only), then serve the web UI.

    python3 launch.py [flags]      # flags as A1111's; see `python3 launch.py --help`
"""

from modules.bootstrap import ensure_environment

if __name__ == "__main__":
    ensure_environment(["requirements.txt"])
    import webui

    webui.main()
