"""Descriptor versions, validation, storage encoding and the one similarity.

A descriptor version names the model that produced a vector: its dimension and
element type. Descriptors of different versions are never compared. Every
descriptor is L2-normalised on ingest and stored as raw little-endian bytes of
its dtype, so every path (brute force, index builds, refresh) reads the same
numbers.

Similarity is defined once, here: the cosine of two descriptors clipped to
[0, 1]. For L2-normalised vectors the cosine is their inner product. Clipping
keeps a threshold readable as a cosine (SFace's published 0.363 stays 0.363)
and maps every impostor (cosine <= 0) to 0; ranking inside a matcher uses the
unclipped inner product, so the order of results is the same on every path.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

import numpy as np

from facedex.errors import Errors, FacedexError


@dataclass(frozen=True, slots=True)
class DescriptorVersion:
    version: int
    dim: int
    dtype: str  # numpy dtype string, little-endian
    name: str

    @property
    def nbytes(self) -> int:
        return self.dim * np.dtype(self.dtype).itemsize


_REGISTRY: dict[int, DescriptorVersion] = {}


def register(v: DescriptorVersion) -> DescriptorVersion:
    existing = _REGISTRY.get(v.version)
    if existing is not None and existing != v:
        raise ValueError(f"descriptor version {v.version} already registered as {existing}")
    _REGISTRY[v.version] = v
    return v


GENERIC_512 = register(DescriptorVersion(1, 512, "<f4", "generic-512"))
SFACE_128 = register(DescriptorVersion(2, 128, "<f4", "sface-128"))


def versions() -> list[DescriptorVersion]:
    return sorted(_REGISTRY.values(), key=lambda v: v.version)


def get_version(version: int) -> DescriptorVersion:
    try:
        return _REGISTRY[version]
    except KeyError:
        known = ", ".join(str(v) for v in sorted(_REGISTRY))
        raise FacedexError(Errors.DESCRIPTOR_VERSION_UNKNOWN, f"version {version} is not one of: {known}") from None


def decode_base64(data: str) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise FacedexError(Errors.DESCRIPTOR_BASE64, f"descriptor data is not base64: {exc}") from None


def encode_base64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def parse(version: int, raw: bytes) -> np.ndarray:
    """Validate raw bytes of a descriptor and return it L2-normalised as float32."""
    v = get_version(version)
    if len(raw) != v.nbytes:
        raise FacedexError(
            Errors.DESCRIPTOR_LENGTH,
            f"version {version} ({v.name}) takes {v.nbytes} bytes ({v.dim} x {np.dtype(v.dtype).name}), got {len(raw)}",
        )
    vec = np.frombuffer(raw, dtype=v.dtype).astype(np.float32)
    if not np.isfinite(vec).all():
        raise FacedexError(Errors.DESCRIPTOR_NOT_FINITE)
    wide = vec.astype(np.float64)  # float64: the norm of a large finite vector must not overflow
    norm = float(np.linalg.norm(wide))
    if norm == 0.0:
        raise FacedexError(Errors.DESCRIPTOR_ZERO)
    return (wide / norm).astype(np.float32)


def parse_matrix(version: int, matrix: np.ndarray) -> np.ndarray:
    """Validate an (n, dim) array of descriptors and return it L2-normalised as float32 (bulk import path)."""
    v = get_version(version)
    if matrix.ndim != 2 or matrix.shape[1] != v.dim:
        raise FacedexError(
            Errors.DESCRIPTOR_LENGTH, f"version {version} ({v.name}) takes {v.dim} columns, got shape {matrix.shape}"
        )
    m = np.asarray(matrix, dtype=np.float32)
    finite = np.isfinite(m).all(axis=1)
    if not finite.all():
        raise FacedexError(Errors.DESCRIPTOR_NOT_FINITE, f"row {int(np.argmin(finite))} contains NaN or infinity")
    wide = m.astype(np.float64)
    norms = np.linalg.norm(wide, axis=1)
    if (norms == 0).any():
        raise FacedexError(Errors.DESCRIPTOR_ZERO, f"row {int(np.argmax(norms == 0))} has zero norm")
    return (wide / norms[:, None]).astype(np.float32)


def to_bytes(version: int, vec: np.ndarray) -> bytes:
    """Storage form: raw little-endian bytes of the version's dtype."""
    return np.ascontiguousarray(vec, dtype=get_version(version).dtype).tobytes()


def from_bytes(version: int, raw: bytes) -> np.ndarray:
    """Inverse of :func:`to_bytes` for trusted (already validated) storage bytes."""
    return np.frombuffer(raw, dtype=get_version(version).dtype).astype(np.float32, copy=False)


def similarity(scores: np.ndarray | float) -> np.ndarray:
    """Map inner products of normalised descriptors to facedex similarity: cosine clipped to [0, 1]."""
    return np.clip(scores, 0.0, 1.0)
