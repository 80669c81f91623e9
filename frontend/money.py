"""Money as people read and type it: integer minor units ↔ "12.50 USD"."""

from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

# Stripe's currencies whose minor unit is not the hundredth.
ZERO_DECIMAL = frozenset(
    "bif clp djf gnf jpy kmf krw mga pyg rwf ugx vnd vuv xaf xof xpf".split()  # noqa: SIM905
)
THREE_DECIMAL = frozenset({"bhd", "jod", "kwd", "omr", "tnd"})


def decimals_of(currency: str) -> int:
    currency = currency.lower()
    if currency in ZERO_DECIMAL:
        return 0
    return 3 if currency in THREE_DECIMAL else 2


def format_money(amount: int | None, currency: str) -> str:
    """`1250, "usd"` → "12.50 USD"; `-300` → "-3.00 USD"."""
    if amount is None:
        return "—"
    places = decimals_of(currency)
    value = Decimal(abs(amount)).scaleb(-places)
    sign = "-" if amount < 0 else ""
    return f"{sign}{value:,.{places}f} {currency.upper()}"


def format_money_exact(minor_units: str, currency: str) -> str:
    """`"11.2", "usd"` → "0.112 USD": an amount of fractions of a minor unit (a garden's
    accrual before it is rounded to the cent), with the decimals it needs."""
    value = Decimal(minor_units).scaleb(-decimals_of(currency))
    places = max(decimals_of(currency), -value.normalize().as_tuple().exponent)
    return f"{value:,.{places}f} {currency.upper()}"


def format_major_units(amount: int, currency: str) -> str:
    """`1250, "usd"` → "12.50": what the offers editor puts back in its price field."""
    places = decimals_of(currency)
    return f"{Decimal(amount).scaleb(-places):.{places}f}"


def parse_major_units(text: str, currency: str) -> int:
    """What an expert types ("12.5") → minor units (1250). ValueError when it is not a
    non-negative amount with at most the currency's decimals."""
    places = decimals_of(currency)
    try:
        value = Decimal(text.strip().replace(",", ""))
    except InvalidOperation:
        raise ValueError(f"“{text}” is not an amount.") from None
    if not value.is_finite() or value < 0:
        raise ValueError("The amount must be zero or more.")
    minor = value.scaleb(places)
    if minor != minor.to_integral_value():
        raise ValueError(f"{currency.upper()} has {places} decimal places at most.")
    return int(minor.quantize(Decimal(1), rounding=ROUND_HALF_UP))
