"""Error codes of the buyer's evidence."""

from marketplace.errors import (
    ConflictError,
    InvalidInputError,
    NotFoundError,
    PermissionDeniedError,
)


class EvaluationNotFound(NotFoundError):
    default_code = "evaluation_not_found"


class InvalidEvaluation(InvalidInputError):
    default_code = "invalid_evaluation"


class EvaluationRowsInvalid(InvalidInputError):
    default_code = "evaluation_rows_invalid"


class LabelsNotCovered(InvalidInputError):
    default_code = "labels_not_covered"


class EvaluationNeedsLicence(PermissionDeniedError):
    default_code = "evaluation_needs_licence"


class EvaluationNotRerunnable(ConflictError):
    default_code = "evaluation_not_rerunnable"


# --- benchmark sets and leaderboards


class BenchmarkNotFound(NotFoundError):
    default_code = "benchmark_not_found"


class InvalidBenchmark(InvalidInputError):
    default_code = "invalid_benchmark"


class InvalidLabelMap(InvalidInputError):
    default_code = "invalid_label_map"


class NotAModerator(PermissionDeniedError):
    default_code = "not_a_moderator"


# --- compare


class InvalidComparison(InvalidInputError):
    """Not 2-4 distinct published listings (field `listings` says which way)."""

    default_code = "invalid_comparison"
