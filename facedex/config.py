"""All settings in one place.

Values come from (highest priority first) environment variables ``FACEDEX_*``
(nested with ``__``, e.g. ``FACEDEX_MATCHING__MAX_LIMIT``), a TOML file named by
``FACEDEX_CONFIG`` (default ``facedex.toml`` in the working directory, if present),
then the defaults below. Every service reads the same object, so a deployment
is configured once.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource


class ServiceAddress(BaseModel):
    """Where one service listens and where the others reach it."""

    host: str = "127.0.0.1"
    port: int

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


class MatchingSettings(BaseModel):
    max_limit: int = Field(1000, description="Largest `limit` a matching request may ask for.")
    default_limit: int = 10
    max_references: int = Field(64, description="Most references in one matching request.")
    max_filter_face_ids: int = Field(100_000, description="Most face ids in a candidate filter.")
    proxy_timeout_s: float = Field(30.0, description="API -> proxy and proxy -> matcher request timeout.")


class BruteForceSettings(BaseModel):
    threads: int = Field(0, description="Threads for exact search; 0 = all cores.")
    cache_max_bytes: int = Field(8 << 30, description="Budget for cached list matrices; least recently used lists go first.")


class Settings(BaseSettings):
    """facedex settings; see the README's Settings section for a table."""

    model_config = SettingsConfigDict(
        env_prefix="FACEDEX_", env_nested_delimiter="__", extra="ignore", toml_file=None
    )

    database_url: str | None = Field(
        None,
        description="PostgreSQL URL of the Faces DB. Unset: 127.0.0.1:5432/facedex if it answers, else an embedded server.",
    )
    redis_url: str | None = Field(
        None, description="Redis URL. Unset: 127.0.0.1:6379 if it answers, else an embedded Valkey server."
    )
    redis_prefix: str = Field("facedex", description="Prefix of every Redis key, so several deployments share a server.")
    data_dir: Path = Field(Path("~/.facedex").expanduser(), description="Embedded servers' data, logs and indexes.")
    default_descriptor_version: int = Field(1, description="Descriptor version used where a request names none.")
    admin_token: str | None = Field(None, description="Bearer token for admin routes (creating accounts). Unset: admin routes are off.")
    max_body_bytes: int = Field(64 << 20, description="Largest request body any service accepts.")
    log_format: Literal["text", "json"] = "text"
    log_level: str = "INFO"

    api: ServiceAddress = ServiceAddress(port=5100)
    proxy: ServiceAddress = ServiceAddress(port=5110)
    bruteforce: ServiceAddress = ServiceAddress(port=5120)

    proxy_plugins: list[str] = Field(
        default_factory=list, description='Matching plugins the proxy tries before brute force, as "module:Class".'
    )

    matching: MatchingSettings = MatchingSettings()
    bruteforce_engine: BruteForceSettings = BruteForceSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        path = Path(os.environ.get("FACEDEX_CONFIG", "facedex.toml"))
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if path.is_file():
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
