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
    max_filter_face_ids: int = Field(100_000, description="Most face ids in a request's candidate filters (all sets together).")
    max_candidate_sets: int = Field(8, description="Most candidate sets in one matching request (the array form of `candidates`).")
    max_lists_per_set: int = Field(8, description="Most lists in one candidate set (`filters.list_ids`).")
    max_filter_values: int = Field(
        10_000, description="Most external ids in a request's candidate filters (all sets together)."
    )
    proxy_timeout_s: float = Field(30.0, description="API -> proxy and proxy -> matcher request timeout.")
    proxy_urls: list[str] = Field(
        default_factory=list, description="Matcher Proxy origins the API uses, tried in turn (failover); empty: proxy.url."
    )
    bruteforce_urls: list[str] = Field(
        default_factory=list, description="Brute-force Matcher origins the proxy uses, tried in turn; empty: bruteforce.url."
    )
    instance_cooldown_s: float = Field(2.0, description="An instance that failed (refused, reset, 5xx) is skipped this long.")
    head_timeout_s: float = Field(0.5, description="Matchers: bound on the list change-head query; past it, cached data is stale.")
    when_stale: Literal["answer", "refuse"] = Field(
        "answer", description='PostgreSQL unreachable: "answer" from what matchers hold (consistency "stale"), or "refuse" (14007).'
    )
    max_body_bytes: int = Field(32 << 20, description="Largest body of a matching request (references are counted before parsing).")


class BruteForceSettings(BaseModel):
    cache_max_bytes: int = Field(8 << 30, description="Budget for cached list matrices; least recently used lists go first.")
    half_scan: bool = Field(
        True, description="Also hold each cached list in fp16 (+50% memory) and scan that for requests of up to 16 "
        "references where it is measured faster on the list's own searches (CPU-dependent: up to 2.3x at 1M faces): exact "
        "all the same (a proven error bound picks the rows re-scored in fp32).",
    )


class IndexStorageSettings(BaseModel):
    kind: Literal["local", "s3"] = Field("local", description="Where built indexes are kept.")
    path: Path | None = Field(None, description="Local folder (default: <data_dir>/indexes).")
    s3_endpoint_url: str | None = None
    s3_bucket: str = "facedex-indexes"
    s3_prefix: str = Field("", description="Key prefix; the bucket (or prefix) should hold only indexes.")
    s3_region: str | None = None
    s3_access_key: str | None = None
    s3_secret_key: str | None = None


class IndexSettings(BaseModel):
    # Each build measures which kind and parameters its list needs (facedex/index/calibrate.py, issue 11).
    kinds: list[Literal["sign", "pq_fastscan", "rabitq", "hnsw"]] = Field(
        default_factory=lambda: ["sign", "pq_fastscan", "rabitq", "hnsw"],
        description="Index kinds a build tries (calibration keeps the cheapest that reaches the targets).",
    )
    target_top1: float = Field(0.997, description="Calibration target: share of probes whose best face is exact search's.")
    target_recall: float = Field(0.99, description="Calibration target: mate recall@10 relative to exact search.")
    calibration_samples: int = Field(500, description="Faces sampled (as new photos at mate cosines 0.4-0.8) for calibration.")
    max_rescore: int = Field(512, description="Most candidates calibration may choose to re-score exactly per query.")
    hnsw_max_faces: int = Field(10_000, description="HNSW is tried only on lists up to this size (a graph is slow to build, and at scale needs a huge ef on identity data).")
    # HNSW's own parameters, used when the kind is tried (i8 halves build time of f16 at the same recall after re-scoring)
    connectivity: int = Field(24, description="HNSW graph degree M.")
    expansion_add: int = Field(96, description="HNSW ef_construction.")
    precision: Literal["f32", "f16", "i8"] = Field("i8", description="Vector precision inside the HNSW graph.")
    build_threads: int = Field(0, description="Threads for a build; 0 = all cores.")


class ManagerSettings(BaseModel):
    indexers: list[str] = Field(default_factory=list, description="Indexer origins (http://host:port) the master dispatches to.")
    lookup_period_s: float = Field(0.5, description="How often the master polls indexers and dispatches.")
    lock_ttl_s: float = Field(
        10.0, description="Master lock lifetime; a dead master is replaced within about this. Renewed every third of it."
    )
    indexing_lists: list[str] = Field(
        default_factory=list, description='Background indexing: list ids, or ["dynamic"] for every list over the size below.'
    )
    min_indexing_list_size: int = Field(50_000, description="With dynamic indexing: lists with at least this many faces.")
    planning_period_s: float = Field(600.0, description="Seconds between background planning runs.")
    planning_schedule: str | None = Field(
        None, description='Cron-style schedule ("0 0 * * 0": Sundays at 00:00, local time); wins over planning_period_s.'
    )
    instance_id: str | None = Field(None, description="This instance's name in the master lock (default: host:port:pid).")
    indexer_timeout_s: float = Field(1.5, description="Timeout of each master -> Indexer HTTP call (kept well below lock_ttl_s).")
    task_unreachable_s: float = Field(
        30.0, description="A running task whose Indexer has not answered for this long fails (26107) and is retried."
    )
    max_attempts: int = Field(3, ge=1, description="Builds of one task before it stays failed (Indexer lost or unreachable).")
    keep_indexes: int = Field(2, ge=1, description="Indexes kept per list and descriptor version; older ones are deleted.")
    task_ttl_s: float = Field(7 * 86400.0, description="Finished task records expire this long after they end.")
    maintenance_period_s: float = Field(
        2.0, description="How often the master applies retention and reconciles storage with tasks (deleted lists, K, strays)."
    )


