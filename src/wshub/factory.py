"""Build a hub from settings: the store, broker and authenticator their URLs and keys name.

Drivers (sqlite3, redis, asyncpg) are imported only when a URL asks for them; one that is not
installed is a :class:`~wshub.extras.MissingExtra` (a ConfigError) naming the extra to install.
"""

from __future__ import annotations

import inspect
import logging
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .config import Settings, describe_settings_error, load_settings, settings_warnings
from .core.hub import Hub
from .errors import ConfigError
from .extras import require
from .interfaces import Authenticator, Broker, Presence, Store

__all__ = [
    "create_authenticator",
    "create_broker",
    "create_hub",
    "create_presence",
    "create_store",
]


logger = logging.getLogger("wshub")


def _redis_url(url: str, setting: str) -> Any:
    require("redis", "redis", setting, needed_by=url.partition("://")[0] + "://")
    from .redis_support import parse_redis_url

    try:
        return parse_redis_url(url)
    except ValueError as exc:
        raise ConfigError(f"{setting}: {exc}") from None


_POSTGRES = ("postgresql://", "postgres://")


def _postgres_url(url: str, setting: str) -> Any:
    require("asyncpg", "postgres", setting, needed_by=url.partition("://")[0] + "://")
    from .stores.postgres import parse_postgres_url

    try:
        return parse_postgres_url(url)
    except ValueError as exc:
        raise ConfigError(f"{setting}: {exc}") from None


#: One Redis, the master behind Sentinel, a Redis Cluster (wshub.redis_support).
_REDIS = (
    "redis://",
    "rediss://",
    "redis+sentinel://",
    "rediss+sentinel://",
    "redis+cluster://",
    "rediss+cluster://",
)


def create_store(url: str, *, redis_min_replicas: int = 0) -> Store:
    if url.startswith("memory://"):
        from .stores.memory import MemoryStore

        return MemoryStore()
    if url.startswith("sqlite://"):
        from .stores.sqlite import SQLiteStore, path_from_url, synchronous_from_url

        try:
            return SQLiteStore(path_from_url(url), synchronous=synchronous_from_url(url))
        except ValueError as exc:
            raise ConfigError(f"WS_STORE_URL: {exc}") from None
    if url.startswith(_REDIS):
        redis_url = _redis_url(url, "WS_STORE_URL")
        from .stores.redis import RedisStore

        try:
            return RedisStore(
                redis_url.url, prefix=redis_url.prefix or "wshub", min_replicas=redis_min_replicas
            )
        except ValueError as exc:
            raise ConfigError(f"WS_STORE_URL: {exc}") from None
    if url.startswith(_POSTGRES):
        pg_url = _postgres_url(url, "WS_STORE_URL")
        from .stores.postgres import PostgresStore

        return PostgresStore(pg_url.dsn, schema=pg_url.schema)
    raise ConfigError(f"WS_STORE_URL: no store for {url!r} yet")


def create_broker(url: str) -> Broker:
    if url.startswith("memory://"):
        from .brokers.memory import MemoryBroker

        return MemoryBroker()
    if url.startswith(_REDIS):
        redis_url = _redis_url(url, "WS_BROKER_URL")
        from .brokers.redis import RedisBroker

        return RedisBroker(redis_url.url, channel_prefix=(redis_url.prefix or "wshub") + ":")
    if url.startswith(_POSTGRES):
        pg_url = _postgres_url(url, "WS_BROKER_URL")
        from .brokers.postgres import PostgresBroker

        return PostgresBroker(pg_url.dsn, schema=pg_url.schema)
    raise ConfigError(f"WS_BROKER_URL: no broker for {url!r} yet")


