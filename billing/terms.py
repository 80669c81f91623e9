"""The licence terms a buyer agrees to, snapshotted onto the licence at purchase."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from listings.models import Listing


@dataclass(frozen=True)
class LicenceTerms:
    """What a licence allows; the listing's terms at the moment of purchase."""

    commercial_use: bool = field(metadata={"help": "Outputs may be used commercially."})
    derivatives_allowed: bool = field(
        metadata={"help": "The buyer may fine-tune or otherwise derive from the model."}
    )
    on_prem_download: bool = field(
        metadata={"help": "The adapter may run on the buyer's own machines."}
    )
    attribution_required: bool = field(
        metadata={"help": "Products built on it must credit the expert."}
    )
    max_calls_per_month: int | None = field(
        default=None, metadata={"help": "The listing's monthly call cap; None: no cap."}
    )

    def __post_init__(self) -> None:
        for name in ("commercial_use", "derivatives_allowed", "on_prem_download"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool")
        if not isinstance(self.attribution_required, bool):
            raise ValueError("attribution_required must be a bool")
        cap = self.max_calls_per_month
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 0):
            raise ValueError("max_calls_per_month must be a non-negative integer or None")

    @classmethod
    def of_listing(cls, listing: Listing) -> LicenceTerms:
        return cls(
            commercial_use=listing.commercial_use,
            derivatives_allowed=listing.derivatives_allowed,
            on_prem_download=listing.on_prem_download,
            attribution_required=listing.attribution_required,
            max_calls_per_month=listing.max_calls_per_month,
        )

    @classmethod
    def from_json(cls, data: dict) -> LicenceTerms:
        """Read a stored snapshot; unknown keys are ignored, missing ones are an error."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def to_json(self) -> dict:
        return asdict(self)
