"""The import environment of extension scripts (A1111.md §15.5): `from scripts.<file> import X` finds
the extension's own file, at load time and later; two extensions with the same helper file name
each get their own; `scripts.basedir()` is the extension's folder while its files import (nested
imports included); every Script subclass in a file's namespace is registered, once."""

from __future__ import annotations

import sys

import pytest

from tests.test_extensions import load, write_extension


@pytest.fixture
def data_dir(tmp_path):
    (tmp_path / "builtin").mkdir()  # no built-in extensions (tests.test_extensions.folders_for)
    return tmp_path

HELPERS = '''
from modules import scripts

thing = "thing of {name}"
BASEDIR_AT_IMPORT = scripts.basedir()


def where():
    return scripts.basedir()
'''

MAIN = '''
from modules import scripts
from scripts.helpers import thing, BASEDIR_AT_IMPORT
import scripts.helpers as helpers_module
from scripts import helpers

BASEDIR = scripts.basedir()
THING = thing


def lazy_thing():
    from scripts.helpers import thing as later  # runs in a hook, after loading
    return later


def lazy_root_module():
    import rootlib  # the extension's own top-level module, imported after loading
    return rootlib.VALUE


class Main(scripts.Script):
    def title(self):
        return "{name} main"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        return []
'''

SUBPACKAGE = {
    "scripts/lib/__init__.py": "from .inner import VALUE\n",
    "scripts/lib/inner.py": "from scripts.helpers import thing\nVALUE = 'inner sees ' + thing\n",
    "scripts/uses_lib.py": "from scripts.lib import VALUE\nfrom scripts.lib.inner import VALUE as SAME\n",
}


def _extension(root, name: str, extra: dict | None = None):
    files = {"scripts/helpers.py": HELPERS.replace("{name}", name), "scripts/main.py": MAIN.replace("{name}", name),
             "rootlib.py": f"VALUE = 'root of {name}'\n", **(extra or {})}
    return write_extension(root / "extensions", name, files)


def _module(name: str, stem: str):
    return sys.modules[f"atelier_extensions.{name}.scripts.{stem}"]


def test_scripts_imports_resolve_inside_the_extension_at_load_and_later(data_dir):
    folder = _extension(data_dir, "alpha", SUBPACKAGE)
    runtime = load(data_dir)
    assert not runtime.failed(), runtime.failed()[0].error
    main = _module("alpha", "main")
    helpers = _module("alpha", "helpers")
    assert main.THING == "thing of alpha"
    # The script file helpers.py and the imported scripts.helpers are one module, run once.
    assert main.helpers is helpers and main.helpers_module is helpers
    # basedir() is the extension's folder during the import, in the nested import too; later it is
    # the install root, as in A1111.
    assert main.BASEDIR == str(folder) and helpers.BASEDIR_AT_IMPORT == str(folder)
    from modules.extension_host.module_files import REPO_ROOT

    assert helpers.where() == str(REPO_ROOT)
    # Imports that run after loading, when the extension is no longer on sys.path.
    assert str(folder) not in sys.path
    assert main.lazy_thing() == "thing of alpha"
    assert main.lazy_root_module() == "root of alpha"
    # Sub-packages of scripts/: relative and absolute imports inside them.
    uses_lib = _module("alpha", "uses_lib")
    assert uses_lib.VALUE == uses_lib.SAME == "inner sees thing of alpha"


def test_two_extensions_with_the_same_helper_file_each_get_their_own(data_dir):
    _extension(data_dir, "alpha")
    _extension(data_dir, "beta")
    runtime = load(data_dir)
    assert not runtime.failed(), [ext.error for ext in runtime.failed()]
    assert _module("alpha", "main").THING == "thing of alpha"
    assert _module("beta", "main").THING == "thing of beta"
    # Later imports too: each extension's function sees its own helpers.
    assert _module("alpha", "main").lazy_thing() == "thing of alpha"
    assert _module("beta", "main").lazy_thing() == "thing of beta"
    assert [script.title() for script in runtime.scripts.scripts] == ["alpha main", "beta main"]
    # A global `scripts.helpers` is not left behind for other code to trip over.
    assert "scripts.helpers" not in sys.modules


def test_imported_script_classes_are_registered_once(data_dir):
    files = {
        "scripts/a_uses.py": "from scripts.z_defines import Defined\nfrom scripts.base import Base\n"
                             "from modules.scripts import Script\n",
        "scripts/base.py": "from modules import scripts\n\n\nclass Base(scripts.Script):\n"
                           "    def show(self, is_img2img):\n        return scripts.AlwaysVisible\n",
        "scripts/z_defines.py": "from scripts.base import Base\n\n\nclass Defined(Base):\n"
                                "    def title(self):\n        return 'defined'\n",
        "lib_outside.py": "from modules import scripts\n\n\nclass Outside(scripts.Script):\n"
                          "    def title(self):\n        return 'outside'\n\n"
                          "    def show(self, is_img2img):\n        return scripts.AlwaysVisible\n",
        "scripts/imports_outside.py": "from lib_outside import Outside\n",
    }
    write_extension(data_dir / "extensions", "gamma", files)
    runtime = load(data_dir)
    assert not runtime.failed(), runtime.failed()[0].error
    titles = {script.title(): script.filename for script in runtime.scripts.scripts}
    # A class defined outside scripts/ and imported into a script file is registered (A1111); the
    # class imported from a sibling script file is registered once, with the file defining it; the
    # abstract base (no title) and Script itself are not.
    assert sorted(titles) == ["defined", "outside"]
    assert titles["defined"].endswith("z_defines.py")
    assert titles["outside"].endswith("imports_outside.py")


def test_a_missing_scripts_module_names_the_extension(data_dir):
    write_extension(data_dir / "extensions", "delta", {"scripts/main.py": "from scripts.nothere import x\n"})
    runtime = load(data_dir)
    error = runtime.get("delta").error
    assert "ModuleNotFoundError" in error and "'scripts.nothere'" in error and "extension delta" in error
    assert "atelier_extensions.delta.scripts.main" not in sys.modules


def test_scripts_imports_do_not_escape_the_scripts_folder(data_dir):
    # `scripts..` style names cannot be written, but a relative import beyond the package must fail
    # as Python's does rather than reach other extensions' packages.
    write_extension(data_dir / "extensions", "eps", {"scripts/main.py": "from ... import other\n"})
    write_extension(data_dir / "extensions", "other", {"scripts/x.py": "X = 1\n"})
    runtime = load(data_dir)
    assert runtime.get("eps").error is not None
    assert "ImportError" in runtime.get("eps").error
