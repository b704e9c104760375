"""facedex.client (sync and async) and the CLI commands built on it, against the running services."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from facedex.bench.photos import face_recognition_photos
from facedex.client import AsyncClient, Client, FacedexAPIError
from facedex.manager.models import TaskStatus
from tests.conftest import Services


def unit(rng: np.random.Generator, n: int, dim: int = 512) -> np.ndarray:
    v = rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def token(services: Services) -> str:
    with Client(services.url("api"), services.admin_token) as admin:
        return admin.create_account("client-tests").token


@pytest.fixture
def fx(services: Services, token: str):
    with Client(services.url("api"), token, manager_url=services.url("manager")) as client:
        yield client


def test_lists_faces_matching_and_errors(fx: Client) -> None:
    rng = np.random.default_rng(3)
    vecs = unit(rng, 50)
    lst = fx.create_list("staff")
    created = fx.create_faces(vecs, version=1, external_ids=[f"p{i}" for i in range(50)], list_ids=[lst.list_id])
    assert len(created.face_ids) == 50 and fx.get_list(lst.list_id).face_count == 50
    face = fx.get_face(created.face_ids[7])
    assert face.external_id == "p7" and face.descriptor_versions == [1] and face.list_ids == [lst.list_id]
    assert [f.face_id for f in fx.get_faces(external_id="p7")] == [created.face_ids[7]]

    by_vec = fx.match(lst.list_id, descriptors=[vecs[7]], version=1, limit=3)
    assert by_vec.route in ("bruteforce", "indexed") and by_vec.list_size == 50
    assert by_vec.matches[0].results[0].face_id == created.face_ids[7]
    assert by_vec.matches[0].results[0].similarity == pytest.approx(1.0, abs=1e-5)
    by_id = fx.match(lst.list_id, face_ids=[created.face_ids[9]], limit=1, exact=True)
    assert by_id.matches[0].reference.face_id == created.face_ids[9] and by_id.matches[0].results[0].face_id == created.face_ids[9]

    assert fx.detach(lst.list_id, [created.face_ids[7]]).changed == 1
    after = fx.match(lst.list_id, descriptors=[vecs[7]], version=1, limit=3)
    assert created.face_ids[7] not in [r.face_id for r in after.matches[0].results]

    fx.put_descriptor(created.face_ids[0], vecs[1], version=1)
    assert fx.update_face(created.face_ids[0], user_data="moved").user_data == "moved"
    fx.delete_face(created.face_ids[0])

    with pytest.raises(FacedexAPIError) as missing:
        fx.get_list(uuid.uuid4())
    assert (missing.value.status, missing.value.error_code, missing.value.desc) == (404, 12001, "List not found")
    with pytest.raises(FacedexAPIError) as short:
        fx.create_face(descriptor=vecs[0][:100], version=1)
    assert (short.value.status, short.value.error_code) == (400, 11002) and "512" in short.value.detail
    with pytest.raises(FacedexAPIError) as gone:
        fx.get_face(created.face_ids[0])
    assert gone.value.error_code == 13001


async def test_async_client(services: Services, token: str) -> None:
    rng = np.random.default_rng(4)
    vecs = unit(rng, 5)
    async with AsyncClient(services.url("api"), token) as fx:
        lst = await fx.create_list("async")
        ids = [(await fx.create_face(descriptor=v, version=1, list_ids=[lst.list_id])).face_id for v in vecs]
        resp = await fx.match(lst.list_id, descriptors=[vecs[2]], version=1, limit=1)
        assert resp.matches[0].results[0].face_id == ids[2]
        assert [lv.list_id for lv in await fx.get_lists(page_size=1000)].count(lst.list_id) == 1
        await fx.delete_list(lst.list_id)
        with pytest.raises(FacedexAPIError) as err:
            await fx.delete_list(lst.list_id)
        assert err.value.error_code == 12001


def test_photos(fx: Client) -> None:
    photos = face_recognition_photos()
    lst = fx.create_list("photos")
    made = fx.faces_from_image(photos["obama"], list_ids=[lst.list_id], external_id="obama")
    assert len(made.faces) == 1 and made.faces[0].detection is not None
    fx.faces_from_image(photos["biden"], list_ids=[lst.list_id], external_id="biden")
    extracted = fx.extract(photos["obama2"])
    assert extracted.faces[0].descriptor.version == 2 and len(extracted.faces[0].landmarks) == 5
    resp = fx.match_image(lst.list_id, photos["obama2"], limit=2)
    assert resp.descriptor_version == 2 and resp.matches[0].results[0].face_id == made.faces[0].face_id
    with pytest.raises(FacedexAPIError) as bad:
        fx.faces_from_image(b"not an image", list_ids=[lst.list_id])
    assert bad.value.error_code == 16001


def facedex(*args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
    env = None
    if token is not None:
        import os

        env = {**os.environ, "FDX_TOKEN": token}
    return subprocess.run([sys.executable, "-m", "facedex", *args], capture_output=True, text=True, timeout=180, env=env)


def test_cli_faces_match_tasks_indexes(services: Services, fx: Client, token: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    vecs = unit(rng, 300)
    lst = fx.create_list("cli")
    fx.create_faces(vecs[1:], version=1, list_ids=[lst.list_id])
    api = ("--api-url", services.url("api"))
    np.save(tmp_path / "v.npy", vecs[0])
    out = facedex("faces", "create", "--descriptor", str(tmp_path / "v.npy"), "--version", "1", "--list", str(lst.list_id),
                  "--external-id", "cli-face", *api, token=token)
    assert out.returncode == 0, out.stdout + out.stderr
    face_id = uuid.UUID(out.stdout.strip())
    listed = facedex("faces", "list", "--external-id", "cli-face", *api, token=token)
    assert str(face_id) in listed.stdout  # the whole id, not a prefix
    assert f'"face_id": "{face_id}"' in facedex("faces", "get", str(face_id), *api, token=token).stdout
    matched = facedex("match", str(lst.list_id), "--face", str(face_id), "--limit", "1", *api, token=token)
    assert matched.returncode == 0 and str(face_id) in matched.stdout and "1.0000" in matched.stdout
    refused = facedex("match", str(uuid.uuid4()), "--face", str(face_id), *api, token=token)
    assert refused.returncode == 1 and "12001" in refused.stdout

    manager = ("--url", services.url("manager"))
    built = facedex("tasks", "create", str(lst.list_id), *manager, token=token)  # the account's own list
    assert built.returncode == 0, built.stdout + built.stderr
    task = fx.get_tasks(list_id=lst.list_id)[0]
    assert task.status == TaskStatus.success and task.count == 300 and str(task.task_id) in built.stdout
    assert str(task.task_id) in facedex("tasks", "list", "--list", str(lst.list_id), *manager, token=token).stdout
    again = facedex("tasks", "cancel", str(task.task_id), *manager, token=token)
    assert again.returncode == 1 and "26205" in again.stdout
    indexes = fx.get_indexes(lst.list_id)
    assert [i.index_id for i in indexes] == [task.index_id] and indexes[0].count == 300
    assert task.index_id in facedex("indexes", "list", "--list", str(lst.list_id), *manager, token=token).stdout
    deleted = facedex("indexes", "delete", task.index_id, *manager, token=token)
    assert deleted.returncode == 0, deleted.stdout + deleted.stderr
    deadline = time.monotonic() + 30
    while fx.get_indexes(lst.list_id) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert fx.get_indexes(lst.list_id) == []
    with pytest.raises(FacedexAPIError) as err:
        fx.delete_index(task.index_id)
    assert err.value.error_code == 26204
