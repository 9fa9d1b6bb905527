"""A one-file Django app, its WSGI application wrapped in WSGIMiddleware (run under gunicorn)."""

import hashlib
import os

from django.conf import settings

settings.configure(
    DEBUG=False,
    ALLOWED_HOSTS=["*"],
    ROOT_URLCONF=__name__,
    SECRET_KEY="tests-only",
    MIDDLEWARE=[],
    INSTALLED_APPS=[],
    DATABASES={},
)

from django.core.wsgi import get_wsgi_application  # noqa: E402
from django.http import JsonResponse  # noqa: E402
from django.urls import path  # noqa: E402
from django.views.decorators.csrf import csrf_exempt  # noqa: E402

from customer_auth.middleware import CUSTOMER_ID_KEY, WSGIMiddleware  # noqa: E402


def whoami(request):
    return JsonResponse(
        {
            "customer_id": request.META.get(CUSTOMER_ID_KEY),
            "header": request.headers.get("X-Customer-Id"),
            "pid": os.getpid(),
        }
    )


@csrf_exempt
def echo(request):
    return JsonResponse(
        {
            "customer_id": request.META.get(CUSTOMER_ID_KEY),
            "size": len(request.body),
            "sha256": hashlib.sha256(request.body).hexdigest(),
        }
    )


def health(request):
    return JsonResponse(
        {
            "customer_id": request.META.get(CUSTOMER_ID_KEY),
            "header": request.headers.get("X-Customer-Id"),
        }
    )


urlpatterns = [path("whoami", whoami), path("echo", echo), path("health", health)]

application = WSGIMiddleware(
    get_wsgi_application(), exempt=[lambda p: p == "/health"], max_body_size=4096, cache_ttl=3600
)
