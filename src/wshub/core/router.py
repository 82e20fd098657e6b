"""Message types to handlers. Built-in types and the application's own go through the same path."""

from __future__ import annotations

import builtins
import inspect
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, get_type_hints

from pydantic import BaseModel, ValidationError

from ..errors import InvalidMessage
from ..protocol import EmptyPayload, describe_validation_error
from ..types import JSONObject

if TYPE_CHECKING:
    from .session import Context

__all__ = ["Handler", "Route", "Router"]

M = TypeVar("M", bound=BaseModel)
#: ``async def handler(ctx: Context, payload: YourModel) -> None``
Handler = Callable[["Context", Any], Awaitable[None]]
H = TypeVar("H", bound=Handler)


@dataclass(frozen=True, slots=True)
class Route:
    """One message type: its handler, the Pydantic model its payload must satisfy, and whether the
    connection must be authenticated first."""

    type: str
    handler: Handler
    model: builtins.type[BaseModel]
    requires_auth: bool
    summary: str
    #: Whether the handler queues its work and returns at once (built-in ``publish``, ``chat``):
    #: the connection's next message is then handled without waiting for it; its reply keeps
    #: its place (:class:`~wshub.core.session.Reply`). Other handlers run once the replies of
    #: the messages before them are out.
    pipelined: bool = False

    def validate(self, payload: JSONObject) -> BaseModel:
        if self.model is EmptyPayload:  # nothing to check: every field is ignored
            return _EMPTY
        try:
            return self.model.model_validate(payload)
        except ValidationError as exc:
            raise InvalidMessage(describe_validation_error(exc)) from None


_EMPTY = EmptyPayload()


class Router:
    """A table of :class:`Route` by message type."""

    def __init__(self) -> None:
        self._routes: dict[str, Route] = {}

    def add(
        self,
        type_: str,
        handler: Handler,
        *,
        model: type[BaseModel] | None = None,
        requires_auth: bool = False,
        replace: bool = False,
        pipelined: bool = False,
    ) -> Route:
        """Register ``handler`` for ``type_``. Without ``model`` it is read from the annotation of
        the handler's second parameter (no annotation: the payload must be empty)."""
        if not type_ or not isinstance(type_, str):
            raise ValueError("a message type is a non-empty string")
        if type_ in self._routes and not replace:
            raise ValueError(f"message type {type_!r} already has a handler")
        if not inspect.iscoroutinefunction(handler):
            raise TypeError(f"handler for {type_!r} must be an async function")
        route = Route(
            type=type_,
            handler=handler,
            model=model or _payload_model(handler),
            requires_auth=requires_auth,
            summary=inspect.cleandoc(handler.__doc__ or "").split("\n\n")[0],
            pipelined=pipelined,
        )
        self._routes[type_] = route
        return route

    def on(self, type_: str, *, requires_auth: bool = False) -> Callable[[H], H]:
        """Decorator form of :meth:`add`."""

        def register(handler: H) -> H:
            self.add(type_, handler, requires_auth=requires_auth)
            return handler

        return register

    def get(self, type_: str) -> Route | None:
        return self._routes.get(type_)

    def __iter__(self) -> Iterator[Route]:
        return iter(self._routes.values())

    def __contains__(self, type_: object) -> bool:
        return type_ in self._routes


def _payload_model(handler: Handler) -> type[BaseModel]:
    params = list(inspect.signature(handler).parameters.values())
    if len(params) < 2:
        return EmptyPayload
    try:
        hints = get_type_hints(handler)
    except NameError as exc:
        raise TypeError(
            f"cannot resolve the annotations of {handler.__qualname__} ({exc}); define the "
            "payload model at module level or pass model= explicitly"
        ) from None
    annotation = hints.get(params[1].name)
    if annotation is None:
        return EmptyPayload
    if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
        raise TypeError(
            f"the payload parameter of {handler.__qualname__} must be annotated with a "
            f"pydantic BaseModel subclass, not {annotation!r}"
        )
    return annotation
