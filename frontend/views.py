"""The web portal: thin views over the same services and selectors as the API."""

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.shortcuts import redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods, require_POST

from accounts import selectors as account_selectors
from accounts import services as account_services
from accounts.client_address import client_address
from accounts.errors import EmailAlreadyVerified, EmailTaken
from frontend.forms import ApiKeyForm, SignUpForm
from marketplace.errors import ApplicationError, RateLimitedError


def not_found(request, exc: ApplicationError):
    """The portal's 404 for a service's not-found error, with its message."""
    return render(request, "errors/error.html", {"status": 404, "message": exc.message}, status=404)


def refused_unless_expert(request, message: str):
    """The portal's 403 for an expert-only page, or None when the user is an expert."""
    if request.user.is_expert:
        return None
    return render(request, "errors/error.html", {"status": 403, "message": message}, status=403)


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
    """Throttled per client address and overall (429 with Retry-After); the new user is
    signed in and mailed a link that verifies their address."""
    form = SignUpForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            user = account_services.user_sign_up(
                **form.cleaned_data, client_address=client_address(request)
            )
        except ApplicationError as exc:
            form.add_error("email" if isinstance(exc, EmailTaken) else None, exc.message)
            status = exc.status if exc.status in (429, 503) else 200
            response = render(request, "registration/sign_up.html", {"form": form}, status=status)
            if isinstance(exc, RateLimitedError):
                response["Retry-After"] = str(exc.retry_after)
            return response
        login(request, user, backend="django.contrib.auth.backends.ModelBackend")
        messages.success(request, "Welcome to Niche.")
        _send_verification_link(request, user)
        return redirect("dashboard")
    return render(request, "registration/sign_up.html", {"form": form})


def _send_verification_link(request, user) -> None:
    try:
        account_services.email_verification_send(
            user=user, site_url=request.build_absolute_uri("/")
        )
    except ApplicationError as exc:
        messages.error(request, exc.message)
    else:
        messages.info(
            request,
            f"We sent a link to {user.email}: open it to verify your address (it works for "
            f"{settings.EMAIL_VERIFICATION_LINK_HOURS} hours). Until then you cannot create "
            "API keys or take free trials.",
        )


@login_required
@require_POST
def verify_email_resend(request):
    _send_verification_link(request, request.user)
    return redirect("dashboard")


@require_http_methods(["GET", "POST"])
def verify_email(request, token):
    """The emailed link. GET changes nothing (mail scanners open links) and shows a button;
    its POST verifies. Works signed in or not: the signed token names the account."""
    if request.method == "POST":
        try:
            verified = account_services.email_verification_confirm(token=token)
        except EmailAlreadyVerified as exc:
            messages.info(request, exc.message)
            return redirect("dashboard" if request.user.is_authenticated else "login")
        except ApplicationError as exc:
            return _verify_email_page(request, token, error=exc)
        messages.success(
            request,
            f"{verified.email} is verified: its account can create API keys and take free trials.",
        )
        return redirect("dashboard" if request.user.pk == verified.pk else "login")
    try:
        link_user = account_selectors.email_verification_link_user(token=token)
    except ApplicationError as exc:
        return _verify_email_page(request, token, error=exc)
    return _verify_email_page(request, token, verified=link_user.email_verified)


def _verify_email_page(request, token, *, error=None, verified=False):
    context = {"token": token, "error": error, "verified": verified}
    status = error.status if error is not None else 200
    return render(request, "registration/verify_email.html", context, status=status)


def _dashboard(request, *, new_key: str | None = None):
    keys = account_selectors.api_key_list(user=request.user)
    return render(
        request,
        "frontend/dashboard.html",
        {
            "api_keys": keys,
            "new_key": new_key,
            "key_form": ApiKeyForm(),
            "live_keys": account_selectors.api_key_live_count(user=request.user),
            "max_keys": settings.API_KEYS_MAX_PER_USER,
            "rate_limit_per_minute": settings.SERVING_RATE_LIMIT_PER_MINUTE,
        },
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
        messages.error(
            request, "Give the key a name, at least one scope and, if any, a rate limit above 0."
        )
        return redirect("dashboard")
    try:
        _, plaintext = account_services.api_key_create(user=request.user, **form.cleaned_data)
    except ApplicationError as exc:  # address not verified, too many keys, limit too high
        messages.error(request, exc.message)
        return redirect("dashboard")
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
