"""Model cards in the Hugging Face format: YAML front matter, then Markdown."""

from __future__ import annotations

import json

from training_worker.ml.base_models import packaged_base_provenance
from training_worker.ml.evaluation_report import read_evaluation
from training_worker.ml.pooling import how_to_load, recorded_classification_head

# How the run record's "precision" reads on a card (weights are float32 either way).
TRAINING_ARITHMETIC = {
    "bf16": "bfloat16 autocast (float32 weights and adapter)",
    "fp32": "float32",
}


def _yaml_scalar(value) -> str:
    return json.dumps(value, ensure_ascii=False)  # JSON scalars are valid YAML


def _metric_lines(task: str, evaluation: dict) -> list[tuple[str, str, float]]:
    metrics = evaluation.get("metrics", {})
    if task == "text-classification":
        names = [("accuracy", "Accuracy"), ("macro_f1", "Macro F1")]
    else:
        names = [
            ("adapter_perplexity", "Perplexity"),
            ("exact_match", "Exact match"),
            ("token_f1", "Token F1"),
        ]
        report = read_evaluation(evaluation)
        graded = report.graded_metric if report else None
        if graded:
            direction = "higher is better" if graded["higher_is_better"] else "lower is better"
            names.append((graded["name"], f"{graded['label']} ({direction})"))
    return [(key, label, metrics[key]) for key, label in names if key in metrics]


def _interval(low, high) -> str:
    return "" if low is None or high is None else f" [{low:+.4f}, {high:+.4f}]"


def _baseline_lines(evaluation: dict) -> list[str]:
    """Baselines (value, interval) and the lift over each, the strongest named first."""
    report = read_evaluation(evaluation)
    if report is None or not report.baselines:
        return []
    lines = []
    strongest = report.strongest_baseline
    if strongest is not None and strongest.lift is not None:
        lift = strongest.lift
        lines.append(
            f"| **lift over the strongest baseline ({strongest.display_name})**, "
            f"{lift.metric} | {lift.delta:+.4f}{_interval(lift.ci_low, lift.ci_high)} |"
        )
    for baseline in report.baselines:
        if baseline.value is None:
            continue
        low, high = baseline.ci_low, baseline.ci_high
        interval = "" if low is None or high is None else f" [{low:.4f}, {high:.4f}]"
        lines.append(
            f"| baseline: {baseline.display_name}, {baseline.metric} | "
            f"{baseline.value:.4f}{interval} |"
        )
        if baseline.lift is not None:
            lift = baseline.lift
            lines.append(
                f"| lift over {baseline.display_name} | "
                f"{lift.delta:+.4f}{_interval(lift.ci_low, lift.ci_high)} |"
            )
    graded = report.graded_metric
    if graded and graded["strongest_baseline"] and graded["strongest_baseline"].get("lift"):
        strongest_graded, lift = graded["strongest_baseline"], graded["strongest_baseline"]["lift"]
        lines.append(
            f"| **{graded['label']}: better than the strongest baseline on it "
            f"({strongest_graded['label']}) by** | "
            f"{lift['delta']:+.4f}{_interval(lift.get('ci_low'), lift.get('ci_high'))} |"
        )
        lines += ["", f"{graded['label']}: {graded['why']}. Positive lifts mean better."]
    if report.is_legacy:
        lines += ["", "This evaluation predates the classic and LLM baselines."]
    if report.prior_sealed_evaluations:
        lines += [
            "",
            f"{report.prior_sealed_evaluations} sealed evaluation(s) on this data before this "
            f"one: the lift intervals are 95% intervals Bonferroni-corrected for "
            f"{report.sealed_evaluation_number} sealed evaluations on this data.",
        ]
    return lines


