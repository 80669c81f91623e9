"""Evaluation on the sealed split: pure metric functions (numpy) and model-running functions.

Metric functions take integer class ids; label names only appear in the report.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from training_worker.ml.baselines import (
    NEAREST_NEIGHBOUR_METHOD,
    EvaluationOptions,
    few_shot_examples,
    nearest_neighbour_completions,
)
from training_worker.ml.data import (
    IGNORE_INDEX,
    EncodedExample,
    classification_token_ids,
    collate_causal,
    collate_classification,
    encode_classification,
    encode_generation,
    truncate_classification,
    truncate_generation,
)
from training_worker.ml.evaluation_report import (
    REPORT_VERSION,
    BaselineResult,
    Blend,
    EvaluationReport,
    Lift,
    baseline_label,
)
from training_worker.ml.graded_metrics import (
    GradedMetric,
    choose_graded_metric,
    normalise_answer,
    strict_exact_match,
)
from training_worker.ml.prompts import (
    context_limit,
    encode_rendered,
    prompt_budget,
    prompt_token_ids,
    render_messages,
)

BOOTSTRAP_RESAMPLES = 1000
EVAL_BATCH_SIZE = 64
# The lifts' intervals are family-wise 95 %: 5 % is shared out over the sealed
# evaluations an owner ran on one data family (Bonferroni).
FAMILY_WISE_ALPHA_PERCENT = 5.0


# ---------------------------------------------------------------- pure metrics


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_labels: int) -> np.ndarray:
    """``matrix[t, p]`` counts rows of true class ``t`` predicted as ``p``."""
    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    flat = np.bincount(y_true * n_labels + y_pred, minlength=n_labels * n_labels)
    return flat.reshape(n_labels, n_labels)


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    return float((y_true == y_pred).mean()) if len(y_true) else 0.0


def per_class_scores(
    y_true: np.ndarray, y_pred: np.ndarray, n_labels: int
) -> dict[str, np.ndarray]:
    """Precision, recall, F1 and support per class; 0 where a ratio is undefined."""
    matrix = confusion_matrix(y_true, y_pred, n_labels)
    true_positives = np.diag(matrix).astype(float)
    predicted = matrix.sum(axis=0).astype(float)
    support = matrix.sum(axis=1).astype(float)
    precision = np.divide(true_positives, predicted, out=np.zeros(n_labels), where=predicted > 0)
    recall = np.divide(true_positives, support, out=np.zeros(n_labels), where=support > 0)
    denominator = predicted + support
    f1 = np.divide(2 * true_positives, denominator, out=np.zeros(n_labels), where=denominator > 0)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support.astype(int)}


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, n_labels: int) -> float:
    """Mean F1 over the classes that occur in ``y_true`` or ``y_pred`` (as scikit-learn does)."""
    matrix = confusion_matrix(y_true, y_pred, n_labels)
    present = (matrix.sum(axis=0) + matrix.sum(axis=1)) > 0
    if not present.any():
        return 0.0
    return float(per_class_scores(y_true, y_pred, n_labels)["f1"][present].mean())


def _bootstrap_indices(n_rows: int, resamples: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n_rows, size=(resamples, n_rows))


def _resampled_accuracy(correct: np.ndarray, indices: np.ndarray) -> np.ndarray:
    return correct[indices].mean(axis=1)


def _resampled_macro_f1(
    y_true: np.ndarray, y_pred: np.ndarray, n_labels: int, indices: np.ndarray
) -> np.ndarray:
    """Macro-F1 of every resample at once: per-resample class counts through one bincount."""
    resamples = indices.shape[0]
    offsets = (np.arange(resamples) * n_labels)[:, None]
    size = resamples * n_labels
    true_r, pred_r = y_true[indices], y_pred[indices]
    true_counts = np.bincount((offsets + true_r).ravel(), minlength=size)
    pred_counts = np.bincount((offsets + pred_r).ravel(), minlength=size)
    hit = true_r == pred_r
    tp_counts = np.bincount((offsets + true_r)[hit], minlength=size)
    true_counts = true_counts.reshape(resamples, n_labels).astype(float)
    pred_counts = pred_counts.reshape(resamples, n_labels).astype(float)
    tp_counts = tp_counts.reshape(resamples, n_labels).astype(float)
    denominator = true_counts + pred_counts
    f1 = np.divide(
        2 * tp_counts, denominator, out=np.zeros_like(denominator), where=denominator > 0
    )
    present = denominator > 0
    return (f1 * present).sum(axis=1) / np.maximum(present.sum(axis=1), 1)


def _metric_samples(
    metric: str, y_true: np.ndarray, y_pred: np.ndarray, n_labels: int, indices: np.ndarray
) -> np.ndarray:
    if metric == "accuracy":
        return _resampled_accuracy((y_true == y_pred).astype(float), indices)
    if metric == "macro_f1":
        return _resampled_macro_f1(y_true, y_pred, n_labels, indices)
    raise ValueError(f"metric must be accuracy or macro_f1, got {metric!r}")


def bootstrap_interval(
    metric: str,
    y_true: np.ndarray,
    y_pred: np.ndarray,
    n_labels: int,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile 95 % interval of ``metric`` over ``resamples`` seeded bootstrap resamples."""
    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    indices = _bootstrap_indices(len(y_true), resamples, seed)
    samples = _metric_samples(metric, y_true, y_pred, n_labels, indices)
    low, high = np.percentile(samples, [2.5, 97.5])
    return float(low), float(high)


