"""Model selection: a validation split carved from the training rows, a per-epoch score on
it, and the best epoch's trainable weights kept in memory (early stopping with a patience).

The validation rows come only from the rows given as training rows; the sealed split is
never passed here, so it can never leak into model selection. No Django imports.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from training_worker.ml.config import (
    VALIDATION_MAX_ROWS,
    VALIDATION_MIN_ROWS,
    VALIDATION_MIN_TRAIN_ROWS,
)
from training_worker.ml.data import (
    IGNORE_INDEX,
    EncodedExample,
    collate_causal,
    collate_classification,
)

EVAL_BATCH_SIZE = 64


def validation_size(n_train_rows: int, fraction: float) -> int:
    """Rows to hold out: ``fraction`` of the rows clamped to [VALIDATION_MIN_ROWS,
    VALIDATION_MAX_ROWS]; 0 when ``fraction`` is 0 or there are fewer than
    VALIDATION_MIN_TRAIN_ROWS rows."""
    if fraction <= 0 or n_train_rows < VALIDATION_MIN_TRAIN_ROWS:
        return 0
    wanted = round(fraction * n_train_rows)
    return max(VALIDATION_MIN_ROWS, min(VALIDATION_MAX_ROWS, wanted))


def split_validation(
    rows: list[dict], *, fraction: float, seed: int, label_key: str | None = None
) -> tuple[list[int], list[int]]:
    """Split row indices into (train, validation), seeded; stratified by ``row[label_key]``.

    Stratified: each label gets its share of the validation rows by largest remainder,
    and every label keeps at least one training row (a label with one row gives none).
    Returns ``(train_indices, validation_indices)``, each in ascending order; validation
    is empty when ``validation_size`` says so.
    """
    size = validation_size(len(rows), fraction)
    if size == 0:
        return list(range(len(rows))), []
    rng = random.Random(f"validation-split:{seed}")
    if label_key is None:
        order = list(range(len(rows)))
        rng.shuffle(order)
        chosen = set(order[:size])
    else:
        by_label: dict[Any, list[int]] = defaultdict(list)
        for index, row in enumerate(rows):
            by_label[row[label_key]].append(index)
        labels = sorted(by_label, key=str)
        quotas = {label: size * len(by_label[label]) / len(rows) for label in labels}
        taken = {
            label: min(math.floor(quotas[label]), len(by_label[label]) - 1) for label in labels
        }
        # Largest remainders first (ties by label name) until the size is reached.
        for label in sorted(labels, key=lambda name: (-(quotas[name] % 1), str(name))):
            if sum(taken.values()) >= size:
                break
            if taken[label] < len(by_label[label]) - 1:
                taken[label] += 1
        chosen = set()
        for label in labels:
            members = list(by_label[label])
            rng.shuffle(members)
            chosen.update(members[: taken[label]])
    train = [i for i in range(len(rows)) if i not in chosen]
    return train, sorted(chosen)


def validation_scores(
    model: Any, examples: list[EncodedExample], pad_token_id: int, device: str, task: str
) -> dict[str, float]:
    """Mean loss on the validation rows (per row for classification, per completion token
    for generation), plus accuracy for classification. Batches are length-sorted."""
    import torch

    ordered = sorted(examples, key=lambda example: len(example.input_ids))
    classification = task == "text-classification"
    total_loss, total_count, correct = 0.0, 0, 0
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(ordered), EVAL_BATCH_SIZE):
                batch = ordered[start : start + EVAL_BATCH_SIZE]
                if classification:
                    inputs = collate_classification(batch, pad_token_id)
                    inputs = {key: value.to(device) for key, value in inputs.items()}
                    logits = model(
                        input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]
                    ).logits.float()
                    loss = torch.nn.functional.cross_entropy(
                        logits, inputs["labels"], reduction="sum"
                    )
                    correct += int((logits.argmax(-1) == inputs["labels"]).sum())
                    total_count += len(batch)
                else:
                    inputs = collate_causal(batch, pad_token_id)
                    inputs = {key: value.to(device) for key, value in inputs.items()}
                    logits = model(
                        input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]
                    ).logits.float()
                    targets = inputs["labels"][:, 1:]
                    loss = torch.nn.functional.cross_entropy(
                        logits[:, :-1].reshape(-1, logits.shape[-1]),
                        targets.reshape(-1),
                        ignore_index=IGNORE_INDEX,
                        reduction="sum",
                    )
                    total_count += int((targets != IGNORE_INDEX).sum())
                total_loss += float(loss)
    finally:
        model.train(was_training)
    scores = {"loss": round(total_loss / max(total_count, 1), 4)}
    if classification:
        scores["accuracy"] = round(correct / max(len(examples), 1), 4)
    return scores


@dataclass
class BestEpoch:
    """Tracks the best validation score and a copy of the trainable weights at that epoch.

    Score: classification ranks by accuracy, then lower loss; generation by lower loss.
    ``patience`` epochs in a row without a better score set ``should_stop`` (0: never).
    """

    task: str
    patience: int
    best_epoch: int | None = None
    best_step: int | None = None
    best_scores: dict[str, float] | None = None
    epochs_without_improvement: int = 0
    curve: list[dict[str, Any]] = field(default_factory=list)
    _best_weights: dict[str, Any] | None = None

    def _rank(self, scores: dict[str, float]) -> tuple[float, ...]:
        if self.task == "text-classification":
            return (scores["accuracy"], -scores["loss"])
        return (-scores["loss"],)

    def observe(self, *, epoch: int, step: int, scores: dict[str, float], model: Any) -> bool:
        """Record one epoch's scores; copy the weights when they are the best so far."""
        self.curve.append({"epoch": epoch, "step": step, **scores})
        improved = self.best_scores is None or self._rank(scores) > self._rank(self.best_scores)
        if improved:
            self.best_epoch, self.best_step, self.best_scores = epoch, step, dict(scores)
            self.epochs_without_improvement = 0
            self._best_weights = trainable_weights(model)
        else:
            self.epochs_without_improvement += 1
        return improved

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.epochs_without_improvement >= self.patience

    def restore_best(self, model: Any) -> None:
        """Put the best epoch's trainable weights back into ``model``."""
        if self._best_weights is None:
            raise RuntimeError("No epoch has been observed yet.")
        load_trainable_weights(model, self._best_weights)


def trainable_weights(model: Any) -> dict[str, Any]:
    """A detached copy of every trainable parameter (the LoRA matrices and saved heads)."""
    return {
        name: parameter.detach().clone()
        for name, parameter in model.named_parameters()
        if parameter.requires_grad
    }


def load_trainable_weights(model: Any, weights: dict[str, Any]) -> None:
    import torch

    parameters = dict(model.named_parameters())
    missing = sorted(set(weights) - set(parameters))
    if missing:
        raise RuntimeError(f"Saved weights name unknown parameters: {missing[:3]}")
    with torch.no_grad():
        for name, value in weights.items():
            parameters[name].copy_(value)
