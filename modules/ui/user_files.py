"""Whose a served file is, on a server shared with `--multi-user`, and gallery images written as
files of their user.

Two kinds of files belong to one user:

- their output images: `outputs/<user>/...` and the `<user>` folder of every output setting
  (modules.outputs.output_paths.user_folders); what lies in the shared output folders outside any
  user's folder (`outputs/txt2img-images` from single-user days, an operator's folder) is the
  operator's;
- their gallery images: Gradio serves a gallery from its cache (`/gradio_api/file=<cache path>`), and
  a PIL image handed to `gr.Gallery` lands at `<cache>/<hash>/image.png`, a path that says nothing
  about its user. `gallery_files` writes each image (PNG, its `parameters` infotext kept, as Gradio
  writes it) into `<cache>/atelier-users/<user>/<hash>/image.png` instead; the path is inside
  Gradio's cache, so Gradio serves it in place, and its folder names the user.

`FileOwners.may_read(user, path)` answers for both; an operator (`--admin-users`) reads everything.
modules.ui.user_file_guard applies it to every file route and every Gradio event's file inputs, and
modules.ui.file_route to A1111's `/file=`. Other files (extensions' files, model previews, uploads,
Gradio's own copies) are not any user's and keep their routes' own rules. Without `--multi-user`
nothing here changes anything: `gallery_files` returns the images as they are.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modules.outputs.output_paths import OutputArea, area_of, output_areas
from modules.serving.accounts import User

USERS_FOLDER = "atelier-users"  # in Gradio's cache; no Gradio folder has this name (they are hashes)


def _real(path: str | os.PathLike) -> Path:
    return Path(os.path.realpath(path))


def gradio_cache_dir() -> Path:
    """The Gradio cache of this process (modules.ui.file_rules.prepare_gradio_cache sets it)."""
    from gradio.utils import get_upload_folder

    return Path(get_upload_folder())


def user_gallery_dir(user_name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """`<cache>/atelier-users/<user>`: where `gallery_files` writes `user_name`'s gallery images."""
    return Path(cache_dir if cache_dir is not None else gradio_cache_dir()) / USERS_FOLDER / user_name


def gallery_files(images: Sequence[Any], user: User, *, cache_dir: str | os.PathLike | None = None) -> list[Any]:
    """The value to give a `gr.Gallery` (built with `format="png"`) for `images`, as `user`'s files.

    `images`: the gallery's items, each a PIL image or an `(image, caption)` pair (other items, such
    as paths or URLs, pass unchanged). With `--multi-user` (a `user` with a name, from
    `modules.serving.accounts.user_of(context.accounts, request)`) each PIL image is written as a PNG
    with its text chunks (the `parameters` infotext in `image.info`), as Gradio itself would write
    it, into the user's gallery folder (`user_gallery_dir`), and replaced by that path (a pair keeps
    its caption): the URL the page gets names the user, and modules.ui.user_file_guard serves it to
    them and to operators only. Without `--multi-user` (`SHARED_USER`, name None) `images` come back
    as they are, and Gradio writes them to its cache itself.

    Files go to `cache_dir` (default: this process's Gradio cache), which Gradio empties at start
    and removes at exit like its own copies; the same image written twice is one file."""
    if user.name is None:
        return list(images)
    from gradio.processing_utils import save_pil_to_cache
    from PIL import Image

    folder = str(user_gallery_dir(user.name, cache_dir))

    def as_file(item: Any) -> Any:
        if isinstance(item, Image.Image):
            # Gradio's own writer: the same PNG (text chunks included) Gradio makes from a PIL image.
            return save_pil_to_cache(item, cache_dir=folder, format="png")
        return item

    files = []
    for item in images:
        if isinstance(item, (tuple, list)) and len(item) == 2:
            files.append((as_file(item[0]), item[1]))
        else:
            files.append(as_file(item))
    return files


@dataclass(frozen=True)
class FileOwners:
    """The user-owned folders of a `--multi-user` server at one moment (the output settings in
    effect): their output folders and their gallery folders, most specific first."""

    areas: tuple[OutputArea, ...]

    @classmethod
    def of(cls, context, cache_dir: str | os.PathLike | None = None) -> FileOwners:
        """The folders now: built per request, so a changed output setting counts at once."""
        names = tuple(context.accounts.names)
        areas = list(output_areas(context.settings.current(), context.paths.data_dir, names))
        galleries = _real(Path(cache_dir if cache_dir is not None else gradio_cache_dir()) / USERS_FOLDER)
        areas.append(OutputArea(galleries, None))  # a name that is no user's: operators only
        areas += [OutputArea(galleries / name, name) for name in names]
        return cls(tuple(sorted(areas, key=lambda area: len(area.folder.parts), reverse=True)))

    def area(self, path: str | os.PathLike) -> OutputArea | None:
        """The user-owned folder that holds `path` (links followed), or None: not any user's file."""
        return area_of(_real(path), self.areas)

    def may_read(self, user: User, path: str | os.PathLike) -> bool:
        """Whether `user` may read (or name as an input) the file at `path`: theirs, not any user's,
        or `user` is an operator. Whether the file exists does not matter."""
        if user.admin:
            return True
        found = self.area(path)
        return found is None or user.owns(found.owner)