class LicenseSettings(BaseModel):
    path: Path | None = Field(None, description="License file (default: <data_dir>/license.json).")
    public_key: str | None = Field(None, description="Base64 Ed25519 public key that licenses must verify against.")
    check_period_s: float = Field(30.0, description="How long matchers and the proxy trust a license answer.")


class MatcherSettings(BaseModel):
    matcher_id: str | None = Field(None, description="This matcher's id in label keys (default: host:port).")
    label_ttl_s: float = Field(3.0, description="Label keys expire this long after the last renewal.")
    reload_period_s: float = Field(2.0, description="How often storage is checked for new or newer indexes.")
    refresh: bool = Field(True, description="Apply list changes to loaded indexes (else they are served as built).")
    request_timeout_s: float = Field(1.0, description="Proxy: how long to wait for an indexed answer before brute force.")
    claim_idle_ms: int = Field(2000, description="Requests pending this long on a dead consumer are taken over.")
    rescore_candidates: int = Field(0, description="At least this many candidates re-scored exactly per query (0: as calibrated per index).")


class ExtractionSettings(BaseModel):
    url: str | None = Field(None, description="Extractor sidecar URL (facedex serve extractor); unset: extract in the API process.")
    workers: int = Field(2, description="Images extracted at once per process (each holds one decoded image).")
    timeout_s: float = Field(30.0, description="API -> extractor sidecar request timeout.")
    max_image_bytes: int = Field(20 << 20, description="Largest image file accepted.")
    max_image_pixels: int = Field(40_000_000, description="Largest image accepted, in pixels (width x height), checked before decoding.")
    detect_side: int = Field(640, description="Detection runs on the image scaled to this long side; crops come from full resolution.")
    score_threshold: float = Field(0.7, description="Smallest detector score that counts as a face.")
    min_face: int = Field(20, description="Smallest face (box side, pixels) that counts.")


class DashboardSettings(BaseModel):
    matchers: list[str] = Field(
        default_factory=list, description="Indexed Matcher origins the dashboard shows (default: the `matcher` address)."
    )
    session_ttl_s: float = Field(12 * 3600.0, description="How long a dashboard login lasts.")
    page_size: int = Field(50, description="Rows per page on the dashboard's paged tables.")


class Settings(BaseSettings):
    """facedex settings; see the README's Settings section for a table."""

    model_config = SettingsConfigDict(
        env_prefix="FACEDEX_", env_nested_delimiter="__", extra="forbid", toml_file=None
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
    internal_token: str | None = Field(
        None, description="Shared service-to-service secret: every internal route requires it as a bearer token, and match "
        "requests are signed with a key derived from it. Unset: internal routes refuse every request (`facedex up` makes one)."
    )
    max_tokens_per_account: int = Field(100, description="Most live (unexpired) API tokens one account may hold.")
    log_format: Literal["text", "json"] = "text"
    log_level: str = "INFO"

    manager: ServiceAddress = ServiceAddress(port=5190)
    indexer: ServiceAddress = ServiceAddress(port=5180)
    licenses: ServiceAddress = ServiceAddress(port=5130)
    matcher: ServiceAddress = ServiceAddress(port=5200)
    api: ServiceAddress = ServiceAddress(port=5100)
    proxy: ServiceAddress = ServiceAddress(port=5110)
    bruteforce: ServiceAddress = ServiceAddress(port=5120)
    extractor: ServiceAddress = ServiceAddress(port=5140)
    dashboard: ServiceAddress = ServiceAddress(port=5160)

    proxy_plugins: list[str] = Field(
        default_factory=lambda: ["facedex.proxy.indexed:IndexedPlugin"],
        description='Matching plugins the proxy tries before brute force, as "module:Class".',
    )

    index_storage: IndexStorageSettings = IndexStorageSettings()
    index: IndexSettings = IndexSettings()
    indexing: ManagerSettings = ManagerSettings()
    license: LicenseSettings = LicenseSettings()
    indexed: MatcherSettings = MatcherSettings()
    matching: MatchingSettings = MatchingSettings()
    bruteforce_engine: BruteForceSettings = BruteForceSettings()
    extraction: ExtractionSettings = ExtractionSettings()
    dashboard_ui: DashboardSettings = DashboardSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        from facedex.settings_strict import check_environment, check_toml

        path = Path(os.environ.get("FACEDEX_CONFIG", "facedex.toml"))
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        check_environment(settings_cls, os.environ)  # unknown FACEDEX_* variables and TOML keys fail, naming them
        if path.is_file():
            check_toml(settings_cls, path)
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
