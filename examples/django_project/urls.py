from __future__ import annotations

import json

from asgiref.sync import async_to_sync
from django.http import HttpRequest, JsonResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt

from .hub import hub

# The views below are called by other backends and scripts (curl, a worker), which hold no CSRF
# cookie: they are exempt from Django's CSRF check. Give such views an authentication of their
# own in a real project; a view that your pages call keeps the check and sends the token
# (the X-CSRFToken header).


@csrf_exempt
async def notify(request: HttpRequest, user_id: str) -> JsonResponse:
    """An async Django view pushing to a user through the hub."""
    body = json.loads(request.body or b"{}")
    delivery = await hub.notify_user(user_id, body.get("title", "Hello"), body.get("message", ""))
    return JsonResponse({"delivered": delivery.delivered, "queued": delivery.queued})


@csrf_exempt
def notify_sync(request: HttpRequest, user_id: str) -> JsonResponse:
    """The same from a sync view: Django runs it in a thread, and async_to_sync runs the hub's
    coroutine back on the server's event loop, where the hub lives."""
    body = json.loads(request.body or b"{}")
    delivery = async_to_sync(hub.notify_user)(
        user_id, body.get("title", "Hello"), body.get("message", "")
    )
    return JsonResponse({"delivered": delivery.delivered, "queued": delivery.queued})


urlpatterns = [
    path("notify/<str:user_id>", notify),
    path("notify-sync/<str:user_id>", notify_sync),
]
