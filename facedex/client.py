"""A typed Python client of facedex: the API (lists, faces, photos, matching) and the Index Manager (tasks, indexes).

Thin over httpx, in two flavours with the same methods: :class:`Client` (sync) and
:class:`AsyncClient` (``await``). Every endpoint is described once (:class:`_Calls`)
and both flavours send it, so they cannot drift apart. Answers are the services' own
pydantic models; every error answer raises :class:`FacedexAPIError` with its stable code.

    with Client("http://127.0.0.1:5100", token) as fx:
        lst = fx.create_list("staff")
        face = fx.create_face(descriptor=vec, list_ids=[lst.list_id])
        hits = fx.match(lst.list_id, descriptors=[vec], limit=5)
"""

from __future__ import annotations

import base64
import functools
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import httpx
import msgspec
import numpy as np
from pydantic import TypeAdapter

from facedex.api.models import (
    AccountCreated,
    AccountOut,
    DescriptorVersionOut,
    ExtractOut,
    FaceCreated,
    FaceOut,
    FacesCreated,
    ImageFacesCreated,
    ListFacesChanged,
    ListOut,
    MatchResponseOut,
    MatchSetsResponseOut,
)
from facedex.manager.models import MasterOut, QueueOut, TaskOut, TaskStatus
from facedex.storage.base import IndexMetaOut

T = TypeVar("T")
Id = uuid.UUID | str
Image = bytes | str | Path  # the file's bytes, or a path to it
Vector = Sequence[float] | np.ndarray

__all__ = ["AsyncClient", "Client", "FacedexAPIError"]


class FacedexAPIError(Exception):
    """An error answer of a facedex service: its stable ``error_code`` (facedex/errors.py) and HTTP ``status``."""

    def __init__(self, status: int, error_code: int, desc: str, detail: str) -> None:
        super().__init__(f"{status} {error_code} {desc}: {detail}")
        self.status = status
        self.error_code = error_code
        self.desc = desc
        self.detail = detail

    @classmethod
    def from_response(cls, resp: httpx.Response) -> FacedexAPIError:
        try:
            body = resp.json()
            return cls(resp.status_code, int(body["error_code"]), str(body["desc"]), str(body["detail"]))
        except (ValueError, KeyError, TypeError):  # not a facedex error body (a proxy in between, say)
            return cls(resp.status_code, 0, resp.reason_phrase, resp.text[:500])


@dataclass
class _Call(Generic[T]):
    """One request and how to read its answer."""

    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    kwargs: dict[str, Any] = field(default_factory=dict)
    manager: bool = False  # sent to the Index Manager, not the API
    headers: dict[str, str] = field(default_factory=dict)  # beside the credentials (e.g. msgpack's content type)

    def read(self, resp: httpx.Response) -> T:
        if resp.status_code >= 400:
            raise FacedexAPIError.from_response(resp)
        return self.parse(resp)


def _model(model: Any) -> Callable[[httpx.Response], Any]:
    adapter = TypeAdapter(model)
    return lambda resp: adapter.validate_json(resp.content)


def _none(resp: httpx.Response) -> None:
    return None


def b64_descriptor(vec: Vector, version: int | None = None) -> dict[str, Any]:
    """A descriptor as the API takes it: base64 of little-endian float32."""
    data = base64.b64encode(np.ascontiguousarray(vec, dtype="<f4").tobytes()).decode()
    return {"data": data} if version is None else {"version": version, "data": data}


def _image_bytes(image: Image) -> bytes:
    return image if isinstance(image, bytes) else Path(image).read_bytes()


def _face_body(
    descriptor: Vector | None, version: int | None, image: Image | None, external_id: str | None, user_data: str,
    list_ids: Sequence[Id],
) -> dict[str, Any]:
    body: dict[str, Any] = {"user_data": user_data, "list_ids": [str(i) for i in list_ids]}
    if external_id is not None:
        body["external_id"] = external_id
    if descriptor is not None:
        body["descriptor"] = b64_descriptor(descriptor, version)
    if image is not None:
        body["image"] = {"data": base64.b64encode(_image_bytes(image)).decode()}
    return body


MSGPACK = "application/msgpack"


def _uuid_bytes(value: Id) -> bytes:
    return (value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))).bytes


def _candidates(list_id: Id, limit: int, exact: bool, threshold: float | None, version: int | None,
                only_face_ids: Sequence[Id] | None, id_of: Callable[[Id], Any]) -> dict[str, Any]:
    """The single-list ``candidates`` object, ids as ``id_of`` writes them (text for JSON, 16 bytes for msgpack)."""
    cand: dict[str, Any] = {"list_id": id_of(list_id), "limit": limit, "exact": exact}
    if threshold is not None:
        cand["threshold"] = threshold
    if version is not None:
        cand["descriptor_version"] = version
    if only_face_ids is not None:
        cand["face_ids"] = [id_of(f) for f in only_face_ids]
    return cand


