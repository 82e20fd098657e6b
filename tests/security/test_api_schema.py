"""The HTTP API against its own OpenAPI document (``/openapi.json``), with schemathesis: for
generated requests, valid and invalid, no response is a 500 and every response conforms to the
schema (status codes, content types, bodies).

Runs against a real ``wshub serve`` process (memory store), with the API key. The requests are
sent synchronously, so the server cannot share the test's event loop.
``WSHUB_SCHEMATHESIS_EXAMPLES`` sets the examples per operation (default 15: a few seconds).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator

import httpx
import orjson
import pytest
import schemathesis
from hypothesis import HealthCheck, assume, settings
from schemathesis.checks import not_a_server_error

from wshub.server.app import create_app
from wshub.testing import free_port

from ..conftest import API_KEY, SECRET, make_settings

EXAMPLES = int(os.environ.get("WSHUB_SCHEMATHESIS_EXAMPLES", "15"))
AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def api_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``wshub serve`` in a child process; its base URL once it says it is listening."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("WS_")}
    env |= {
        "WS_PORT": str(port),
        "WS_JWT_SECRET": SECRET,
        "WS_API_KEY": API_KEY,
        "WS_STORE_URL": "memory://",
        "WS_LOG_LEVEL": "info",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "wshub", "serve"],
        env=env,
        cwd=tmp_path_factory.mktemp("api"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    log: list[str] = []
    listening = threading.Event()

    def drain() -> None:  # read the log to the end, so the server never blocks on a full pipe
        assert proc.stderr is not None
        for line in proc.stderr:
            log.append(line)
            if "Uvicorn running on" in line:
                listening.set()
        listening.set()  # exited

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        assert listening.wait(20) and proc.poll() is None, "".join(log[-20:])
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.kill()
        proc.wait(10)
        reader.join(10)
        if proc.stderr is not None:
            proc.stderr.close()


# The schema is the app's own OpenAPI document, built at collection (schemathesis makes one test
# per operation from it); the fixture checks that the server serves the same at /openapi.json.
# (schemathesis.pytest.from_fixture would load it from the server, but 4.32 does not run under
# pytest 9: it sets ``Function._nodeid``.)
OPENAPI = create_app(make_settings()).openapi()
schema = schemathesis.openapi.from_dict(OPENAPI)


@pytest.fixture(scope="module")
def api(api_url: str) -> str:
    served = httpx.get(f"{api_url}/openapi.json", timeout=5)
    assert served.status_code == 200 and served.json() == OPENAPI
    return api_url


def _encodable(body: object) -> bool:
    if not isinstance(body, dict | list):
        return True  # no JSON body (GET) or not ours to encode
    try:
        orjson.dumps(body)
    except (orjson.JSONEncodeError, TypeError):
        return False
    return True


SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@schema.parametrize()
@SETTINGS
def test_the_http_api_never_answers_with_a_server_error(case: schemathesis.Case, api: str) -> None:
    """Valid and invalid requests to every operation: never a 5xx."""
    case.call_and_validate(base_url=api, headers=AUTH, timeout=10, checks=[not_a_server_error])


conforming = schema


@conforming.parametrize()
@SETTINGS
def test_the_http_api_answers_every_request_as_its_openapi_schema_says(
    case: schemathesis.Case, api: str
) -> None:
    """Status codes, content types and bodies as documented; invalid requests refused."""
    # Raw bodies that are not JSON: test_a_body_that_is_not_json_gets_a_documented_422.
    assume(not isinstance(case.body, bytes | str))
    # Schema-valid but not representable (integers past 64 bits, lone surrogates, nesting past
    # 254 levels): refused with 422 on purpose (test_payload_limits.py), not a schema mismatch.
    assume(_encodable(case.body))
    case.call_and_validate(base_url=api, headers=AUTH, timeout=10)


@pytest.mark.parametrize("body", [b"\xff\xfe not json", b"not json", b'{"channel": '])
def test_a_body_that_is_not_json_gets_a_documented_422(api: str, body: bytes) -> None:
    """Not UTF-8 (FastAPI's own answer would be an undocumented 400), or not JSON: 422."""
    response = httpx.post(
        f"{api}/api/publish", content=body, headers={**AUTH, "Content-Type": "application/json"}
    )
    documented = OPENAPI["paths"]["/api/publish"]["post"]["responses"]
    assert response.status_code == 422 and "422" in documented
    assert response.json()["detail"][0]["loc"][0] == "body"


def test_the_metrics_content_type_is_the_documented_one(api: str) -> None:
    response = httpx.get(f"{api}/metrics")
    documented = OPENAPI["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert response.headers["content-type"].split(";")[0] in documented


def test_the_send_schema_allows_the_null_payload_the_api_accepts(api: str) -> None:
    response = httpx.post(
        f"{api}/api/users/bob/send", json={"type": "custom", "payload": None}, headers=AUTH
    )
    assert response.status_code == 200
    body = OPENAPI["components"]["schemas"]["SendBody"]["properties"]["payload"]
    assert "null" in str(body)
