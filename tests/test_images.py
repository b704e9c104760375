"""Faces from real photos: the extraction pipeline, the API's image routes, and bad images.

The threshold is SFace's published cosine threshold (OpenCV Zoo), the one the
README documents for descriptor version 2.
"""

from __future__ import annotations

import base64
import io
import struct
import zlib

import httpx
import numpy as np
import pytest
from PIL import Image

from facedex.bench.datasets import face_like
from facedex.bench.photos import astronaut_png, encode, face_recognition_photos, variants
from facedex.errors import FacedexError
from facedex.extractor.images import decode
from facedex.extractor.pipeline import Pipelines
from tests.conftest import Services, new_client
from tests.test_bad_input import db_state

SFACE_THRESHOLD = 0.363
OBAMA = ("obama", "obama2", "obama3", "obama_partial_face", "obama_partial_face2", "32bit")


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


@pytest.fixture(scope="module")
def photos() -> dict[str, bytes]:
    return {**face_recognition_photos(), "astronaut": astronaut_png()}


@pytest.fixture(scope="module")
def pipeline():
    return Pipelines().get()


def descriptor_of(pipeline, data: bytes) -> np.ndarray:
    image = decode(data, 20 << 20, 40_000_000, 640)
    faces = pipeline.faces(image.pixels, False, image.scale)
    assert len(faces) == 1
    return faces[0].descriptor


def test_same_person_above_threshold_others_below(pipeline, photos) -> None:
    vec = {name: descriptor_of(pipeline, data) for name, data in photos.items()}
    for a in OBAMA:
        for b in OBAMA:
            if a < b:
                assert vec[a] @ vec[b] > SFACE_THRESHOLD + 0.15, (a, b, float(vec[a] @ vec[b]))
        for other in ("biden", "astronaut"):
            assert vec[a] @ vec[other] < SFACE_THRESHOLD - 0.1, (a, other, float(vec[a] @ vec[other]))
    assert vec["biden"] @ vec["astronaut"] < SFACE_THRESHOLD


def test_boxes_land_on_the_face_in_original_pixels(pipeline, photos) -> None:
    """A large JPEG is decoded reduced; the box still comes back in the original image's coordinates."""
    full = Image.open(io.BytesIO(photos["obama3"]))
    reduced = decode(photos["obama3"], 20 << 20, 40_000_000, 640)
    assert reduced.scale < 1 and (reduced.width, reduced.height) == full.size
    face = pipeline.faces(reduced.pixels, False, reduced.scale)[0]
    exact = decode(photos["obama3"], 20 << 20, 40_000_000, 0)  # no reduction
    same = pipeline.faces(exact.pixels, False, exact.scale)[0]
    assert abs(face.x - same.x) < 0.05 * same.width and abs(face.width - same.width) < 0.1 * same.width
    assert float(face.descriptor @ same.descriptor) > 0.9


