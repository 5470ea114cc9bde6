"""A plain Django app in one file (settings, views, URLs, the WSGI application), as a project's
wsgi.py would give it: nothing here knows about handover."""

import hashlib
import os
import time

from django.conf import settings

settings.configure(
    DEBUG=False,
    ALLOWED_HOSTS=["*"],
    ROOT_URLCONF=__name__,
    SECRET_KEY="not-a-secret-test-only",
    MIDDLEWARE=["django.middleware.common.CommonMiddleware"],  # as startproject has it
    DATA_UPLOAD_MAX_MEMORY_SIZE=None,  # the tests upload 5 MB
)

from django.core.wsgi import get_wsgi_application  # noqa: E402
from django.http import HttpResponse, StreamingHttpResponse  # noqa: E402
from django.urls import path  # noqa: E402


def index(request):
    return HttpResponse("hello from django %d\n" % os.getpid(), content_type="text/plain")


def upload(request):
    body = request.body
    return HttpResponse("%d %s" % (len(body), hashlib.sha256(body).hexdigest()))


def stream(request):
    return StreamingHttpResponse(("chunk %d\n" % i for i in range(100)), content_type="text/plain")


def remote(request):
    return HttpResponse("%s %s" % (request.META["REMOTE_ADDR"], request.META["REMOTE_PORT"]))


def boom(request):
    raise RuntimeError("the app failed on purpose")


def slow(request):
    time.sleep(float(request.GET.get("s", "0.001")))
    return HttpResponse("hello from django %d\n" % os.getpid())


urlpatterns = [path("", index), path("upload", upload), path("stream", stream),
               path("remote", remote), path("raise", boom), path("slow", slow)]

application = get_wsgi_application()
