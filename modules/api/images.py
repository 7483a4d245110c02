"""Images in and out of the API: base64 PNGs with their infotext, and image URLs behind an SSRF guard.

A1111 takes an image field as base64 (optionally a `data:image/...;base64,` URL) or as an
`http(s)://` URL it downloads when the setting `api_enable_requests` is on; `api_forbid_local_requests`
(on by default) refuses hosts that are not public. Here the guard is stricter than A1111's: every
address the host resolves to must be public, the connection goes to the address that was checked
(a DNS answer that changes between check and connect cannot redirect it), redirects are not
followed, and the download is capped in size and time.
"""

from __future__ import annotations

import base64
import binascii
import http.client
import io
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from PIL import Image, ImageOps, UnidentifiedImageError

from modules.api.errors import ApiError, bad_request
from modules.common.net_guard import Resolver, is_public_address, pinned_connection, resolve
from modules.generation.requests import MAX_INIT_IMAGE_PIXELS

MAX_DOWNLOAD_BYTES = 64 * 1024 * 1024
# An image sent as base64 may be as large as one fetched from a URL; the text is 4/3 of that. (The
# request body cap, --max-body-size, usually refuses such a body before any route reads it.)
MAX_IMAGE_FILE_BYTES = MAX_DOWNLOAD_BYTES
DOWNLOAD_TIMEOUT_S = 30.0
USER_AGENT = "Atelier (A1111-compatible API)"
# 8192x8192: four times A1111's largest generation size in each direction, far below what would
# strain memory when decoded (256 MiB as RGBA).
MAX_API_IMAGE_PIXELS = MAX_INIT_IMAGE_PIXELS


class PixelBudget:
    """The pixels all images of one request may decode into together (init images and mask): each
    image's own limit alone would let one request hold several of the largest images at once."""

    def __init__(self, total: int):
        self.total = total
        self.used = 0

    def take(self, field: str, width: int, height: int) -> None:
        """Count `field`'s width x height pixels, or raise a 422 before any of them is decoded."""
        if self.used + width * height > self.total:
            raise bad_request(f"{field}: with this {width}x{height} image the request's images come to "
                              f"{self.used + width * height:,} pixels; one request's images together may have at "
                              f"most {self.total:,}; send fewer or smaller images")
        self.used += width * height


def encode_png(image: Image.Image, infotext: str | None = None) -> str:
    """Base64 PNG; the infotext goes in the `parameters` text chunk, as in a saved file."""
    from modules.outputs.images import SaveOptions, write_image_with_geninfo

    buffer = io.BytesIO()
    write_image_with_geninfo(image, buffer, ".png", infotext, SaveOptions())
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def image_bytes(value: str, settings: Mapping[str, Any], *, field: str = "image",
                resolver: Resolver | None = None, max_bytes: int = MAX_IMAGE_FILE_BYTES) -> bytes:
    """The image file's bytes, from base64 (a `data:` prefix is allowed) or, when the settings allow
    it, a URL. Either is refused beyond `max_bytes`, base64 text before it is decoded."""
    value = value.strip()
    if value.startswith(("http://", "https://")):
        if not settings.get("api_enable_requests", True):
            raise bad_request(f"{field}: image URLs are turned off on this server (setting "
                              "api_enable_requests); send the image as base64 instead")
        return fetch_url(value, forbid_local=settings.get("api_forbid_local_requests", True),
                         field=field, resolver=resolver, max_bytes=max_bytes)
    if value.startswith("data:"):
        value = value.split(",", 1)[1] if "," in value else ""
    limit = 4 * -(-max_bytes // 3)  # base64 characters of a max_bytes file
    if len(value) > limit:
        raise bad_request(f"{field}: the base64 text is {len(value):,} characters; images of at most "
                          f"{_size_text(max_bytes)} ({limit:,} base64 characters) are accepted")
    try:
        # Line breaks (MIME-wrapped base64, as `base64` prints it) are dropped as A1111's decoder does.
        return base64.b64decode("".join(value.split()), validate=True)
    except (binascii.Error, ValueError):
        raise bad_request(f"{field}: not valid base64 (nor an http(s) URL); send the image file's bytes "
                          "base64-encoded, optionally as a data:image/png;base64,... URL") from None


def decode_image(value: str, settings: Mapping[str, Any], *, field: str = "image",
                 resolver: Resolver | None = None, max_pixels: int = MAX_API_IMAGE_PIXELS,
                 max_bytes: int = MAX_IMAGE_FILE_BYTES, budget: PixelBudget | None = None) -> Image.Image:
    """The decoded image `value` holds (see `image_bytes`). Its size is checked from the header before
    any pixel is decoded: more than `max_pixels` is refused, since a small compressed file can
    decode into gigabytes; with `budget`, so is more than the request's images may have left."""
    data = image_bytes(value, settings, field=field, resolver=resolver, max_bytes=max_bytes)
    try:
        image = Image.open(io.BytesIO(data))
        width, height = image.size
        if width * height > max_pixels:
            raise bad_request(f"{field}: the image is {width}x{height} ({width * height:,} pixels); the API "
                              f"takes at most {max_pixels:,} pixels ({_pixels_text(max_pixels)}), scale it down first")
        if budget is not None:
            budget.take(field, width, height)
        image.load()
    # A corrupt file fails in the decoder with whatever it hit: truncated data, a bad header field.
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError, ValueError, EOFError, SyntaxError) as e:
        raise bad_request(f"{field}: the data is not an image Pillow can read ({e})") from None
    return image


