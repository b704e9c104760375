"""Shared request helpers of the API routes."""

from __future__ import annotations

import uuid
from typing import Annotated

import numpy as np
from fastapi import Depends, Query, Request

from facedex import descriptors
from facedex.api.auth import current_account
from facedex.api.models import DescriptorIn
from facedex.faces.store import FacesStore

Account = Annotated[uuid.UUID, Depends(current_account)]
Page = Annotated[int, Query(ge=1, le=1_000_000, description="Page number, from 1.")]
PageSize = Annotated[int, Query(ge=1, le=1000, description="Items per page.")]


async def store(request: Request) -> FacesStore:
    """async although it awaits nothing: FastAPI runs a plain ``def`` dependency in a worker thread, a thread hop
    per request (3-4 % of the API's CPU under load, py-spy)."""
    return request.app.state.store


Store = Annotated[FacesStore, Depends(store)]


def parse_descriptor(request: Request, d: DescriptorIn) -> tuple[int, np.ndarray]:
    """Validate a descriptor from a request body; returns (version, normalised vector)."""
    version = d.version if d.version is not None else request.app.state.settings.default_descriptor_version
    return version, descriptors.parse(version, descriptors.decode_base64(d.data))
