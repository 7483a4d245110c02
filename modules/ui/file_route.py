"""A1111's `/file=<path>` URLs: extensions' own files (their scripts, images, JSON) and output images.

Extensions build URLs like `file=extensions/<name>/images/x.png?1700000000` (a path relative to the
install folder, or absolute; the query, usually the file's mtime, only defeats caches). Atelier serves
a file only when its real path (symbolic links followed) lies inside:

  - the built-in or the user's extensions folder, or an extension's own folder (one linked into
    `extensions/` from elsewhere included);
  - the txt2img images or grids folder in effect (the `outdir_*` settings);
  - the install folder's `tmp/`, for `.txt` and `.csv` files only: A1111 serves its whole working
    folder, and extensions write the lists their page scripts read there (tag autocomplete's
    `tmp/tagAutocompletePath.txt`); other files there (a settings file moved aside when it could
    not be read, with the default data folder) stay private;
  - the previews of the models listed now (`<stem>.png`, `<stem>.preview.png`, ... beside a listed
    checkpoint, LoRA, hypernetwork or embedding: modules.ui.model_previews), for the cards; nothing
    else in the model folders (not the weights, not their `.json`).

Refused with 403 (A1111's answer): a path part starting with "." (hidden files, `..`), a backslash, a
NUL byte, a path outside those folders (also when it does not exist: whether a file exists outside is
nobody's business), a link leading out of them, a folder, anything but a regular file, and the
private files (config.json, cache.json, ui-config.json, the auth file). A missing file inside them is
404. The route sits behind the server's HTTP Basic auth like every route (modules.api.auth).

On a server shared with `--multi-user` the output folders served are the caller's own
(modules.outputs.output_paths.user_folders: `outputs/<user>/...` and the `<user>` folder of every
output setting); an operator (`--admin-users`) is served every output folder. Another user's image,
or one in the shared folders (`outputs/txt2img-images` from before), is 404 for a user who is not an
operator, whether it exists or not (modules.ui.user_file_guard answers the same in front of it).
Gradio's own `/gradio_api/file=` is separate and keeps its own rules (modules.ui.file_rules, and with
`--multi-user` modules.ui.user_file_guard).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterable
from pathlib import Path, PurePosixPath

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, PlainTextResponse, Response

from modules.serving.accounts import SHARED_USER, User, caller, is_multi_user
from modules.serving.paths import REPO_ROOT
from modules.ui.model_previews import is_listed_preview, listed_model_files

ROUTE = "/file={path:path}"
TEMP_FOLDER = "tmp"  # in the install folder (A1111's working folder)
TEMP_SUFFIXES = frozenset({".txt", ".csv"})


class FileRefused(Exception):
    """403: the path may not be served. The message is for the log, never the client."""


class FileMissing(Exception):
    """404: an allowed path with no file."""


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))


def output_roots(context, user: User = SHARED_USER) -> list[Path]:
    """The output folders `/file=` serves to `user` (see the module docstring)."""
    from modules.outputs.images import SaveOptions, txt2img_output_dirs
    from modules.outputs.output_paths import output_areas, user_folders

    settings, data_dir = context.settings.current(), context.paths.data_dir
    if not is_multi_user(context):
        return list(txt2img_output_dirs(data_dir, SaveOptions.from_settings(settings)))
    if user.admin:
        return [area.folder for area in output_areas(settings, data_dir, context.accounts.names)]
    return user_folders(settings, user.name, data_dir) if user.name else []


def others_output(context, user: User, requested: Path) -> bool:
    """Whether `requested` (links followed) lies in an output folder that is not `user`'s to read."""
    if not is_multi_user(context) or user.admin:
        return False
    from modules.outputs.output_paths import area_of, output_areas

    area = area_of(_real(requested), output_areas(context.settings.current(), context.paths.data_dir,
                                                  context.accounts.names))
    return area is not None and not user.owns(area.owner)