def decode_input_image(value: str, settings: Mapping[str, Any], *, field: str,
                       resolver: Resolver | None = None, max_pixels: int = MAX_API_IMAGE_PIXELS,
                       max_bytes: int = MAX_IMAGE_FILE_BYTES, budget: PixelBudget | None = None) -> Image.Image:
    """An image a generation starts from (init image, mask), as A1111's `fix_image` leaves it: turned
    upright by its EXIF orientation (a phone photo is stored sideways), in a mode the image code
    handles (1, L, P, RGB and their alpha variants; 16-bit and CMYK files are converted)."""
    image = decode_image(value, settings, field=field, resolver=resolver, max_pixels=max_pixels,
                         max_bytes=max_bytes, budget=budget)
    try:
        image = ImageOps.exif_transpose(image)
        if image.mode not in ("1", "L", "LA", "P", "PA", "RGB", "RGBA"):
            image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
    except (ValueError, OSError) as e:
        raise bad_request(f"{field}: the image cannot be converted to RGB (mode {image.mode}: {e}); "
                          "send an 8-bit PNG or JPEG") from None
    return image


def _pixels_text(pixels: int) -> str:
    side = int(pixels ** 0.5)
    return f"{side}x{side}" if side * side == pixels else f"{pixels / 1e6:.1f} megapixels"


def _size_text(size: int) -> str:
    return f"{size / 2**20:g} MiB" if size >= 2**20 else f"{size:,} bytes"


def fetch_url(url: str, *, forbid_local: bool = True, field: str = "image", resolver: Resolver | None = None,
              max_bytes: int = MAX_DOWNLOAD_BYTES, timeout: float = DOWNLOAD_TIMEOUT_S) -> bytes:
    """GET `url` (http or https), connecting only to an address that passed the guard."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise bad_request(f"{field}: {_shown(url)!r} is not an http(s) URL with a host")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise bad_request(f"{field}: {_shown(url)!r} has an invalid port") from None
    url = _shown(url)  # messages below never carry credentials written into the URL
    try:
        addresses = (resolver or resolve)(parts.hostname, port)
    except OSError as e:
        raise bad_request(f"{field}: cannot resolve {parts.hostname!r} ({e})") from None
    if not addresses:
        raise bad_request(f"{field}: {parts.hostname!r} has no address")
    if forbid_local:
        refused = [a for a in addresses if not is_public_address(a)]
        if refused:
            raise ApiError(422, f"{field}: {parts.hostname!r} resolves to a non-public address ({refused[0]}); "
                                "requests to local or private hosts are refused (setting "
                                "api_forbid_local_requests)", name="ValueError")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    connection = pinned_connection(parts.scheme, parts.hostname, addresses[0], port, timeout)
    try:
        connection.request("GET", path, headers={"Host": parts.netloc.rsplit("@", 1)[-1],
                                                 "User-Agent": USER_AGENT, "Accept": "image/*"})
        response = connection.getresponse()
        if response.status != 200:
            hint = " (redirects are not followed; use the final URL)" if 300 <= response.status < 400 else ""
            raise bad_request(f"{field}: {url} answered HTTP {response.status}{hint}")
        data = _read_within(response, max_bytes + 1, deadline=time.monotonic() + timeout)
    except TimeoutError:
        raise bad_request(f"{field}: downloading {url} took longer than {timeout:.0f} s") from None
    except (OSError, http.client.HTTPException) as e:
        raise bad_request(f"{field}: downloading {url} failed ({type(e).__name__}: {e})") from None
    finally:
        connection.close()
    if len(data) > max_bytes:
        raise bad_request(f"{field}: {url} is larger than {_size_text(max_bytes)}")
    return data


def _shown(url: str) -> str:
    """`url` without a `user:password@` part."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]).geturl()


def _read_within(response, limit: int, *, deadline: float, chunk: int = 64 * 1024) -> bytes:
    """Up to `limit` bytes of `response`, or TimeoutError once `deadline` passes: the socket timeout
    bounds each read only, and a server that trickles a byte at a time would hold a thread for ever."""
    data = bytearray()
    while len(data) < limit:
        if time.monotonic() > deadline:
            raise TimeoutError
        piece = response.read(min(chunk, limit - len(data)))
        if not piece:
            break
        data += piece
    return bytes(data)
