"""Matcher Proxy routing: plugins first, brute force as the fallback that always answers."""

from __future__ import annotations

import asyncio
import uuid

import numpy as np
import pytest

from facedex import internal_auth, wire
from facedex.config import ServiceAddress, Settings
from facedex.errors import FacedexError
from facedex.faces.store import FacesStore, NewFace
from facedex.proxy.app import Router
from facedex.proxy.plugins import BruteForceRoute, MatchingPlugin, Rematch, load_plugins


class FakeIndexed:
    """Serves one list with a fixed answer; declines or fails on demand."""

    name = "fake"

    def __init__(self, settings: Settings, behaviour: str = "serve", list_id: bytes = b"") -> None:
        self.behaviour = behaviour
        self.list_id = list_id
        self.calls = 0

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def accepts(self, req: wire.MatchRequest) -> bool:
        return req.list_id == self.list_id and req.face_ids is None

    async def match(self, req: wire.MatchRequest) -> wire.MatchResponse:
        self.calls += 1
        if self.behaviour == "rematch":
            raise Rematch("index is reloading")
        if self.behaviour == "timeout":
            await asyncio.sleep(0)
            raise TimeoutError("no reply in 0.1 s")
        return wire.MatchResponse(results=[wire.ReferenceMatches(b"", b"")], route="fake")


def signed(token: str, account_id: bytes, list_id: bytes, references: bytes, **kw: object) -> wire.MatchRequest:
    """A match request as the API sends it: signed whole."""
    return internal_auth.sign_request(token, wire.MatchRequest(account_id, list_id, 1, references, **kw), 60)  # type: ignore[arg-type]


@pytest.fixture
async def setup(services, store: FacesStore, account: uuid.UUID):
    rng = np.random.default_rng(0)
    lst = await store.create_list(account)
    vecs = rng.standard_normal((20, 512)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    ids = await store.create_faces(account, [NewFace(descriptors={1: v}) for v in vecs], [lst.list_id])
    settings = Settings(bruteforce=ServiceAddress(port=services.ports["bruteforce"]), internal_token=services.internal_token)
    fallback = BruteForceRoute(settings)
    req = signed(services.internal_token, account.bytes, lst.list_id.bytes, vecs[:1].tobytes(), limit=3)
    yield settings, fallback, req, ids
    await fallback.stop()


async def test_plugin_serves_what_it_accepts(setup) -> None:
    settings, fallback, req, ids = setup
    plugin = FakeIndexed(settings, "serve", req.list_id)
    router = Router([plugin], fallback)
    assert (await router.match(req)).route == "fake"
    filtered = signed(settings.internal_token, req.account_id, req.list_id, req.references, limit=3, face_ids=[ids[0].bytes])
    resp = await router.match(filtered)  # a filter the plugin does not support: brute force, no error
    assert resp.route == "bruteforce" and resp.fallback_reason is None
    assert np.frombuffer(resp.results[0].face_ids, np.uint8).reshape(-1, 16)[0].tobytes() == ids[0].bytes


@pytest.mark.parametrize("behaviour", ["rematch", "timeout"])
async def test_failing_plugin_falls_back_to_exact(setup, behaviour: str) -> None:
    settings, fallback, req, ids = setup
    plugin = FakeIndexed(settings, behaviour, req.list_id)
    resp = await Router([plugin], fallback).match(req)
    assert plugin.calls == 1
    assert resp.route == "bruteforce" and resp.fallback_reason.startswith("fake:")
    assert np.frombuffer(resp.results[0].face_ids, np.uint8)[:16].tobytes() == ids[0].bytes
    assert np.frombuffer(resp.results[0].similarities, np.float32)[0] == pytest.approx(1.0, abs=1e-5)


async def test_brute_force_errors_are_relayed_with_their_code(setup) -> None:
    settings, fallback, req, _ = setup
    missing = signed(settings.internal_token, req.account_id, uuid.uuid4().bytes, req.references, limit=3)
    with pytest.raises(FacedexError) as exc:
        await Router([], fallback).match(missing)
    assert exc.value.error.code == 12001
    down = BruteForceRoute(Settings(bruteforce=ServiceAddress(port=1)))
    with pytest.raises(FacedexError) as exc:
        await Router([], down).match(req)
    assert exc.value.error.code == 14004 and exc.value.error.status == 503
    await down.stop()


def test_plugins_load_from_settings() -> None:
    plugins = load_plugins(Settings(proxy_plugins=["tests.test_proxy:FakeIndexed"]))
    assert len(plugins) == 1 and isinstance(plugins[0], MatchingPlugin) and plugins[0].name == "fake"
    with pytest.raises(TypeError, match="does not implement"):
        load_plugins(Settings(proxy_plugins=["facedex.proxy.plugins:Rematch"]))
