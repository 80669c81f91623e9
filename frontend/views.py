"""The web portal: thin views over the same services and selectors as the API."""

from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.shortcuts import redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods, require_POST

from accounts import selectors as account_selectors
from accounts import services as account_services
from frontend.forms import ApiKeyForm, SignUpForm
from marketplace.errors import ApplicationError


def not_found(request, exc: ApplicationError):
    """The portal's 404 for a service's not-found error, with its message."""
    return render(request, "errors/error.html", {"status": 404, "message": exc.message}, status=404)


def locked_out(request, response=None, credentials=None):
    """django-axes' lockout page (AXES_LOCKOUT_CALLABLE): 429 and when to try again."""
    from django.conf import settings

    context = {
        "failure_limit": settings.AXES_FAILURE_LIMIT,
        "cooloff_minutes": int(settings.AXES_COOLOFF_TIME.total_seconds() // 60),
    }
    return render(request, "registration/locked_out.html", context, status=429)


def home(request):
    return render(request, "frontend/home.html")


@require_http_methods(["GET", "POST"])
def sign_up(request):
    form = SignUpForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            user = account_services.user_sign_up(**form.cleaned_data)
        except ApplicationError as exc:
            form.add_error("email", exc.message)
        else:
            login(request, user, backend="django.contrib.auth.backends.ModelBackend")
            messages.success(request, "Welcome to Niche.")
            return redirect("dashboard")
    return render(request, "registration/sign_up.html", {"form": form})


def _dashboard(request, *, new_key: str | None = None):
    keys = account_selectors.api_key_list(user=request.user)
    return render(
        request,
        "frontend/dashboard.html",
        {"api_keys": keys, "new_key": new_key, "key_form": ApiKeyForm()},
    )


@login_required
def dashboard(request):
    return _dashboard(request)


@never_cache
@login_required
@require_POST
def api_key_create(request):
    """The secret is in this answer only: never in the session, a message or a cache."""
    form = ApiKeyForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Give the key a name and at least one scope.")
        return redirect("dashboard")
    _, plaintext = account_services.api_key_create(user=request.user, **form.cleaned_data)
    return _dashboard(request, new_key=plaintext)


@login_required
@require_POST
def api_key_revoke(request, key_id):
    try:
        key = account_services.api_key_revoke(user=request.user, key_id=key_id)
    except ApplicationError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, f"Key “{key.name}” revoked.")
    return redirect("dashboard")
