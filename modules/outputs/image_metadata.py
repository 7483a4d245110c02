"""The metadata of an image file, read without decoding a pixel (PNG Info, in the UI and the API).

Decoding is what costs: a 0.66 MB PNG of 13000×13000 needs 668 MB to decode, and reading its text
needs none of it. Pillow's `Image.open` reads only the header and the chunks before the pixel data;
a PNG may put its text after the pixels (`Image.load()` would then be needed to see it), so for
PNGs the text chunks of the whole file are collected here by walking the chunk list, skipping
`IDAT` by seeking. Compressed text (`zTXt`, compressed `iTXt`) is inflated with a cap, as Pillow
caps it, so a small file cannot expand into gigabytes.
"""

from __future__ import annotations

import struct
import zlib
from typing import IO, Any

from PIL import Image

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_TEXT_CHUNK = 1 << 20  # Pillow's ImageFile limit for one text chunk
MAX_TEXT_TOTAL = 64 << 20  # and for all of them
TEXT_CHUNKS = (b"tEXt", b"zTXt", b"iTXt")


class ImageMetadataError(ValueError):
    """The file is not an image whose metadata can be read."""


def read_image_metadata(file: IO[bytes]) -> tuple[str | None, dict[str, Any], tuple[int, int]]:
    """(infotext or None, other metadata items, (width, height)) of the image in `file`, as
    `read_info_from_image` finds them, without decoding the pixels."""
    from PIL import UnidentifiedImageError

    from modules.outputs.infotext import read_info_from_image

    try:
        image = Image.open(file)
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError):
        # Pillow's message names the file; the caller's may be a server path.
        raise ImageMetadataError("not an image file Pillow can read (PNG, JPEG, WebP, GIF, ...)") from None
    except ValueError as error:
        # Pillow refuses a compressed text chunk before the pixels that inflates past its cap
        # ("Decompressed data too large") with a ValueError: a bomb, refused as bad input.
        raise ImageMetadataError(f"its metadata cannot be read: {error}") from None
    with image:
        if image.format == "PNG":
            file.seek(0)
            for key, value in png_text_chunks(file).items():
                image.info.setdefault(key, value)
        return (*read_info_from_image(image), image.size)


def png_text_chunks(file: IO[bytes]) -> dict[str, str]:
    """Every text chunk of the PNG in `file`, keyword → text (the first of a repeated keyword wins,
    as Pillow keeps it)."""
    if file.read(8) != PNG_SIGNATURE:
        raise ImageMetadataError("not a PNG file")
    texts: dict[str, str] = {}
    total = 0
    while True:
        header = file.read(8)
        if len(header) < 8:
            return texts
        length, kind = struct.unpack(">I4s", header)
        if kind == b"IEND":
            return texts
        if kind not in TEXT_CHUNKS or length > MAX_TEXT_CHUNK:
            file.seek(length + 4, 1)  # data and CRC
            continue
        data = file.read(length)
        file.seek(4, 1)
        parsed = _text_chunk(kind, data)
        if parsed is None:
            continue
        key, value = parsed
        total += len(value)
        if total > MAX_TEXT_TOTAL:
            return texts
        texts.setdefault(key, value)


def _text_chunk(kind: bytes, data: bytes) -> tuple[str, str] | None:
    keyword, sep, rest = data.partition(b"\0")
    if not sep or not keyword:
        return None
    key = keyword.decode("latin-1")
    if kind == b"tEXt":
        return key, rest.decode("latin-1")
    if kind == b"zTXt":
        text = _inflate(rest[1:]) if rest[:1] == b"\0" else None
        return (key, text.decode("latin-1")) if text is not None else None
    # iTXt: compression flag, method, language tag\0, translated keyword\0, text (UTF-8)
    if len(rest) < 2:
        return None
    compressed, method, rest = rest[0], rest[1], rest[2:]
    parts = rest.split(b"\0", 2)
    if len(parts) != 3:
        return None
    text = parts[2]
    if compressed:
        text = _inflate(text) if method == 0 else None
        if text is None:
            return None
    return key, text.decode("utf-8", errors="replace")


def _inflate(data: bytes) -> bytes | None:
    inflater = zlib.decompressobj()
    try:
        text = inflater.decompress(data, MAX_TEXT_CHUNK)
    except zlib.error:
        return None
    return None if inflater.unconsumed_tail else text
