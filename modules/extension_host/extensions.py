"""Extensions (A1111.md §11): discovery, enabled state, loading with failure isolation, install from a
git URL, `install.py` and `preload.py`, and the framework self-check.

An extension is a folder `extensions/<name>/` (under the data folder) or
`extensions-builtin/<name>/` (in the repo), holding any of `scripts/*.py`, `javascript/*.js`,
`style.css`, `install.py` and `preload.py`. Which ones are enabled is A1111's pair of settings in
`config.json`: `disabled_extensions` (names) and `disable_all_extensions` (`none`, `extra` = all but
the built-in ones, `all`); the flags `--disable-all-extensions` / `--disable-extra-extensions` win
over the setting for one run.

Start-up, in order:
  launch.py      `run_installers(argv)`: each enabled extension's `install.py`, in a subprocess, once
                 per version of the file (a hash stamp in the virtual environment)
  webui.main     `parser_with_preloads(argv)`: each enabled extension's `preload(parser)` adds flags
  webui.main     `load_extensions(settings, args)`: imports `scripts/*.py` of enabled extensions,
                 each extension in its own callback scope (modules.extension_host.callbacks). An extension
                 whose import raises is logged with its name and traceback, its callbacks and scripts
                 are dropped, and it is marked failed for this run; the others load and the server
                 starts. Around each extension, the identities of torch / diffusers / transformers
                 functions are compared: a replaced one is a warning naming the extension.

This module imports nothing heavy at module level: launch.py uses it before torch is imported.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from modules.extension_host.module_files import REPO_ROOT, import_file_as_module, module_name_part

log = logging.getLogger(__name__)

BUILTIN_DIR = REPO_ROOT / "extensions-builtin"
DISABLED_KEY = "disabled_extensions"
DISABLE_ALL_KEY = "disable_all_extensions"
DISABLE_ALL_CHOICES = ("none", "extra", "all")
INSTALL_STAMPS_NAME = ".atelier-extension-installs.json"  # in the virtual environment (sys.prefix)
INSTALL_TIMEOUT_S = 30 * 60  # an install.py may pip-install large packages; a hung one must not stop the start


@dataclass(frozen=True)
class ExtensionFolders:
    user: Path  # <data-dir>/extensions: installed by the user
    builtin: Path = BUILTIN_DIR  # shipped with Atelier

    @classmethod
    def for_data_dir(cls, data_dir: str | os.PathLike | None) -> "ExtensionFolders":
        base = Path(data_dir).expanduser().resolve() if data_dir else REPO_ROOT
        return cls(user=base / "extensions")


@dataclass(frozen=True)
class GitInfo:
    remote: str | None = None
    branch: str | None = None
    commit_hash: str | None = None
    commit_date: int | None = None

    @property
    def version(self) -> str | None:
        return self.commit_hash[:8] if self.commit_hash else None


@dataclass
class Extension:
    name: str
    path: Path
    is_builtin: bool
    enabled: bool = True
    error: str | None = None  # the traceback, when loading failed in this run
    _git: GitInfo | None = field(default=None, repr=False)

    @property
    def status(self) -> str:
        if self.error is not None:
            return "failed"
        return "enabled" if self.enabled else "disabled"

    @property
    def active(self) -> bool:
        """Enabled and loaded without error."""
        return self.enabled and self.error is None

    def script_files(self) -> list[Path]:
        return sorted((self.path / "scripts").glob("*.py"))

    def javascript_files(self) -> list[Path]:
        folder = self.path / "javascript"
        return sorted([*folder.glob("*.js"), *folder.glob("*.mjs")])

    @property
    def stylesheet(self) -> Path | None:
        path = self.path / "style.css"
        return path if path.is_file() else None

    @property
    def install_script(self) -> Path | None:
        path = self.path / "install.py"
        return path if path.is_file() else None

    @property
    def preload_script(self) -> Path | None:
        path = self.path / "preload.py"
        return path if path.is_file() else None

    def git_info(self) -> GitInfo:
        """Remote, branch and commit of an extension that is its own git checkout (read when asked,
        not at start-up; cached)."""
        if self._git is None:
            self._git = _read_git_info(self.path)
        return self._git


def _git(path: Path, *arguments: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(path), *arguments], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    return done.stdout.strip() or None


def _read_git_info(path: Path) -> GitInfo:
    if not (path / ".git").exists():  # not its own checkout (a built-in one, or a copied folder)
        return GitInfo()
    head = _git(path, "log", "-1", "--format=%H %ct")
    commit, date = head.split() if head else (None, None)
    return GitInfo(remote=_git(path, "config", "--get", "remote.origin.url"),
                   branch=_git(path, "rev-parse", "--abbrev-ref", "HEAD"), commit_hash=commit,
                   commit_date=int(date) if date else None)


# --- enabled state -----------------------------------------------------------------------------------


def disable_all_mode(settings: Mapping[str, Any], args: argparse.Namespace | None = None) -> str:
    """`none`, `extra` or `all`: the flags for this run, else the `disable_all_extensions` setting."""
    if args is not None and getattr(args, "disable_all_extensions", False):
        return "all"
    if args is not None and getattr(args, "disable_extra_extensions", False):
        return "extra"
    mode = settings.get(DISABLE_ALL_KEY, "none")
    return mode if mode in DISABLE_ALL_CHOICES else "none"


def discover_extensions(folders: ExtensionFolders, settings: Mapping[str, Any],
                        args: argparse.Namespace | None = None) -> list[Extension]:
    """Built-in extensions, then the user's, each alphabetically (the load order). Folders whose
    name starts with "." are skipped, as is a user extension named like a built-in one."""
    disabled = set(settings.get(DISABLED_KEY) or ())
    mode = disable_all_mode(settings, args)
    found: list[Extension] = []
    names: set[str] = set()
    for folder, is_builtin in ((folders.builtin, True), (folders.user, False)):
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir(), key=lambda p: p.name.lower()):
            if not path.is_dir() or path.name.startswith(".") or path.name == "__pycache__":
                continue
            if path.name in names:
                log.warning("Skipping extension %s: an extension named %s is already listed", path, path.name)
                continue
            names.add(path.name)
            enabled = path.name not in disabled and mode != "all" and not (mode == "extra" and not is_builtin)
            found.append(Extension(path.name, path, is_builtin, enabled))
    return found


def save_enabled_states(settings_store, extensions: Iterable[Extension], enabled: Mapping[str, bool],
                        disable_all: str | None = None) -> list[str]:
    """Persist which extensions are enabled (A1111's Extensions tab "Apply"): names absent from
    `extensions` keep their stored state. Takes effect at the next start. Returns the changed keys."""
    current = settings_store.current()
    disabled = [name for name in (current.get(DISABLED_KEY) or ()) if name not in enabled]
    disabled += [ext.name for ext in extensions if not enabled.get(ext.name, ext.enabled)]
    changes: dict[str, Any] = {DISABLED_KEY: sorted(set(disabled))}
    if disable_all is not None:
        if disable_all not in DISABLE_ALL_CHOICES:
            raise ValueError(f"disable_all_extensions must be one of {list(DISABLE_ALL_CHOICES)}, got {disable_all!r}")
        changes[DISABLE_ALL_KEY] = disable_all
    return settings_store.apply(changes)


def read_extension_settings(config_file: Path) -> dict[str, Any]:
    """The two extension keys of `config.json`, read without the settings machinery (launch time).
    A missing or unreadable file means the defaults."""
    try:
        data = json.loads(Path(config_file).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {key: data[key] for key in (DISABLED_KEY, DISABLE_ALL_KEY) if key in data}


def _launch_args(argv: list[str] | None) -> argparse.Namespace:
    """The flags that decide which extensions exist before the full parser does (A1111 does the same)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--disable-all-extensions", action="store_true")
    parser.add_argument("--disable-extra-extensions", action="store_true")
    known, _ = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    return known


def _enabled_at_launch(argv: list[str] | None) -> list[Extension]:
    args = _launch_args(argv)
    folders = ExtensionFolders.for_data_dir(args.data_dir)
    config = folders.user.parent / "config.json"
    return [ext for ext in discover_extensions(folders, read_extension_settings(config), args) if ext.enabled]


# --- install.py and preload.py --------------------------------------------------------------------------


@dataclass(frozen=True)
class InstallOutcome:
    extension: str
    ran: bool  # False: skipped, this version of install.py already ran
    ok: bool
    seconds: float = 0.0
    output: str = ""


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_installer(extension: Extension, *, stamps_file: Path | None = None, force: bool = False,
                  echo=print) -> InstallOutcome:
    """Run `extension`'s install.py in a subprocess (A1111: this Python, PYTHONPATH = the repo, the
    repo as working folder), unless this version of the file already ran. A failure is reported
    and not stamped, so it is retried at the next start; it never stops the start-up."""
    script = extension.install_script
    if script is None:
        return InstallOutcome(extension.name, ran=False, ok=True)
    stamps_file = stamps_file or Path(sys.prefix) / INSTALL_STAMPS_NAME
    stamps = _read_stamps(stamps_file)
    key, digest = str(script.resolve()), _file_digest(script)
    if not force and stamps.get(key) == digest:
        return InstallOutcome(extension.name, ran=False, ok=True)
    echo(f"Extension {extension.name}: running install.py ({'first run' if key not in stamps else 'it changed'}) ...",
         flush=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *filter(None, [env.get("PYTHONPATH")])])
    started = time.monotonic()
    try:
        done = subprocess.run([sys.executable, str(script)], cwd=str(REPO_ROOT), env=env, capture_output=True,
                              text=True, timeout=INSTALL_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        seconds = time.monotonic() - started
        echo(f"Extension {extension.name}: install.py did not finish in {INSTALL_TIMEOUT_S // 60} minutes and was "
             "stopped; the extension may not work. It will run again at the next start.", flush=True)
        return InstallOutcome(extension.name, ran=True, ok=False, seconds=seconds, output="timed out")
    seconds = time.monotonic() - started
    output = (done.stdout + done.stderr).strip()
    for line in output.splitlines():
        echo(f"  [{extension.name}] {line}", flush=True)
    if done.returncode != 0:
        echo(f"Extension {extension.name}: install.py FAILED (exit code {done.returncode}) after {seconds:.1f} s; "
             "the extension may not work. It will run again at the next start.", flush=True)
        return InstallOutcome(extension.name, ran=True, ok=False, seconds=seconds, output=output)
    stamps[key] = digest
    try:
        _write_stamps(stamps_file, stamps)
    except OSError as error:  # it only means install.py runs again next time
        log.warning("Cannot record that %s's install.py ran (%s); it will run again at the next start",
                    extension.name, error)
    echo(f"Extension {extension.name}: install.py done in {seconds:.1f} s", flush=True)
    return InstallOutcome(extension.name, ran=True, ok=True, seconds=seconds, output=output)


def _read_stamps(path: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_stamps(path: Path, stamps: Mapping[str, str]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(dict(stamps), indent=2), encoding="utf-8")
    os.replace(tmp, path)


def run_installers(argv: list[str] | None = None, *, stamps_file: Path | None = None) -> list[InstallOutcome]:
    """launch.py: the install.py of every enabled extension, in load order."""
    return [run_installer(ext, stamps_file=stamps_file) for ext in _enabled_at_launch(argv) if ext.install_script]


def run_preloads(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> list[str]:
    """Call `preload(parser)` of every enabled extension's preload.py, so their flags parse. Returns
    the names of extensions whose preload failed (logged with the traceback)."""
    failed = []
    for ext in _enabled_at_launch(argv):
        if ext.preload_script is None:
            continue
        try:
            module = import_file_as_module(f"atelier_preload.{module_name_part(ext.name)}", ext.preload_script)
            preload = getattr(module, "preload", None)
            if callable(preload):
                preload(parser)
        except (Exception, SystemExit):
            failed.append(ext.name)
            log.error("Extension %s: preload.py failed; its command-line flags are not available:\n%s",
                      ext.name, traceback.format_exc())
    return failed


def parser_with_preloads(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The command-line parser with the extension flags and every enabled extension's preload flags."""
    from modules.serving.cmd_args import build_parser

    parser = build_parser()  # --disable-all-extensions / --disable-extra-extensions are among its flags
    run_preloads(parser, argv)
    return parser


# --- install from a URL ---------------------------------------------------------------------------------


class ExtensionInstallError(RuntimeError):
    pass


class ExtensionAccessError(ExtensionInstallError):
    pass


ACCESS_REFUSED = ("extension access disabled because of command line flags: the server listens beyond localhost "
                  "(--listen or --server-name), so installing, enabling and disabling extensions from the UI is "
                  "off. Start it with "
                  "--enable-insecure-extension-access to allow it, or install by cloning into the extensions "
                  "folder on the server.")
# git transports that fetch a repository; `ext::` (runs a command) and option-like URLs are refused.
_URL_FORMS = re.compile(r"^(https?://|ssh://|git://|file://|\w[\w.-]*@\w[\w.-]*:)[^\s]+$")
_NAME_FORM = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")
_BRANCH_FORM = re.compile(r"^[\w./-]+$")


def check_extension_access(args: argparse.Namespace) -> None:
    """A1111's rule (modules.serving.cmd_args.extension_access_allowed): installing from the UI only on a
    local server, or with --enable-insecure-extension-access. Raises ExtensionAccessError."""
    from modules.serving.cmd_args import extension_access_allowed

    if not extension_access_allowed(args):
        raise ExtensionAccessError(ACCESS_REFUSED)


def folder_name_for_url(url: str) -> str:
    """A1111's default folder name: the last part of the URL without `.git`."""
    name = url.rstrip("/").rsplit("/", 1)[-1].rsplit(":", 1)[-1]
    return name.removesuffix(".git")


def install_from_url(url: str, folders: ExtensionFolders, args: argparse.Namespace, *, dirname: str | None = None,
                     branch: str | None = None, stamps_file: Path | None = None) -> Path:
    """`git clone` `url` into `extensions/<dirname>` and run its install.py; it loads at the next
    start. The clone goes to a hidden temporary folder first, so a failed clone leaves nothing."""
    check_extension_access(args)
    url = (url or "").strip()
    if not url:
        raise ExtensionInstallError("no URL given; paste the git URL of the extension's repository")
    if not _URL_FORMS.match(url) or "::" in url:
        raise ExtensionInstallError(f"{url!r} is not a git URL Atelier clones; use https://..., ssh://..., "
                                    "git@host:owner/repo.git or file://...")
    name = (dirname or "").strip() or folder_name_for_url(url)
    if not _NAME_FORM.match(name):
        raise ExtensionInstallError(f"{name!r} is not a usable folder name; use letters, digits, '.', '_' and '-'")
    if branch and (branch.startswith("-") or not _BRANCH_FORM.match(branch)):
        raise ExtensionInstallError(f"{branch!r} is not a branch name")
    target = folders.user / name
    if (folders.builtin / name).exists():
        raise ExtensionInstallError(f"{name!r} is the name of a built-in extension; pick another folder name")
    if target.exists():
        raise ExtensionInstallError(f"extension folder already exists: {target}; remove it or pick another name")
    folders.user.mkdir(parents=True, exist_ok=True)
    temporary = folders.user / f".tmp-install-{name}"
    shutil.rmtree(temporary, ignore_errors=True)
    command = ["git", "-c", "protocol.ext.allow=never", "clone", "--quiet"]
    if branch:
        command.append(f"--branch={branch}")
    command += ["--", url, str(temporary)]
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0"}
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    except subprocess.TimeoutExpired:
        shutil.rmtree(temporary, ignore_errors=True)
        raise ExtensionInstallError(f"git clone of {url} took more than 10 minutes; gave up") from None
    if done.returncode != 0:
        shutil.rmtree(temporary, ignore_errors=True)
        raise ExtensionInstallError(f"git clone of {url} failed: {done.stderr.strip() or done.stdout.strip()}")
    os.replace(temporary, target)
    log.info("Installed extension %s from %s into %s", name, url, target)
    extension = Extension(name, target, is_builtin=False)
    outcome = run_installer(extension, stamps_file=stamps_file, echo=lambda text, **_: log.info("%s", text))
    if not outcome.ok:
        raise ExtensionInstallError(f"extension {name} was cloned into {target}, but its install.py failed:\n"
                                    f"{outcome.output[-2000:]}")
    return target


# --- the framework self-check -----------------------------------------------------------------------------

# Modules whose public functions, and classes whose methods, extensions must not replace. Atelier
# changes models through their own seams (attention processors, context managers); a replaced
# framework function silently changes every generation.
FRAMEWORK_MODULES = ("torch", "torch.nn.functional", "torch.nn.init", "torch.linalg", "torch.fft")
FRAMEWORK_CLASSES = (
    "torch.Tensor", "torch.nn.Module", "torch.nn.Linear", "torch.nn.Conv2d", "torch.nn.GroupNorm",
    "torch.nn.LayerNorm", "torch.nn.Embedding", "torch.nn.MultiheadAttention",
    "diffusers.models.unets.unet_2d_condition.UNet2DConditionModel",
    "diffusers.models.autoencoders.autoencoder_kl.AutoencoderKL",
    "diffusers.models.attention_processor.Attention", "diffusers.models.attention_processor.AttnProcessor2_0",
    "diffusers.models.attention.BasicTransformerBlock", "diffusers.models.resnet.ResnetBlock2D",
    "diffusers.models.transformers.transformer_2d.Transformer2DModel",
    "transformers.models.clip.modeling_clip.CLIPTextModel",
    "transformers.models.clip.modeling_clip.CLIPTextModelWithProjection",
    "transformers.models.clip.modeling_clip.CLIPTextTransformer",
    "transformers.models.clip.modeling_clip.CLIPAttention", "transformers.models.clip.modeling_clip.CLIPEncoderLayer",
)


# Code defined under these packages is the frameworks' own (or Atelier's helpers'); a replaced
# function whose new code lives elsewhere was put there by someone else.
FRAMEWORK_PACKAGES = ("torch", "diffusers", "transformers", "accelerate", "peft", "safetensors")


_CLASS_PREFIXES = tuple(name + "." for name in FRAMEWORK_CLASSES)


def _loaded_module(module_name: str):
    """The module if it is imported already. The self-check never imports: importing diffusers'
    UNet and transformers' CLIP costs seconds of start-up, and the model load imports them anyway."""
    return sys.modules.get(module_name)


def _resolve_class(dotted: str):
    module_name, _, attribute = dotted.rpartition(".")
    return getattr(_loaded_module(module_name), attribute, None)


def _framework_dirs() -> tuple[str, ...]:
    dirs = []
    for name in FRAMEWORK_PACKAGES:
        module = sys.modules.get(name)
        if module is not None and getattr(module, "__file__", None):
            dirs.append(str(Path(module.__file__).resolve().parent) + os.sep)
    return tuple(dirs)


def _defined_outside_frameworks(value: Any, dirs: tuple[str, ...]) -> bool:
    """Whether `value` (a function, method wrapper or class) was written outside FRAMEWORK_PACKAGES.
    Builtins have no source file and count as the frameworks' own; a wrapper made with
    functools.wraps still has its own code, so it is caught."""
    for attribute in ("__func__", "fget"):  # staticmethod/classmethod, property
        value = getattr(value, attribute, None) or value
    if isinstance(value, type):
        module = sys.modules.get(getattr(value, "__module__", ""), None)
        filename = getattr(module, "__file__", None)
    else:
        code = getattr(value, "__code__", None)
        filename = getattr(code, "co_filename", None)
    if not filename:
        return False
    filename = str(Path(filename).resolve())
    return not filename.startswith(dirs)


@dataclass(frozen=True)
class FrameworkChange:
    name: str  # e.g. torch.nn.functional.silu
    extension: str  # who changed it, or the stage ("on_app_started callbacks")


class FrameworkSnapshot:
    """The identity of every public function of FRAMEWORK_MODULES and every attribute defined by
    FRAMEWORK_CLASSES, to compare before and after extensions run."""

    def __init__(self, entries: dict[str, Any]):
        self.entries = entries

    @classmethod
    def take(cls) -> "FrameworkSnapshot":
        modules = [(name, _loaded_module(name)) for name in FRAMEWORK_MODULES]
        classes = [(name, _resolve_class(name)) for name in FRAMEWORK_CLASSES]
        entries: dict[str, Any] = {}
        for name, module in modules:
            if module is None:
                continue
            for attribute, value in list(vars(module).items()):
                if not attribute.startswith("_") and callable(value) and not inspect.ismodule(value):
                    entries[f"{name}.{attribute}"] = value
        for name, cls_ in classes:
            if not isinstance(cls_, type):
                continue
            entries[name] = cls_
            for attribute, value in list(vars(cls_).items()):
                if attribute not in ("__dict__", "__weakref__", "__doc__", "__annotations__", "_abc_impl"):
                    entries[f"{name}.{attribute}"] = value
        return cls(entries)

    def changes_since(self, earlier: "FrameworkSnapshot") -> list[str]:
        """Names removed since `earlier`, or whose value is new and was written outside the
        frameworks: replaced since `earlier`, or (for a class first imported since, e.g. by an
        extension) patched before this snapshot. The frameworks' own changes pass: importing
        diffusers wraps a few torch functions through torch._dynamo, and the model loader builds
        models inside accelerate's init_empty_weights, which swaps `register_parameter` meanwhile."""
        dirs = _framework_dirs()
        removed = [name for name in earlier.entries if name not in self.entries]
        replaced = [name for name, value in self.entries.items()
                    if name in earlier.entries and earlier.entries[name] is not value
                    and _defined_outside_frameworks(value, dirs)]
        # New names are there because their module or class was imported since `earlier` (the server
        # starts without torch; an extension may import it). A class attribute or a module function
        # whose code lives outside the frameworks was put there by someone else; classes a framework
        # module re-exports (typing helpers and the like) are not functions and pass.
        new = [name for name, value in self.entries.items()
               if name not in earlier.entries and (name.startswith(_CLASS_PREFIXES) or not isinstance(value, type))
               and _defined_outside_frameworks(value, dirs)]
        return sorted(removed + replaced + new)


def _warn_framework_changes(names: list[str], who: str) -> list[FrameworkChange]:
    if names:
        shown = ", ".join(names[:12]) + (f" and {len(names) - 12} more" if len(names) > 12 else "")
        log.warning("Self-check: %s replaced %s. Atelier changes models through their own seams; a replaced "
                    "torch/diffusers/transformers function changes every generation and can break it. If images "
                    "look wrong or generation fails, disable it in the Extensions tab.", who, shown)
    return [FrameworkChange(name, who) for name in names]


# --- loading ---------------------------------------------------------------------------------------------


@dataclass
class ExtensionRuntime:
    """The extensions of one running app: the list, their callbacks, their scripts, and what the
    self-check found. Owned by the AppContext (`context.extensions`)."""

    folders: ExtensionFolders
    extensions: list[Extension]
    callbacks: Any  # script_callbacks.CallbackRegistry
    scripts: Any  # scripts.ScriptRunner
    framework_changes: list[FrameworkChange] = field(default_factory=list)
    baseline: FrameworkSnapshot | None = field(default=None, repr=False)

    def active(self) -> list[Extension]:
        return [ext for ext in self.extensions if ext.active]

    def failed(self) -> list[Extension]:
        return [ext for ext in self.extensions if ext.error is not None]

    def get(self, name: str) -> Extension:
        for ext in self.extensions:
            if ext.name == name:
                return ext
        raise KeyError(f"no extension named {name!r}; known: {[ext.name for ext in self.extensions]}")

    def javascript_files(self) -> list[Path]:
        return [path for ext in self.active() for path in ext.javascript_files()]

    def stylesheets(self) -> list[Path]:
        return [ext.stylesheet for ext in self.active() if ext.stylesheet is not None]

    def app_started(self, demo, app) -> None:
        """Run the on_app_started callbacks (`demo`: the Gradio Blocks or None; `app`: the FastAPI
        app, where extensions add routes), then self-check again."""
        self.callbacks.app_started(demo, app)
        _routes_before_catch_all_mounts(app)
        self.check_framework("an on_app_started callback")

    def check_framework(self, who: str) -> list[FrameworkChange]:
        """Changes since start-up not reported yet, attributed to `who`."""
        if self.baseline is None:
            return []
        known = {change.name for change in self.framework_changes}
        new = [name for name in FrameworkSnapshot.take().changes_since(self.baseline) if name not in known]
        changes = _warn_framework_changes(new, who)
        self.framework_changes.extend(changes)
        return changes

    def api_items(self) -> list[dict[str, Any]]:
        """A1111's GET /sdapi/v1/extensions items."""
        items = []
        for ext in self.extensions:
            git = ext.git_info()
            items.append({"name": ext.name, "remote": git.remote, "branch": git.branch, "commit_hash": git.commit_hash,
                          "version": git.version, "commit_date": git.commit_date, "enabled": ext.enabled})
        return items


def _routes_before_catch_all_mounts(app) -> None:
    """Routes added by extensions after the web UI was mounted at "/" would be shadowed by that
    mount (Starlette matches in order): move catch-all mounts to the end, keeping their order."""
    routes = getattr(getattr(app, "router", None), "routes", None)
    if not isinstance(routes, list):
        return
    catch_all = [route for route in routes
                 if type(route).__name__ == "Mount" and getattr(route, "path", None) in ("", "/")]
    for route in catch_all:
        routes.remove(route)
        routes.append(route)


def _gradio3_scope():
    """The context the UI callbacks (on_ui_tabs, on_ui_settings, ...) run in: Gradio 3.41 idioms
    translated. Imported when first needed, so a server without a web UI never imports Gradio here."""
    from modules.extension_host.gradio3_compat import gradio3_compat

    return gradio3_compat()


def load_extensions(settings, args: argparse.Namespace | None = None,
                    folders: ExtensionFolders | None = None) -> ExtensionRuntime:
    """Discover and load the enabled extensions (see the module docstring). `settings` is the
    SettingsStore. Never raises for an extension's fault."""
    from modules.extension_host.callbacks import CallbackRegistry, registry_scope
    from modules.extension_host.scripts import ScriptRunner

    if folders is None:
        folders = ExtensionFolders.for_data_dir(getattr(args, "data_dir", None))
    extensions = discover_extensions(folders, settings.current(), args)
    callbacks = CallbackRegistry(ui_scope=_gradio3_scope)
    runner = ScriptRunner(callbacks)
    runtime = ExtensionRuntime(folders, extensions, callbacks, runner)
    if not any(ext.enabled for ext in extensions):
        return runtime
    runtime.baseline = before = FrameworkSnapshot.take()
    for ext in extensions:
        if not ext.enabled:
            continue
        try:
            with registry_scope(callbacks, ext.name):
                runner.load_extension(ext)
        except (Exception, SystemExit):
            ext.error = traceback.format_exc()
            callbacks.remove_extension(ext.name)
            runner.remove_extension(ext.name)
            log.error("Extension %s failed to load and is disabled for this run:\n%s", ext.name, ext.error)
        after = FrameworkSnapshot.take()
        runtime.framework_changes += _warn_framework_changes(after.changes_since(before), f"extension {ext.name}")
        before = after
    loaded = [ext.name for ext in runtime.active()]
    failed = [ext.name for ext in runtime.failed()]
    log.info("Extensions: %d loaded%s%s", len(loaded), f" ({', '.join(loaded)})" if loaded else "",
             f"; FAILED: {', '.join(failed)}" if failed else "")
    return runtime
