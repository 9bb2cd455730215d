"""Turns a client's image (data: URL or fetched http(s) URL) into the one form the guard sees.

The guard's vision encoder works at 896x896, so every image is decoded with pillow (PNG, JPEG,
WebP, GIF first frame; anything else is refused), checked against decompression bombs from its
header before any pixel is decoded, turned upright (EXIF orientation), flattened to RGB on white,
shrunk so its longest side is at most 896 px and re-encoded as JPEG quality 90. JPEG rather than
PNG: a 896 px photo is ~5-10x smaller as JPEG, which is what travels to the guard as base64, and
the encode is faster; the guard re-samples to 896x896 anyway, so q90 loses nothing it would see.

The SHA-256 of the re-encoded bytes is the image's identity in the verdict cache, so the same
picture sent again (even as a different container) hits the cache when it normalizes the same.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import io
import urllib.parse

from PIL import Image, ImageOps, UnidentifiedImageError

from guard_engine.errors import ImageError
from guard_engine.image_fetch import ImageFetcher
from guard_engine.types import GuardImage

__all__ = [
    "MAX_SIDE",
    "ImageFetcher",
    "load_image",
    "normalize_image",
    "parse_data_url",
]

MAX_SIDE = 896
JPEG_QUALITY = 90
_FORMATS = ("PNG", "JPEG", "WEBP", "GIF")
_WHITE = (255, 255, 255)


def _prefix(param: str) -> str:
    return f"{param}: " if param else ""


def _target_size(width: int, height: int) -> tuple[int, int]:
    """(width, height) scaled so the longest side is at most MAX_SIDE; never upscaled."""
    longest = max(width, height)
    if longest <= MAX_SIDE:
        return width, height
    scale = MAX_SIDE / longest
    return max(1, round(width * scale)), max(1, round(height * scale))


def _to_rgb(img: Image.Image) -> Image.Image:
    """RGB, with any transparency composited on white (what a viewer would show)."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        # 16-bit/float greyscale: Image.convert("RGB") would clip, so rescale to 8 bits first.
        # Single-band modes: getextrema() is (min, max) of numbers.
        low, high = img.getextrema()
        lo = float(low) if isinstance(low, (int, float)) else 0.0
        span = (float(high) - lo if isinstance(high, (int, float)) else 0.0) or 1.0
        img = img.point(lambda v: (v - lo) * 255.0 / span).convert("L")
    if "A" in img.getbands() or "transparency" in img.info or img.mode == "PA":
        rgba = img.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, _WHITE)
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return img.convert("RGB")


def _normalize(data: bytes, max_pixels: int, p: str, param: str) -> GuardImage:
    # Image.open reads only the header, so the size checks below run before any decoding.
    # Passing `formats` means no other pillow decoder (e.g. PSD, TIFF, EPS) ever sees the bytes.
    opened = Image.open(io.BytesIO(data), formats=_FORMATS)
    width, height = opened.size
    # Pillow's own bomb threshold (MAX_IMAGE_PIXELS) counts too: an image that would only make
    # pillow warn is refused here. warnings.catch_warnings is not used because it mutates
    # process-global state and this runs in worker threads.
    limit = max_pixels
    if Image.MAX_IMAGE_PIXELS is not None:
        limit = min(limit, int(Image.MAX_IMAGE_PIXELS))
    if width <= 0 or height <= 0 or width * height > limit:
        raise ImageError(
            f"{p}image is {width}x{height} pixels, more than the {limit} allowed "
            "(possible decompression bomb)",
            param=param,
        )
    target = _target_size(width, height)
    if opened.format == "JPEG" and target != (width, height):
        # Decode at 1/2, 1/4 or 1/8 scale straight from the DCT (never below target): most of
        # the cost of a large photo is avoided. The scale factor does not depend on rotation.
        opened.draft("RGB", target)
    opened.load()
    # in_place: without an orientation tag the default would copy the whole decoded image.
    ImageOps.exif_transpose(opened, in_place=True)
    img = _to_rgb(opened)
    final = _target_size(*img.size)
    if final != img.size:
        # Bilinear (antialiased by pillow when shrinking) is the filter the guard's own Gemma-3
        # image processor uses; Lanczos cost 3x as much here for no difference the guard sees.
        # reducing_gap: a fast integer box reduction first (PNG/WebP/GIF, which have no draft).
        img = img.resize(final, Image.Resampling.BILINEAR, reducing_gap=2.0)
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=JPEG_QUALITY)
    encoded = out.getvalue()
    return GuardImage(
        data=encoded, mime="image/jpeg", sha256=hashlib.sha256(encoded).hexdigest(), param=param
    )


