"""Real face photos for the image tests and `facedex bench extract`, from packages (none drawn or synthetic).

- The ``face_recognition`` 1.3.0 sdist ships ``tests/test_images/``: Obama three times,
  two partial Obama faces, Biden, and a 32-bit PNG of Obama. The package itself
  needs dlib to install, so only its sdist is fetched (``pip download``, once, cached).
- scikit-image's ``data.astronaut()`` (Eileen Collins), shipped in its wheel.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

SDIST = "face_recognition==1.3.0"
CACHE = Path(os.environ.get("FACEDEX_TEST_PHOTOS", Path.home() / ".cache" / "facedex-test-photos"))


def face_recognition_photos() -> dict[str, bytes]:
    """name (file stem) -> file bytes, from the face_recognition sdist's tests/test_images."""
    folder = CACHE / "face_recognition"
    if not (folder / "obama.jpg").is_file():
        CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:", "-d", str(CACHE), SDIST],
            check=True,
        )
        sdist = next(CACHE.glob("face_recognition-1.3.0.tar.gz"))
        folder.mkdir(exist_ok=True)
        with tarfile.open(sdist) as tar:
            for member in tar.getmembers():
                if "/tests/test_images/" in member.name and member.isfile():
                    (folder / Path(member.name).name).write_bytes(tar.extractfile(member).read())  # type: ignore[union-attr]
    return {p.stem: p.read_bytes() for p in folder.iterdir() if p.suffix in (".jpg", ".png")}


def astronaut_png() -> bytes:
    from skimage import data

    return encode(data.astronaut(), "PNG")


def encode(rgb: np.ndarray | Image.Image, fmt: str, **kwargs: object) -> bytes:
    image = rgb if isinstance(rgb, Image.Image) else Image.fromarray(rgb)
    out = io.BytesIO()
    image.save(out, fmt, **kwargs)
    return out.getvalue()


def variants(jpeg: bytes) -> dict[str, bytes]:
    """A flipped, a cropped, a downscaled and a recompressed (WebP, JPEG q=30) copy of a photo."""
    image = Image.open(io.BytesIO(jpeg)).convert("RGB")
    w, h = image.size
    return {
        "flipped": encode(image.transpose(Image.Transpose.FLIP_LEFT_RIGHT), "JPEG", quality=90),
        "cropped": encode(image.crop((w // 8, h // 16, w - w // 8, h - h // 4)), "PNG"),
        "downscaled": encode(image.resize((w * 3 // 10, h * 3 // 10)), "JPEG", quality=90),
        "webp": encode(image, "WEBP", quality=60),
        "jpeg_q30": encode(image, "JPEG", quality=30),
    }