def _msgpack_match(
    list_id: Id, descriptors: Sequence[Vector], face_ids: Sequence[Id], version: int | None, limit: int,
    threshold: float | None, exact: bool, only_face_ids: Sequence[Id] | None,
) -> _Call[MatchResponseOut]:
    """``POST /1/matcher/faces`` in msgpack (the body's shape: facedex.api.msgpack_body)."""
    refs: list[dict[str, Any]] = [
        {"descriptor": {"version": version, "data": np.ascontiguousarray(d, dtype="<f4").tobytes()}} for d in descriptors
    ] + [{"face_id": _uuid_bytes(f)} for f in face_ids]
    cand = _candidates(list_id, limit, exact, threshold, version, only_face_ids, _uuid_bytes)
    body = msgspec.msgpack.encode({"references": refs, "candidates": cand})
    return _Call("POST", "/1/matcher/faces", _msgpack_response, {"content": body},
                 headers={"Content-Type": MSGPACK, "Accept": MSGPACK})


def _msgpack_response(resp: httpx.Response) -> MatchResponseOut:
    """A msgpack match answer as the JSON one's model (face ids from 16 bytes; echoed descriptors back to base64)."""
    data = msgspec.msgpack.decode(resp.content)
    for match in data.get("matches", []):
        descriptor = (match.get("reference") or {}).get("descriptor")
        if descriptor is not None and isinstance(descriptor.get("data"), bytes):
            descriptor["data"] = base64.b64encode(descriptor["data"]).decode()
    return MatchResponseOut.model_validate(data)


