"""Portal fixtures borrowed from other suites: the local Stripe server and the shipped
base models (transactional tests flush them)."""

from tests.billing.stripe_server import (  # noqa: F401  fixtures
    local_stripe_server,
    stripe_server,
    stripe_webhooks_to_live_server,
)
from tests.training_worker.conftest import shipped_base_models  # noqa: F401  fixture
