"""An existing FastAPI app that adds real-time features with wshub.

Run it from the repository's root. The app and `wshub client --user` mint and check tokens with
the same WS_JWT_SECRET, so it goes in ./.env, which both read (`make run` writes one):

    grep -qs '^WS_JWT_SECRET=' .env || echo "WS_JWT_SECRET=$(openssl rand -hex 32)" >> .env
    .venv/bin/uvicorn examples.fastapi_app:app --ws wshub.native:HubProtocol \
        --http wshub.uvicorn_protocols:GuardedHttpProtocol \
        --ws-max-size 65536 --ws-ping-interval 30 --ws-ping-timeout 30

Then, in another terminal (the client sends its token in an `authenticate` message):

    .venv/bin/wshub client ws://127.0.0.1:8000/ws --user alice
    curl -X POST localhost:8000/orders -H 'content-type: application/json' \
         -d '{"user_id": "alice", "item": "book"}'
"""

from __future__ import annotations

import itertools

from fastapi import FastAPI
from pydantic import BaseModel

from wshub import Context, WebSocketApp, create_hub

# --- the five lines that add wshub to an app -------------------------------------------------
hub = create_hub()  # settings from WS_* environment variables / .env
app = FastAPI(title="Shop", lifespan=hub.lifespan)
app.router.add_websocket_route("/ws", WebSocketApp(hub))
# ---------------------------------------------------------------------------------------------


# The app's own REST routes, unchanged, now able to push to users.
class OrderIn(BaseModel):
    user_id: str
    item: str


_order_ids = itertools.count(1)


@app.post("/orders")
async def create_order(order: OrderIn) -> dict[str, object]:
    order_id = next(_order_ids)
    # Delivered at once to every open tab of the user, or stored until they connect.
    delivery = await hub.notify_user(
        order.user_id,
        "Order received",
        f"Your {order.item} is on its way",
        type="success",
        orderId=order_id,
    )
    await hub.publish("orders", {"orderId": order_id, "item": order.item})
    return {"id": order_id, "notified": delivery.delivered, "queued": delivery.queued}


@app.get("/users/{user_id}/online")
async def user_online(user_id: str) -> dict[str, bool]:
    return {"online": await hub.is_user_connected(user_id)}


# A domain message type of the app's own, validated by Pydantic (registered with a decorator
# instead of another case in a switch over message types).
class TypingPayload(BaseModel):
    channel: str
    active: bool = True


@hub.on("typing", requires_auth=True)
async def typing(ctx: Context, payload: TypingPayload) -> None:
    """Tell a channel's subscribers that the user is typing."""
    await ctx.hub.publish(payload.channel, {"typing": ctx.user_id, "active": payload.active})
    ctx.reply("typing_sent", {"channel": payload.channel})