class _Calls:
    """Every endpoint, once: the request to send and the model of its answer."""

    # accounts
    def create_account(self, name: str) -> _Call[AccountCreated]:
        return _Call("POST", "/1/accounts", _model(AccountCreated), {"json": {"name": name}})

    def account(self) -> _Call[AccountOut]:
        return _Call("GET", "/1/account", _model(AccountOut))

    # lists
    def create_list(self, user_data: str = "") -> _Call[ListOut]:
        return _Call("POST", "/1/lists", _model(ListOut), {"json": {"user_data": user_data}})

    def get_lists(self, page: int = 1, page_size: int = 100) -> _Call[list[ListOut]]:
        return _Call("GET", "/1/lists", _model(list[ListOut]), {"params": {"page": page, "page_size": page_size}})

    def get_list(self, list_id: Id) -> _Call[ListOut]:
        return _Call("GET", f"/1/lists/{list_id}", _model(ListOut))

    def update_list(self, list_id: Id, user_data: str) -> _Call[ListOut]:
        return _Call("PATCH", f"/1/lists/{list_id}", _model(ListOut), {"json": {"user_data": user_data}})

    def delete_list(self, list_id: Id) -> _Call[None]:
        return _Call("DELETE", f"/1/lists/{list_id}", _none)

    def attach(self, list_id: Id, face_ids: Sequence[Id]) -> _Call[ListFacesChanged]:
        body = {"action": "attach", "face_ids": [str(f) for f in face_ids]}
        return _Call("PATCH", f"/1/lists/{list_id}/faces", _model(ListFacesChanged), {"json": body})

    def detach(self, list_id: Id, face_ids: Sequence[Id]) -> _Call[ListFacesChanged]:
        body = {"action": "detach", "face_ids": [str(f) for f in face_ids]}
        return _Call("PATCH", f"/1/lists/{list_id}/faces", _model(ListFacesChanged), {"json": body})

    # faces
    def create_face(
        self, *, descriptor: Vector | None = None, version: int | None = None, image: Image | None = None,
        external_id: str | None = None, user_data: str = "", list_ids: Sequence[Id] = (),
    ) -> _Call[FaceCreated]:
        body = _face_body(descriptor, version, image, external_id, user_data, list_ids)
        return _Call("POST", "/1/faces", _model(FaceCreated), {"json": body})

    def create_faces(
        self, descriptors: Sequence[Vector], *, version: int | None = None, external_ids: Sequence[str | None] | None = None,
        list_ids: Sequence[Id] = (),
    ) -> _Call[FacesCreated]:
        ext = external_ids if external_ids is not None else [None] * len(descriptors)
        faces = [_face_body(d, version, None, e, "", ()) for d, e in zip(descriptors, ext, strict=True)]
        body = {"faces": faces, "list_ids": [str(i) for i in list_ids]}
        return _Call("POST", "/1/faces/batch", _model(FacesCreated), {"json": body})

    def faces_from_image(
        self, image: Image, *, all_faces: bool = False, external_id: str | None = None, user_data: str = "",
        list_ids: Sequence[Id] = (),
    ) -> _Call[ImageFacesCreated]:
        data: dict[str, Any] = {"all_faces": str(all_faces).lower(), "user_data": user_data, "list_ids": [str(i) for i in list_ids]}
        if external_id is not None:
            data["external_id"] = external_id
        files = {"image": ("image", _image_bytes(image))}
        return _Call("POST", "/1/images/faces", _model(ImageFacesCreated), {"data": data, "files": files})

    def extract(self, image: Image, *, all_faces: bool = False) -> _Call[ExtractOut]:
        files = {"image": ("image", _image_bytes(image))}
        return _Call("POST", "/1/images/extract", _model(ExtractOut), {"data": {"all_faces": str(all_faces).lower()}, "files": files})

    def get_faces(
        self, *, list_id: Id | None = None, external_id: str | None = None, page: int = 1, page_size: int = 100
    ) -> _Call[list[FaceOut]]:
        params: dict[str, Any] = {"page": page, "page_size": page_size}
        if list_id is not None:
            params["list_id"] = str(list_id)
        if external_id is not None:
            params["external_id"] = external_id
        return _Call("GET", "/1/faces", _model(list[FaceOut]), {"params": params})

    def get_face(self, face_id: Id) -> _Call[FaceOut]:
        return _Call("GET", f"/1/faces/{face_id}", _model(FaceOut))

    def update_face(self, face_id: Id, *, external_id: str | None = None, user_data: str | None = None) -> _Call[FaceOut]:
        body = {k: v for k, v in {"external_id": external_id, "user_data": user_data}.items() if v is not None}
        return _Call("PATCH", f"/1/faces/{face_id}", _model(FaceOut), {"json": body})

    def put_descriptor(self, face_id: Id, descriptor: Vector, version: int | None = None) -> _Call[None]:
        return _Call("PUT", f"/1/faces/{face_id}/descriptor", _none, {"json": b64_descriptor(descriptor, version)})

    def delete_face(self, face_id: Id) -> _Call[None]:
        return _Call("DELETE", f"/1/faces/{face_id}", _none)

    # matching
    def match(
        self, list_id: Id, *, descriptors: Sequence[Vector] = (), face_ids: Sequence[Id] = (), version: int | None = None,
        limit: int = 10, threshold: float | None = None, exact: bool = False, only_face_ids: Sequence[Id] | None = None,
        msgpack: bool = False,
    ) -> _Call[MatchResponseOut]:
        """References are descriptors and/or face ids; ``only_face_ids`` restricts the candidates.

        ``msgpack``: send and receive ``application/msgpack`` (descriptors as raw float32 bytes, face ids as 16
        bytes) instead of JSON; the answer is the same model."""
        if msgpack:
            return _msgpack_match(list_id, descriptors, face_ids, version, limit, threshold, exact, only_face_ids)
        refs = [{"descriptor": b64_descriptor(d, version)} for d in descriptors] + [{"face_id": str(f)} for f in face_ids]
        cand = _candidates(list_id, limit, exact, threshold, version, only_face_ids, str)
        return _Call("POST", "/1/matcher/faces", _model(MatchResponseOut), {"json": {"references": refs, "candidates": cand}})

    def match_sets(
        self, sets: Sequence[dict[str, Any]], *, descriptors: Sequence[Vector] = (), face_ids: Sequence[Id] = (),
        version: int | None = None,
    ) -> _Call[MatchSetsResponseOut]:
        """References against several candidate sets at once; each set is the API's JSON object, e.g.
        ``{"filters": {"list_ids": [a, b], "user_data__prefix": "staff/"}, "limit": 5, "targets": ["face_id",
        "similarity", "external_id"]}``. Results per reference, per set; only the asked targets are set."""
        refs = [{"descriptor": b64_descriptor(d, version)} for d in descriptors] + [{"face_id": str(f)} for f in face_ids]
        return _Call("POST", "/1/matcher/faces", _model(MatchSetsResponseOut),
                     {"json": {"references": refs, "candidates": list(sets)}})

    def match_image(
        self, list_id: Id, image: Image, *, limit: int = 10, threshold: float | None = None, all_faces: bool = False,
        exact: bool = False,
    ) -> _Call[MatchResponseOut]:
        data: dict[str, Any] = {"list_id": str(list_id), "limit": str(limit), "all_faces": str(all_faces).lower(),
                                "exact": str(exact).lower()}
        if threshold is not None:
            data["threshold"] = str(threshold)
        files = {"image": ("image", _image_bytes(image))}
        return _Call("POST", "/1/matcher/image", _model(MatchResponseOut), {"data": data, "files": files})

    def descriptor_versions(self) -> _Call[list[DescriptorVersionOut]]:
        return _Call("GET", "/1/descriptor_versions", _model(list[DescriptorVersionOut]))

    # index builds (Index Manager)
    def create_task(self, list_id: Id, descriptor_version: int | None = None) -> _Call[TaskOut]:
        body: dict[str, Any] = {"list_id": str(list_id)}
        if descriptor_version is not None:
            body["descriptor_version"] = descriptor_version
        return _Call("POST", "/1/tasks", _model(TaskOut), {"json": body}, manager=True)

    def get_tasks(
        self, *, status: TaskStatus | str | None = None, list_id: Id | None = None, page: int = 1, page_size: int = 100
    ) -> _Call[list[TaskOut]]:
        params: dict[str, Any] = {"page": page, "page_size": page_size}
        if status is not None:
            params["status"] = TaskStatus(status).value
        if list_id is not None:
            params["list_id"] = str(list_id)
        return _Call("GET", "/1/tasks", _model(list[TaskOut]), {"params": params}, manager=True)

    def get_task(self, task_id: Id) -> _Call[TaskOut]:
        return _Call("GET", f"/1/tasks/{task_id}", _model(TaskOut), manager=True)

    def cancel_task(self, task_id: Id) -> _Call[TaskOut]:
        return _Call("DELETE", f"/1/tasks/{task_id}", _model(TaskOut), manager=True)

    def queue(self) -> _Call[QueueOut]:
        return _Call("GET", "/1/queue", _model(QueueOut), manager=True)

    def get_indexes(self, list_id: Id | None = None) -> _Call[list[IndexMetaOut]]:
        params = {"list_id": str(list_id)} if list_id is not None else {}
        return _Call("GET", "/1/indexes", _model(list[IndexMetaOut]), {"params": params}, manager=True)

    def delete_index(self, index_id: Id) -> _Call[None]:
        return _Call("DELETE", f"/1/indexes/{index_id}", _none, manager=True)

    def master(self) -> _Call[MasterOut]:
        return _Call("GET", "/1/master", _model(MasterOut), manager=True)


