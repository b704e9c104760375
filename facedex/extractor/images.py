"""Untrusted image bytes -> a BGR pixel array, with bounded memory.

Why Pillow decodes and not ``cv2.imdecode``: Pillow reads the header first,
so a 20000 x 20000 PNG of a few kilobytes (a decompression bomb) is refused by
its size before a single pixel is allocated, and a truncated file raises
instead of returning a half-grey picture. JPEGs far larger than detection
needs are decoded at 1/2, 1/4 or 1/8 scale (``draft``), which costs a fraction
of the memory and time of a full decode.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from facedex.errors import Errors, FacedexError

# Pillow format name -> MIME type; the formats a client may send.
FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp"}
CONTENT_TYPES = frozenset(FORMATS.values()) | {"image/jpg", "image/pjpeg", "image/x-png"}


@dataclass(frozen=True, slots=True)
class DecodedImage:
    pixels: np.ndarray  # (h, w, 3) uint8, BGR (OpenCV's order)
    width: int  # of the original image, in its upright orientation
    height: int
    scale: float  # pixels' size / original size (< 1 when decoded reduced)
    format: str  # MIME type


def check_content_type(content_type: str | None) -> None:
    """A declared content type must be an image type we decode (absent or octet-stream: sniffed)."""
    if content_type is None:
        return
    base = content_type.split(";", 1)[0].strip().lower()
    if base in ("", "application/octet-stream") or base in CONTENT_TYPES:
        return
    raise FacedexError(Errors.IMAGE_TYPE, f"content type {base!r} is not one of image/jpeg, image/png, image/webp")


def decode(data: bytes, max_bytes: int, max_pixels: int, target_side: int = 0, content_type: str | None = None) -> DecodedImage:
    """Decode ``data`` (JPEG, PNG or WebP); refuse what is too big, not an image, or truncated.

    ``target_side``: the caller needs no more than this many pixels on the long
    side, so a JPEG may be decoded reduced (never below it).
    """
    check_content_type(content_type)
    if len(data) > max_bytes:
        raise FacedexError(Errors.IMAGE_TOO_LARGE, f"image of {len(data)} bytes is over the limit of {max_bytes} bytes")
    if not data:
        raise FacedexError(Errors.IMAGE_DECODE, "image is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if image.format not in FORMATS:
                raise FacedexError(Errors.IMAGE_TYPE, f"image format {image.format} is not one of JPEG, PNG, WebP")
            width, height = image.size
            if width * height > max_pixels:
                raise FacedexError(
                    Errors.IMAGE_PIXELS, f"image of {width} x {height} pixels is over the limit of {max_pixels:,} pixels"
                )
            if getattr(image, "n_frames", 1) > 1:
                image.seek(0)  # animated WebP: the first frame
            fmt = FORMATS[image.format]
            swapped = image.getexif().get(0x0112, 1) in (5, 6, 7, 8)  # EXIF orientation: rotated by 90 degrees
            if image.format == "JPEG" and target_side and max(width, height) > 2 * target_side:
                image.draft("RGB", (target_side, target_side))  # decode at 1/2..1/8 scale, never below target
            image.load()
            rgb = ImageOps.exif_transpose(image).convert("RGB")  # phone photos: stored landscape, meant portrait
    except FacedexError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:  # Pillow's own header check
        raise FacedexError(Errors.IMAGE_PIXELS, f"{exc} (limit: {max_pixels:,} pixels)") from None
    except UnidentifiedImageError as exc:
        raise FacedexError(Errors.IMAGE_DECODE, f"not a decodable image: {exc}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:  # truncated or corrupt data
        raise FacedexError(Errors.IMAGE_DECODE, f"image data is truncated or corrupt: {exc}") from None
    upright = (height, width) if swapped else (width, height)
    return DecodedImage(
        pixels=np.ascontiguousarray(np.asarray(rgb)[:, :, ::-1]),  # RGB -> BGR
        width=upright[0],
        height=upright[1],
        scale=rgb.size[0] / upright[0],
        format=fmt,
    )
