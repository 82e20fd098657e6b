from __future__ import annotations

import pytest
from pydantic import BaseModel

from wshub.core.router import Router
from wshub.core.session import Context
from wshub.errors import InvalidMessage
from wshub.protocol import EmptyPayload


class Typing(BaseModel):
    channel: str
    active: bool = True


async def on_typing(ctx: Context, payload: Typing) -> None:
    """Someone is typing.

    More details."""


async def on_bare(ctx: Context) -> None:
    pass


def test_payload_model_is_read_from_the_annotation_and_summary_from_the_docstring() -> None:
    router = Router()
    route = router.add("typing", on_typing)
    assert route.model is Typing and route.summary == "Someone is typing."
    assert router.add("bare", on_bare).model is EmptyPayload
    assert "typing" in router and router.get("nope") is None


def test_validation_failure_names_the_field() -> None:
    route = Router().add("typing", on_typing)
    with pytest.raises(InvalidMessage, match=r"payload\.channel: Field required"):
        route.validate({})
    with pytest.raises(InvalidMessage, match=r"payload\.active"):
        route.validate({"channel": "c", "active": "maybe"})
    assert route.validate({"channel": "c"}) == Typing(channel="c")


def test_registration_mistakes_are_caught_early() -> None:
    router = Router()
    router.add("typing", on_typing)
    with pytest.raises(ValueError, match="already has a handler"):
        router.add("typing", on_typing)

    def sync_handler(ctx: Context, payload: Typing) -> None:
        pass

    with pytest.raises(TypeError, match="async"):
        router.add("sync", sync_handler)  # type: ignore[arg-type]

    async def untyped(ctx: Context, payload: dict) -> None:  # type: ignore[type-arg]
        pass

    with pytest.raises(TypeError, match="BaseModel"):
        router.add("untyped", untyped)
