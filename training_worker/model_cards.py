"""Model cards in the Hugging Face format: YAML front matter, then Markdown."""

from __future__ import annotations

import json


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
    return [(key, label, metrics[key]) for key, label in names if key in metrics]


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
) -> str:
    """The card of a model version; every number comes from the platform's evaluation."""
    metric_lines = _metric_lines(task, evaluation)
    front = [
        "---",
        f"base_model: {_yaml_scalar(base_model.source)}",
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
        f"A LoRA adapter for **{base_model.display_name}** (`{base_model.source}`) trained on "
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
    for baseline, result in evaluation.get("baselines", {}).items():
        if "accuracy" in result:
            body.append(
                f"| {baseline.replace('_', ' ')} baseline accuracy | {result['accuracy']:.4f} |"
            )
    for name_of_lift, lift in evaluation.get("lift", {}).items():
        if isinstance(lift, dict) and "delta" in lift:
            interval = f"[{lift.get('ci_low', 0):+.4f}, {lift.get('ci_high', 0):+.4f}]"
            body.append(
                f"| lift {name_of_lift.replace('_', ' ')} ({lift.get('metric', '')}) | "
                f"{lift['delta']:+.4f} {interval} |"
            )
    if labels:
        body += ["", f"Labels: {', '.join(f'`{label}`' for label in labels)}."]
    body += [
        "",
        "## Training",
        "",
        f"- Base model revision: `{base_model.revision or 'as packaged'}`",
        f"- Seed: {run_record.get('seed')}",
        f"- Hyperparameters: `{json.dumps(hyper, sort_keys=True)}`",
        f"- Dataset SHA-256: `{dataset.get('sha256', '')}` (the sealed split's seed is secret)",
        f"- Libraries: {libraries}",
        f"- Adapter SHA-256: `{adapter_sha256}`",
        "",
        "## Use",
        "",
        "Load with `peft.PeftModel.from_pretrained(base, adapter_dir)`; "
        "only safetensors are shipped.",
        "",
    ]
    return "\n".join([*front, "", *body])