def normalize_image(
    data: bytes,
    *,
    param: str,
    max_pixels: int = 40_000_000,
    max_bytes: int = 20 * 1024 * 1024,
) -> GuardImage:
    """Decode, vet and normalize one image; ImageError (naming `param`) on any failure."""
    p = _prefix(param)
    if len(data) > max_bytes:
        raise ImageError(f"{p}image is {len(data)} bytes, more than {max_bytes}", param=param)
    if not data:
        raise ImageError(f"{p}image is empty", param=param)
    try:
        return _normalize(data, max_pixels, p, param)
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{p}image refused as a decompression bomb ({exc})", param=param) from None
    except UnidentifiedImageError:
        raise ImageError(
            f"{p}image could not be decoded (not a PNG, JPEG, WebP or GIF image)", param=param
        ) from None
    except Exception as exc:
        # Decoders of untrusted bytes fail in many ways (OSError for truncation, SyntaxError,
        # ValueError, struct.error, ...): every one of them means "cannot be checked".
        raise ImageError(
            f"{p}image could not be decoded ({type(exc).__name__}: {exc})", param=param
        ) from None


def _b64decode(payload: str, p: str, param: str) -> bytes:
    try:
        return base64.b64decode(payload, validate=True)  # the common, well-formed case
    except (binascii.Error, ValueError):
        pass
    # Tolerated on a second pass only, to keep the big common case to one copy: line breaks
    # (MIME-style wrapping) and dropped padding, both seen from real clients.
    compact = "".join(payload.split())
    compact += "=" * (-len(compact) % 4)
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise ImageError(f"{p}data: URL is not valid base64", param=param) from None


def parse_data_url(url: str, *, param: str, max_bytes: int = 20 * 1024 * 1024) -> bytes:
    """The bytes of a `data:image/...;base64,...` URL (RFC 2397); ImageError if it is not one."""
    p = _prefix(param)
    if not url[:5].lower() == "data:":
        raise ImageError(f"{p}not a data: URL", param=param)
    header, sep, payload = url[5:].partition(",")
    if not sep:
        raise ImageError(f"{p}data: URL has no ',' before its data", param=param)
    parts = [part.strip() for part in header.split(";")]
    mime = parts[0].lower() or "text/plain"
    if not mime.startswith("image/"):
        raise ImageError(f"{p}data: URL media type is '{mime}', not image/*", param=param)
    is_base64 = any(part.lower() == "base64" for part in parts[1:])
    if is_base64:
        # Cheap size check on the text before decoding anything.
        if len(payload) // 4 * 3 > max_bytes + 3:
            raise ImageError(f"{p}image is larger than {max_bytes} bytes", param=param)
        data = _b64decode(payload, p, param)
    else:
        data = urllib.parse.unquote_to_bytes(payload)
    if len(data) > max_bytes:
        raise ImageError(f"{p}image is larger than {max_bytes} bytes", param=param)
    if not data:
        raise ImageError(f"{p}data: URL is empty", param=param)
    return data


def _decode_and_normalize(url: str, param: str) -> GuardImage:
    return normalize_image(parse_data_url(url, param=param), param=param)


async def load_image(url: str, *, param: str, fetcher: ImageFetcher | None) -> GuardImage:
    """The normalized image behind an `image_url.url` value of a chat request.

    `fetcher` is None unless the policy allows remote images. Decoding and resizing are CPU
    work, so they run in a worker thread and never block the event loop.
    """
    scheme = url[: url.find(":")].strip().lower() if ":" in url else ""
    if scheme == "data":
        return await asyncio.to_thread(_decode_and_normalize, url, param)
    if scheme in ("http", "https"):
        if fetcher is None:
            raise ImageError(
                f"{_prefix(param)}remote image URLs are not allowed by this policy", param=param
            )
        data = await fetcher.fetch(url, param=param)
        return await asyncio.to_thread(normalize_image, data, param=param)
    shown = scheme or "none"
    raise ImageError(
        f"{_prefix(param)}unsupported image URL scheme '{shown}' (data:, http, https)",
        param=param,
    )