def create_presence(url: str, *, node_ttl: float = 10.0) -> Presence:
    """Presence lives where fan-out goes: in memory for one node, in Redis or PostgreSQL for a
    cluster."""
    if url.startswith("memory://"):
        from .presence.memory import MemoryPresence

        return MemoryPresence()
    if url.startswith(_REDIS):
        redis_url = _redis_url(url, "WS_BROKER_URL")
        from .presence.redis import RedisPresence

        return RedisPresence(
            redis_url.url,
            prefix=redis_url.prefix or "wshub",
            node_ttl=redis_url.node_ttl or node_ttl,
        )
    if url.startswith(_POSTGRES):
        pg_url = _postgres_url(url, "WS_BROKER_URL")
        from .presence.postgres import PostgresPresence

        return PostgresPresence(
            pg_url.dsn, schema=pg_url.schema, node_ttl=pg_url.node_ttl or node_ttl
        )
    raise ConfigError(f"WS_BROKER_URL: no presence for {url!r} yet")


def create_authenticator(settings: Settings) -> Authenticator | None:
    """The JWT authenticator the settings describe, or None when no key is configured."""
    from .auth.jwt import JWTAuthenticator

    public_key = None
    if settings.jwt_public_key_file:
        try:
            public_key = Path(settings.jwt_public_key_file).read_text()
        except OSError as exc:
            raise ConfigError(f"WS_JWT_PUBLIC_KEY_FILE: cannot read it: {exc}") from None
    secret = settings.jwt_secret.get_secret_value() if settings.jwt_secret else None
    if secret is None and public_key is None and settings.jwt_jwks_url is None:
        return None
    return JWTAuthenticator(
        secret=secret,
        public_key=public_key,
        jwks_url=settings.jwt_jwks_url,
        jwks_cache=settings.jwt_jwks_cache,
        jwks_cooldown=settings.jwt_jwks_cooldown,
        algorithms=settings.jwt_algorithms,
        audience=settings.jwt_audience,
        issuer=settings.jwt_issuer,
        leeway=settings.jwt_leeway,
        require_exp=settings.jwt_require_exp,
    )


def _with_settings(settings: Settings | None, values: dict[str, Any]) -> Settings:
    if settings is None:
        # Settings only `wshub serve` reads (WS_PORT...) cannot stop an app that mounts the hub.
        return load_settings(server=False, **values)
    if not values:
        return settings
    try:
        return type(settings)(_env_file=None, **{**settings.model_dump(), **values})
    except ValidationError as exc:
        raise ConfigError(describe_settings_error(exc)) from None


def create_hub(settings: Settings | None = None, **overrides: Any) -> Hub:
    """A :class:`Hub` configured from ``settings`` (default: the ``WS_*`` environment and
    ``.env``; a bad value is a :class:`~wshub.errors.ConfigError` naming the setting).

    Keyword arguments named like a setting override it (``create_hub(store_url="memory://",
    history_size=10)``); ``store=``, ``broker=``, ``presence=`` and ``authenticator=`` objects
    replace what the settings name.
    """
    fields = Settings.model_fields if settings is None else type(settings).model_fields
    hub_params = inspect.signature(Hub).parameters
    unknown = [k for k in overrides if k not in fields and k not in hub_params]
    if unknown:
        raise TypeError(f"create_hub() got an unexpected keyword argument {unknown[0]!r}")
    values = {k: overrides.pop(k) for k in list(overrides) if k in fields}
    settings = _with_settings(settings, values)
    for warning in settings_warnings(settings, jwt="authenticator" not in overrides):
        logger.warning("%s", warning)
    # Only what is not given is built (a redis:// URL then needs the redis extra).
    if "store" not in overrides:
        overrides["store"] = create_store(
            settings.store_url, redis_min_replicas=settings.redis_min_replicas
        )
    if "broker" not in overrides:
        overrides["broker"] = create_broker(settings.broker_url)
    if "presence" not in overrides:
        overrides["presence"] = create_presence(settings.broker_url, node_ttl=settings.node_ttl)
    if "authenticator" not in overrides:
        overrides["authenticator"] = create_authenticator(settings)
    return Hub(settings, **overrides)
