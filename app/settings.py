"""All configuration, read once from the environment (or `.env`) at start-up.

Names of the seed's variables are kept unchanged. Every field carries its unit in its
name or its description; every default is safe for a single-node deployment. A missing
or invalid setting stops start-up with one line that names it (see `load_settings`).
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app.uploads.audio import FORMATS as AUDIO_FORMATS

MiB = 1024 * 1024
GiB = 1024 * MiB

# Symmetric algorithms would let anyone holding the (public) key mint tokens, and
# `none` is no signature at all: only asymmetric algorithms are accepted.
ASYMMETRIC_JWT_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384"}
)

DEFAULT_AUDIO_EXTENSIONS = "mp3,wav,flac,ogg,oga,opus,m4a,mp4,aac,webm,aiff,aif,amr"


class Settings(BaseSettings):
    # Empty values (as in a .env copied from .env.example) mean "use the default".
    model_config = SettingsConfigDict(
        env_file=".env", extra="ignore", case_sensitive=False, env_ignore_empty=True
    )

    # --- authentication -------------------------------------------------------------
    main_service_jwt_public_key: SecretStr | None = Field(
        default=None,
        description="PEM public key of the main service (literal newlines or \\n escapes).",
    )
    main_service_jwks_url: str | None = Field(
        default=None,
        description="JWKS URL (https://; http:// only to a loopback host); tokens pick "
        "their key by `kid`.",
    )
    jwks_cache_seconds: float = Field(default=300, ge=0, description="JWKS document cache")
    jwks_refresh_cooldown_seconds: float = Field(
        default=30, ge=0, description="least time between refetches caused by unknown kids"
    )
    jwks_stale_if_error_seconds: float = Field(
        default=3600,
        ge=0,
        description="how long past JWKS_CACHE_SECONDS the last good key set is still used "
        "while the JWKS endpoint fails",
    )
    jwt_algorithm: str = "RS256"
    expected_jwt_issuer: str
    expected_jwt_audience: str
    jwt_leeway_seconds: int = Field(default=30, ge=0, le=3600)
    jwt_require_file_id_claim: bool = False

    # --- object storage -------------------------------------------------------------
    s3_access_key: SecretStr | None = Field(
        default=None, description="Unset: the default AWS credential chain is used."
    )
    s3_secret_key: SecretStr | None = None
    s3_bucket_name: str = Field(min_length=3, max_length=63)
    s3_endpoint_url: str | None = Field(
        default=None, description="Unset: AWS S3. Set for MinIO, Ceph, R2, moto..."
    )
    s3_region_name: str = "us-east-1"
    s3_addressing_style: Literal["path", "virtual", "auto"] = "path"
    s3_key_prefix: str = "uploads/"
    s3_public_base_url: str | None = None
    # A whole number of SHA-256 blocks, so the file's hash state can be saved after each
    # part (app.uploads.sha256_state) and `complete` on any replica hashes only the tail.
    s3_part_size_bytes: int = Field(default=8 * MiB, ge=5 * MiB, le=5 * GiB, multiple_of=64)
    s3_max_concurrency: int = Field(default=4, ge=1, le=64)
    part_buffer_budget_bytes: int = Field(
        default=256 * MiB,
        ge=5 * MiB,
        description="bytes of part buffers all completions and eager flushes hold together",
    )
    s3_timeout_seconds: float = Field(default=30.0, gt=0)
    s3_sign_payload: Literal["auto", "always", "never"] = Field(
        default="auto",
        description="SigV4 hash of every part body: auto = over http only (TLS already "
        "protects https bodies, and the hash is a whole extra pass over every byte).",
    )

    # --- staging and database -------------------------------------------------------
    local_temp_chunk_path: Path = Path("./data/staging")
    database_url: str | None = Field(
        default=None, description="Unset: a SQLite file inside LOCAL_TEMP_CHUNK_PATH."
    )
    database_schema: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,62}$",
        description="PostgreSQL only: the schema to keep the tables in.",
    )
    auto_migrate: bool = True
    staging_backend: Literal["disk", "s3"] = Field(
        default="disk",
        description="Where acknowledged chunks live until completion: local disk (one node) "
        "or S3 objects under S3_STAGING_PREFIX (replicas sharing only the database and the "
        "bucket; local disk then holds only chunks in flight).",
    )
    s3_staging_prefix: str = Field(
        default="staging/",
        description="Key prefix of staged chunk objects (STAGING_BACKEND=s3); keep it outside "
        "S3_KEY_PREFIX so a lifecycle rule can expire it.",
    )
    s3_staging_bucket: str | None = Field(
        default=None, description="Bucket of staged chunks; unset: S3_BUCKET_NAME."
    )
    staging_fsync: bool = Field(
        default=False,
        description="fsync each chunk before acknowledging it: survives power loss, "
        "costs throughput on busy disks. A process crash loses nothing either way.",
    )

    # --- limits ---------------------------------------------------------------------
    max_chunk_size: int = Field(default=64 * MiB, ge=1, description="bytes")
    max_file_size: int = Field(default=4 * GiB, ge=1, description="bytes")
    max_chunks: int = Field(default=10_000, ge=1, le=100_000)
    session_ttl_seconds: int = Field(default=24 * 3600, ge=60)
    completion_lease_seconds: int = Field(
        default=10,
        ge=1,
        description="Lease of a session's once-only work (eager flush, complete), shared by "
        "replicas through the database: renewed every third of it while its holder works; "
        "a holder that died is replaced once it lapses.",
    )
    allowed_audio_extensions: Annotated[frozenset[str], NoDecode] = Field(
        default_factory=lambda: frozenset(DEFAULT_AUDIO_EXTENSIONS.split(","))
    )
    allowed_audio_formats: Annotated[frozenset[str], NoDecode] = Field(
        default_factory=lambda: frozenset(AUDIO_FORMATS),
        description="Detected formats accepted at completion (ids of app.uploads.audio.FORMATS).",
    )

    # --- main-service notification --------------------------------------------------
    main_service_notify_url: str | None = None
    main_service_notify_secret: SecretStr | None = None
    notify_max_attempts: int = Field(default=12, ge=1, le=1000)
    notify_timeout_seconds: float = Field(
        default=10.0, gt=0, le=120, description="per attempt of the background loop"
    )
    notify_inline_timeout_seconds: float = Field(
        default=3.0, gt=0, le=60, description="the first attempt, inside /upload/complete"
    )
    notify_poll_interval_seconds: float = Field(
        default=1.0, gt=0, le=300, description="how often the loop looks for due events"
    )
    notify_delivery_loop: bool = Field(
        default=True, description="false: this process only writes events and tries inline"
    )

    # --- clean-up, abuse limits and shutdown ---------------------------------------
    janitor_interval_seconds: float = Field(
        default=300, ge=0, description="Seconds between janitor passes; 0 turns the loop off."
    )
    orphan_grace_seconds: int = Field(
        default=3600,
        ge=1,
        description="Age before an unowned staging file or S3 multipart upload, or a "
        "completion whose lease lapsed, is reclaimed. Longer than any one request.",
    )
    expired_retention_seconds: int = Field(
        default=7 * 24 * 3600,
        ge=0,
        description="How long expired and aborted session records stay (410, not 404).",
    )
    completed_retention_seconds: int = Field(
        default=30 * 24 * 3600,
        ge=0,
        description="How long a completed session's record stays (a repeated complete or "
        "GET answers its result; 404 after). 0 keeps them forever.",
    )
    max_open_sessions_per_user: int = Field(
        default=100, ge=0, description="uploading or completing sessions per sub; 0: no limit"
    )
    staging_max_bytes: int = Field(
        default=0, ge=0, description="bytes staged at once (all sessions); 0: the disk's size"
    )
    chunk_idle_timeout_seconds: float = Field(
        default=60, gt=0, description="A chunk body that sends nothing this long is cut off."
    )
    max_json_body_bytes: int = Field(default=64 * 1024, ge=1024, description="bytes")
    shutdown_grace_seconds: int = Field(
        default=30,
        ge=0,
        description="In-flight requests get this long after SIGTERM (uvicorn "
        "--timeout-graceful-shutdown); the rest are cut off and their partial files removed.",
    )

    # --- eager flush (issue 7) -------------------------------------------------------
    eager_flush: bool = Field(
        default=True,
        description="Send contiguous chunks to S3 as multipart parts while the upload is "
        "going, so complete only sends the tail and commits. Such an object carries only "
        "the metadata known when its upload was created (no audio facts; sha256 only if "
        "declared at init; README). False: complete assembles and sends everything, and "
        "the object carries the full metadata.",
    )

    # --- resumable front doors (issue 14): tus 1.0 and IETF resumable uploads ---------
    tus_base_path: str = Field(
        default="/files/",
        description="Path of the tus endpoint (the IETF draft's too): POST creates, "
        "uploads live at <path><upload_session_id>.",
    )
    upload_lease_seconds: float = Field(
        default=10,
        ge=1,
        le=300,
        description="Lease of the one request allowed to append to an upload; renewed "
        "while it runs, so a killed process blocks its uploads for at most this long.",
    )

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    # --- HTTP edge and observability ------------------------------------------------
    cors_allow_origins: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(),
        description="Comma-separated browser origins allowed by CORS (`*` for any); "
        "empty turns CORS off.",
    )
    forwarded_allow_ips: str = Field(
        default="127.0.0.1",
        description="Comma-separated proxy IPs/networks whose X-Forwarded-For/-Proto are "
        "trusted (`*` for any).",
    )
    metrics_enabled: bool = Field(default=True, description="Serve Prometheus /metrics.")

    # --- hostile input at the edge (issue 12) ----------------------------------------
    json_idle_timeout_seconds: float = Field(
        default=10,
        gt=0,
        description="An init/complete JSON body that sends nothing this long is cut off (408).",
    )
    max_staged_bytes_per_user: int = Field(
        default=8 * GiB,
        ge=0,
        description="bytes staged at once per sub (chunks of open sessions, and chunks "
        "being received); beyond it a chunk gets 507 staging_quota_exceeded; 0: no limit",
    )
    staging_min_free_bytes: int = Field(
        default=1 * GiB,
        ge=0,
        description="free space kept on the staging filesystem (the default SQLite "
        "database lives there too): a chunk that would eat into it gets 507; 0: none",
    )
    metrics_port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="serve /metrics on this port only (for scrapers), not on the API port",
    )
    metrics_host: str = Field(
        default="0.0.0.0",  # noqa: S104 - scrapers come from other hosts; firewall the port
        description="address METRICS_PORT listens on",
    )
    metrics_cache_seconds: float = Field(
        default=5, ge=0, description="how long one /metrics snapshot is served"
    )
    ready_cache_seconds: float = Field(
        default=2, ge=0, description="how long one /readyz verdict is served"
    )

    # --- browser uploader page (issue 14) -------------------------------------------
    uploader_page: bool = Field(
        default=False,
        description="Serve the Uppy uploader page at /uploader (./scripts/dev turns it on).",
    )

    @field_validator("jwt_algorithm")
    @classmethod
    def _asymmetric_only(cls, value: str) -> str:
        value = value.strip().upper()
        if value not in ASYMMETRIC_JWT_ALGORITHMS:
            allowed = ", ".join(sorted(ASYMMETRIC_JWT_ALGORITHMS))
            raise ValueError(f"must be one of {allowed} (symmetric algorithms are refused)")
        return value

    @field_validator("main_service_jwt_public_key")
    @classmethod
    def _unescape_pem(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        pem = value.get_secret_value().replace("\\n", "\n").strip()
        if not pem.startswith("-----BEGIN"):
            raise ValueError("must be a PEM public key (-----BEGIN PUBLIC KEY-----)")
        return SecretStr(pem + "\n")

    @field_validator("allowed_audio_formats")
    @classmethod
    def _known_formats(cls, value: frozenset[str]) -> frozenset[str]:
        unknown = sorted(value - AUDIO_FORMATS.keys())
        if unknown:
            known = ", ".join(sorted(AUDIO_FORMATS))
            raise ValueError(f"unknown formats {unknown}; known: {known}")
        return value

    @field_validator("allowed_audio_extensions", "allowed_audio_formats", mode="before")
    @classmethod
    def _split_extensions(cls, value: object) -> object:
        if isinstance(value, str):
            value = [part for part in value.split(",")]
        if isinstance(value, (list, tuple, set, frozenset)):
            cleaned = {str(part).strip().lower().lstrip(".") for part in value}
            cleaned.discard("")
            if not cleaned:
                raise ValueError("must name at least one extension")
            return frozenset(cleaned)
        return value

    @field_validator("cors_allow_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            value = value.split(",")
        if isinstance(value, (list, tuple, set, frozenset)):
            origins = [str(part).strip().rstrip("/") for part in value]
            return tuple(origin for origin in origins if origin)
        return value

    @field_validator("tus_base_path")
    @classmethod
    def _normalise_tus_path(cls, value: str) -> str:
        path = "/" + value.strip().strip("/")
        if path == "/" or path == "/upload" or path.startswith("/upload/"):
            raise ValueError("must be a path of its own, such as /files/")
        return path + "/"

    @field_validator("s3_key_prefix")
    @classmethod
    def _normalise_prefix(cls, value: str) -> str:
        parts = [part for part in value.strip().split("/") if part not in ("", ".")]
        if any(part == ".." for part in parts):
            raise ValueError("must not contain '..'")
        return "/".join(parts)

    @field_validator("main_service_jwks_url")
    @classmethod
    def _https_jwks(cls, value: str | None) -> str | None:
        # Keys fetched over plain http can be swapped by anyone on the path, and then any
        # token they sign verifies; loopback (a sidecar, the tests) cannot be intercepted.
        if value is None:
            return None
        scheme, _, rest = value.partition("://")
        host = urlsplit(value).hostname or ""
        if scheme.lower() == "https" and host:
            return value
        if scheme.lower() == "http" and rest and _is_loopback(host):
            return value
        raise ValueError("must be an https:// URL (http:// only for a loopback host)")

    @field_validator("s3_staging_prefix")
    @classmethod
    def _normalise_staging_prefix(cls, value: str) -> str:
        parts = [part for part in value.strip().split("/") if part not in ("", ".")]
        if not parts or any(part == ".." for part in parts):
            raise ValueError("must be a non-empty key prefix without '..'")
        return "/".join(parts) + "/"

    @model_validator(mode="after")
    def _check_combinations(self) -> Settings:
        if self.staging_backend == "s3" and self.s3_staging_bucket in (None, self.s3_bucket_name):
            stored = f"{self.s3_key_prefix}/" if self.s3_key_prefix else ""
            if stored.startswith(self.s3_staging_prefix) or self.s3_staging_prefix.startswith(
                stored
            ):
                raise ValueError("S3_STAGING_PREFIX must lie outside S3_KEY_PREFIX")
        if self.main_service_jwt_public_key is None and not self.main_service_jwks_url:
            raise ValueError("MAIN_SERVICE_JWT_PUBLIC_KEY or MAIN_SERVICE_JWKS_URL must be set")
        if (self.s3_access_key is None) != (self.s3_secret_key is None):
            raise ValueError("S3_ACCESS_KEY and S3_SECRET_KEY must be set together")
        if self.max_chunk_size > self.max_file_size:
            raise ValueError("MAX_CHUNK_SIZE must not exceed MAX_FILE_SIZE")
        if self.part_buffer_budget_bytes < self.s3_part_size_bytes:
            raise ValueError("PART_BUFFER_BUDGET_BYTES must hold at least one S3_PART_SIZE_BYTES")
        if self.main_service_notify_url and self.main_service_notify_secret is None:
            raise ValueError(
                "MAIN_SERVICE_NOTIFY_SECRET must be set when MAIN_SERVICE_NOTIFY_URL is"
            )
        return self

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{self.local_temp_chunk_path.resolve() / 'uploads.db'}"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class SettingsError(SystemExit):
    """Start-up stops: the message is one line naming the bad setting."""


def describe_validation_error(error: ValidationError) -> str:
    problems = []
    for item in error.errors():
        name = "_".join(str(part) for part in item["loc"]).upper()
        message = str(item["msg"]).removeprefix("Value error, ")
        problems.append(f"{name}: {message}" if name else message)
    return "invalid configuration: " + "; ".join(problems)


def load_settings(**overrides: object) -> Settings:
    """Read the settings, or stop with one line saying which is missing or wrong."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as error:
        raise SettingsError(describe_validation_error(error)) from None