def lift_percentiles(sealed_evaluations: int = 1) -> tuple[float, float]:
    """The percentiles (0-100) of the paired bootstrap differences that bound a lift's
    interval when its owner has run ``sealed_evaluations`` sealed evaluations on the same
    data family, this one included: Bonferroni, alpha / (2m) and 1 - alpha / (2m) with
    alpha 5 %, so that all m intervals hold together with 95 % probability. (2.5, 97.5)
    for the first evaluation; each further one widens the interval."""
    if sealed_evaluations < 1:
        raise ValueError(f"sealed_evaluations must be at least 1, got {sealed_evaluations}")
    tail = FAMILY_WISE_ALPHA_PERCENT / (2 * sealed_evaluations)
    return tail, 100.0 - tail


def _lift_interval(differences: np.ndarray, sealed_evaluations: int) -> dict[str, float]:
    """``ci_low``/``ci_high``: the corrected interval (``lift_percentiles``), and, when the
    correction widened it, the plain 95 % one as ``ci_low_uncorrected``/``ci_high_uncorrected``."""
    low, high = np.percentile(differences, [2.5, 97.5])
    if sealed_evaluations == 1:
        return {"ci_low": float(low), "ci_high": float(high)}
    corrected_low, corrected_high = np.percentile(
        differences, list(lift_percentiles(sealed_evaluations))
    )
    return {
        "ci_low": float(corrected_low),
        "ci_high": float(corrected_high),
        "ci_low_uncorrected": float(low),
        "ci_high_uncorrected": float(high),
    }


