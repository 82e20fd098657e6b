"""`wshub codegen ts`: TypeScript types of every protocol message and the application's own,
compiled with the pinned TypeScript of clients/js (``tsc --strict``) together with code that
switches on the unions and types the client with the generated maps."""

from __future__ import annotations

import shutil
import subprocess
import textwrap
from pathlib import Path
from typing import Literal

import pytest
from pydantic import BaseModel, Field

from wshub import Context, Hub, create_hub
from wshub.cli import main
from wshub.codegen import typescript
from wshub.protocol import SERVER_MESSAGES

ROOT = Path(__file__).resolve().parent.parent
CLIENT_JS = ROOT / "clients" / "js"
TSC = CLIENT_JS / "node_modules" / ".bin" / "tsc"


class Point(BaseModel):
    x: float
    y: float


class Draw(BaseModel):
    """Draw a shape on a shared board."""

    board: str = Field(min_length=1)
    shape: Literal["line", "circle"]
    points: list[Point]
    color: str | None = None
    meta: dict[str, int] = {}
    pair: tuple[int, str] | None = None


class ChatPayload(BaseModel):
    """An application model whose name clashes with a built-in one."""

    room: str
    body: str


class OrderShipped(BaseModel):
    """An order left the warehouse."""

    orderId: int
    carrier: Literal["ups", "dhl"]


def _hub() -> Hub:
    hub = create_hub(store_url="memory://", broker_url="memory://", authenticator=None)

    @hub.on("draw", requires_auth=True)
    async def draw(ctx: Context, payload: Draw) -> None:
        """Draw on a board."""

    @hub.on("room_chat")
    async def room_chat(ctx: Context, payload: ChatPayload) -> None:
        """Chat in a room."""

    hub.describe("order_shipped", OrderShipped)
    return hub


def _builtin_hub() -> Hub:
    return create_hub(store_url="memory://", broker_url="memory://", authenticator=None)


def test_every_message_of_both_directions_is_in_its_map_and_union() -> None:
    source = typescript(_hub())
    server_map = source.split("export interface ServerMessages {", 1)[1].split("\n}", 1)[0]
    client_map = source.split("export interface ClientMessages {", 1)[1].split("\n}", 1)[0]
    for type_ in [*SERVER_MESSAGES, "order_shipped"]:
        assert f"\n  {type_}: " in server_map, type_
        assert f'ServerEnvelope<"{type_}">' in source
    for type_ in ["ping", "authenticate", "chat", "subscribe", "unsubscribe", "publish", "draw"]:
        assert f"\n  {type_}: " in client_map, type_
        assert f'ClientEnvelope<"{type_}">' in source
    assert "room_chat: " in client_map
    assert 'shape: "line" | "circle";' in source
    assert "points: Point[];" in source
    assert "color?: string | null;" in source
    assert "meta?: {\n" in source and "[key: string]: number;" in source
    assert "pair?: [number, string] | null;" in source
    assert "/** Draw a shape on a shared board. */" in source


def test_the_packaged_protocol_types_are_generated_and_up_to_date() -> None:
    committed = (CLIENT_JS / "src" / "protocol.ts").read_text(encoding="utf-8")
    assert committed == typescript(_builtin_hub()), (
        "clients/js/src/protocol.ts is stale: run "
        "`.venv/bin/wshub codegen ts -o clients/js/src/protocol.ts`"
    )


def test_cli_writes_the_app_types_to_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "codegen_app.py").write_text(
        textwrap.dedent(
            """
            from pydantic import BaseModel
            from wshub import Context, create_hub

            hub = create_hub(store_url="memory://", broker_url="memory://", authenticator=None)

            class Typing(BaseModel):
                channel: str

            @hub.on("typing")
            async def typing(ctx: Context, payload: Typing) -> None:
                pass
            """
        )
    )
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out.ts"
    assert main(["codegen", "ts", "--app", "codegen_app:hub", "-o", str(out)]) == 0
    text = out.read_text()
    assert "  typing: Typing;" in text
    assert main(["codegen", "ts", "--app", "codegen_app:Typing"]) == 2


