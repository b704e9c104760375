"""UUIDv7 blocks and the binary COPY encoder, checked against PostgreSQL itself."""

from __future__ import annotations

import uuid

import asyncpg
import numpy as np

from facedex.faces.copy import binary_stream, copy_binary, uuids
from facedex.ids import new_ids, uuid7_block


def test_uuid7_blocks_are_valid_and_increasing() -> None:
    block = uuid7_block(1000)
    ids = [uuid.UUID(bytes=r.tobytes()) for r in block]
    assert all(i.version == 7 and i.variant == uuid.RFC_4122 for i in ids)
    assert ids == sorted(ids) and len(set(ids)) == 1000
    later = new_ids(3)
    assert later[0].version == 7 and len(set(later) | set(ids)) == 1003


async def test_binary_stream_round_trips_through_postgres(pool: asyncpg.Pool) -> None:
    block = uuid7_block(5)
    vecs = np.random.default_rng(0).standard_normal((5, 4)).astype("<f4")
    async with pool.acquire() as conn:
        await conn.execute("CREATE TEMP TABLE t (id uuid, n bigint, s smallint, v integer, b bytea)")
        stream = binary_stream(
            5,
            [("V16", uuids(block)), (">i8", np.arange(10, 15)), (">i2", 3), (">i4", -7), ("V16", vecs.view("V16").ravel())],
        )
        await copy_binary(conn, "t", ["id", "n", "s", "v", "b"], stream)
        rows = await conn.fetch("SELECT id, n, s, v, b FROM t ORDER BY n")
    assert [r["id"].bytes for r in rows] == [r.tobytes() for r in block]
    assert [r["n"] for r in rows] == [10, 11, 12, 13, 14]
    assert {r["s"] for r in rows} == {3} and {r["v"] for r in rows} == {-7}
    assert np.array_equal(np.stack([np.frombuffer(r["b"], "<f4") for r in rows]), vecs)


def test_parse_binary_refuses_rows_of_other_widths() -> None:
    import pytest

    from facedex.faces.copy import parse_binary

    block = uuid7_block(3)
    stream = binary_stream(3, [("V16", uuids(block)), (">i4", 258)])
    ids, nums = parse_binary(stream, [16, 4])
    assert np.array_equal(ids, block) and nums.view(">i4").ravel().tolist() == [258] * 3
    with pytest.raises(ValueError):
        parse_binary(stream, [16, 8])
    with pytest.raises(ValueError):
        parse_binary(stream, [12, 8])
    with pytest.raises(ValueError):
        parse_binary(b"not copy", ["V16"])
