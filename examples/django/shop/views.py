"""The shop's views: a login, a cached catalogue page and a rate-limited chat endpoint.

Every answer names the worker process that made it (``X-Worker``), so the tests can see that
what one worker did (a login, a cached page, a rate-limit count) is seen by the others.
"""

import functools
import os
import time
from collections.abc import Callable

from django.conf import settings
from django.contrib.auth import authenticate, login, logout
from django.core.cache import cache
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.middleware.csrf import get_token
from django.views.decorators.http import require_POST
from larder_client._options import sync_client
from larder_client.django import revoke_user_sessions

View = Callable[..., HttpResponse]


def _answer(body: dict, status: int = 200) -> JsonResponse:
    response = JsonResponse(body, status=status)
    response["X-Worker"] = str(os.getpid())
    return response


def home(request: HttpRequest) -> HttpResponse:
    user = request.user.get_username() if request.user.is_authenticated else None
    return _answer({"user": user})


def login_view(request: HttpRequest) -> HttpResponse:
    """GET: the CSRF token for the form; POST username and password: logs in."""
    if request.method != "POST":
        return _answer({"csrf_token": get_token(request)})
    user = authenticate(
        request, username=request.POST.get("username"), password=request.POST.get("password")
    )
    if user is None:
        return _answer({"error": "invalid_login"}, status=403)
    login(request, user)
    return _answer({"user": user.get_username()})


@require_POST
def logout_everywhere(request: HttpRequest) -> HttpResponse:
    """Ends every session of the user, on every device, in every worker."""
    if not request.user.is_authenticated:
        return _answer({"error": "not_logged_in"}, status=403)
    ended = revoke_user_sessions(request.user)
    logout(request)
    return _answer({"ended": ended})


def catalogue(request: HttpRequest) -> HttpResponse:
    """A page that is expensive to build, cached for five minutes for every worker."""

    def build() -> str:
        return f"<h1>Catalogue</h1><p>built at {time.time():.6f} by worker {os.getpid()}</p>"

    response = HttpResponse(cache.get_or_set("catalogue-page", build, timeout=300))
    response["X-Worker"] = str(os.getpid())
    return response


def rate_limited(limit: int, period_ms: int) -> Callable[[View], View]:
    """Allows ``limit`` calls per ``period_ms`` per user (or per client IP before login),
    counted by Larder for every worker; answers 429 with Retry-After past it."""

    def decorate(view: View) -> View:
        @functools.wraps(view)
        def wrapper(request: HttpRequest, *args: object, **kwargs: object) -> HttpResponse:
            who = (
                f"user:{request.user.pk}"
                if request.user.is_authenticated
                else f"ip:{request.META.get('REMOTE_ADDR', '')}"
            )
            larder = sync_client(settings.LARDER_LOCATION, {}, "LARDER_LOCATION")
            result = larder.ratelimit.check(
                f"{view.__name__}:{who}", limit=limit, period_ms=period_ms
            )
            if result.allowed:
                response = view(request, *args, **kwargs)
            else:
                retry_after = result.headers()["Retry-After"]
                response = _answer(
                    {
                        "error": "rate_limited",
                        "message": f"at most {limit} requests per {period_ms // 1000} s",
                        "retry_after": int(retry_after),
                    },
                    status=429,
                )
            for name, value in result.headers().items():
                response[name] = value
            return response

        return wrapper

    return decorate


@rate_limited(settings.CHAT_LIMIT, settings.CHAT_PERIOD_MS)
def chat(request: HttpRequest) -> HttpResponse:
    return _answer({"reply": "Hello! How can I help?"})
