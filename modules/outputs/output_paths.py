"""Where a user of the web UI or the API may point the output folders.

The output folder settings (`outdir_*`) decide where the server writes files. A logged-in user is
not the operator: with `save_txt` and `samples_filename_pattern` = `requirements`, an output folder
set to the install folder made the server write a `requirements.txt` that `launch.py` installs from
at the next start. So a value set from the Settings tab, the API's options or a request's
`override_settings` must name a folder inside `<data-dir>/outputs` (where A1111's defaults are), or
inside a folder the operator named with `--allow-output-dir`: relative to the data folder, without
`..`. The whole data folder is not enough: it holds config.json, models/, extensions/, and with the
default `--data-dir` it is the install folder itself. `--allow-output-dirs-anywhere` lifts the rule.

Values read from config.json are the operator's and are used as they are; the rule applies where a
user changes one (modules.serving.settings_policy). Symbolic links are followed before the check, so a link
inside outputs/ that leads elsewhere does not open a way out.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from types import MappingProxyType

# The settings that name a folder the server writes into.
OUTPUT_DIR_SETTINGS = frozenset({"outdir_samples", "outdir_txt2img_samples", "outdir_grids", "outdir_txt2img_grids",
                                 "outdir_img2img_samples", "outdir_img2img_grids", "outdir_extras_samples"})
OUTPUTS_FOLDER = "outputs"


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))


@dataclass(frozen=True)
class OutputDirRules:
    """The folders UI and API users may send images to (see the module docstring)."""

    data_dir: Path
    extra_roots: tuple[Path, ...] = ()  # --allow-output-dir
    anywhere: bool = False  # --allow-output-dirs-anywhere

    @classmethod
    def from_args(cls, args: argparse.Namespace, data_dir: Path) -> OutputDirRules:
        roots = tuple(Path(p).expanduser().resolve() for p in getattr(args, "allow_output_dir", None) or ())
        return cls(Path(data_dir), roots, bool(getattr(args, "allow_output_dirs_anywhere", False)))

    @property
    def outputs_root(self) -> Path:
        return self.data_dir / OUTPUTS_FOLDER

    def roots(self) -> list[Path]:
        return [self.outputs_root, *self.extra_roots]

    def problem(self, value: str) -> str | None:
        """What is wrong with `value` as an output folder set by a user, or None. An empty value is
        fine: it means the setting's default (modules.outputs.images.txt2img_output_dirs)."""
        if not isinstance(value, str) or value == "":
            return None
        if "\x00" in value:
            return "contains a NUL character"
        if self.anywhere:
            return None
        # Both spellings: a Windows path typed on a Linux server is still not a relative folder.
        pure = PureWindowsPath(value)
        if any(part == ".." for part in PurePosixPath(value.replace("\\", "/")).parts):
            return f"{value!r} contains '..'"
        absolute = Path(value).expanduser()
        if absolute.is_absolute() or pure.anchor or value.startswith("~"):
            target = _real(absolute)
            if not any(target.is_relative_to(_real(root)) for root in self.extra_roots):
                return f"{value!r} is an absolute path"
            return None
        target = _real(self.data_dir / value)
        if any(target.is_relative_to(_real(root)) for root in self.roots()):
            return None
        return f"{value!r} is {target}, outside {self.outputs_root}"

    def describe(self, key: str, problem: str) -> str:
        allowed = " or ".join(str(root) for root in self.roots())
        return (f"setting {key!r}: {problem}; output folders set from the UI or the API must be inside "
                f"{allowed}, given relative to the data folder (such as 'outputs/my-images'). The server's "
                "operator can allow more folders with --allow-output-dir DIR, or any folder with "
                "--allow-output-dirs-anywhere")

    def refusals(self, changes) -> dict[str, str]:
        """{key: message} for the output folder settings in `changes` that break the rule."""
        refused = {}
        for key in OUTPUT_DIR_SETTINGS.intersection(changes):
            problem = self.problem(changes[key])
            if problem is not None:
                refused[key] = self.describe(key, problem)
        return refused


