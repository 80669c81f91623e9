"""Error codes of the catalogue."""

from marketplace.errors import (
    ConflictError,
    InvalidInputError,
    NotFoundError,
    PermissionDeniedError,
)


class ListingNotFound(NotFoundError):
    default_code = "listing_not_found"


class InvalidListingTransition(ConflictError):
    default_code = "invalid_listing_transition"


class ListingNotEditable(ConflictError):
    default_code = "listing_not_editable"


class SlugTaken(ConflictError):
    default_code = "slug_taken"


class VersionAlreadyListed(ConflictError):
    default_code = "version_already_listed"


class NotAnExpert(PermissionDeniedError):
    default_code = "not_an_expert"


class InvalidReport(InvalidInputError):
    default_code = "invalid_report"


class InvalidListing(InvalidInputError):
    default_code = "invalid_listing"


class ReviewNotAllowed(PermissionDeniedError):
    default_code = "review_not_allowed"


class ReplyNotAllowed(ConflictError):
    default_code = "reply_not_allowed"


class ReasonRequired(InvalidInputError):
    default_code = "reason_required"


class NotAModerator(PermissionDeniedError):
    default_code = "not_a_moderator"
