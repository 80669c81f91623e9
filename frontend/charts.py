"""Data for the portal's charts, computed from the platform's evaluation reports."""


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
