"""Settings: misspelt keys and variables fail loudly; `facedex settings` shows what is in force, secrets masked."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest


def settings_cli(env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FACEDEX_")}
    return subprocess.run(
        [sys.executable, "-P", "-m", "facedex", "settings"], env={**clean, "COLUMNS": "200", **env},
        capture_output=True, text=True, timeout=60, cwd=cwd,
    )


@pytest.mark.parametrize(
    ("env", "named", "suggested"),
    [
        ({"FACEDEX_LOG_LEVLE": "DEBUG"}, "FACEDEX_LOG_LEVLE", "FACEDEX_LOG_LEVEL"),
        ({"FACEDEX_MATCHING__MAX_LIMTI": "5"}, "FACEDEX_MATCHING__MAX_LIMTI", "FACEDEX_MATCHING__MAX_LIMIT"),
        ({"FACEDEX_MATCHNG__MAX_LIMIT": "5"}, "FACEDEX_MATCHNG", "FACEDEX_MATCHING"),
        ({"FACEDEX_LOG_LEVEL__X": "5"}, "FACEDEX_LOG_LEVEL__X", None),
    ],
)
def test_unknown_environment_variables_fail_naming_the_closest(env: dict[str, str], named: str, suggested: str | None,
                                                               tmp_path: Path) -> None:
    out = settings_cli(env, tmp_path)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "Traceback" not in out.stderr and f"unknown setting {named}" in out.stderr, out.stderr
    if suggested:
        assert f"did you mean {suggested}?" in out.stderr, out.stderr


def test_unknown_toml_keys_and_sections_fail_naming_the_closest(tmp_path: Path) -> None:
    config = tmp_path / "facedex.toml"
    config.write_text("[matching]\nmax_limt = 5\n")
    out = settings_cli({}, tmp_path)  # found as ./facedex.toml
    assert out.returncode == 2 and "unknown setting matching.max_limt" in out.stderr and "matching.max_limit?" in out.stderr, out.stderr
    config.write_text("log_level = 'DEBUG'\n[indexd]\nlabel_ttl_s = 2\n")
    out = settings_cli({"FACEDEX_CONFIG": str(config)}, Path("/"))
    assert out.returncode == 2 and "unknown setting indexd" in out.stderr and "did you mean indexed?" in out.stderr, out.stderr
    config.write_text("log_level = 'DEBUG'\n[matching]\nmax_limit = 5\n")
    out = settings_cli({"FACEDEX_CONFIG": str(config), "FACEDEX_TEST_ANYTHING": "not a setting"}, Path("/"))
    assert out.returncode == 0, out.stderr
    shown = orjson.loads(out.stdout)
    assert shown["log_level"] == "DEBUG" and shown["matching"]["max_limit"] == 5


def test_settings_show_secrets_masked_and_what_database_is_used(tmp_path: Path) -> None:
    env = {
        "FACEDEX_ADMIN_TOKEN": "admin-secret-1",
        "FACEDEX_INDEX_STORAGE__S3_SECRET_KEY": "s3-secret-2",
        "FACEDEX_REDIS_URL": "redis://default:redis-secret-3@10.0.0.1:6379/0",
        "FACEDEX_EXTRACTION__URL": "http://extractor:5140",
    }
    out = settings_cli(env, tmp_path)
    assert out.returncode == 0, out.stderr
    for secret in ("admin-secret-1", "s3-secret-2", "redis-secret-3"):
        assert secret not in out.stdout
    shown = orjson.loads(out.stdout)
    assert shown["admin_token"] == "***" and shown["index_storage"]["s3_secret_key"] == "***"
    assert shown["redis_url"] == "redis://default:***@10.0.0.1:6379/0"
    assert shown["extraction"]["url"] == "http://extractor:5140"
    # unset database: what would be used, not null (the machine's local server here, else the embedded one)
    assert shown["database_url"].startswith("(unset) ") and ("local server at postgresql://" in shown["database_url"]
                                                               or "embedded" in shown["database_url"])
