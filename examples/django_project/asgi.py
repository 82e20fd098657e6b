"""ASGI entry point: ``uvicorn examples.django_project.asgi:application``.

Django answers HTTP; wshub answers WebSockets at /ws. Django has no ASGI lifespan, so the
middleware runs the hub's start-up and shutdown itself.
"""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "examples.django_project.settings")

from django.core.asgi import get_asgi_application

from wshub import HubMiddleware

from .hub import hub

application = HubMiddleware(get_asgi_application(), hub, path="/ws", forward_lifespan=False)
