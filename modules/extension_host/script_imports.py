"""`from scripts.<file> import X` inside an extension, each extension with its own `scripts`.

In A1111, `scripts/` has no `__init__.py`, so while an extension loads (its folder first on
`sys.path`) `scripts` is a namespace package over every `scripts/` folder on the path, and
`scripts.utils` is whichever extension's `utils.py` was imported first, for the rest of the run:
two extensions that both have `scripts/utils.py` break one another, and a lazy
`from scripts.utils import x` inside a function finds the module only if some extension imported
it earlier.

Atelier gives each extension its own package for its `scripts/` folder, a real module named
`atelier_extensions.<extension>.scripts` (in `sys.modules`, so pickling, dataclasses and pydantic
find the classes defined there). Every module of the folder, the script files themselves
included, runs with an `__import__` of its own (its `__builtins__`, which Python reads for every
import statement in the module and in functions defined there): it maps the absolute names
`scripts` and `scripts.<x>[.<y>]` to that package, whenever the import runs — at load time, in a
hook, in a Gradio handler. So:

- `from scripts.helpers import thing` in `scripts/main.py` imports `scripts/helpers.py` of the same
  extension, once: the script file `helpers.py` and the imported `scripts.helpers` are one module
  (A1111 runs it twice, as two copies);
- two extensions each with `scripts/utils.py` each get their own;
- relative imports in sub-packages of `scripts/` (`from .x import y`) resolve in the same package;
- a lazy import of a module at the extension's root (`from mylib import x` inside a function,
  after loading, when the root is no longer on `sys.path`) is retried with the root on the path
  for that one import, when the module is there.

Imports of any other name go to Python's import unchanged. Modules at the extension's root
(`mylib/`) are ordinary top-level modules, as in A1111: two extensions with a root package of the
same name share the first one imported, and such a module that itself imports `scripts.<x>` gets
Python's namespace package, as in A1111.

The modules' `__builtins__` is a copy of the builtins taken when the extension loads, with its own
`__import__`: a name added to the `builtins` module later (gettext's `install()` adding `_`) is not
seen by code in the extension's `scripts/` folder.
"""

from __future__ import annotations

import builtins
import importlib.machinery
import importlib.util
import sys
import threading
import types
from pathlib import Path

from modules.extension_host.module_files import module_name_part

SCRIPTS = "scripts"
PREFIX = "atelier_extensions"


def package_name(extension_name: str) -> str:
    """The module name of an extension's `scripts/` folder."""
    return f"{PREFIX}.{module_name_part(extension_name)}.{SCRIPTS}"


