"""PostgreSQL binary COPY streams built with numpy, for fixed-width rows.

asyncpg's ``copy_records_to_table`` encodes each row in Python; for the
million-row paths (descriptors, list membership, the change log) one numpy
structured array with big-endian fields encodes the whole batch at memory
speed. Format: https://www.postgresql.org/docs/current/sql-copy.html (binary).
"""

from __future__ import annotations

import io

import asyncpg
import numpy as np

_HEADER = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
_TRAILER = b"\xff\xff"


def binary_stream(n: int, fields: list[tuple[str, np.ndarray | bytes | int]]) -> bytes:
    """Rows of fixed-width fields: each ``(dtype, values)`` where values broadcast to ``n`` rows.

    dtypes: ``"V16"`` for uuid (raw bytes), ``">i2"``/``">i4"``/``">i8"`` for integers,
    ``"V<k>"`` for bytea of exactly k bytes.
    """
    layout: list[tuple[str, str]] = [("count", ">i2")]
    for i, (dtype, _) in enumerate(fields):
        layout += [(f"len{i}", ">i4"), (f"val{i}", dtype)]
    rows = np.empty(n, dtype=layout)
    rows["count"] = len(fields)
    for i, (dtype, values) in enumerate(fields):
        rows[f"len{i}"] = np.dtype(dtype).itemsize
        if isinstance(values, bytes):
            values = np.frombuffer(values, dtype=dtype)
        rows[f"val{i}"] = values
    return _HEADER + rows.tobytes() + _TRAILER


def uuids(block: np.ndarray) -> np.ndarray:
    """(n, 16) uint8 -> (n,) V16 for :func:`binary_stream`."""
    return np.ascontiguousarray(block).view("V16").ravel()


async def copy_binary(conn: asyncpg.Connection, table: str, columns: list[str], stream: bytes) -> None:
    await conn.copy_to_table(table, source=io.BytesIO(stream), columns=columns, format="binary")


def parse_binary(data: bytes, widths: list[int]) -> list[np.ndarray]:
    """Parse a binary COPY stream of fixed-width, non-null fields.

    Returns one (n, width) uint8 array per field: zero-copy views into ``data``
    (rows are strided, each field's bytes contiguous), so a caller copies each
    field once, straight into where it is kept. Raises ValueError when a row does
    not have exactly these widths (a NULL or an odd-sized value).
    """
    if not data.startswith(_HEADER[:11]):
        raise ValueError("not a binary COPY stream")
    ext = int.from_bytes(data[15:19], "big")
    body = np.frombuffer(data, np.uint8, count=len(data) - 2 - (19 + ext), offset=19 + ext)
    row = 2 + sum(4 + w for w in widths)
    if body.size % row:
        raise ValueError(f"COPY stream is not made of {row}-byte rows")
    rows = body.reshape(-1, row)
    if rows.shape[0] and (rows[:, :2].view(">i2") != len(widths)).any():
        raise ValueError("unexpected field count in COPY stream")
    fields = []
    at = 2
    for i, width in enumerate(widths):
        if rows.shape[0] and (rows[:, at : at + 4].view(">i4") != width).any():
            raise ValueError(f"field {i} is not {width} bytes in every row")
        fields.append(rows[:, at + 4 : at + 4 + width])
        at += 4 + width
    return fields
