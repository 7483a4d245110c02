"""Run the test suite: prepare ./venv with the runtime and test requirements, then pytest.

    python3 run_tests.py [pytest args]
"""

import os
import sys

from modules.serving.bootstrap import ensure_environment

if __name__ == "__main__":
    ensure_environment(["requirements.txt", "requirements-test.txt"], no_deps_files=("requirements-test-nodeps.txt",))
    # Tests never reach a model hub: everything they load is generated or ships in the repo.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import pytest

    sys.exit(pytest.main(["-q", *sys.argv[1:]]))
