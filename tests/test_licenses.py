"""Signed licenses: valid, tampered, foreign key, expired, missing feature."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from facedex.config import LicenseSettings, Settings
from facedex.licenses.app import feature_status
from facedex.licenses.license import LicenseError, generate_keys, issue, verify


@pytest.fixture(scope="module")
def keys() -> tuple[str, str]:
    return generate_keys()


def test_valid_license(keys) -> None:
    private, public = keys
    lic = verify(issue(private, "acme", ["index"], 30), public)
    assert lic.licensee == "acme" and lic.features == ["index"] and not lic.expired()


def test_tampered_foreign_expired(keys) -> None:
    private, public = keys
    doc = orjson.loads(issue(private, "acme", ["matching"], 30))
    doc["license"]["features"] = ["index", "matching"]  # grant oneself a feature
    with pytest.raises(LicenseError, match="signature"):
        verify(orjson.dumps(doc), public)
    other_private, _ = generate_keys()
    with pytest.raises(LicenseError, match="signature"):
        verify(issue(other_private, "acme", ["index"], 30), public)
    with pytest.raises(LicenseError, match="expired"):
        verify(issue(private, "acme", ["index"], 1), public, now=datetime.now(UTC) + timedelta(days=2))
    with pytest.raises(LicenseError, match="malformed"):
        verify(b"{not json", public)


def test_feature_status(keys, tmp_path: Path) -> None:
    private, public = keys
    path = tmp_path / "license.json"
    settings = Settings(data_dir=tmp_path, license=LicenseSettings(public_key=public))
    assert feature_status(settings, "index")["reason"].startswith("no license file")
    path.write_bytes(issue(private, "acme", ["matching"], 30))
    assert feature_status(settings, "index") == {"feature": "index", "enabled": False, "reason": "the license has no 'index' feature"}
    path.write_bytes(issue(private, "acme", ["index"], 30))
    assert feature_status(settings, "index")["enabled"] is True
    no_key = Settings(data_dir=tmp_path)
    assert feature_status(no_key, "index")["enabled"] is False
