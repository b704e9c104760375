"""Image bytes -> faces with descriptors, in this process or on an extractor sidecar.

The API holds one :class:`Extractor`: :class:`LocalExtractor` runs the
pipeline in a small thread pool (OpenCV releases the GIL, so two workers use
both cores), :class:`RemoteExtractor` sends the bytes to ``facedex serve
extractor`` when ``extraction.url`` is set, so extraction scales on machines of
its own. Both answer with the same :class:`wire.ExtractResponse`.

Memory stays bounded: at most ``workers`` images are decoded at a time (the
rest wait on a semaphore), each within ``max_image_bytes`` and
``max_image_pixels``.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import cv2
import numpy as np

from facedex import wire
from facedex.config import ExtractionSettings
from facedex.errors import Errors
from facedex.extractor.images import decode
from facedex.extractor.pipeline import VERSION, Pipelines
from facedex.internal_auth import bearer
from facedex.metrics import EXTRACTION_SECONDS
from facedex.rpc import ServiceClient


class Extractor(Protocol):
    async def extract(self, image: bytes, content_type: str | None, all_faces: bool) -> wire.ExtractResponse: ...

    async def close(self) -> None: ...


class LocalExtractor:
    def __init__(self, settings: ExtractionSettings) -> None:
        self.settings = settings
        # Several images at once, one OpenCV thread each, beat one image on OpenCV's threads (docs/benchmarks.md).
        cv2.setNumThreads(1 if settings.workers > 1 else -1)
        self.pipelines = Pipelines(settings.detect_side, settings.score_threshold, settings.min_face)
        self.executor = ThreadPoolExecutor(settings.workers, thread_name_prefix="extract")
        self.slots = asyncio.Semaphore(settings.workers)

    def extract_sync(self, image: bytes, content_type: str | None, all_faces: bool) -> wire.ExtractResponse:
        s = self.settings
        with EXTRACTION_SECONDS.time():
            decoded = decode(image, s.max_image_bytes, s.max_image_pixels, s.detect_side, content_type)
            faces = self.pipelines.get().faces(decoded.pixels, all_faces, decoded.scale)
        return wire.ExtractResponse(
            version=VERSION.version,
            width=decoded.width,
            height=decoded.height,
            faces=[
                wire.ExtractedFace(
                    box=(f.x, f.y, f.width, f.height),
                    score=f.score,
                    landmarks=np.asarray(f.landmarks, "<f4").tobytes(),
                    descriptor=np.asarray(f.descriptor, "<f4").tobytes(),
                )
                for f in faces
            ],
        )

    async def extract(self, image: bytes, content_type: str | None, all_faces: bool) -> wire.ExtractResponse:
        async with self.slots:
            return await asyncio.get_running_loop().run_in_executor(self.executor, self.extract_sync, image, content_type, all_faces)

    async def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


class RemoteExtractor:
    def __init__(self, url: str, timeout_s: float, internal_token: str | None = None) -> None:
        self.client = ServiceClient(url, timeout_s, Errors.EXTRACTOR_UNAVAILABLE)
        self.client.headers = bearer(internal_token)

    async def extract(self, image: bytes, content_type: str | None, all_faces: bool) -> wire.ExtractResponse:
        request = wire.ExtractRequest(image=image, content_type=content_type, all_faces=all_faces)
        return await self.client.call("/1/extract", request, wire.ExtractResponse)

    async def close(self) -> None:
        await self.client.close()


def make_extractor(settings: ExtractionSettings, internal_token: str | None = None) -> Extractor:
    if settings.url:
        return RemoteExtractor(settings.url, settings.timeout_s, internal_token)
    return LocalExtractor(settings)
