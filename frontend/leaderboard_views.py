"""Leaderboards in the portal: the sealed benchmark sets and each set's ranked board,
in plain language for buyers who are not engineers. Public, as the catalogue is."""

from __future__ import annotations

import math

from django.shortcuts import render

from evidence import leaderboards
from frontend.views import not_found
from marketplace.errors import ApplicationError

# Geometry of the interval chart (SVG user units): rank, a label column, then the plot.
# Narrow enough that its 12-unit text stays legible on a 390 px phone (drawn at most
# CHART_WIDTH px wide on a laptop).
CHART_WIDTH = 500
LABEL_X = 30
PLOT_X = 200
PLOT_WIDTH = 280
ROW_HEIGHT = 26
LABEL_CHARS = 26

METRIC_EXPLAINED = {
    "accuracy": "The share of the set's rows the model labels as the set does: 0.90 means "
    "9 in 10 right. Higher is better.",
    "character_error_rate": "How many letters of the answer are wrong, missing or extra, as a "
    "share of the right answer's letters: 0 is perfect, 0.25 is one letter in four wrong. "
    "Lower is better.",
    "token_error_rate": "How many symbols of the answer are wrong, missing or extra, as a "
    "share of the right answer's symbols: 0 is perfect. Lower is better.",
    "chrf": "How much of the right answer's text the model's answer reproduces, character by "
    "character, from 0 to 1. Higher is better.",
}


def _axis(rows) -> tuple[float, float]:
    """The plotted range: every interval, on tenths, at least 0.2 wide, within [0, 1]
    where the values are."""
    lows = [row.ci_low for row in rows] or [0.0]
    highs = [row.ci_high for row in rows] or [1.0]
    start = max(0.0, math.floor(min(lows) * 10) / 10)
    end = math.ceil(max(highs) * 10) / 10
    if end - start < 0.2:
        end = start + 0.2
    return start, max(end, start + 0.2)


def interval_chart(board: leaderboards.Board) -> dict | None:
    """Each row's value (a dot) and its 95% interval (a bar), in the board's order; the
    template draws it as an inline SVG."""
    if not board.rows:
        return None
    start, end = _axis(board.rows)

    def x(value: float) -> float:
        share = (min(max(value, start), end) - start) / (end - start)
        return round(PLOT_X + PLOT_WIDTH * share, 1)

    bars = []
    for index, row in enumerate(board.rows):
        label = row.label if len(row.label) <= LABEL_CHARS else row.label[: LABEL_CHARS - 1] + "…"
        bars.append(
            {
                "y": index * ROW_HEIGHT,
                "rank": row.rank,
                "kind": row.kind,
                "label": label,
                "title": row.label,
                "value": row.value,
                "low": row.ci_low,
                "high": row.ci_high,
                "x_low": x(row.ci_low),
                "x_high": x(row.ci_high),
                "x_value": x(row.value),
            }
        )
    axis_y = ROW_HEIGHT * len(bars) + 4
    ticks = [
        {"x": x(start + (end - start) * i / 2), "value": start + (end - start) * i / 2}
        for i in range(3)
    ]
    return {
        "bars": bars,
        "axis_y": axis_y,
        "height": axis_y + 20,
        "ticks": ticks,
        "plot_x": PLOT_X,
        "plot_end": PLOT_X + PLOT_WIDTH,
        "width": CHART_WIDTH,
        "label_x": LABEL_X,
    }


def leaderboard_index(request):
    sets = list(leaderboards.leaderboard_list().order_by("task", "slug"))
    return render(request, "frontend/leaderboards.html", {"sets": sets})


def leaderboard_page(request, task: str, benchmark: str):
    try:
        board = leaderboards.leaderboard_get(slug=benchmark, task=task)
    except ApplicationError as exc:
        return not_found(request, exc)
    metric = board.metric
    tied_ranks = sorted({row.rank for row in board.listings if row.tied})
    return render(
        request,
        "frontend/leaderboard.html",
        {
            "board": board,
            "benchmark": board.benchmark,
            "metric": metric,
            "metric_explained": METRIC_EXPLAINED.get(metric.get("name", ""), metric.get("why", "")),
            "chart": interval_chart(board),
            "tied_ranks": tied_ranks,
        },
    )