def served_roots(context, base: Path = REPO_ROOT, user: User = SHARED_USER) -> list[Path]:
    """The folders whose files `/file=` serves to `user`, as real paths (`base`: the install folder)."""
    from modules.extension_host.extensions import ExtensionFolders

    runtime = getattr(context, "extensions", None)
    folders = runtime.folders if runtime is not None else ExtensionFolders.for_data_dir(context.paths.data_dir)
    roots = [folders.builtin, folders.user]
    roots += [ext.path for ext in (runtime.extensions if runtime is not None else [])]
    roots += output_roots(context, user)
    roots.append(base / TEMP_FOLDER)
    unique: list[Path] = []
    for root in roots:
        real = _real(Path(root))
        if real not in unique:
            unique.append(real)
    return unique


def private_files(context) -> set[Path]:
    paths = context.paths
    private = {paths.config_file, paths.cache_file, paths.data_dir / "ui-config.json"}
    auth_file = getattr(getattr(context, "args", None), "gradio_auth_path", None)
    if auth_file:
        private.add(Path(auth_file).expanduser())
    return {_real(Path(path)) for path in private}


def resolve_file(raw: str, roots: Iterable[Path], private: set[Path], base: Path = REPO_ROOT, *,
                 is_preview: Callable[[Path], bool] | None = None) -> Path:
    """The real path of the file `raw` names (relative to `base`, A1111's working folder, or
    absolute); FileRefused or FileMissing as the module docstring says. `is_preview(real path)`
    allows a file outside `roots` that is a listed model's preview."""
    if not raw or "\x00" in raw or "\\" in raw:
        raise FileRefused(f"bad characters in {raw!r}")
    parts = PurePosixPath(raw).parts
    if any(part.startswith(".") for part in parts if part != "/"):
        raise FileRefused(f"{raw!r} has a part starting with '.'")
    requested = Path(raw) if raw.startswith("/") else base / raw
    real = _real(requested)
    root = next((root for root in roots if real == root or real.is_relative_to(root)), None)
    if root is None and is_preview is not None and is_preview(real):
        root = real.parent
    if root is None or real == root:
        raise FileRefused(f"{raw!r} is {real}, outside the served folders")
    if any(part.startswith(".") for part in real.relative_to(root).parts):
        raise FileRefused(f"{raw!r} leads to a hidden file ({real})")
    if real in private:
        raise FileRefused(f"{raw!r} is a private file")
    if root == _real(base / TEMP_FOLDER) and real.suffix.lower() not in TEMP_SUFFIXES:
        raise FileRefused(f"{raw!r}: only {sorted(TEMP_SUFFIXES)} files are served from {TEMP_FOLDER}/")
    try:
        mode = os.stat(real).st_mode
    except FileNotFoundError:
        raise FileMissing(raw) from None
    except OSError as error:
        raise FileRefused(f"{raw!r}: {error.strerror}") from None
    if not stat.S_ISREG(mode):
        raise FileRefused(f"{raw!r} is not a regular file")
    return real


def file_url(path: Path, base: Path = REPO_ROOT) -> str:
    """A1111's URL for `path`: `file=<path relative to the install folder, else absolute>?<mtime>`
    (relative to the page, as A1111 writes it)."""
    path = Path(path)
    try:
        shown = path.relative_to(base).as_posix()
    except ValueError:
        shown = path.as_posix()
    try:
        mtime = int(path.stat().st_mtime)
    except OSError:
        mtime = 0
    return f"file={shown}?{mtime}"


def install_file_route(app: FastAPI, context) -> None:
    """Add `GET/HEAD /file=<path>` to `app`. Call before Gradio is mounted at "/" (a route added
    after the mount is never reached)."""

    @app.api_route(ROUTE, methods=["GET", "HEAD"], include_in_schema=False)
    def serve_file(path: str, request: Request) -> Response:
        user = caller(context, request)
        if "\x00" not in path and others_output(context, user, Path(path) if path.startswith("/") else REPO_ROOT / path):
            return PlainTextResponse("Not Found", status_code=404)  # another user's: not even "it exists"
        try:
            real = resolve_file(path, served_roots(context, user=user), private_files(context),
                                is_preview=lambda real: is_listed_preview(real, listed_model_files(context)))
        except FileRefused:
            return PlainTextResponse("Forbidden", status_code=403)
        except FileMissing:
            return PlainTextResponse("Not Found", status_code=404)
        return FileResponse(real, headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"})
