"""Every service answers as its published OpenAPI says: schemathesis against each running service.

Four checks, 0 failures: no 5xx, every status documented, every body matching its schema,
every content type declared. The API is fuzzed with a fresh account's token (so anything
destructive touches only that account's data); internal services get the internal token
when there is one. Examples per operation are bounded so the module stays well under 2 min.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import hypothesis
import hypothesis.errors
import msgspec
import pytest
import schemathesis
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance, status_code_conformance

from tests.conftest import Services, new_client

CHECKS = [not_a_server_error, status_code_conformance, response_schema_conformance, content_type_conformance]
FUZZED = ["api", "proxy", "bruteforce", "matcher", "manager", "indexer-fuzz", "licenses", "extractor"]


def _msgpack_ints(value: Any) -> Any:
    """Integers msgpack can carry (int64/uint64): a generated 2**70 is sent as the largest one."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return max(-(2**63), min(value, 2**64 - 1))
    if isinstance(value, dict):
        return {k: _msgpack_ints(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_msgpack_ints(v) for v in value]
    return value


@schemathesis.serializer("application/msgpack")
def _msgpack(ctx: Any, value: Any) -> bytes:
    return msgspec.msgpack.encode(_msgpack_ints(value))


def _base64_bytes(value: Any) -> Any:
    """A decoded msgpack message as the schema shows it: bytes fields as base64 strings (msgspec's JSON form)."""
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, dict):
        return {k: _base64_bytes(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_base64_bytes(v) for v in value]
    return value


@schemathesis.deserializer("application/msgpack")
def _msgpack_response(ctx: Any, response: Any) -> Any:
    return _base64_bytes(msgspec.msgpack.decode(response.content))


@dataclass
class Target:
    name: str
    url: str
    headers: dict[str, str]


@pytest.fixture(scope="module")
def fuzz_token(services: Services) -> str:
    with new_client(services) as client:
        return client.headers["Authorization"]


@pytest.fixture(scope="module")
def target(request: pytest.FixtureRequest, services: Services, fuzz_token: str) -> Target:
    name = request.param
    if name not in services.procs or services.procs[name].poll() is not None:  # not started, or stopped by another test
        services.start(name, name.split("-")[0])  # an Indexer of its own (fuzzed builds leave the shared one alone)
    internal = getattr(services, "internal_token", None)
    if name in ("api", "manager"):
        headers = {"Authorization": fuzz_token}
    else:
        headers = {"Authorization": f"Bearer {internal}"} if internal else {}
    return Target(name, services.url(name), headers)


EXAMPLES = 6  # per operation and generation mode: ~100 operations x 12 requests in all


def _fuzz(target: Target) -> list[str]:
    """Each operation's generated requests (valid and invalid ones); the failures of the four checks."""
    schema = schemathesis.openapi.from_url(target.url + "/openapi.json", timeout=30)
    schema.config.update(base_url=target.url, headers=target.headers)
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @hypothesis.settings(
                max_examples=EXAMPLES, deadline=None, suppress_health_check=list(hypothesis.HealthCheck),
                derandomize=True, database=None, phases=[hypothesis.Phase.generate],
            )
            @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
            def run(case: schemathesis.Case) -> None:
                try:
                    case.call_and_validate(headers=target.headers, checks=CHECKS, timeout=60)
                except (AssertionError, FailureGroup) as exc:
                    failures.append(f"{operation.label} ({mode.value}): {exc}"[:2000])

            try:
                run()
            except hypothesis.errors.Unsatisfiable:
                assert mode is GenerationMode.NEGATIVE  # an operation without inputs has no invalid request
    return failures


@pytest.mark.parametrize("target", FUZZED, indirect=True)
def test_service_conforms_to_its_openapi(target: Target) -> None:
    failures = _fuzz(target)
    assert not failures, f"{len(failures)} failures:\n" + "\n\n".join(failures[:20])