def test_cli_prints_the_builtin_types(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["codegen", "ts"]) == 0
    assert capsys.readouterr().out == typescript(_builtin_hub())


USAGE = """
import type {
  ServerMessage, ClientMessage, ServerMessages, ClientMessages,
} from "./wshub-types.js";
import { WshubClient } from "{client}";

export function describe(message: ServerMessage): string {
  switch (message.type) {
    case "order_shipped":
      return `${message.payload.orderId} by ${message.payload.carrier}`;
    case "message":
      return `${message.payload.channel}#${message.payload.offset}`;
    case "error":
      return message.payload.code;
    case "chat":
      return message.payload.from ?? "nobody";
    default:
      return message.type;
  }
}

export function outgoing(message: ClientMessage): number {
  switch (message.type) {
    case "draw":
      return message.payload?.points.reduce((sum, p) => sum + p.x + p.y, 0) ?? 0;
    case "room_chat":
      return message.payload?.body.length ?? 0;
    default:
      return 0;
  }
}

const client = new WshubClient<ServerMessages, ClientMessages>("ws://127.0.0.1:5000/ws");
client.on("order_shipped", (payload) => {
  const carrier: "ups" | "dhl" = payload.carrier;
  void carrier;
});
client.send("draw", { board: "b", shape: "line", points: [{ x: 1, y: 2 }] });
// @ts-expect-error: "square" is not a shape
client.send("draw", { board: "b", shape: "square", points: [] });
// @ts-expect-error: order_shipped has no `title`
client.on("order_shipped", (payload) => payload.title);
"""


def _ensure_node_modules() -> None:
    if TSC.exists():
        return
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail("clients/js/node_modules is missing and npm is not installed: install Node 20+")
    result = subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund"],
        cwd=CLIENT_JS,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if result.returncode != 0 or not TSC.exists():
        pytest.fail(f"npm ci in clients/js failed:\n{result.stdout}\n{result.stderr}")


def _tsc(*files: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(TSC), "--strict", "--noEmit", "--target", "ES2022", "--module", "ES2022"]
        + ["--moduleResolution", "bundler", "--lib", "ES2022,DOM"]
        + [str(f) for f in files],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_output_compiles_with_tsc_strict_and_narrows(tmp_path: Path) -> None:
    _ensure_node_modules()
    types = tmp_path / "wshub-types.ts"
    types.write_text(typescript(_hub()), encoding="utf-8")
    usage = tmp_path / "usage.ts"
    usage.write_text(USAGE.replace("{client}", str(CLIENT_JS / "src" / "index.js")))
    result = _tsc(types, usage)
    assert result.returncode == 0, result.stdout + result.stderr

    # ...and a misuse the union must catch does not compile.
    wrong = tmp_path / "wrong.ts"
    wrong.write_text(
        'import type { ServerMessage } from "./wshub-types.js";\n'
        "export const f = (m: ServerMessage) =>\n"
        '  m.type === "order_shipped" ? m.payload.channel : null;\n'
    )
    result = _tsc(types, wrong)
    assert result.returncode != 0
    assert "channel" in result.stdout


def test_wshub_js_is_the_build_of_the_typescript_package() -> None:
    """/wshub.js is generated from clients/js/src/index.ts: an edit made to the copy alone
    (instead of the TypeScript source, then `npm run build:static`) fails here."""
    _ensure_node_modules()
    node = shutil.which("node")
    assert node is not None, "node is not installed"
    build = subprocess.run(
        [str(TSC), "-p", "tsconfig.json"],
        cwd=CLIENT_JS,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    check = subprocess.run(
        [node, "scripts/browser-bundle.mjs", "--check"],
        cwd=CLIENT_JS,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0, check.stdout + check.stderr
