"""A minimal Django project (one view) to show wshub mounted next to Django on ASGI."""

SECRET_KEY = "example-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
ROOT_URLCONF = "examples.django_project.urls"
INSTALLED_APPS: list[str] = []
MIDDLEWARE = ["django.middleware.csrf.CsrfViewMiddleware"]  # as in a default project
DATABASES: dict[str, object] = {}
USE_TZ = True