def paired_bootstrap_lift(
    metric: str,
    y_true: np.ndarray,
    specialist_pred: np.ndarray,
    baseline_pred: np.ndarray,
    n_labels: int,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
    sealed_evaluations: int = 1,
) -> dict[str, Any]:
    """Specialist minus baseline on the same resampled rows: ``{metric, delta, ci_low, ci_high}``.

    ``delta`` is the difference on the full sealed split; the interval is the 2.5/97.5
    percentile of the paired differences for a first sealed evaluation, and the
    Bonferroni-corrected one (``lift_percentiles``) for a later one on the same data family,
    which then also keeps the plain one (``ci_low_uncorrected``, ``ci_high_uncorrected``).
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    specialist_pred = np.asarray(specialist_pred, dtype=np.int64)
    baseline_pred = np.asarray(baseline_pred, dtype=np.int64)
    full = np.arange(len(y_true))[None, :]
    delta = (
        _metric_samples(metric, y_true, specialist_pred, n_labels, full)
        - _metric_samples(metric, y_true, baseline_pred, n_labels, full)
    )[0]
    indices = _bootstrap_indices(len(y_true), resamples, seed)
    differences = _metric_samples(
        metric, y_true, specialist_pred, n_labels, indices
    ) - _metric_samples(metric, y_true, baseline_pred, n_labels, indices)
    return {
        "metric": metric,
        "delta": float(delta),
        **_lift_interval(differences, sealed_evaluations),
    }


def exact_match(prediction: str, reference: str, strict: bool = False) -> float:
    """1.0 when the answer is the reference, case and punctuation aside; ``strict``
    compares them as written (whitespace collapsed), for tasks where case and punctuation
    are the content (``graded_metrics.strict_exact_match``)."""
    if strict:
        return float(" ".join(prediction.split()) == " ".join(reference.split()))
    return float(normalise_answer(prediction) == normalise_answer(reference))


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD-style F1 of the bag of normalised whitespace tokens."""
    predicted, expected = normalise_answer(prediction).split(), normalise_answer(reference).split()
    if not predicted or not expected:
        return float(predicted == expected)
    common = sum((Counter(predicted) & Counter(expected)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


def round_floats(value: Any, places: int = 4) -> Any:
    """Round every float in a nested JSON-like structure; numpy scalars become Python ones."""
    if isinstance(value, dict):
        return {key: round_floats(item, places) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [round_floats(item, places) for item in value]
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        value = float(value)
        return round(value, places) if math.isfinite(value) else None
    return value


@dataclass(frozen=True)
class BaselinePredictions:
    """A baseline's class ids for sealed rows: all of them, or the first ``len(predictions)``
    rows when a costly baseline was capped (its lift is paired on exactly those rows)."""

    name: str
    method: str
    predictions: Sequence[int]
    label: str = ""


def _baseline_result(
    baseline: BaselinePredictions,
    y_true: np.ndarray,
    specialist: np.ndarray,
    n_labels: int,
    resamples: int,
    seed: int,
    extra: dict[str, Any] | None = None,
    sealed_evaluations: int = 1,
) -> BaselineResult:
    rows = len(baseline.predictions)
    if rows > len(y_true):
        raise ValueError(f"baseline {baseline.name} has more predictions than sealed rows")
    truth, specialist = y_true[:rows], specialist[:rows]
    predicted = np.asarray(baseline.predictions, dtype=np.int64)
    low, high = bootstrap_interval("accuracy", truth, predicted, n_labels, resamples, seed)
    lift = paired_bootstrap_lift(
        "accuracy", truth, specialist, predicted, n_labels, resamples, seed, sealed_evaluations
    )
    return BaselineResult(
        name=baseline.name,
        label=baseline.label or baseline_label(baseline.name),
        method=baseline.method,
        metric="accuracy",
        value=round_floats(accuracy(truth, predicted)),
        ci_low=round_floats(low),
        ci_high=round_floats(high),
        lift=Lift(**round_floats(lift)),
        rows=rows,
        extra=round_floats({"macro_f1": macro_f1(truth, predicted, n_labels), **(extra or {})}),
    )


def classification_report(
    y_true: list[int],
    specialist_pred: list[int],
    labels: list[str],
    majority_label_id: int,
    zero_shot_pred: list[int] | None = None,
    zero_shot_method: str = "",
    seed: int = 0,
    resamples: int = BOOTSTRAP_RESAMPLES,
    *,
    baselines: Sequence[BaselinePredictions] = (),
    skipped_baselines: Sequence[dict[str, str]] = (),
    blend: Blend | None = None,
    adapter_pred: list[int] | None = None,
    sealed_evaluations: int = 1,
) -> dict[str, Any]:
    """The classification report (``EvaluationReport.as_dict()``, version 2).

    Baselines, in order: majority class (most frequent TRAINING label), the zero-shot
    generalist on the base itself (``zero_shot_pred``, key ``generalist_zero_shot``), then
    ``baselines`` (classic, LLM generalist...). Each gets its accuracy with a bootstrap
    interval and the specialist's paired-bootstrap accuracy lift over it.

    ``specialist_pred`` is what is served: the blend of adapter and lexical head when the
    recipe chose one. ``blend`` records how its weight was chosen; with ``adapter_pred``
    (the adapter alone on the same rows) it also gets the adapter alone's accuracy, its
    interval and the served model's paired lift over it, so a reader sees what the blend
    added.

    ``sealed_evaluations`` is this evaluation's number on its data family: every paired
    lift's interval is Bonferroni-corrected for it (``lift_percentiles``), and the report
    records it.
    """
    n_labels = len(labels)
    y_true_array = np.asarray(y_true, dtype=np.int64)
    specialist = np.asarray(specialist_pred, dtype=np.int64)
    scores = per_class_scores(y_true_array, specialist, n_labels)
    majority = BaselinePredictions(
        "majority_class",
        f"always the most frequent training label ({labels[majority_label_id]})",
        [majority_label_id] * len(y_true),
    )
    results = [
        _baseline_result(
            majority, y_true_array, specialist, n_labels, resamples, seed,
            extra={"label_predicted": labels[majority_label_id]},
            sealed_evaluations=sealed_evaluations,
        )
    ]  # fmt: skip
    everything = list(baselines)
    if zero_shot_pred is not None:
        everything.insert(
            0,
            BaselinePredictions(
                "generalist_zero_shot",
                zero_shot_method,
                zero_shot_pred,
                label=_zero_shot_label(zero_shot_method),
            ),
        )
    results += [
        _baseline_result(
            b, y_true_array, specialist, n_labels, resamples, seed,
            sealed_evaluations=sealed_evaluations,
        )
        for b in everything
    ]  # fmt: skip
    if blend is not None and adapter_pred is not None:
        adapter_alone = BaselinePredictions(
            "adapter_alone", "the LoRA adapter without the lexical head", adapter_pred
        )
        alone = _baseline_result(
            adapter_alone, y_true_array, specialist, n_labels, resamples, seed,
            sealed_evaluations=sealed_evaluations,
        )  # fmt: skip
        blend = dataclasses.replace(blend, adapter_alone=alone)
    report = EvaluationReport(
        task="text-classification",
        sealed_rows=len(y_true),
        metrics=round_floats(
            {
                "accuracy": accuracy(y_true_array, specialist),
                "macro_f1": macro_f1(y_true_array, specialist, n_labels),
            }
        ),
        intervals=round_floats(
            {
                metric: list(
                    bootstrap_interval(metric, y_true_array, specialist, n_labels, resamples, seed)
                )
                for metric in ("accuracy", "macro_f1")
            }
        ),
        baselines=results,
        per_class=round_floats(
            {
                label: {
                    "precision": scores["precision"][i],
                    "recall": scores["recall"][i],
                    "f1": scores["f1"][i],
                    "support": int(scores["support"][i]),
                }
                for i, label in enumerate(labels)
            }
        ),
        confusion_matrix={
            "labels": list(labels),
            "matrix": confusion_matrix(y_true_array, specialist, n_labels).tolist(),
        },
        skipped_baselines=list(skipped_baselines),
        extra={"bootstrap": {"resamples": resamples, "seed": seed}},
        version=REPORT_VERSION,
        blend=blend,
        sealed_evaluations=sealed_evaluations,
    )
    return report.as_dict()


def _zero_shot_label(method: str) -> str:
    if method.startswith("embedding"):
        return "Generalist: embedding similarity, zero-shot"
    if "likelihood" in method:
        return "Generalist: base model label likelihood, zero-shot"
    return baseline_label("generalist_zero_shot")


# ---------------------------------------------------------------- model running


def _batches(items: list, size: int):
    for start in range(0, len(items), size):
        yield items[start : start + size]


def predict_class_probabilities(
    model: Any,
    tokenizer: Any,
    texts: list[str],
    max_length: int,
    device: str,
    batch_size: int = EVAL_BATCH_SIZE,
) -> np.ndarray:
    """Softmax probabilities, shape ``(len(texts), num_labels)``; model must be in eval mode.
    Each text is read as the serving engine reads it (``data.classification_token_ids``)."""
    import torch

    examples = [
        EncodedExample(ids, 0) for ids in classification_token_ids(tokenizer, texts, max_length)
    ]
    outputs = []
    with torch.inference_mode():
        for batch in _batches(examples, batch_size):
            inputs = collate_classification(batch, tokenizer.pad_token_id)
            inputs.pop("labels")
            logits = model(**{key: value.to(device) for key, value in inputs.items()}).logits
            outputs.append(torch.softmax(logits.float(), dim=-1).cpu().numpy())
    return np.concatenate(outputs) if outputs else np.zeros((0, 0))


def is_causal_architecture(config: Any) -> bool:
    """True for decoder-only language models (zero-shot by likelihood, not embeddings)."""
    architectures = getattr(config, "architectures", None) or []
    if any(name.endswith(("ForCausalLM", "LMHeadModel")) for name in architectures):
        return True
    return bool(getattr(config, "is_decoder", False)) or config.model_type in {
        "llama",
        "mistral",
        "qwen2",
        "qwen3",
        "gemma",
        "gpt2",
        "phi3",
    }


def label_phrase(label: str) -> str:
    """A label name as words, as the zero-shot baselines (and serving's) read it."""
    return label.replace("_", " ").replace("-", " ").strip()


def zero_shot_by_embedding(
    encoder: Any,
    tokenizer: Any,
    texts: list[str],
    labels: list[str],
    max_length: int,
    device: str,
    batch_size: int = EVAL_BATCH_SIZE,
) -> list[int]:
    """Class of the label name whose mean-pooled embedding is most cosine-similar to the text."""
    import torch

    def embed(strings: list[str]) -> torch.Tensor:
        examples = encode_classification(tokenizer, strings, None)
        truncate_classification(examples, max_length)
        chunks = []
        with torch.inference_mode():
            for batch in _batches(examples, batch_size):
                inputs = collate_classification(batch, tokenizer.pad_token_id)
                mask = inputs["attention_mask"].to(device)
                hidden = encoder(
                    input_ids=inputs["input_ids"].to(device), attention_mask=mask
                ).last_hidden_state.float()
                summed = (hidden * mask.unsqueeze(-1)).sum(dim=1)
                pooled = summed / mask.sum(dim=1, keepdim=True).clamp(min=1)
                chunks.append(torch.nn.functional.normalize(pooled, dim=-1))
        return torch.cat(chunks)

    similarities = embed(texts) @ embed([label_phrase(label) for label in labels]).T
    return similarities.argmax(dim=-1).cpu().tolist()


def zero_shot_by_likelihood(
    causal_model: Any,
    tokenizer: Any,
    texts: list[str],
    labels: list[str],
    max_length: int,
    device: str,
    batch_size: int = EVAL_BATCH_SIZE,
) -> list[int]:
    """Class whose name the LM finds most likely after a prompt stating the task and the
    label set (as a user turn through the chat template when the tokenizer has one).

    Each label is scored by its LENGTH-NORMALISED log-likelihood (mean log-prob per label
    token): a summed score penalises labels that take more tokens."""
    options = ", ".join(label_phrase(label) for label in labels)
    prompts, completions = [], []
    for text in texts:
        prompt = (
            f"Classify the text into exactly one of these labels: {options}.\n"
            f"Text: {text}\nAnswer with the label only."
        )
        for label in labels:
            prompts.append(prompt)
            completions.append(label_phrase(label))
    examples = encode_generation(tokenizer, prompts, completions)
    for example in examples:  # score the label only, not the appended eos
        example.input_ids, example.labels = example.input_ids[:-1], example.labels[:-1]
    # Keep the label and the task statement: cut the text from the left if too long.
    for example in examples:
        if len(example.input_ids) > max_length:
            example.input_ids = example.input_ids[-max_length:]
            example.labels = example.labels[-max_length:]
    scores = _sequence_log_likelihoods(
        causal_model, tokenizer, examples, device, batch_size, per_token=True
    )
    return pick_label_by_score(scores, len(texts), len(labels))


def pick_label_by_score(scores: Sequence[float], n_texts: int, n_labels: int) -> list[int]:
    """Row-major ``scores`` (text, label) -> the best label per text (first wins a tie)."""
    return np.asarray(scores, dtype=float).reshape(n_texts, n_labels).argmax(axis=1).tolist()


def _sequence_log_likelihoods(
    model: Any,
    tokenizer: Any,
    examples: list[EncodedExample],
    device: str,
    batch_size: int,
    per_token: bool = False,
) -> list[float]:
    """Summed (or, with ``per_token``, mean) log-probability of each example's labelled
    tokens."""
    import torch

    totals: list[float] = []
    with torch.inference_mode():
        for batch in _batches(examples, batch_size):
            batch_tensors = collate_causal(batch, tokenizer.pad_token_id)
            inputs = {key: value.to(device) for key, value in batch_tensors.items()}
            logits = model(
                input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]
            ).logits
            log_probs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
            targets = inputs["labels"][:, 1:]
            mask = targets != IGNORE_INDEX
            picked = log_probs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
            summed = (picked * mask).sum(dim=1)
            if per_token:
                summed = summed / mask.sum(dim=1).clamp(min=1)
            totals.extend(summed.cpu().tolist())
    return totals


def held_out_loss(
    model: Any,
    tokenizer: Any,
    examples: list[EncodedExample],
    device: str,
    batch_size: int = EVAL_BATCH_SIZE,
) -> float:
    """Mean cross-entropy per completion token (prompt and padding excluded)."""
    import torch

    total_nll, total_tokens = 0.0, 0
    with torch.inference_mode():
        for batch in _batches(examples, batch_size):
            batch_tensors = collate_causal(batch, tokenizer.pad_token_id)
            inputs = {key: value.to(device) for key, value in batch_tensors.items()}
            logits = model(
                input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]
            ).logits
            targets = inputs["labels"][:, 1:]
            nll = torch.nn.functional.cross_entropy(
                logits[:, :-1].float().reshape(-1, logits.shape[-1]),
                targets.reshape(-1),
                ignore_index=IGNORE_INDEX,
                reduction="sum",
            )
            total_nll += float(nll)
            total_tokens += int((targets != IGNORE_INDEX).sum())
    return total_nll / max(total_tokens, 1)


def greedy_completions(
    model: Any,
    tokenizer: Any,
    prompts: list[str],
    max_new_tokens: int,
    device: str,
    max_prompt_length: int | None = None,
    batch_size: int = 32,
    rendered: bool = False,
    num_beams: int = 1,
) -> list[str]:
    """Greedy continuations of each prompt, left-padded in batches, special tokens removed;
    a prompt longer than ``max_prompt_length`` tokens keeps its last ones. ``num_beams`` > 1
    decodes with a beam search of that width instead (deterministic too).

    ``rendered``: the prompts are already in the model's format (e.g. a few-shot
    conversation from ``render_messages``) and are not wrapped again."""
    import torch

    if rendered:
        prompt_ids = encode_rendered(tokenizer, prompts)
    else:
        prompt_ids = prompt_token_ids(tokenizer, prompts)  # the format training used
    if max_prompt_length:
        prompt_ids = [ids[-max_prompt_length:] for ids in prompt_ids]
    examples = [EncodedExample(ids, [IGNORE_INDEX] * len(ids)) for ids in prompt_ids]
    completions: list[str] = []
    with torch.inference_mode():
        for batch in _batches(examples, batch_size):
            inputs = collate_causal(batch, tokenizer.pad_token_id, padding_side="left")
            generated = model.generate(
                input_ids=inputs["input_ids"].to(device),
                attention_mask=inputs["attention_mask"].to(device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                num_beams=num_beams,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
            new_tokens = generated[:, inputs["input_ids"].shape[1] :]
            completions.extend(tokenizer.batch_decode(new_tokens, skip_special_tokens=True))
    return [completion.strip() for completion in completions]


def evaluated_completions(
    model: Any,
    tokenizer: Any,
    prompts: list[str],
    max_new_tokens: int,
    device: str,
    *,
    batch_size: int = 32,
    rendered: bool = False,
    num_beams: int = 1,
) -> list[str]:
    """The greedy completions the evaluation scores, each prompt read as the serving engine
    reads it: whole when it fits the model's context with ``max_new_tokens`` after it
    (``prompts.prompt_budget``), never cut to the run's max_seq_length. (A longer prompt,
    which serving refuses, keeps its last tokens.)"""
    budget = max(prompt_budget(context_limit(model.config), max_new_tokens), 1)
    return greedy_completions(
        model, tokenizer, prompts, max_new_tokens, device, budget,
        batch_size=batch_size, rendered=rendered, num_beams=num_beams,
    )  # fmt: skip


def few_shot_conversations(tokenizer: Any, examples: list[dict], prompts: list[str]) -> list[str]:
    """Each prompt after ``examples`` as earlier user/assistant turns, in the model's format."""
    shots: list[dict[str, str]] = []
    for row in examples:
        shots += [
            {"role": "user", "content": row["prompt"]},
            {"role": "assistant", "content": row["completion"]},
        ]
    return [
        render_messages(tokenizer, [*shots, {"role": "user", "content": prompt}])
        for prompt in prompts
    ]


def bootstrap_mean_interval(
    scores: np.ndarray, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0
) -> tuple[float, float]:
    """Percentile 95 % interval of the mean of per-row ``scores`` (rows resampled)."""
    scores = np.asarray(scores, dtype=float)
    if not len(scores):
        return 0.0, 0.0
    samples = scores[_bootstrap_indices(len(scores), resamples, seed)].mean(axis=1)
    low, high = np.percentile(samples, [2.5, 97.5])
    return float(low), float(high)


def paired_graded_lift(
    metric: GradedMetric,
    specialist_scores: np.ndarray,
    baseline_scores: np.ndarray,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
    sealed_evaluations: int = 1,
) -> dict[str, Any]:
    """How much better the specialist's mean per-row ``metric`` is than the baseline's on
    the same rows (positive = better, whichever the metric's direction), with the paired
    bootstrap's 95 % interval: ``{metric, delta, ci_low, ci_high}``, Bonferroni-corrected
    for ``sealed_evaluations`` as ``paired_bootstrap_lift`` is."""
    specialist = np.asarray(specialist_scores, dtype=float)
    baseline = np.asarray(baseline_scores, dtype=float)
    sign = 1.0 if metric.higher_is_better else -1.0
    if not len(specialist):
        return {"metric": metric.name, "delta": 0.0, "ci_low": None, "ci_high": None}
    delta = sign * float(specialist.mean() - baseline.mean())
    indices = _bootstrap_indices(len(specialist), resamples, seed)
    differences = sign * (specialist[indices].mean(axis=1) - baseline[indices].mean(axis=1))
    return {
        "metric": metric.name,
        "delta": delta,
        **_lift_interval(differences, sealed_evaluations),
    }


def _correct(answers: list[str], references: list[str], strict: bool) -> np.ndarray:
    """Per-row exact match of ``answers`` against the first ``len(answers)`` references."""
    pairs = zip(answers, references[: len(answers)], strict=True)
    return np.asarray([exact_match(a, r, strict) for a, r in pairs], dtype=np.int64)


def _graded_scores(metric: GradedMetric, answers: list[str], references: list[str]) -> np.ndarray:
    pairs = zip(answers, references[: len(answers)], strict=True)
    return np.asarray([metric.score(a, r) for a, r in pairs], dtype=float)


@dataclass(frozen=True)
class _GenerationScoring:
    """How a generation report scores answers: exact match (strict or normalised), the
    graded metric, and the specialist's per-row scores every baseline is paired with."""

    references: list[str]
    strict: bool
    graded: GradedMetric
    specialist_correct: np.ndarray
    specialist_graded: np.ndarray
    resamples: int
    seed: int
    sealed_evaluations: int = 1

    def correct(self, answers: list[str]) -> np.ndarray:
        return _correct(answers, self.references, self.strict)

    def graded_scores(self, answers: list[str]) -> np.ndarray:
        return _graded_scores(self.graded, answers, self.references)

    def baseline(self, name: str, method: str, answers: list[str]) -> BaselineResult:
        """Exact match of ``answers`` on the first ``len(answers)`` sealed rows with its
        interval and the specialist's paired-bootstrap lift, and the same for the graded
        metric (``extra["graded"]``)."""
        rows = len(answers)
        correct = self.correct(answers)
        ones = np.ones(rows, dtype=np.int64)
        low, high = bootstrap_interval("accuracy", ones, correct, 2, self.resamples, self.seed)
        lift = paired_bootstrap_lift(
            "accuracy", ones, self.specialist_correct[:rows], correct, 2, self.resamples,
            self.seed, self.sealed_evaluations,
        )  # fmt: skip
        lift["metric"] = "exact_match"
        graded = self.graded_scores(answers)
        graded_low, graded_high = bootstrap_mean_interval(graded, self.resamples, self.seed)
        graded_lift = paired_graded_lift(
            self.graded, self.specialist_graded[:rows], graded, self.resamples, self.seed,
            self.sealed_evaluations,
        )  # fmt: skip
        token_f1_mean = np.mean(
            [token_f1(a, r) for a, r in zip(answers, self.references, strict=False)]
        )
        return BaselineResult(
            name=name,
            label=baseline_label(name),
            method=method,
            metric="exact_match",
            value=round_floats(float(correct.mean()) if rows else 0.0),
            ci_low=round_floats(low),
            ci_high=round_floats(high),
            lift=Lift(**round_floats(lift)),
            rows=rows,
            extra=round_floats(
                {
                    "token_f1": float(token_f1_mean),
                    "graded": {
                        "metric": self.graded.name,
                        "value": float(graded.mean()) if rows else 0.0,
                        "ci_low": graded_low,
                        "ci_high": graded_high,
                        "lift": graded_lift,
                    },
                }
            ),
        )


def generation_report(
    adapter_model: Any,
    tokenizer: Any,
    sealed_rows: list[dict],
    max_length: int,
    device: str,
    max_new_tokens: int = 32,
    *,
    train_rows: list[dict] | None = None,
    options: EvaluationOptions | None = None,
    seed: int = 0,
    resamples: int = BOOTSTRAP_RESAMPLES,
) -> dict[str, Any]:
    """The generation report (``EvaluationReport.as_dict()``, version 2).

    Held-out loss/perplexity of base (adapter disabled) vs adapter, on rows cut to
    ``max_length`` as training cut them; exact match (with a bootstrap interval) and
    token-F1 of greedy completions, each prompt read as serving reads it
    (``evaluated_completions``). Baselines, each with the
    specialist's paired-bootstrap exact-match lift: the base model prompted with the row
    (``base_zero_shot``), the base model with ``options.few_shot_k`` TRAINING rows as
    earlier turns (``base_few_shot``, first ``generalist_llm_max_rows`` sealed rows), and
    the nearest training completion by TF-IDF (``classic_nearest_neighbour``).
    ``lift.loss_reduction`` = base loss - adapter loss.
    """
    options = options or EvaluationOptions()
    train_rows = train_rows or []
    prompts = [row["prompt"] for row in sealed_rows]
    references = [row["completion"] for row in sealed_rows]
    examples = encode_generation(tokenizer, prompts, references)
    truncate_generation(examples, max_length)  # the loss reads rows as training read them
    longest_completion = max(sum(1 for t in e.labels if t != IGNORE_INDEX) for e in examples)
    new_tokens = min(max_new_tokens, longest_completion)

    adapter_loss = held_out_loss(adapter_model, tokenizer, examples, device)
    adapter_answers = evaluated_completions(adapter_model, tokenizer, prompts, new_tokens, device)
    shots = few_shot_examples(train_rows, options.few_shot_k, seed)
    few_shot_rows = min(len(prompts), options.generalist_llm_max_rows) if shots else 0
    with adapter_model.disable_adapter():
        base_loss = held_out_loss(adapter_model, tokenizer, examples, device)
        base_answers = evaluated_completions(adapter_model, tokenizer, prompts, new_tokens, device)
        few_shot_answers: list[str] = []
        if few_shot_rows:
            conversations = few_shot_conversations(tokenizer, shots, prompts[:few_shot_rows])
            few_shot_answers = evaluated_completions(
                adapter_model, tokenizer, conversations, new_tokens, device,
                batch_size=8, rendered=True,
            )  # fmt: skip

    def mean_score(score, answers: list[str]) -> float:
        values = [score(a, r) for a, r in zip(answers, references, strict=True)]
        return float(np.mean(values)) if values else 0.0

    # Chosen from the training rows (the sealed rows only when there are none to read).
    shape_rows = train_rows or sealed_rows
    graded = choose_graded_metric(shape_rows)
    strict = strict_exact_match(shape_rows)
    specialist_correct = _correct(adapter_answers, references, strict)
    specialist_graded = _graded_scores(graded, adapter_answers, references)
    scoring = _GenerationScoring(
        references=references,
        strict=strict,
        graded=graded,
        specialist_correct=specialist_correct,
        specialist_graded=specialist_graded,
        resamples=resamples,
        seed=seed,
        sealed_evaluations=options.sealed_evaluations,
    )
    ones = np.ones(len(references), dtype=np.int64)
    baseline = scoring.baseline

    baselines = [
        baseline(
            "base_zero_shot",
            "the base model without the adapter, prompted with the row's prompt (greedy)",
            base_answers,
        )
    ]
    skipped: list[dict[str, str]] = []
    if few_shot_answers:
        baselines.append(
            baseline(
                "base_few_shot",
                f"the base model without the adapter, {len(shots)} training rows as earlier "
                f"conversation turns, then the row's prompt (greedy)",
                few_shot_answers,
            )
        )
    else:
        skipped.append({"name": "base_few_shot", "reason": "no training rows to show"})
    if train_rows:
        retrieved = nearest_neighbour_completions(
            [row["prompt"] for row in train_rows],
            [row["completion"] for row in train_rows],
            prompts,
        )
        baselines.append(baseline("classic_nearest_neighbour", NEAREST_NEIGHBOUR_METHOD, retrieved))
    else:
        skipped.append({"name": "classic_nearest_neighbour", "reason": "no training rows"})

    report = EvaluationReport(
        task="text-generation",
        sealed_rows=len(sealed_rows),
        metrics=round_floats(
            {
                "adapter_loss": adapter_loss,
                "adapter_perplexity": math.exp(min(adapter_loss, 50.0)),
                "base_loss": base_loss,
                "base_perplexity": math.exp(min(base_loss, 50.0)),
                "exact_match": float(specialist_correct.mean()) if len(references) else 0.0,
                "token_f1": mean_score(token_f1, adapter_answers),
                graded.name: float(specialist_graded.mean()) if len(references) else 0.0,
                "base_exact_match": float(scoring.correct(base_answers).mean())
                if len(references)
                else 0.0,
                "base_token_f1": mean_score(token_f1, base_answers),
            }
        ),
        intervals=round_floats(
            {
                "exact_match": list(
                    bootstrap_interval("accuracy", ones, specialist_correct, 2, resamples, seed)
                ),
                graded.name: list(bootstrap_mean_interval(specialist_graded, resamples, seed)),
            }
        ),
        baselines=baselines,
        skipped_baselines=skipped,
        lift=round_floats({"loss_reduction": base_loss - adapter_loss}),
        extra={
            "bootstrap": {"resamples": resamples, "seed": seed},
            "graded_metric": graded.describe(),
            "exact_match_mode": "as written (case and punctuation count)"
            if strict
            else "case and punctuation ignored",
        },
        sealed_evaluations=options.sealed_evaluations,
    )
    return report.as_dict()


# ---------------------------------------------------------------- classification baselines

LLM_GENERALIST_MAX_LENGTH = 512  # tokens of task statement + text + label scored per row


@dataclass
class ClassificationBaselines:
    """Predictions of the classification baselines beyond majority and the base's own
    zero-shot; ``classic_model`` is the fitted scikit-learn pipeline (fitted on training
    rows only), kept so callers and tests can inspect what it learnt."""

    predictions: list[BaselinePredictions]
    skipped: list[dict[str, str]]
    classic_model: Any
    llm_seconds_per_row: float | None = None


def classification_baselines(
    *,
    train_rows: list[dict],
    sealed_texts: list[str],
    labels: list[str],
    device: str,
    options: EvaluationOptions,
    seed: int,
) -> ClassificationBaselines:
    """Fit the classic baseline on ``train_rows`` and score the LLM generalist zero-shot.

    The sealed texts are only predicted, never fitted on. The LLM generalist scores the first
    ``options.generalist_llm_max_rows`` sealed texts; it is skipped (and said so) when
    ``options.generalist_llm_path`` is None. Raises ``BaseModelUnavailable`` if the LLM
    folder cannot be loaded.
    """
    import time

    from training_worker.ml.base_models import load_tokenizer_and_model
    from training_worker.ml.baselines import CLASSIC_CLASSIFIER_METHOD, fit_classic_classifier

    label_to_id = {label: i for i, label in enumerate(labels)}
    classic_model = fit_classic_classifier(
        [row["text"] for row in train_rows], [label_to_id[row["label"]] for row in train_rows], seed
    )
    predictions = [
        BaselinePredictions(
            "classic_tfidf_logreg",
            CLASSIC_CLASSIFIER_METHOD,
            [int(label) for label in classic_model.predict(list(sealed_texts))],
        )
    ]
    skipped: list[dict[str, str]] = []
    per_row = None
    if options.generalist_llm_path:
        import torch

        name = options.generalist_llm_name or options.generalist_llm_path.rstrip("/").split("/")[-1]
        started = time.perf_counter()
        tokenizer, model = load_tokenizer_and_model(
            options.generalist_llm_path, None, "text-generation"
        )
        model.to(device).eval()
        position_limit = getattr(model.config, "max_position_embeddings", None)
        max_length = min(LLM_GENERALIST_MAX_LENGTH, position_limit or LLM_GENERALIST_MAX_LENGTH)
        rows = list(sealed_texts[: options.generalist_llm_max_rows])
        try:
            with torch.inference_mode():
                llm_pred = zero_shot_by_likelihood(
                    model, tokenizer, rows, labels, max_length, device,
                    batch_size=16,
                )  # fmt: skip
        finally:
            del model
        per_row = (time.perf_counter() - started) / max(len(rows), 1)
        predictions.append(
            BaselinePredictions(
                "generalist_llm_zero_shot",
                f"{name} zero-shot: the task and the label set as a chat prompt; the label with "
                f"the highest mean per-token log-likelihood (first {len(rows)} sealed rows)",
                llm_pred,
                label=f"Generalist: {name}, zero-shot",
            )
        )
    else:
        skipped.append(
            {
                "name": "generalist_llm_zero_shot",
                "reason": options.generalist_llm_skip_reason or "no generalist LLM is configured",
            }
        )
    return ClassificationBaselines(predictions, skipped, classic_model, per_row)
