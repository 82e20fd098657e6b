"""The JavaScript client /wshub.js, in Chromium: against a real server, and (js/client_tests.js)
against a scripted socket fed with the golden frames of tests/golden/."""

from __future__ import annotations

from typing import Any

import pytest

from wshub.testing import TestServer

from .conftest import PageFactory
from .golden import load_all

RUN_JS_TEST = """async ([name, goldens]) => {
    const tests = await import("/__tests__/client_tests.js");
    return await tests[name](goldens);
}"""


# The scripted socket needs a page of the server, not a particular transport: run them once.
@pytest.mark.parametrize("transport", ["native"])
@pytest.mark.parametrize(
    "name",
    [
        "requestsMatchGoldenFrames",
        "serverFramesReachHandlers",
        "resumesAfterReconnect",
        "anotherEpochStartsOver",
        "stopsReconnectingWhenItShould",
        "requestsWaitForTheConnection",
        "backoffIsExponentialWithFullJitter",
        "streamStateResumesFromWhatWasDelivered",
        "fillsAGapOnALiveChannel",
        "aFillThatCannotRecoverIsLost",
        "fillsAGapInTheUserStream",
        "refreshesTheTokenOnTokenExpiring",
        "credentialCloseCodes",
    ],
)
async def test_client_module(open_page: PageFactory, name: str, transport: str) -> None:
    page = await open_page()
    await page.page.evaluate(RUN_JS_TEST, [name, load_all()])


async def test_publish_resolves_with_the_offset_and_errors_reject_with_the_code(
    open_page: PageFactory, server: TestServer
) -> None:
    page = await open_page()
    result: dict[str, Any] = await page.page.evaluate(
        """async (token) => {
            const { WshubClient } = await import("/wshub.js");
            const client = new WshubClient(undefined, { token });  // default: this host, /ws
            const welcome = await client.connect();
            await client.subscribe("news");
            const offsets = [];
            for (const n of [1, 2]) offsets.push(await client.publish("news", { n }));
            const failures = [];
            for (const attempt of [
                () => client.publish("private-secret", 1),
                () => client.subscribe("bad channel"),
                () => client.presence("news"),
                () => client.request("frobnicate", {}),
            ]) {
                try { await attempt(); failures.push(null); }
                catch (e) { failures.push([e.name, e.code, e.message]); }
            }
            const url = client.url;
            await client.close();
            return { welcome, offsets, failures, url, user: client.userId, state: client.state };
        }""",
        server.token("alice"),
    )
    assert result["url"] == server.url
    assert result["welcome"]["protocol"] == 1 and result["user"] == "alice"
    assert result["offsets"] == [1, 2]
    assert [f[:2] for f in result["failures"]] == [
        ["WshubError", "forbidden"],
        ["WshubError", "invalid_message"],
        ["WshubError", "not_found"],
        ["WshubError", "unknown_type"],
    ]
    assert result["failures"][3][2] == "Unknown message type: frobnicate"
    assert result["state"] == "closed"
    history, _ = await server.hub.history("news")
    assert [m["data"] for m in history] == [{"n": 1}, {"n": 2}]


async def test_the_client_resumes_a_real_server_stream_after_a_drop(
    open_page: PageFactory, server: TestServer
) -> None:
    page = await open_page()
    await page.page.evaluate(
        """async (token) => {
            const { WshubClient } = await import("/wshub.js");
            const reconnect = { minDelay: 200, maxDelay: 400 };
            const client = new WshubClient("/ws", { token, reconnect });
            const received = (window.received = []);
            client.subscribe("news", (p) => received.push(["news", p.offset, p.data]));
            client.on("notification", (p, env) => received.push(["note", env.offset, p.title]));
            window.client = client;
            await client.connect();
        }""",
        server.token("alice"),
    )
    await server.hub.publish("news", "before")
    await page.page.wait_for_function("() => window.received.length === 1")

    for session in list(server.hub.sessions.values()):
        session.close(1012, "restart")
    assert await server.hub.wait_idle(5)
    await server.hub.publish("news", "while away")
    await server.hub.notify_user("alice", "missed", "while away")
    assert not server.hub.sessions  # both went out while the client was disconnected

    await page.page.wait_for_function(
        "() => window.client.state === 'open' && window.received.length >= 3"
    )
    await page.page.evaluate("window.client.ping()")  # anything duplicated would have come by now
    received = await page.page.evaluate("window.received")
    # Each stream in order and once; the user stream's replay comes first (authentication is
    # sent before the subscriptions).
    assert sorted(received) == [
        ["news", 1, "before"],
        ["news", 2, "while away"],
        ["note", 1, "missed"],
    ]
