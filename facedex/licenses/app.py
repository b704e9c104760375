"""Licenses service: reads the license file, verifies it with the public key, answers feature queries.

The file is re-read on every query (it is small), so replacing it takes effect
at once; matchers cache the answer for ``licenses.check_period_s``.
"""

from __future__ import annotations

from pathlib import Path as FilePath
from typing import Annotated

from fastapi import FastAPI, Path as PathParam
from pydantic import BaseModel, Field

from facedex.config import Settings
from facedex.http import create_app
from facedex.licenses.license import License, LicenseError, verify


class LicenseOut(BaseModel):
    valid: bool
    reason: str | None = Field(None, description="Why there is no valid license.")
    licensee: str | None = None
    features: list[str] | None = None
    expires: str | None = Field(None, description="ISO 8601, UTC.")
    license_id: str | None = None


class FeatureOut(BaseModel):
    feature: str
    enabled: bool
    reason: str | None = Field(None, description="Why the feature is off.")
    expires: str | None = None


def check(settings: Settings) -> License:
    cfg = settings.license
    if not cfg.public_key:
        raise LicenseError("no public key configured (licenses.public_key)")
    path = FilePath(cfg.path or settings.data_dir / "license.json").expanduser()
    if not path.is_file():
        raise LicenseError(f"no license file at {path}")
    return verify(path.read_bytes(), cfg.public_key)


def feature_status(settings: Settings, feature: str) -> dict[str, object]:
    try:
        lic = check(settings)
    except LicenseError as exc:
        return {"feature": feature, "enabled": False, "reason": str(exc)}
    if feature not in lic.features:
        return {"feature": feature, "enabled": False, "reason": f"the license has no '{feature}' feature"}
    return {"feature": feature, "enabled": True, "reason": None, "expires": lic.expires}


def build_app(settings: Settings) -> FastAPI:
    app = create_app(
        "licenses", settings,
        title="facedex Licenses",
        description="Verifies the signed license file and tells services which features it enables.",
        internal=True,
    )

    @app.get("/1/license", tags=["licenses"], summary="The license in force, or why there is none")
    async def license_info() -> LicenseOut:
        try:
            lic = check(settings)
        except LicenseError as exc:
            return LicenseOut(valid=False, reason=str(exc))
        return LicenseOut(valid=True, licensee=lic.licensee, features=lic.features, expires=lic.expires,
                          license_id=lic.license_id)

    @app.get("/1/features/{feature}", tags=["licenses"], summary="Whether the license enables a feature")
    async def feature(feature: Annotated[str, PathParam(pattern=r"^[a-z0-9_-]{1,64}$")]) -> FeatureOut:
        return FeatureOut.model_validate(feature_status(settings, feature))

    return app