def _blend_lines(evaluation: dict, lexical_head_sha256: str) -> list[str]:
    """What is served: the adapter alone, or blended with the lexical head (and by how
    much), with the adapter alone's score on the same sealed rows."""
    report = read_evaluation(evaluation)
    blend = report.blend if report else None
    if blend is None:
        return []
    if not blend.is_blended:
        reason = f" ({blend.reason})" if blend.reason else ""
        return ["", f"Blend: none, the adapter alone is served{reason}."]
    lines = [
        "",
        f"Blend: what is served and scored above is {blend.weight:.2f} x the adapter's "
        f"probabilities + {1 - blend.weight:.2f} x a classic TF-IDF + logistic regression "
        "model fitted on the same training rows (`lexical_head.safetensors`"
        + (f", SHA-256 `{lexical_head_sha256}`" if lexical_head_sha256 else "")
        + f"); the weight was chosen on {blend.validation_rows or '?'} validation rows "
        "carved from the training rows.",
    ]
    alone = blend.adapter_alone
    if alone is not None and alone.value is not None:
        lift = alone.lift
        lines.append(
            f"The adapter alone scores {alone.metric} {alone.value:.4f}"
            + (f" [{alone.ci_low:.4f}, {alone.ci_high:.4f}]" if alone.ci_low is not None else "")
            + (
                f"; the blend adds {lift.delta:+.4f}{_interval(lift.ci_low, lift.ci_high)}."
                if lift
                else "."
            )
        )
    return lines


def render_model_card(
    *,
    name: str,
    base_model,
    task: str,
    labels: list[str],
    licence: str,
    evaluation: dict,
    run_record: dict,
    adapter_sha256: str,
    lexical_head_sha256: str = "",
) -> str:
    """The card of a model version; every number comes from the platform's evaluation."""
    metric_lines = _metric_lines(task, evaluation)
    # A packaged base is named by its real Hub id; the package is its provenance.
    provenance = packaged_base_provenance(base_model.source)
    base_model_id = provenance["hub_id"] if provenance else base_model.source
    front = [
        "---",
        f"base_model: {_yaml_scalar(base_model_id)}",
        "library_name: peft",
        f"license: {_yaml_scalar(licence)}",
        f"pipeline_tag: {_yaml_scalar(task)}",
        "tags:",
        "  - niche",
        "  - lora",
        f"  - {task}",
        "model-index:",
        f"  - name: {_yaml_scalar(name)}",
        "    results:",
        "      - task:",
        f"          type: {_yaml_scalar(task)}",
        "        dataset:",
        f"          name: {_yaml_scalar('sealed split of the expert dataset')}",
        "          type: private",
        "        metrics:",
    ]
    for key, label, value in metric_lines:
        front += [
            f"          - type: {key}",
            f"            name: {_yaml_scalar(label)}",
            f"            value: {value}",
            "            verified: true",
        ]
    front.append("---")
    dataset = evaluation.get("dataset", {})
    libraries = ", ".join(f"{k} {v}" for k, v in run_record.get("library_versions", {}).items())
    hyper = run_record.get("resolved_hyperparameters", {})
    body = [
        f"# {name}",
        "",
        f"A LoRA adapter for **{base_model.display_name}** (`{base_model_id}`) trained on "
        f"Niche for {task.replace('-', ' ')}. The evaluation below was run by the platform "
        f"on a sealed split of {dataset.get('sealed_rows', '?')} rows that the trainer never "
        "saw; the expert cannot edit it.",
        "",
        "## Evaluation (sealed split)",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    body += [f"| {label} | {value:.4f} |" for _, label, value in metric_lines]
    body += _baseline_lines(evaluation)
    body += _blend_lines(evaluation, lexical_head_sha256)
    if labels:
        body += ["", f"Labels: {', '.join(f'`{label}`' for label in labels)}."]
    body += [
        "",
        "## Training",
        "",
        *(
            [f"- Base model: `{provenance['hub_id']}` as shipped in `{provenance['package']}`"]
            if provenance
            else []
        ),
        f"- Base model revision: `{base_model.revision or 'as packaged'}`",
        f"- Seed: {run_record.get('seed')}",
        *(
            [f"- Training arithmetic: {TRAINING_ARITHMETIC[run_record['precision']]}"]
            if run_record.get("precision") in TRAINING_ARITHMETIC
            else []
        ),
        f"- Hyperparameters: `{json.dumps(hyper, sort_keys=True)}`",
        f"- Dataset SHA-256: `{dataset.get('sha256', '')}` (the sealed split's seed is secret)",
        f"- Libraries: {libraries}",
        f"- Adapter SHA-256: `{adapter_sha256}`",
        *([f"- Lexical head SHA-256: `{lexical_head_sha256}`"] if lexical_head_sha256 else []),
        "",
        "## Use",
        "",
        how_to_load(task, recorded_classification_head(task, run_record))
        + (
            " Blend its class probabilities with the lexical head's as `base_model.json` "
            "(`blend`) of the download describes."
            if lexical_head_sha256
            else ""
        )
        + " Only safetensors are shipped.",
        "",
    ]
    return "\n".join([*front, "", *body])