_CALLS = _Calls()


def _headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


class _Base:
    def __init__(self, api_url: str | None, token: str | None, manager_url: str | None, manager_token: str | None) -> None:
        self.api_url = api_url.rstrip("/") if api_url else None
        self.manager_url = manager_url.rstrip("/") if manager_url else None
        self.headers = _headers(token)
        self.manager_headers = _headers(manager_token or token)

    def _target(self, call: _Call[Any]) -> tuple[str, dict[str, str]]:
        base = self.manager_url if call.manager else self.api_url
        if base is None:
            raise ValueError(f"{'manager_url' if call.manager else 'api_url'} is needed for {call.method} {call.path}")
        return base + call.path, self.manager_headers if call.manager else self.headers


def _method(name: str) -> Any:
    """A client method sending ``_Calls.<name>``; the flavour (sync or async) is the class's ``_send``."""
    build = getattr(_Calls, name)

    @functools.wraps(build)  # the endpoint's parameters and docstring, for help() and editors
    def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        return self._send(build(_CALLS, *args, **kwargs))

    return method


_ENDPOINTS = [n for n in vars(_Calls) if not n.startswith("_")]


class Client(_Base):
    """Synchronous client. ``api_url``/``token`` for the API; ``manager_url`` (and ``manager_token``,
    default: ``token``) for index builds."""

    def __init__(
        self, api_url: str | None = None, token: str | None = None, *, manager_url: str | None = None,
        manager_token: str | None = None, timeout: float = 60.0,
    ) -> None:
        super().__init__(api_url, token, manager_url, manager_token)
        self.http = httpx.Client(timeout=timeout)

    def _send(self, call: _Call[T]) -> T:
        url, headers = self._target(call)
        return call.read(self.http.request(call.method, url, headers={**headers, **call.headers}, **call.kwargs))

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient(_Base):
    """The same methods as :class:`Client`, awaited."""

    def __init__(
        self, api_url: str | None = None, token: str | None = None, *, manager_url: str | None = None,
        manager_token: str | None = None, timeout: float = 60.0,
    ) -> None:
        super().__init__(api_url, token, manager_url, manager_token)
        self.http = httpx.AsyncClient(timeout=timeout)

    async def _send(self, call: _Call[T]) -> T:
        url, headers = self._target(call)
        return call.read(await self.http.request(call.method, url, headers={**headers, **call.headers}, **call.kwargs))

    async def aclose(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


for _name in _ENDPOINTS:
    setattr(Client, _name, _method(_name))
    setattr(AsyncClient, _name, _method(_name))
