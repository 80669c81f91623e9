"""Values every portal page needs."""

from billing.stripe_gateway import sandbox_mode


def payments(request) -> dict:
    """`payments_sandbox`: no Stripe keys are configured, so purchases move no money and
    every page says so (base.html's banner)."""
    return {"payments_sandbox": sandbox_mode()}
