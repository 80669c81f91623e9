"""The client's address as the web tier sees it behind AXES_IPWARE_PROXY_COUNT proxies.

django-axes' AXES_CLIENT_IP_CALLABLE (log-in lockouts) and the sign-up throttle both key
on it, so the two agree on who a client is.
"""

import ipaddress

from django.conf import settings


def client_address(request) -> str:
    """With N trusted proxies in front, each appends the address it received from to
    X-Forwarded-For and the last one is REMOTE_ADDR: the client is the N-th entry from the
    right. Entries left of it are whatever the client sent, so never trusted; a header
    shorter than N (a request that bypassed a proxy) or an entry that is not an IP address
    falls back to REMOTE_ADDR."""
    remote = request.META.get("REMOTE_ADDR", "")
    proxies = settings.AXES_IPWARE_PROXY_COUNT or 0
    if proxies <= 0:
        return remote
    forwarded = [p.strip() for p in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",")]
    forwarded = [p for p in forwarded if p]
    if len(forwarded) < proxies:
        return remote
    candidate = forwarded[-proxies]
    try:
        return str(ipaddress.ip_address(candidate))
    except ValueError:
        return remote
