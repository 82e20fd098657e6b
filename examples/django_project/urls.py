from __future__ import annotations

import json

from django.http import HttpRequest, JsonResponse
from django.urls import path

from .hub import hub


async def notify(request: HttpRequest, user_id: str) -> JsonResponse:
    """A Django view pushing to a user through the hub."""
    body = json.loads(request.body or b"{}")
    delivery = await hub.notify_user(user_id, body.get("title", "Hello"), body.get("message", ""))
    return JsonResponse({"delivered": delivery.delivered, "queued": delivery.queued})


urlpatterns = [path("notify/<str:user_id>", notify)]
