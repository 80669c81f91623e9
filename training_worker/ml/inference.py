"""Load a trained adapter onto its base model and run it (used by tests and serving)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from training_worker.ml import evaluation
from training_worker.ml.base_models import load_tokenizer_and_model
from training_worker.ml.errors import BaseModelUnavailable
from training_worker.ml.pooling import classification_head
from training_worker.ml.safe_weights import checked_weights_headers

DEFAULT_MAX_LENGTH = 256


def load_adapter_model(
    base_path: str | Path,
    adapter_dir: str | Path,
    task: str,
    labels: list[str] | None = None,
    base_revision: str | None = None,
    device: str = "cpu",
) -> tuple[Any, Any]:
    """Return ``(model, tokenizer)`` with the adapter applied, in eval mode on ``device``.

    Only ``adapter_model.safetensors`` is accepted (never pickled ``.bin`` weights).
    Raises ``BaseModelUnavailable`` when the base or adapter files are missing and
    ``UnsafeWeightsError`` when a file fails ``safe_weights`` (before any is parsed).
    """
    from peft import PeftModel

    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_model.safetensors").is_file():
        raise BaseModelUnavailable(f"No adapter_model.safetensors in {adapter_dir}.")
    # peft would fall back to a pickled adapter_model.bin: a folder holding one is refused,
    # and the safetensors file passes the strict header check first (UnsafeWeightsError).
    headers = checked_weights_headers(adapter_dir)
    if task == "text-classification" and not labels:
        raise ValueError("labels are required to load a classification adapter")
    head = None
    if task == "text-classification":  # the head the adapter was trained on
        header = headers[adapter_dir / "adapter_model.safetensors"]
        head = classification_head(tensor.name for tensor in header.tensors)
    tokenizer, base_model = load_tokenizer_and_model(
        base_path,
        base_revision,
        task,
        num_labels=len(labels) if labels else None,
        id2label=dict(enumerate(labels)) if labels else None,
        head=head,
    )
    model = PeftModel.from_pretrained(base_model, adapter_dir, is_trainable=False)
    model.to(device).eval()
    return model, tokenizer


def predict_labels(
    model: Any,
    tokenizer: Any,
    texts: list[str],
    max_length: int = DEFAULT_MAX_LENGTH,
    device: str = "cpu",
) -> list[dict[str, Any]]:
    """``[{"label", "score"}]`` per text: the most probable class and its softmax probability."""
    probabilities = evaluation.predict_class_probabilities(
        model, tokenizer, texts, max_length, device
    )
    id2label = model.config.id2label
    return [
        {"label": id2label[int(row.argmax())], "score": float(row.max())} for row in probabilities
    ]


def generate(
    model: Any,
    tokenizer: Any,
    prompts: list[str],
    max_new_tokens: int = 32,
    device: str = "cpu",
) -> list[str]:
    """Greedy completions of each prompt (left-padded batches, special tokens stripped)."""
    return evaluation.greedy_completions(model, tokenizer, prompts, max_new_tokens, device)
