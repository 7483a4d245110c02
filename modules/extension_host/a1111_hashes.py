"""A1111's `modules.hashes` for extensions, over the running app's hash cache (`cache.json`, A1111's
keys such as `checkpoint/<name>` and `lora/<name>`)."""

from __future__ import annotations

import os

from modules.extension_host.environment import current_app
from modules.library.hashes import sha256_of_file


def calculate_sha256(filename: str | os.PathLike) -> str:
    return sha256_of_file(filename)


def sha256_from_cache(filename: str | os.PathLike, title: str, use_addnet_hash: bool = False) -> str | None:
    """The cached hash of `filename` under `title`, if still valid (the file's mtime is unchanged)."""
    cache = current_app().hash_cache
    if not os.path.isfile(filename):
        return None
    if use_addnet_hash:
        return cache.cached_addnet_sha256(title, filename)
    return cache.cached_sha256(title, filename)


def sha256(filename: str | os.PathLike, title: str, use_addnet_hash: bool = False) -> str | None:
    """The hash of `filename`, from the cache or computed and cached under `title` (as A1111, the
    `--no-hashing` flag makes it None unless cached)."""
    context = current_app()
    cache = context.hash_cache
    if not os.path.isfile(filename):
        return None
    compute = not getattr(context.args, "no_hashing", False)
    value = cache.addnet_sha256(title, filename, compute=compute) if use_addnet_hash \
        else cache.sha256(title, filename, compute=compute)
    cache.flush()
    return value

