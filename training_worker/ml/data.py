"""Row validation, one-time tokenisation and per-batch dynamic padding for both tasks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from training_worker.ml.errors import InvalidTrainingData
from training_worker.ml.prompts import prompt_token_ids

IGNORE_INDEX = -100  # positions the loss skips (prompt and padding tokens)


@dataclass
class EncodedExample:
    """Token ids of one row; ``labels`` is an int (classification) or per-token ids (causal)."""

    input_ids: list[int]
    labels: Any


def check_classification_rows(rows: list[dict], labels: list[str], split_name: str) -> None:
    """Raise ``InvalidTrainingData`` unless every row has a non-empty text and a known label."""
    if not rows:
        raise InvalidTrainingData(f"The {split_name} split has no rows.")
    known = set(labels)
    for row_number, row in enumerate(rows, start=1):
        text, label = row.get("text"), row.get("label")
        if not isinstance(text, str) or not text.strip():
            raise InvalidTrainingData(f"{split_name} row {row_number}: 'text' is empty or missing.")
        if label not in known:
            raise InvalidTrainingData(f"{split_name} row {row_number}: unknown label {label!r}.")


def check_generation_rows(rows: list[dict], split_name: str) -> None:
    """Raise ``InvalidTrainingData`` unless rows have a string prompt and a non-empty completion."""
    if not rows:
        raise InvalidTrainingData(f"The {split_name} split has no rows.")
    for row_number, row in enumerate(rows, start=1):
        if not isinstance(row.get("prompt"), str):
            raise InvalidTrainingData(f"{split_name} row {row_number}: 'prompt' is missing.")
        completion = row.get("completion")
        if not isinstance(completion, str) or not completion.strip():
            raise InvalidTrainingData(
                f"{split_name} row {row_number}: 'completion' is empty or missing."
            )


def encode_classification(
    tokenizer: Any, texts: list[str], label_ids: list[int] | None
) -> list[EncodedExample]:
    """Tokenise all texts once, untruncated (lengths feed the auto max_seq_length).

    Rows are cut to the resolved max_seq_length before any reaches the model, so the
    tokenizer's warning about rows longer than the model's limit ("will result in indexing
    errors") would be false in a job's log: ``verbose=False`` leaves it out."""
    encoded = tokenizer(list(texts), truncation=False, add_special_tokens=True, verbose=False)
    token_ids = encoded["input_ids"]
    labels = label_ids if label_ids is not None else [0] * len(token_ids)
    return [EncodedExample(ids, label) for ids, label in zip(token_ids, labels, strict=True)]


def encode_generation(
    tokenizer: Any, prompts: list[str], completions: list[str]
) -> list[EncodedExample]:
    """Tokenise prompt + completion + eos once; prompt positions get ``IGNORE_INDEX`` labels.

    The prompt is in the format shared with evaluation and serving (``prompts``): the base's
    chat template when it has one, the plain text otherwise."""
    prompt_ids = prompt_token_ids(tokenizer, prompts)
    completion_ids = tokenizer(list(completions), add_special_tokens=False)["input_ids"]
    examples = []
    for prompt, completion in zip(prompt_ids, completion_ids, strict=True):
        completion = [*completion, tokenizer.eos_token_id]
        examples.append(
            EncodedExample(prompt + completion, [IGNORE_INDEX] * len(prompt) + completion)
        )
    return examples


def length_grouped_batches(
    lengths: list[int], batch_size: int, generator: Any, megabatch_factor: int = 50
) -> list[list[int]]:
    """One epoch of batches (lists of row indices) with rows of similar length together.

    The rows are shuffled with ``generator`` (a seeded ``torch.Generator``), cut into
    megabatches of ``megabatch_factor * batch_size`` rows, each megabatch sorted by length
    and cut into batches; then the batches' order is shuffled. Padding to each batch's
    longest row then costs little. As many batches as plain shuffling gives
    (``ceil(n / batch_size)``): only the last megabatch can end with a short batch.
    """
    import torch

    order = torch.randperm(len(lengths), generator=generator).tolist()
    megabatch = batch_size * megabatch_factor
    batches: list[list[int]] = []
    for start in range(0, len(order), megabatch):
        chunk = sorted(order[start : start + megabatch], key=lambda i: lengths[i])
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    shuffled = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in shuffled]


def cut_classification_ids(ids: list[int], max_length: int) -> list[int]:
    """A row's token ids as a classifier reads them at ``max_length`` tokens: all of them
    when they fit, else the first ``max_length - 1`` and the last. Training, the sealed-split
    evaluation and the serving engine all cut rows here (``classification_token_ids``), so
    a served row is the row that was scored: an encoder row keeps its closing [SEP], on
    which BERT-like heads were trained, and a decoder row (no closing token) its last token.
    """
    if len(ids) <= max_length:
        return ids
    return [*ids[: max_length - 1], ids[-1]]


def classification_token_ids(tokenizer: Any, texts: list[str], max_length: int) -> list[list[int]]:
    """Each text's token ids as every classifier of the platform reads it: tokenised whole
    with the tokenizer's special tokens, then ``cut_classification_ids``."""
    return [
        cut_classification_ids(example.input_ids, max_length)
        for example in encode_classification(tokenizer, texts, None)
    ]


def truncate_classification(examples: list[EncodedExample], max_length: int) -> None:
    """Cut each example to ``max_length`` tokens in place (``cut_classification_ids``)."""
    for example in examples:
        example.input_ids = cut_classification_ids(example.input_ids, max_length)


def truncate_generation(examples: list[EncodedExample], max_length: int) -> None:
    """Cut to ``max_length`` in place, dropping the prompt's start before the completion."""
    for example in examples:
        overflow = len(example.input_ids) - max_length
        if overflow <= 0:
            continue
        n_prompt = sum(1 for label in example.labels if label == IGNORE_INDEX)
        drop_from_prompt = min(overflow, n_prompt)
        example.input_ids = example.input_ids[drop_from_prompt:][:max_length]
        example.labels = example.labels[drop_from_prompt:][:max_length]


def collate_classification(batch: list[EncodedExample], pad_token_id: int) -> dict[str, Any]:
    """Right-pad to the longest row of this batch; returns tensors for the model."""
    import torch

    width = max(len(example.input_ids) for example in batch)
    input_ids = torch.full((len(batch), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, example in enumerate(batch):
        input_ids[row, : len(example.input_ids)] = torch.tensor(example.input_ids)
        attention_mask[row, : len(example.input_ids)] = 1
    labels = torch.tensor([example.labels for example in batch], dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def collate_causal(
    batch: list[EncodedExample], pad_token_id: int, padding_side: str = "right"
) -> dict[str, Any]:
    """Pad to the longest row (right to train, left to generate); padding is never learnt."""
    import torch

    width = max(len(example.input_ids) for example in batch)
    input_ids = torch.full((len(batch), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    for row, example in enumerate(batch):
        n = len(example.input_ids)
        span = slice(0, n) if padding_side == "right" else slice(width - n, width)
        input_ids[row, span] = torch.tensor(example.input_ids)
        attention_mask[row, span] = 1
        labels[row, span] = torch.tensor(example.labels)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
