"""Views driven by django.test.Client through the real middleware stack."""

import datetime

from django.contrib.auth import authenticate, login, logout
from django.http import JsonResponse
from django.views.decorators.http import require_GET, require_POST


def _describe(request):
    """What the session looks like to Django on this request."""
    session = request.session
    items = dict(session.items())  # forces the load from the cache
    user = request.user
    return {
        "user": user.get_username() if user.is_authenticated else None,
        "session_key": session.session_key,
        # repr() so bytes, datetimes and tuples compare exactly, not JSON-coerced
        "data": {k: repr(v) for k, v in sorted(items.items())},
    }


@require_POST
def login_view(request):
    user = authenticate(
        request,
        username=request.POST.get("username"),
        password=request.POST.get("password"),
    )
    if user is None:
        return JsonResponse({"ok": False}, status=403)
    login(request, user)
    return JsonResponse({"ok": True, "session_key": request.session.session_key})


@require_POST
def logout_view(request):
    logout(request)  # request.session.flush(): DEL of the old key
    return JsonResponse({"ok": True})


@require_POST
def store_view(request):
    """Store the POSTed fields plus a few non-JSON, binary-heavy values."""
    for name, value in request.POST.items():
        request.session[name] = value
    if request.POST.get("json_only"):
        # cached_db also writes the session to its table with SESSION_SERIALIZER (JSON).
        return JsonResponse({"ok": True, "session_key": request.session.session_key})
    seed = int(request.POST.get("seed", "0"))
    size = int(request.POST.get("blob_size", "256"))
    request.session["blob"] = bytes((seed + i) % 256 for i in range(size))
    request.session["when"] = datetime.datetime(2024, 1, 1, 12, 0, seed % 60, tzinfo=datetime.timezone.utc)
    request.session["tuple"] = (seed, "ünïcødé ✓", None, 3.5)
    return JsonResponse({"ok": True, "session_key": request.session.session_key})


@require_POST
def cycle_view(request):
    request.session.cycle_key()  # new key written, old key DEL
    return JsonResponse({"ok": True, "session_key": request.session.session_key})


@require_POST
def expiry_view(request):
    request.session.set_expiry(int(request.POST["seconds"]))
    return JsonResponse({"ok": True, "session_key": request.session.session_key})


@require_GET
def whoami_view(request):
    return JsonResponse(_describe(request))
