// Compiled by `npm run typecheck` (tsc --strict, no emit): on(), request() and the unions are
// typed by the message maps, and misuse does not compile.
import NodeWebSocket from "ws";

import { WshubClient, type ServerMessage, type ClientMessage } from "../src/index.js";

// Both WebSocket classes fit the option: the browser's and ws's (Node 20).
void new WshubClient("ws://127.0.0.1:5000/ws", { WebSocket: NodeWebSocket });
void new WshubClient("ws://127.0.0.1:5000/ws", { WebSocket: WebSocket });

const client = new WshubClient("ws://127.0.0.1:5000/ws");

client.on("chat", (payload, envelope) => {
  const from: string | null = payload.from;
  const text: string = payload.message;
  const offset: number | undefined = envelope.offset;
  void [from, text, offset];
});
client.on("notification", (payload) => {
  const kind: "info" | "warning" | "error" | "success" | undefined = payload.type;
  void kind;
});
client.on("*", (_payload, envelope) => {
  if (envelope.type === "presence_join") {
    const user: string = envelope.payload.userId;
    void user;
  }
});
// @ts-expect-error: not a server message type
client.on("no_such_type", () => {});
// @ts-expect-error: a chat payload has no `title`
client.on("chat", (payload) => payload.title);
client.subscribe<{ headline: string }>("news", (msg) => {
  const headline: string = msg.data.headline;
  const offset: number = msg.offset;
  void [headline, offset];
});
void client.request("subscribe", { channel: "news", since: 3 });
// @ts-expect-error: subscribe needs a channel
void client.request("subscribe", { since: 3 });
// @ts-expect-error: not a client message type
client.send("welcome", {});
client.addEventListener("gap", (event) => {
  const missing: [number, number] | null = event.detail.missing;
  void missing;
});

export function describe(message: ServerMessage): string {
  switch (message.type) {
    case "message":
      return `${message.payload.channel}#${message.payload.offset}`;
    case "error":
      return message.payload.code;
    case "welcome":
      return message.payload.connectionId;
    default:
      return message.type;
  }
}

export function outgoing(message: ClientMessage): string | undefined {
  switch (message.type) {
    case "publish":
      return message.payload?.channel;
    case "chat":
      return message.payload?.recipientId;
    default:
      return undefined;
  }
}
