from django import template

from frontend.money import format_major_units, format_money, format_money_exact

register = template.Library()


@register.filter
def money(amount, currency: str) -> str:
    """`{{ offer.unit_amount|money:offer.currency }}` → "12.50 USD"."""
    return format_money(amount, currency or "usd")


@register.filter
def major_units(amount, currency: str) -> str:
    """`{{ offer.unit_amount|major_units:offer.currency }}` → "12.50" (a form's value)."""
    return "" if amount in (None, "") else format_major_units(amount, currency or "usd")


@register.filter
def money_exact(minor_units: str, currency: str) -> str:
    """`{{ line.accrued_exact|money_exact:line.currency }}` → "0.112 USD" (sub-cent)."""
    return format_money_exact(minor_units, currency or "usd")