class ExtensionImports:
    """The import scope of one extension: its `scripts` package and the `__import__` its modules use."""

    def __init__(self, extension_name: str, root: Path):
        self.extension = extension_name
        self.root = Path(root)
        self.package = package_name(extension_name)
        self._lock = threading.RLock()
        # This scope's modules. They are in sys.modules too (the latest load of a name wins there);
        # imports look here first, so two apps in one process (tests) each keep their own.
        self.modules: dict[str, types.ModuleType] = {}
        self.builtins = dict(vars(builtins))
        self.builtins["__import__"] = self._import

    # --- the package ------------------------------------------------------------------------------

    def _ensure_packages(self) -> types.ModuleType:
        parent_name = self.package.rpartition(".")[0]
        if PREFIX not in sys.modules:
            top = types.ModuleType(PREFIX, "Extensions' modules (modules.extension_host.script_imports)")
            top.__path__ = []
            sys.modules[PREFIX] = top
        parent = sys.modules.get(parent_name)
        if parent is None:
            parent = types.ModuleType(parent_name, f"Extension {self.extension}")
            parent.__path__ = []
            sys.modules[parent_name] = parent
            setattr(sys.modules[PREFIX], parent_name.rpartition(".")[2], parent)
        package = self.modules.get(self.package)
        if package is None:
            folder = self.root / SCRIPTS
            spec = importlib.machinery.ModuleSpec(self.package, None, is_package=True)
            spec.submodule_search_locations = [str(folder)]
            package = importlib.util.module_from_spec(spec)
            package.__file__ = None
            package.__builtins__ = self.builtins
            self.modules[self.package] = sys.modules[self.package] = package
            parent.scripts = package
        return package

    def load_script_file(self, path: Path) -> types.ModuleType:
        """The module of the script file `path` (`scripts/<stem>.py`): imported now, or the one a
        sibling script already imported as `scripts.<stem>`."""
        return self.import_absolute(f"{self.package}.{path.stem}")

    def import_absolute(self, fullname: str) -> types.ModuleType:
        """Import `fullname` (under this extension's package) and its parents, each module running
        with this extension's `__import__`."""
        with self._lock:
            module = self.modules.get(fullname)
            if module is not None:
                return module
            package = self._ensure_packages()
            if fullname == self.package:
                return package
            parent_name, _, last = fullname.rpartition(".")
            parent = self.import_absolute(parent_name)
            search = getattr(parent, "__path__", None)
            spec = importlib.machinery.PathFinder.find_spec(fullname, search) if search is not None else None
            if spec is None:
                shown = "scripts" + fullname[len(self.package):]
                raise ModuleNotFoundError(
                    f"No module named {shown!r} in extension {self.extension} ({self.root / SCRIPTS} has no "
                    f"{last}.py or {last}/ there)", name=fullname)
            module = importlib.util.module_from_spec(spec)
            module.__builtins__ = self.builtins  # before the code runs: functions defined there keep it
            self.modules[fullname] = sys.modules[fullname] = module
            try:
                spec.loader.exec_module(module)
            except BaseException:
                self.modules.pop(fullname, None)
                sys.modules.pop(fullname, None)
                raise
            setattr(parent, last, module)
            return module

    # --- the import statement ----------------------------------------------------------------------

    def _import(self, name, globals=None, locals=None, fromlist=(), level=0):
        if level == 0 and (name == SCRIPTS or name.startswith(SCRIPTS + ".")):
            return self._import_mapped(self.package + name[len(SCRIPTS):], fromlist, top=self.package)
        package = (globals or {}).get("__package__") or ""
        if level > 0 and (package == self.package or package.startswith(self.package + ".")):
            target = importlib.util.resolve_name("." * level + name, package)
            if not (target == self.package or target.startswith(self.package + ".")):
                raise ImportError(f"attempted relative import beyond the scripts folder of extension {self.extension}")
            return self._import_mapped(target, fromlist, top=None)
        try:
            return builtins.__import__(name, globals, locals, fromlist, level)
        except ModuleNotFoundError as error:
            if level != 0 or not self._at_root(name) or str(self.root) in sys.path:
                raise
            with self._lock:  # a lazy import of the extension's own root module, after loading
                sys.path.insert(0, str(self.root))
                try:
                    return builtins.__import__(name, globals, locals, fromlist, level)
                except ModuleNotFoundError:
                    raise error from None
                finally:
                    try:
                        sys.path.remove(str(self.root))
                    except ValueError:
                        pass

    def _at_root(self, name: str) -> bool:
        top = name.partition(".")[0]
        return (self.root / top).is_dir() or (self.root / f"{top}.py").is_file()

    def _import_mapped(self, fullname: str, fromlist, top: str | None):
        module = self.import_absolute(fullname)
        if fromlist:
            for item in fromlist:
                if item == "*" or hasattr(module, item) or not hasattr(module, "__path__"):
                    continue
                try:
                    self.import_absolute(f"{fullname}.{item}")
                except ModuleNotFoundError as error:
                    if error.name != f"{fullname}.{item}":
                        raise
                    # `from scripts import nothing`: Python's ImportError ("cannot import name") follows
            return module
        # `import scripts.a.b` binds `scripts`: the package, with `a.b` reachable as attributes.
        return self.import_absolute(top) if top is not None else module

    def forget(self) -> None:
        """Take this scope's modules out of sys.modules (an extension that failed to load)."""
        with self._lock:
            for name, module in self.modules.items():
                if sys.modules.get(name) is module:
                    del sys.modules[name]
