"""JWT verification with PyJWT: explicit algorithms, ``exp``/``nbf`` with leeway, optional
``aud``/``iss``. The user id is the ``sub`` claim; ``channels`` lists granted private channels."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Sequence
from typing import Any

import jwt

from ..errors import AuthFailed, ConfigError
from ..types import Principal, UserId

__all__ = ["JWTAuthenticator", "issue_token"]

_HMAC = {"HS256", "HS384", "HS512"}


class JWTAuthenticator:
    """Verifies tokens signed with a shared secret (HS*) or a public key (RS*/ES*/EdDSA).

    Only the algorithms listed are accepted, so ``alg: none`` and algorithm confusion (an HS256
    token "signed" with a public key) are refused.
    """

    def __init__(
        self,
        *,
        secret: str | None = None,
        public_key: str | None = None,
        jwks_url: str | None = None,
        jwks_cache: float = 300.0,
        jwks_cooldown: float = 30.0,
        algorithms: Sequence[str] = ("HS256",),
        audience: str | None = None,
        issuer: str | None = None,
        leeway: float = 30.0,
        require_exp: bool = True,
    ) -> None:
        algorithms = list(algorithms)
        hmac = [a for a in algorithms if a in _HMAC]
        asym = [a for a in algorithms if a not in _HMAC]
        if hmac and asym:
            raise ConfigError("WS_JWT_ALGORITHMS: do not mix HMAC (HS*) and public-key algorithms")
        if hmac and not secret:
            raise ConfigError("WS_JWT_SECRET is required for HS* algorithms")
        if asym and not (public_key or jwks_url):
            raise ConfigError(
                "WS_JWT_PUBLIC_KEY_FILE or WS_JWT_JWKS_URL is required for public-key algorithms"
            )
        self._key: Any = secret if hmac else public_key
        self._jwks: jwt.PyJWKClient | None = None
        if asym and jwks_url and not public_key:
            # PyJWKClient caches the set and fetches it again for an unknown kid, at most once
            # per cooldown, so tokens with made-up kids cannot make it hammer the key server.
            self._jwks = jwt.PyJWKClient(
                jwks_url,
                cache_keys=True,
                lifespan=int(jwks_cache),
                cooldown_duration=jwks_cooldown,
                timeout=5,
            )
        self._jwks_keys: dict[str, tuple[float, Any]] = {}
        self._jwks_cache = jwks_cache
        self._algorithms = algorithms
        self._audience = audience
        self._issuer = issuer
        self._leeway = leeway
        self._require = ["sub", "exp"] if require_exp else ["sub"]

    async def _signing_key(self, token: str) -> Any:
        """The key to verify ``token`` with; from the JWKS by ``kid`` when one is configured.
        A fetch runs in a thread so the event loop never waits on the network."""
        if self._jwks is None:
            return self._key
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.InvalidTokenError as exc:
            raise AuthFailed(f"Invalid token: {exc}") from None
        if not isinstance(kid, str):
            raise AuthFailed("Invalid token: no 'kid' header to pick a key from the JWKS")
        cached = self._jwks_keys.get(kid)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        try:
            jwk = await asyncio.to_thread(self._jwks.get_signing_key, kid)
        except jwt.PyJWKClientConnectionError:
            raise AuthFailed("Cannot verify the token now: the key set is unreachable") from None
        except jwt.PyJWKClientError:
            raise AuthFailed(f"Invalid token: unknown signing key {kid!r}") from None
        if len(self._jwks_keys) > 1000:  # kids are attacker-chosen: keep the cache bounded
            self._jwks_keys.clear()
        self._jwks_keys[kid] = (time.monotonic() + self._jwks_cache, jwk.key)
        return jwk.key

    async def authenticate(self, token: str) -> Principal:
        key = await self._signing_key(token)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=self._algorithms,
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options={"require": self._require, "verify_aud": self._audience is not None},
            )
        except jwt.ExpiredSignatureError:
            raise AuthFailed("Token expired") from None
        except jwt.ImmatureSignatureError:
            raise AuthFailed("Token not valid yet") from None
        except jwt.MissingRequiredClaimError as exc:
            if exc.claim == "exp":
                raise AuthFailed("Invalid token: it has no 'exp' (expiry) claim") from None
            raise AuthFailed(f"Invalid token: {exc}") from None
        except jwt.InvalidTokenError as exc:
            raise AuthFailed(f"Invalid token: {exc}") from None
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub:
            raise AuthFailed("Invalid token: 'sub' must be a non-empty string")
        channels = claims.get("channels") or []
        if not isinstance(channels, list) or not all(isinstance(c, str) for c in channels):
            raise AuthFailed("Invalid token: 'channels' must be a list of strings")
        return Principal(
            user_id=UserId(sub),
            channels=frozenset(channels),
            claims=claims,
            expires_at=_number(claims.get("exp")),
            issued_at=_number(claims.get("iat")),
        )


def _number(value: object) -> float | None:
    """A numeric date claim (PyJWT checked ``exp``; ``iat`` may be anything)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def issue_token(
    user_id: str,
    secret: str,
    *,
    algorithm: str = "HS256",
    ttl: float | None = 3600.0,
    channels: Iterable[str] = (),
    **claims: Any,
) -> str:
    """Sign a token for ``user_id`` (development, tests, and backends that mint tokens)."""
    now = int(time.time())
    body: dict[str, Any] = {"sub": user_id, "iat": now, **claims}
    if ttl is not None:
        body["exp"] = now + int(ttl)
    channels = list(channels)
    if channels:
        body["channels"] = channels
    return jwt.encode(body, secret, algorithm=algorithm)