def test_group_photo_gives_every_face_largest_first(pipeline, photos) -> None:
    """Two photos side by side: `all` finds both people, the default the larger one."""
    obama = Image.open(io.BytesIO(photos["obama"])).convert("RGB")
    biden = Image.open(io.BytesIO(photos["biden"])).convert("RGB")
    biden = biden.resize((biden.width * obama.height // biden.height // 2, obama.height // 2))
    canvas = Image.new("RGB", (obama.width + biden.width, obama.height), "white")
    canvas.paste(obama, (0, 0))
    canvas.paste(biden, (obama.width, 0))
    image = decode(encode(canvas, "JPEG", quality=92), 20 << 20, 40_000_000, 640)
    faces = pipeline.faces(image.pixels, True, image.scale)
    assert len(faces) == 2 and faces[0].area > faces[1].area
    assert faces[0].x < obama.width <= faces[1].x
    largest = pipeline.faces(image.pixels, False, image.scale)
    assert len(largest) == 1 and largest[0].x == faces[0].x
    assert float(faces[0].descriptor @ descriptor_of(pipeline, photos["obama"])) > 0.8
    assert float(faces[1].descriptor @ descriptor_of(pipeline, photos["biden"])) > 0.6


# ------------------------------------------------------------------------------------------------- over HTTP
@pytest.fixture(scope="module")
def gallery(services: Services, photos):
    """A list of 10k synthetic version-2 faces plus Obama's and Biden's, created from their photos."""
    client = new_client(services)
    list_id = client.post("/1/lists", json={"user_data": "photos"}).json()["list_id"]
    data = face_like(10_000, dim=128, n_probes=0, seed=5)
    for start in range(0, len(data.gallery), 1000):
        faces = [{"descriptor": {"version": 2, "data": b64(v.astype("<f4").tobytes())}} for v in data.gallery[start : start + 1000]]
        assert client.post("/1/faces/batch", json={"faces": faces, "list_ids": [list_id]}).status_code == 201
    ids = {}
    for name in ("obama", "biden"):
        resp = client.post("/1/images/faces", files={"image": (f"{name}.jpg", photos[name], "image/jpeg")},
                           data={"list_ids": [list_id], "external_id": name})
        assert resp.status_code == 201, resp.text
        created = resp.json()
        assert len(created["faces"]) == 1 and created["faces"][0]["detection"]["score"] > 0.8
        ids[name] = created["faces"][0]["face_id"]
    assert client.get(f"/1/lists/{list_id}").json()["face_count"] == 10_002
    return client, list_id, ids


def test_variants_of_a_photo_match_it_first_among_10k(gallery, photos) -> None:
    client, list_id, ids = gallery
    for name, data in variants(photos["obama"]).items():
        resp = client.post("/1/matcher/faces", json={
            "references": [{"image": {"data": b64(data)}}], "candidates": {"list_id": list_id, "limit": 3}})
        assert resp.status_code == 200, (name, resp.text)
        body = resp.json()
        assert body["descriptor_version"] == 2 and body["list_size"] == 10_002
        top = body["matches"][0]["results"][0]
        assert top["face_id"] == ids["obama"] and top["similarity"] > 0.8, (name, top)
        assert body["matches"][0]["reference"]["detection"]["box"]["width"] > 50
    # other photos of the same man, as a multipart upload to /1/matcher/image
    for name in ("obama2", "obama3"):
        resp = client.post("/1/matcher/image", files={"image": (f"{name}.jpg", photos[name], "image/jpeg")},
                           data={"list_id": list_id, "limit": "1", "threshold": str(SFACE_THRESHOLD)})
        assert resp.status_code == 200, resp.text
        assert [r["face_id"] for r in resp.json()["matches"][0]["results"]] == [ids["obama"]]
    # a stranger matches nobody above the threshold
    resp = client.post("/1/matcher/image", files={"image": ("a.png", photos["astronaut"], "image/png")},
                       data={"list_id": list_id, "threshold": str(SFACE_THRESHOLD)})
    assert resp.status_code == 200 and resp.json()["matches"][0]["results"] == []


def test_face_from_base64_image_and_extract_route(gallery, photos) -> None:
    client, list_id, ids = gallery
    resp = client.post("/1/faces", json={"image": {"data": b64(photos["obama2"]), "content_type": "image/jpeg"}})
    assert resp.status_code == 201, resp.text
    face_id = resp.json()["face_id"]
    assert resp.json()["detection"]["box"]["height"] > 100
    assert client.get(f"/1/faces/{face_id}").json()["descriptor_versions"] == [2]
    # the stored face as a reference finds Obama's first face in the list
    resp = client.post("/1/matcher/faces", json={"references": [{"face_id": face_id}],
                                                 "candidates": {"list_id": list_id, "limit": 1}})
    assert (resp.status_code, resp.json()["error_code"]) == (400, 13002)  # the default version is 1; this face has 2
    resp = client.post("/1/matcher/faces", json={"references": [{"face_id": face_id}],
                                                 "candidates": {"list_id": list_id, "limit": 1, "descriptor_version": 2}})
    assert resp.json()["matches"][0]["results"][0]["face_id"] == ids["obama"]
    # extract: nothing stored, the descriptor comes back
    extracted = client.post("/1/images/extract", json={"image": {"data": b64(photos["biden"])}}).json()
    assert len(extracted["faces"]) == 1 and extracted["faces"][0]["descriptor"]["version"] == 2
    assert len(extracted["faces"][0]["landmarks"]) == 5
    vec = np.frombuffer(base64.b64decode(extracted["faces"][0]["descriptor"]["data"]), "<f4")
    assert vec.shape == (128,) and abs(float(np.linalg.norm(vec)) - 1) < 1e-4


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims width x height but holds almost no data (a decompression bomb's header)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def bad_image_cases(photos) -> list[tuple[str, dict, int, int]]:
    """(name, httpx request kwargs for POST /1/images/faces, status, error code)."""
    jpeg = photos["obama"]
    blank = encode(np.full((480, 640, 3), 200, np.uint8), "PNG")
    gif = encode(np.zeros((32, 32, 3), np.uint8), "GIF")

    def form(data: bytes, content_type: str = "image/jpeg") -> dict:
        return {"files": {"image": ("x", data, content_type)}}

    def as_json(data: bytes, content_type: str | None = None) -> dict:
        return {"json": {"image": {"data": b64(data), "content_type": content_type}}}

    return [
        ("not an image", form(b"hello, this is text" * 100), 400, 16001),
        ("truncated JPEG", form(jpeg[: len(jpeg) // 2]), 400, 16001),
        ("empty file", form(b""), 400, 16001),
        ("no face", form(blank, "image/png"), 422, 16005),
        ("20000 x 20000 pixels", form(_png_header_only(20_000, 20_000), "image/png"), 400, 16002),
        ("50 MB upload", form(jpeg + b"\x00" * (50 << 20)), 413, 10003),
        ("wrong part content type", form(jpeg, "text/plain"), 415, 16004),
        ("GIF", form(gif, "image/gif"), 415, 16004),
        ("wrong declared type in JSON", as_json(jpeg, "application/pdf"), 415, 16004),
        ("bad base64", {"json": {"image": {"data": "not base64!"}}}, 400, 16006),
        ("form without image part", {"data": {"user_data": "x"}, "files": {"other": ("x", b"1", "image/jpeg")}}, 400, 16008),
        ("text/plain body", {"content": jpeg, "headers": {"Content-Type": "text/plain"}}, 415, 10008),
        ("unknown form field", {"files": {"image": ("x", jpeg, "image/jpeg")}, "data": {"colour": "red"}}, 422, 10002),
    ]


async def test_bad_images_get_4xx_and_store_nothing(services: Services, pool, photos) -> None:
    client = new_client(services)
    list_id = client.post("/1/lists", json={}).json()["list_id"]
    before = await db_state(pool)
    failures = []
    for name, kwargs, status, code in bad_image_cases(photos):
        resp = client.post("/1/images/faces", **kwargs)
        body = resp.json()
        if resp.status_code != status or body.get("error_code") != code:
            failures.append(f"{name}: {resp.status_code} {body}")
    # the same refusals on the other image routes
    refs = {"references": [{"image": {"data": b64(b"GIF89a" + bytes(20))}}], "candidates": {"list_id": list_id}}
    resp = client.post("/1/matcher/faces", json=refs)
    if (resp.status_code, resp.json().get("error_code")) != (400, 16001):
        failures.append(f"match with a broken image: {resp.status_code} {resp.text}")
    resp = client.post("/1/faces", json={"image": {"data": b64(encode(np.zeros((64, 64, 3), np.uint8), "PNG"))}})
    if (resp.status_code, resp.json().get("error_code")) != (422, 16005):
        failures.append(f"face from a faceless image: {resp.status_code} {resp.text}")
    assert not failures, "\n".join(failures)
    assert await db_state(pool) == before
    # the service is still fine afterwards
    ok = client.post("/1/images/faces", files={"image": ("o.jpg", photos["obama"], "image/jpeg")}, data={"list_ids": [list_id]})
    assert ok.status_code == 201, ok.text


def test_decode_limits_before_pixels() -> None:
    """Byte and pixel limits are checked before decoding (unit level: the limits themselves)."""
    small = encode(np.zeros((100, 100, 3), np.uint8), "PNG")
    with pytest.raises(FacedexError) as err:
        decode(small, max_bytes=len(small) - 1, max_pixels=10**6)
    assert err.value.error.code == 16003
    with pytest.raises(FacedexError) as err:
        decode(small, max_bytes=1 << 20, max_pixels=9_999)
    assert err.value.error.code == 16002
    assert decode(small, max_bytes=1 << 20, max_pixels=10_000).pixels.shape == (100, 100, 3)


def test_extractor_sidecar(services: Services, photos) -> None:
    """With extraction.url set, the API extracts on `facedex serve extractor`; same faces, same answers."""
    services.start("extractor")
    services.start("api-remote", "api", FACEDEX_EXTRACTION__URL=services.url("extractor"))
    token = new_client(services).headers["Authorization"]
    with httpx.Client(base_url=services.url("api-remote"), headers={"Authorization": token}, timeout=30) as remote:
        here = new_client(services).post("/1/images/extract", json={"image": {"data": b64(photos["obama"])}}).json()
        there = remote.post("/1/images/extract", json={"image": {"data": b64(photos["obama"])}}).json()
        assert there["faces"][0]["detection"] == here["faces"][0]["detection"]
        a, b = (np.frombuffer(base64.b64decode(x["faces"][0]["descriptor"]["data"]), "<f4") for x in (here, there))
        assert float(a @ b) > 0.9999
        resp = remote.post("/1/images/faces", files={"image": ("x", b"not an image", "image/jpeg")})
        assert (resp.status_code, resp.json()["error_code"]) == (400, 16001)  # the sidecar's error, relayed
    services.stop("extractor")
    with httpx.Client(base_url=services.url("api-remote"), headers={"Authorization": token}, timeout=30) as remote:
        resp = remote.post("/1/images/extract", json={"image": {"data": b64(photos["obama"])}})
        assert (resp.status_code, resp.json()["error_code"]) == (503, 16007)
    services.stop("api-remote")
