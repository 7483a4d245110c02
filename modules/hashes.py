"""A1111's name for extensions: `modules.hashes`. The code lives in
`modules.extension_host.a1111_hashes` over `modules.library.hashes` (docs/ARCHITECTURE.md)."""

# ruff: noqa: F401
from modules.extension_host.a1111_hashes import calculate_sha256, sha256, sha256_from_cache
