"""Data for the portal's charts: evaluation reports, earnings and usage."""

from datetime import date

from frontend.money import format_money

# Geometry of the baseline chart (SVG user units): a label column, then the plot.
BAR_LABEL_WIDTH = 250
BAR_PLOT_WIDTH = 320
BAR_ROW_HEIGHT = 30


def _x(value: float | None) -> int | None:
    """Horizontal position of a score in [0, 1] inside the plot."""
    if value is None:
        return None
    return BAR_LABEL_WIDTH + round(BAR_PLOT_WIDTH * min(max(value, 0.0), 1.0))


def comparison_bars(summary: dict | None) -> list[dict]:
    """Bars of the specialist and of every baseline on the sealed split, on the primary
    metric (accuracy or exact match), each with its 95 % bootstrap interval as a whisker.

    ``summary`` is an evaluation summary (``EvaluationReport.as_public_dict()``). Each bar
    carries its pixel geometry (``x_end``, ``x_low``, ``x_high``, ``y``) for the template.
    """
    if not summary or summary.get("score") is None:
        return []
    low, high = (summary.get("score_interval") or [None, None])[:2]
    strongest = (summary.get("strongest_baseline") or {}).get("name")
    rows = [
        {"name": "This specialist", "value": summary["score"], "low": low, "high": high,
         "kind": "specialist"},
    ]  # fmt: skip
    alone = (summary.get("blend") or {}).get("adapter_alone")
    if alone and alone.get("value") is not None:  # served as a blend: what the adapter adds
        rows.append(
            {"name": "Adapter alone (no blend)", "value": alone["value"],
             "low": alone.get("ci_low"), "high": alone.get("ci_high"), "kind": "adapter_alone"}
        )  # fmt: skip
    for baseline in summary.get("baselines") or []:
        if baseline.get("value") is None:
            continue
        rows.append(
            {
                "name": baseline["label"],
                "value": baseline["value"],
                "low": baseline.get("ci_low"),
                "high": baseline.get("ci_high"),
                "kind": "strongest" if baseline["name"] == strongest else "baseline",
            }
        )
    bars = []
    for index, row in enumerate(rows):
        has_interval = row["low"] is not None and row["high"] is not None
        bars.append(
            {
                **row,
                "y": index * BAR_ROW_HEIGHT,
                "x_start": BAR_LABEL_WIDTH,
                "width": _x(row["value"]) - BAR_LABEL_WIDTH,
                "x_low": _x(row["low"]) if has_interval else None,
                "x_high": _x(row["high"]) if has_interval else None,
            }
        )
    return bars


def comparison_chart(summary: dict | None) -> dict | None:
    """``comparison_bars`` with the SVG's height and the axis position; None: no chart."""
    bars = comparison_bars(summary)
    if not bars:
        return None
    axis_y = BAR_ROW_HEIGHT * len(bars)
    return {"bars": bars, "axis_y": axis_y, "height": axis_y + 20}


def _blend(share: float) -> str:
    """Light grey (nothing) to the portal's blue (the whole row), as #rrggbb."""
    start, end = (241, 243, 245), (59, 91, 219)
    channels = (round(a + (b - a) * share) for a, b in zip(start, end, strict=True))
    return "#" + "".join(f"{channel:02x}" for channel in channels)


HEATMAP_CELL = 44
HEATMAP_LABEL_WIDTH = 130


def confusion_heatmap(summary: dict | None) -> dict | None:
    """The confusion matrix as heat-map cells: rows are true labels, columns predicted;
    a cell's colour is its share of the true label's rows (so each row reads as recall)."""
    matrix = (summary or {}).get("confusion_matrix") or {}
    labels, counts = matrix.get("labels") or [], matrix.get("matrix") or []
    if not labels or len(counts) != len(labels):
        return None
    top = HEATMAP_LABEL_WIDTH  # column labels are written rotated above the cells
    cells = []
    for row_index, row in enumerate(counts):
        total = sum(row) or 1
        for column_index, count in enumerate(row):
            share = count / total
            cells.append({
                "x": HEATMAP_LABEL_WIDTH + column_index * HEATMAP_CELL,
                "y": top + row_index * HEATMAP_CELL, "count": count, "share": share,
                "fill": _blend(share), "text_fill": "#ffffff" if share > 0.55 else "#1b1f24",
                "diagonal": row_index == column_index,
                "title": f"true {labels[row_index]}, predicted {labels[column_index]}: {count}",
            })  # fmt: skip
    size = HEATMAP_LABEL_WIDTH + HEATMAP_CELL * len(labels)
    return {
        "cells": cells,
        "cell": HEATMAP_CELL,
        "half": HEATMAP_CELL // 2,
        "row_labels": [
            {"text": label, "y": top + i * HEATMAP_CELL + HEATMAP_CELL // 2 + 4}
            for i, label in enumerate(labels)
        ],
        "column_labels": [
            {"text": label, "x": HEATMAP_LABEL_WIDTH + i * HEATMAP_CELL + HEATMAP_CELL // 2}
            for i, label in enumerate(labels)
        ],
        "width": size + 10,
        "height": top + HEATMAP_CELL * len(labels) + 10,
        "label_bottom": top - 6,
    }


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


# Geometry of an interval chart (SVG user units): each row's label on a line of its own
# above its bar, so long names are never clipped, at any width.
INTERVAL_WIDTH = 600
INTERVAL_ROW_HEIGHT = 44


def interval_chart(rows: list[dict], *, higher_is_better: bool = True) -> dict | None:
    """Bars with 95 % interval whiskers on a 0-1 scale: ``rows`` of {name, value, low,
    high, kind}. An error rate (lower is better) is drawn as it is, and the axis says
    which way is better. None: nothing to draw."""
    rows = [row for row in rows if row.get("value") is not None]
    if not rows:
        return None

    def x(value):
        if value is None:
            return None
        return 5 + round((INTERVAL_WIDTH - 60) * min(max(float(value), 0.0), 1.0))

    bars = []
    for index, row in enumerate(rows):
        has_interval = row.get("low") is not None and row.get("high") is not None
        bars.append(
            {
                **row,
                "y": index * INTERVAL_ROW_HEIGHT,
                "width": max(x(row["value"]) - 5, 1),
                "x_low": x(row["low"]) if has_interval else None,
                "x_high": x(row["high"]) if has_interval else None,
            }
        )
    axis_y = INTERVAL_ROW_HEIGHT * len(bars)
    return {
        "bars": bars,
        "axis_y": axis_y,
        "height": axis_y + 34,
        "mid": x(0.5),
        "end": x(1.0),
        "better": "higher is better" if higher_is_better else "lower is better",
    }
