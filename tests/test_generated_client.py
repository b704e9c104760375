"""A client generated from the API's published schema by openapi-python-client imports and reads every answer."""

from __future__ import annotations

import importlib
import json
import pkgutil
import subprocess
import sys
import uuid
from pathlib import Path

import httpx

from tests.conftest import Services, new_client


def test_generated_client_parses_successes_and_errors(services: Services, tmp_path: Path) -> None:
    schema = tmp_path / "openapi.json"
    spec = httpx.get(services.url("api") + "/openapi.json").raise_for_status().json()
    for ops in spec["paths"].values():  # this generator has no msgpack: the JSON bodies beside them are its client
        for op in ops.values():
            for part in (op.get("requestBody", {}), *op.get("responses", {}).values()):
                part.get("content", {}).pop("application/msgpack", None)
    schema.write_text(json.dumps(spec))
    config = tmp_path / "config.yaml"
    config.write_text("post_hooks: []\n")  # no formatter needed (and none installed)
    package = f"fdx_generated_{uuid.uuid4().hex[:8]}"
    generator = Path(sys.executable).parent / "openapi-python-client"
    out = subprocess.run(
        [str(generator), "generate", "--path", str(schema), "--meta", "none", "--output-path", str(tmp_path / package),
         "--config", str(config)],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Warning" not in out.stdout + out.stderr, out.stdout + out.stderr  # every operation and schema understood

    sys.path.insert(0, str(tmp_path))
    try:
        root = importlib.import_module(package)
        broken = []
        for module in pkgutil.walk_packages(root.__path__, f"{package}."):
            try:
                importlib.import_module(module.name)
            except Exception as exc:  # every generated module must import
                broken.append(f"{module.name}: {exc}")
        assert not broken

        models = importlib.import_module(f"{package}.models")
        create_list = importlib.import_module(f"{package}.api.lists.create_list_1_lists_post")
        get_list = importlib.import_module(f"{package}.api.lists.get_list_1_lists_list_id_get")
        get_lists = importlib.import_module(f"{package}.api.lists.get_lists_1_lists_get")
        client_module = importlib.import_module(f"{package}.client")
        with new_client(services) as plain:
            token = plain.headers["Authorization"].split(" ", 1)[1]
        client = client_module.AuthenticatedClient(base_url=services.url("api"), token=token)

        created = create_list.sync(client=client, body=models.ListCreate(user_data="generated"))
        assert isinstance(created, models.ListOut) and created.user_data == "generated"
        got = get_list.sync_detailed(list_id=created.list_id, client=client)
        assert got.status_code == 200 and isinstance(got.parsed, models.ListOut) and got.parsed.list_id == created.list_id

        missing = get_list.sync_detailed(list_id=uuid.uuid4(), client=client)
        assert missing.status_code == 404 and isinstance(missing.parsed, models.ErrorBody)
        assert (missing.parsed.error_code, missing.parsed.desc) == (12001, "List not found")
        invalid = get_lists.sync_detailed(client=client, page=0)
        assert invalid.status_code == 422 and isinstance(invalid.parsed, models.ErrorBody) and invalid.parsed.error_code == 10002
        anonymous = client_module.Client(base_url=services.url("api"))
        refused = get_list.sync_detailed(list_id=created.list_id, client=anonymous)
        assert refused.status_code == 401 and refused.parsed.error_code == 10004
    finally:
        sys.path.remove(str(tmp_path))
