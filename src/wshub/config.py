"""Settings: the ``WS_*`` environment (and a ``.env`` file), validated at start-up."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict, SettingsError

from .errors import ConfigError

__all__ = [
    "SERVER_FIELDS",
    "RetentionSpec",
    "Settings",
    "describe_settings_error",
    "load_settings",
    "settings_warnings",
]

#: Settings only ``wshub serve`` reads: an app that mounts the hub does not fail on them.
SERVER_FIELDS = frozenset({"host", "port", "transport", "tls_cert", "tls_key", "log_level"})

_SCHEMES: tuple[str, ...] = ("memory://", "sqlite://", "redis://", "rediss://", "postgresql://")
_SCHEMES += ("postgres://", "redis+sentinel://", "rediss+sentinel://", "redis+cluster://")
_SCHEMES += ("rediss+cluster://",)


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
    compression: Literal["off", "deflate"] = Field(
        "off", description="permessage-deflate on the native transport"
    )
    compression_min_size: int = Field(512, ge=0, description="bytes below which frames go plain")

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
    jwt_require_exp: bool = Field(True, description="refuse tokens without an exp claim")
    token_refresh_window: float = Field(
        30.0, ge=0, description="seconds before exp that token_expiring is sent"
    )
    require_auth: bool = False
    max_auth_attempts: int = Field(5, ge=1, description="failed authenticate per connection")
    auth_timeout: int = Field(10_000, gt=0)
    api_key: SecretStr | None = None

    # TLS for the standalone server.
    tls_cert: str | None = None
    tls_key: str | None = Field(None, validate_default=True)

    # Liveness and shutdown.
    heartbeat_interval: int = Field(30_000, ge=100)
    shutdown_timeout: int = Field(10_000, ge=0)

    # Limits.
    max_message_size: int = Field(65_536, ge=64)
    rate_limit: float = Field(20.0, gt=0, description="messages per second per connection")
    rate_burst: int = Field(40, ge=1)
    store_rate: int = Field(
        65_536, ge=0, description="bytes per second a connection may have stored; 0: no limit"
    )
    store_burst: int = Field(1_048_576, ge=1024, description="bytes stored at once, at most")
    max_subscriptions: int = Field(200, ge=1)
    max_connections_per_ip: int = Field(0, ge=0, description="0: no limit")
    max_connections_per_user: int = Field(0, ge=0, description="0: no limit")
    outbox_max_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    outbox_max_messages: int = Field(10_000, ge=1)
    allowed_origins: Annotated[list[str], NoDecode] = []

    # HTTP request limits (docs/security.md) and access to /metrics.
    api_max_body: int = Field(1_048_576, ge=1, description="bytes of an HTTP API request body")
    request_timeout: float = Field(
        10.0, gt=0, description="seconds a request body has to arrive completely"
    )
    metrics_key: SecretStr | None = Field(
        None, description="when set, /metrics needs Authorization: Bearer <key>"
    )

    # Storage and fan-out.
    store_url: str = "sqlite:///./wshub.db"
    broker_url: str = "memory://"
    node_ttl: float = Field(
        10.0, ge=0.5, description="seconds after which a silent node counts as dead"
    )
    redis_min_replicas: int = Field(
        0, ge=0, description="replicas a Redis store write must reach (WAIT) before it counts"
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

    @field_validator("tls_key")
    @classmethod
    def _check_tls_pair(cls, value: str | None, info: ValidationInfo) -> str | None:
        if "tls_cert" in info.data and (info.data["tls_cert"] is None) != (value is None):
            raise ValueError("WS_TLS_CERT and WS_TLS_KEY must be set together")
        return value

    @field_validator("store_url", "broker_url")
    @classmethod
    def _check_store_urls(cls, url: str) -> str:
        # The message never repeats the URL: it may hold a password.
        if url.startswith(_SCHEMES):
            return url
        choices = (
            "sqlite:///path.db, redis://host:6379/0, rediss://..., redis+sentinel://host:26379/"
            "SERVICE/0, redis+cluster://host:6379/0, postgresql://host/db or memory://"
        )
        scheme, sep, _ = url.partition("://")
        if not sep:
            word = url.strip().rstrip(":/").lower()
            if f"{word}://" in _SCHEMES:
                raise ValueError(f"not a URL: did you mean {word}://")
            raise ValueError(f"not a URL (no ://): expected {choices}")
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*", scheme):
            raise ValueError(f"not a URL: expected {choices}")
        raise ValueError(f"unsupported scheme {scheme}://: expected {choices}")


def _field_label(name: str) -> str:
    return f"WS_{name.upper()} ({name})" if name in Settings.model_fields else name


def describe_settings_error(exc: ValidationError | SettingsError) -> str:
    """One line naming each bad setting and what is wrong with it, never its value (pydantic's
    own message repeats every input, secrets included)."""
    if isinstance(exc, SettingsError):
        found = re.search(r'field "(\w+)"', str(exc))
        name = found.group(1) if found else "a setting"
        return f"{_field_label(name)}: not valid JSON"
    parts = []
    for err in exc.errors(include_url=False, include_input=False, include_context=False):
        loc = [str(part) for part in err["loc"]]
        msg = err["msg"].removeprefix("Value error, ")
        if not loc:
            parts.append(msg)
            continue
        label = _field_label(loc[0]) + (f" [{'.'.join(loc[1:])}]" if loc[1:] else "")
        parts.append(f"{label}: {msg}")
    return "; ".join(parts)


def load_settings(*, server: bool = True, **values: Any) -> Settings:
    """``Settings(**values)`` (the rest from ``WS_*`` and ``.env``), raising :class:`ConfigError`
    with :func:`describe_settings_error`'s one line. With ``server=False`` (an app that mounts
    the hub), bad values of :data:`SERVER_FIELDS` from the environment are ignored: those
    settings keep their defaults, since only ``wshub serve`` reads them."""
    try:
        try:
            return Settings(**values)
        except ValidationError as exc:
            bad = {str(err["loc"][0]) for err in exc.errors() if err["loc"]}
            unlocated = any(not err["loc"] for err in exc.errors())
            if server or unlocated or not bad <= SERVER_FIELDS - values.keys():
                raise
            if bad & {"tls_cert", "tls_key"}:
                bad |= {"tls_cert", "tls_key"} - values.keys()
            defaults = {name: Settings.model_fields[name].default for name in bad}
            return Settings(**values, **defaults)
    except (ValidationError, SettingsError) as exc:
        raise ConfigError(describe_settings_error(exc)) from None


def settings_warnings(settings: Settings, *, jwt: bool = True) -> list[str]:
    """Settings that are valid but probably not what was meant (logged when a hub is created);
    ``jwt=False`` when the application brings its own authenticator."""
    warnings = []
    s = settings
    if not jwt:
        pass
    elif s.jwt_secret is None and s.jwt_public_key_file is None and s.jwt_jwks_url is None:
        warnings.append(
            "no WS_JWT_SECRET, WS_JWT_PUBLIC_KEY_FILE or WS_JWT_JWKS_URL is set: "
            "every authentication attempt will fail"
        )
    elif s.jwt_secret is not None and len(s.jwt_secret.get_secret_value().encode()) < 32:
        warnings.append(
            "WS_JWT_SECRET is shorter than 32 bytes: tokens signed with it can be brute-forced; "
            "use a random one (python -c 'import secrets; print(secrets.token_hex(32))')"
        )
    for origin in s.allowed_origins:
        if origin not in ("*", "null") and not re.fullmatch(
            r"[a-z][a-z0-9+.-]*://[^/?#\s]+", origin
        ):
            warnings.append(
                f"WS_ALLOWED_ORIGINS: {origin!r} is not an origin (scheme://host[:port], no "
                "path), so no browser's Origin header matches it: write e.g. "
                f"https://{origin.split('://')[-1].strip('/')}"
            )
    return warnings
