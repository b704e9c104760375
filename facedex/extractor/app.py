"""The extractor sidecar: ``facedex serve extractor`` runs face extraction on a machine of its own.

The API sends it the client's image bytes (msgpack) when ``extraction.url``
points here; it answers boxes, scores, landmarks and descriptors. It keeps no
state, so any number of them can stand behind a load balancer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

from fastapi import FastAPI, Request, Response

from facedex import wire
from facedex.config import Settings
from facedex.extractor.extract import LocalExtractor
from facedex.errors import Errors
from facedex.http import create_app, errors, msgpack_body
from facedex.lifespan import service_lifespan


def build_app(settings: Settings) -> FastAPI:
    @service_lifespan
    async def lifespan(app: FastAPI, stack: AsyncExitStack) -> AsyncIterator[None]:
        app.state.extractor = LocalExtractor(settings.extraction.model_copy(update={"url": None}))
        stack.push_async_callback(app.state.extractor.close)
        yield

    app = create_app(
        "extractor", settings,
        title="facedex extractor",
        description="Faces in an image -> boxes, landmarks and SFace descriptors (YuNet + SFace on the CPU).",
        internal=True,
        lifespan=lifespan,
    )

    @app.post(
        "/1/extract", tags=["extraction"], summary="Faces of one image (msgpack ExtractRequest -> ExtractResponse)",
        openapi_extra=msgpack_body(wire.ExtractRequest, wire.ExtractResponse),
        responses=errors(Errors.IMAGE_DECODE, Errors.IMAGE_PIXELS, Errors.IMAGE_TOO_LARGE, Errors.IMAGE_TYPE),
    )
    async def extract(request: Request) -> Response:
        req = wire.decode(await request.body(), wire.ExtractRequest)
        resp = await request.app.state.extractor.extract(req.image, req.content_type, req.all_faces)
        return Response(wire.encode(resp), media_type=wire.CONTENT_TYPE)

    return app
