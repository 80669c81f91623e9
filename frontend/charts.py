"""Data for the portal's charts: evaluation reports, earnings and usage."""

from datetime import date

from frontend.money import format_money


def comparison_bars(evaluation: dict | None) -> list[dict]:
    """Bars of the specialist against each baseline on the sealed split.

    Classification: accuracy with the specialist's bootstrap interval; generation:
    token-F1 of the adapter against the base model.
    """
    if not evaluation:
        return []
    metrics = evaluation.get("metrics", {})
    if evaluation.get("task") != "text-classification":
        return [
            {"name": "This specialist", "value": metrics.get("token_f1", 0)},
            {"name": "Base model", "value": metrics.get("base_token_f1", 0)},
        ]
    low, high = (evaluation.get("intervals", {}).get("accuracy") or [None, None])[:2]
    bars = [{"name": "This specialist", "value": metrics.get("accuracy", 0), "low": low,
             "high": high}]  # fmt: skip
    for name, baseline in evaluation.get("baselines", {}).items():
        bars.append({"name": name.replace("_", " ").capitalize(), "value": baseline["accuracy"]})
    return bars


def monthly_bars(
    months: list[date], totals: dict[date, int], currency: str, *, plot_height: int = 150
) -> list[dict]:
    """One bar per month (oldest first) of an expert's net earnings in one currency.

    `px` is the bar's height in the plot (the best month fills it) and `top` its upper
    edge; months without money keep their slot on the axis with an empty bar.
    """
    tallest = max((abs(v) for v in totals.values()), default=0) or 1
    bars = []
    for month in months:
        value = totals.get(month, 0)
        px = round(plot_height * max(value, 0) / tallest)
        bars.append({
            "month": month, "label": f"{month:%b %y}", "value": value,
            "text": format_money(value, currency), "px": px, "top": 20 + plot_height - px,
        })  # fmt: skip
    return bars


def daily_bars(days: list[date], calls: dict[date, int], *, plot_height: int = 80) -> list[dict]:
    """One bar per day (oldest first) of a buyer's served calls on one listing.

    Same geometry as monthly_bars: `px` the bar's height (the busiest day fills the
    plot), `top` its upper edge; days without calls keep their slot with an empty bar.
    `tick`: the axis names every seventh day, counted back from the last (today).
    """
    busiest = max(calls.values(), default=0) or 1
    bars = []
    for index, day in enumerate(days):
        value = calls.get(day, 0)
        px = round(plot_height * value / busiest)
        bars.append({
            "day": day, "label": f"{day:%d %b}", "value": value, "px": px,
            "top": 10 + plot_height - px, "tick": (len(days) - 1 - index) % 7 == 0,
        })  # fmt: skip
    return bars