def user_output_dir(value: str, user: str, data_dir: Path) -> Path:
    """Where output folder setting `value` points for `user` on a server shared with `--multi-user`:
    a folder under `<data>/outputs` moves to `<data>/outputs/<user>/<the rest>` (A1111's layout one
    level down), any other folder (one the operator set) gets a `<user>` subfolder. A value already
    inside the user's folder stays there. Never a folder of another user: everything lands under
    one named for `user`."""
    if not user or user in (".", ".."):
        raise ValueError(f"no output folder for the user name {user!r}")
    data_dir = Path(os.path.abspath(data_dir))
    outputs = data_dir / OUTPUTS_FOLDER
    path = Path(value).expanduser()
    path = Path(os.path.normpath(path if path.is_absolute() else data_dir / path))
    if path == outputs or path.is_relative_to(outputs):
        rest = path.relative_to(outputs)
        if rest.parts[:1] == (user,):
            rest = Path(*rest.parts[1:]) if len(rest.parts) > 1 else Path()
        target, own = outputs / user / rest, outputs / user
        # A link inside the user's folder must not lead into another's (reading checks real paths too).
        if not _real(target).is_relative_to(_real(own)):
            raise ValueError(f"output folder {value!r} leads out of {own} through a link ({_real(target)}); "
                             f"pick a folder inside {own}")
        return target
    return path / user


# Output folders used when their setting is empty (the others, outdir_samples and outdir_grids,
# mean "use the folder below" when empty): modules.outputs.images.SaveOptions, A1111's defaults.
DEFAULT_OUTPUT_DIRS = MappingProxyType({"outdir_txt2img_samples": "outputs/txt2img-images",
                                        "outdir_txt2img_grids": "outputs/txt2img-grids",
                                        "outdir_img2img_samples": "outputs/img2img-images",
                                        "outdir_img2img_grids": "outputs/img2img-grids",
                                        "outdir_extras_samples": "outputs/extras-images"})


def user_output_overrides(settings, user: str, data_dir: Path) -> dict[str, str]:
    """The `outdir_*` values that send a job of `user` to their own folders (`user_output_dir`), as
    override settings. An empty `outdir_samples`/`outdir_grids` stays empty (it means "the folder
    below", as in A1111); the other folders fall back to their defaults, moved too."""
    overrides = {}
    for key in sorted(OUTPUT_DIR_SETTINGS):
        value = settings[key] or DEFAULT_OUTPUT_DIRS.get(key, "")
        if value:
            overrides[key] = str(user_output_dir(value, user, data_dir))
    return overrides


def user_outputs_root(data_dir: Path, user: str) -> Path:
    """`<data>/outputs/<user>`: the folder of a user's images with the default output settings."""
    if not user or user in (".", ".."):
        raise ValueError(f"no output folder for the user name {user!r}")
    return Path(os.path.abspath(data_dir)) / OUTPUTS_FOLDER / user


def user_folders(settings, user: str, data_dir: Path) -> list[Path]:
    """Every folder a job of `user` writes into on a server shared with `--multi-user` (their
    `outputs/<user>` and `user_output_dir` of each output setting in effect, defaults included),
    each once, in a stable order. What a non-operator may read back and name as a batch folder.
    Empty for a caller without a name (the stand-in for an unknown caller owns nothing)."""
    if not user:
        return []
    folders = [user_outputs_root(data_dir, user)]
    folders += [Path(value) for value in user_output_overrides(settings, user, data_dir).values()]
    return list(dict.fromkeys(folders))


def shared_output_folders(settings, data_dir: Path) -> list[Path]:
    """The folders every user's folders are made from: `<data>/outputs` and each output setting's
    folder in effect (one the operator set elsewhere included). On a `--multi-user` server what lies
    there outside a user's own folder is the operator's (single-user images from before included)."""
    data_dir = Path(os.path.abspath(data_dir))
    folders = [data_dir / OUTPUTS_FOLDER]
    for key in sorted(OUTPUT_DIR_SETTINGS):
        value = settings[key] or DEFAULT_OUTPUT_DIRS.get(key, "")
        if value:
            path = Path(value).expanduser()
            folders.append(Path(os.path.normpath(path if path.is_absolute() else data_dir / path)))
    return list(dict.fromkeys(folders))


@dataclass(frozen=True)
class OutputArea:
    """An output folder and whose it is: a user's name, or None for the shared (operator's) folders."""

    folder: Path
    owner: str | None


def output_areas(settings, data_dir: Path, users) -> tuple[OutputArea, ...]:
    """The output folders of a `--multi-user` server with their owners, real paths (links followed),
    the most specific first: look a path up with `area_of`."""
    areas = [OutputArea(_real(folder), None) for folder in shared_output_folders(settings, data_dir)]
    for user in users:
        areas += [OutputArea(_real(folder), user) for folder in user_folders(settings, user, data_dir)]
    # Longest first: a user's folder lies inside a shared one and must win over it.
    return tuple(sorted(dict.fromkeys(areas), key=lambda area: len(area.folder.parts), reverse=True))


def area_of(path: Path, areas) -> OutputArea | None:
    """The most specific of `areas` (from `output_areas`) that holds the real path `path`, or None."""
    return next((area for area in areas if path == area.folder or path.is_relative_to(area.folder)), None)
