"""Authentication options and connection caps, against a real server."""

from __future__ import annotations

import asyncio
import datetime
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import websockets
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from wshub.testing import serve_asgi

from ..conftest import ServerFactory


def _in_an_hour() -> int:
    """An ``exp`` claim: tokens without one are refused (WS_JWT_REQUIRE_EXP)."""
    return int(time.time()) + 3600


PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


def _pem_public(key: PrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


KEYS: dict[str, Callable[[], PrivateKey]] = {
    "RS256": lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
    "ES256": lambda: ec.generate_private_key(ec.SECP256R1()),
    "EdDSA": ed25519.Ed25519PrivateKey.generate,
}


async def _authenticate(server: Any, token: str) -> dict[str, Any]:
    async with server.connect() as ws:
        await ws.expect("welcome")
        reply: dict[str, Any] = await ws.request("authenticate", {"token": token})
        return reply


@pytest.mark.parametrize("alg", sorted(KEYS))
async def test_public_key_algorithms_verify_with_a_key_file(
    server_factory: ServerFactory, tmp_path: Path, alg: str
) -> None:
    key = KEYS[alg]()
    other = KEYS[alg]()
    (tmp_path / "pub.pem").write_text(_pem_public(key))
    settings = {"jwt_secret": None, "jwt_algorithms": [alg]}
    async with server_factory(jwt_public_key_file=str(tmp_path / "pub.pem"), **settings) as server:
        good = jwt.encode({"sub": "pat", "exp": _in_an_hour()}, key, algorithm=alg)
        assert (await _authenticate(server, good))["payload"]["userId"] == "pat"
        forged = jwt.encode({"sub": "pat", "exp": _in_an_hour()}, other, algorithm=alg)
        assert (await _authenticate(server, forged))["payload"]["code"] == "auth_failed"
        # algorithm confusion: an HS256 token "signed" with the public key text
        confused = jwt.encode(
            {"sub": "pat", "exp": _in_an_hour()},
            "x" * 64,
            algorithm="HS256",
            headers={"alg": "HS256"},
        )
        assert (await _authenticate(server, confused))["payload"]["code"] == "auth_failed"


async def test_audience_and_issuer_are_checked_when_configured(
    server_factory: ServerFactory,
) -> None:
    async with server_factory(jwt_audience="wshub", jwt_issuer="https://id.example") as server:
        secret = server.settings.jwt_secret.get_secret_value()  # type: ignore[union-attr]

        def token(**claims: Any) -> str:
            return jwt.encode(
                {"sub": "ivy", "exp": _in_an_hour(), **claims}, secret, algorithm="HS256"
            )

        ok = token(aud="wshub", iss="https://id.example")
        assert (await _authenticate(server, ok))["type"] == "authenticated"
        for bad in (
            token(aud="other", iss="https://id.example"),
            token(aud="wshub", iss="https://evil.example"),
            token(iss="https://id.example"),
        ):
            assert (await _authenticate(server, bad))["payload"]["code"] == "auth_failed"


async def test_nbf_in_the_future_is_refused_beyond_the_leeway(
    server_factory: ServerFactory,
) -> None:
    async with server_factory(jwt_leeway=5) as server:
        now = int(datetime.datetime.now(datetime.UTC).timestamp())
        soon = server.token("ned", nbf=now + 3)
        later = server.token("ned", nbf=now + 120)
        assert (await _authenticate(server, soon))["type"] == "authenticated"
        reply = await _authenticate(server, later)
        assert reply["payload"] == {"code": "auth_failed", "message": "Token not valid yet"}


async def test_jwks_keys_are_fetched_cached_and_refreshed_on_an_unknown_kid(
    server_factory: ServerFactory,
) -> None:
    keys = {"k1": rsa.generate_private_key(public_exponent=65537, key_size=2048)}
    fetches = []

    async def jwks(request: Request) -> JSONResponse:
        fetches.append(1)
        out = []
        for kid, key in keys.items():
            jwk = jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
            out.append({**jwk, "kid": kid, "use": "sig", "alg": "RS256"})
        return JSONResponse({"keys": out})

    async with serve_asgi(Starlette(routes=[Route("/jwks", jwks)])) as port:
        async with server_factory(
            jwt_secret=None,
            jwt_algorithms=["RS256"],
            jwt_jwks_url=f"http://127.0.0.1:{port}/jwks",
            jwt_jwks_cooldown=0,
        ) as server:

            def token(kid: str, user: str) -> str:
                key = keys.get(kid) or rsa.generate_private_key(
                    public_exponent=65537, key_size=2048
                )
                return jwt.encode(
                    {"sub": user, "exp": _in_an_hour()},
                    key,
                    algorithm="RS256",
                    headers={"kid": kid},
                )

            assert (await _authenticate(server, token("k1", "a")))["type"] == "authenticated"
            assert (await _authenticate(server, token("k1", "b")))["type"] == "authenticated"
            assert len(fetches) == 1  # cached
            keys["k2"] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            assert (await _authenticate(server, token("k2", "c")))["type"] == "authenticated"
            assert len(fetches) == 2  # refreshed for the unknown kid
            reply = await _authenticate(server, token("nope", "d"))
            assert reply["payload"]["code"] == "auth_failed"
            assert "unknown signing key" in reply["payload"]["message"]


async def test_failed_authentication_attempts_are_capped(server_factory: ServerFactory) -> None:
    async with server_factory(max_auth_attempts=3) as server:
        async with server.connect() as ws, server.connect() as bystander:
            await ws.expect("welcome")
            await bystander.expect("welcome")
            for _ in range(2):
                reply = await ws.request("authenticate", {"token": "wrong"})
                assert reply["payload"]["code"] == "auth_failed"
            await ws.send("authenticate", {"token": "wrong"})
            assert (await ws.expect("error"))["payload"]["code"] == "auth_failed"
            code, reason = await ws.closed()
            assert code == 1008 and "authentication" in reason
            assert (await bystander.request("ping"))["type"] == "pong"


async def test_connections_per_address_are_capped_at_the_handshake(
    server_factory: ServerFactory,
) -> None:
    async with server_factory(max_connections_per_ip=2) as server:
        async with server.connect() as a:
            await a.expect("welcome")
            async with server.connect() as b:
                await b.expect("welcome")
                with pytest.raises(websockets.InvalidStatus) as info:
                    async with server.connect():
                        pass
                assert info.value.response.status_code == 429
            assert await server.hub.wait_idle(0) is False  # `a` is still open
        assert await server.hub.wait_idle(5)
        async with server.connect() as c:  # room again
            await c.expect("welcome")


async def test_connections_per_user_are_capped(server_factory: ServerFactory) -> None:
    async with server_factory(max_connections_per_user=1) as server:
        async with server.connect(user="una") as first:
            await first.expect("welcome")
            await first.expect("authenticated")
            with pytest.raises(websockets.InvalidStatus) as info:
                async with server.connect(user="una"):
                    pass
            assert info.value.response.status_code == 429
            async with server.connect() as second:
                await second.expect("welcome")
                reply = await second.request("authenticate", {"token": server.token("una")})
                assert reply["payload"]["code"] == "forbidden"
                assert (await second.request("ping"))["type"] == "pong"


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(__import__("ipaddress").ip_address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


async def test_tls_serves_wss_and_https(server_factory: ServerFactory, tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    context = ssl.create_default_context(cafile=str(cert))
    async with server_factory(tls_cert=str(cert), tls_key=str(key)) as server:
        url = f"wss://127.0.0.1:{server.port}/ws"
        async with websockets.connect(url, ssl=context) as ws:
            assert '"welcome"' in await ws.recv()
        async with httpx.AsyncClient(verify=context) as http:
            r = await http.get(f"https://127.0.0.1:{server.port}/healthz")
            assert r.json() == {"status": "ok"}
        with pytest.raises((OSError, websockets.InvalidMessage)):  # plain ws:// is not spoken
            async with websockets.connect(f"ws://127.0.0.1:{server.port}/ws", open_timeout=2):
                pass


async def test_handshakes_racing_past_the_user_cap_end_authenticated_or_closed(
    server_factory: ServerFactory,
) -> None:
    """The cap is checked at the handshake and again when the connection registers; a
    connection that passed the first check and lost the race is closed (1008) after an error,
    never left open with a welcome naming the user but not authenticated."""
    async with server_factory(max_connections_per_user=1) as server:

        async def attempt() -> str:
            try:
                async with server.connect(user="vic") as client:
                    await client.expect("welcome")
                    first = await client.recv()
                    if first["type"] == "authenticated":
                        await client.request("ping")
                        return "authenticated"
                    assert first["payload"]["code"] == "forbidden", first
                    code, _ = await client.closed()
                    assert code == 1008
                    return "closed"
            except websockets.InvalidStatus as refused:
                assert refused.response.status_code == 429
                return "refused"

        outcomes = await asyncio.gather(*(attempt() for _ in range(6)))
        assert outcomes.count("authenticated") >= 1
        assert set(outcomes) <= {"authenticated", "closed", "refused"}
