"""Settings: the ``WS_*`` environment (and a ``.env`` file), validated at start-up."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

__all__ = ["RetentionSpec", "Settings"]


class RetentionSpec(BaseModel):
    """History kept for the channels a pattern names: ``size`` messages, ``ttl`` seconds."""

    size: int | None = Field(None, ge=0)
    ttl: float | None = Field(None, gt=0)


class Settings(BaseSettings):
    """Every setting, with its ``WS_`` environment name. Durations are milliseconds unless named
    otherwise. See docs/configuration.md for the full reference."""

    model_config = SettingsConfigDict(
        env_prefix="WS_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    # Where to listen.
    host: str = "127.0.0.1"
    port: int = Field(5000, ge=0, le=65535)
    path: str = Field("/ws", pattern=r"^/[^\s?#]*$")

    transport: Literal["native", "asgi"] = Field(
        "native", description="how `wshub serve` runs the endpoint"
    )

    # Authentication.
    jwt_secret: SecretStr | None = None
    jwt_algorithms: Annotated[list[str], NoDecode] = ["HS256"]
    jwt_public_key_file: str | None = None
    jwt_jwks_url: str | None = None
    jwt_jwks_cache: float = Field(300.0, gt=0, description="seconds a fetched JWKS is trusted")
    jwt_jwks_cooldown: float = Field(30.0, ge=0, description="seconds between forced refreshes")
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    jwt_leeway: float = Field(30.0, ge=0, description="seconds of clock skew allowed")
    require_auth: bool = False
    max_auth_attempts: int = Field(5, ge=1, description="failed authenticate per connection")
    auth_timeout: int = Field(10_000, gt=0)
    api_key: SecretStr | None = None

    # TLS for the standalone server.
    tls_cert: str | None = None
    tls_key: str | None = None

    # Liveness and shutdown.
    heartbeat_interval: int = Field(30_000, ge=100)
    shutdown_timeout: int = Field(10_000, ge=0)

    # Limits.
    max_message_size: int = Field(65_536, ge=64)
    rate_limit: float = Field(20.0, gt=0, description="messages per second per connection")
    rate_burst: int = Field(40, ge=1)
    max_subscriptions: int = Field(200, ge=1)
    max_connections_per_ip: int = Field(0, ge=0, description="0: no limit")
    max_connections_per_user: int = Field(0, ge=0, description="0: no limit")
    outbox_max_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    outbox_max_messages: int = Field(10_000, ge=1)
    allowed_origins: Annotated[list[str], NoDecode] = []

    # Storage and fan-out.
    store_url: str = "sqlite:///./wshub.db"
    broker_url: str = "memory://"
    node_ttl: float = Field(
        10.0, ge=0.5, description="seconds after which a silent node counts as dead"
    )
    history_size: int = Field(100, ge=0, description="messages kept per channel")
    history_ttl: float = Field(3600.0, gt=0, description="seconds a channel message is kept")
    inbox_size: int = Field(1000, ge=0, description="messages kept per user stream")
    inbox_ttl: float = Field(7 * 86400.0, gt=0, description="seconds a user message is kept")
    channel_retention: dict[str, RetentionSpec] = Field(
        default_factory=dict,
        description="per-channel history, JSON: {name or prefix*: {size, ttl}}",
    )

    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("jwt_algorithms", "allowed_origins", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("jwt_algorithms")
    @classmethod
    def _known_algorithms(cls, value: list[str]) -> list[str]:
        allowed = {"HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "ES384", "EdDSA"}
        bad = [alg for alg in value if alg not in allowed]
        if bad or not value:
            raise ValueError(f"unsupported algorithm(s) {bad}; choose from {sorted(allowed)}")
        return value

    @model_validator(mode="after")
    def _check_tls_pair(self) -> Settings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("WS_TLS_CERT and WS_TLS_KEY must be set together")
        return self

    @model_validator(mode="after")
    def _check_store_urls(self) -> Settings:
        for name in ("store_url", "broker_url"):
            url: str = getattr(self, name)
            if not url.startswith(("memory://", "sqlite://", "redis://", "rediss://")):
                raise ValueError(f"WS_{name.upper()}: unsupported scheme in {url!r}")
        return self
