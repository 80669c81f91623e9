"""Error codes of commerce. 402 is not in the contract: a missing licence is 403."""

from marketplace.errors import (
    ApplicationError,
    ConflictError,
    InvalidInputError,
    NotFoundError,
    PermissionDeniedError,
)


class InvalidOffer(InvalidInputError):
    default_code = "invalid_offer"


class OfferNotFound(NotFoundError):
    default_code = "offer_not_found"


class OfferRetired(ConflictError):
    default_code = "offer_retired"


class NotListingOwner(PermissionDeniedError):
    default_code = "not_listing_owner"


class ListingNotPurchasable(ConflictError):
    """The listing is not published, or its expert cannot be paid yet."""

    default_code = "listing_not_purchasable"


class LicenceNotFound(NotFoundError):
    default_code = "licence_not_found"


class InvalidLicenceTransition(ConflictError):
    default_code = "invalid_licence_transition"


class LicenceAlreadyHeld(ConflictError):
    default_code = "licence_already_held"


class FreeTrialAlreadyUsed(ConflictError):
    default_code = "free_trial_used"


class LicenceRequired(PermissionDeniedError):
    """No live licence lets this caller do this (the contract has no 402)."""

    default_code = "licence_required"


class QuotaExceeded(ApplicationError):
    """The licence's calls for this period are used up."""

    status = 429
    default_code = "quota_exceeded"


class InvalidUsage(InvalidInputError):
    default_code = "invalid_usage"


class ReasonRequired(InvalidInputError):
    default_code = "reason_required"


class VersionNotFound(NotFoundError):
    default_code = "version_not_found"


class IdempotencyKeyReused(ConflictError):
    default_code = "idempotency_key_reused"


class InvalidPeriod(InvalidInputError):
    default_code = "invalid_period"


# --- Stripe (billing/stripe_gateway.py turns StripeError into these)


class PaymentProviderError(ApplicationError):
    """Stripe refused a request we made: a bug or a misconfiguration on our side."""

    status = 502
    default_code = "payment_provider_error"


class PaymentProviderUnavailable(ApplicationError):
    """Stripe could not be reached or asked us to slow down; retrying is safe."""

    status = 503
    default_code = "payment_provider_unavailable"


class PaymentDeclined(ConflictError):
    default_code = "payment_declined"


class InvalidWebhookSignature(ApplicationError):
    """A webhook whose Stripe-Signature is missing, wrong or too old."""

    status = 400
    default_code = "invalid_signature"


class ExpertPayoutsNotEnabled(ListingNotPurchasable):
    """The listing's expert has not finished Stripe onboarding: nobody can pay them yet."""

    default_code = "expert_payouts_not_enabled"


class AdapterFileRefused(ConflictError):
    """The stored adapter fails the safetensors check (training_worker.ml.safe_weights):
    no bundle is built and no download recorded."""

    default_code = "adapter_file_refused"
