"""One mixed-adapter forward pass for a batch of rows over one base.

``classify_rows``: every row is a text with its adapter; one encoder pass with the
gathered LoRA, then each row's own head on its pooled features, blended with its
version's lexical head where it has one.
``generate_rows``: every row is a prompt with its adapter and its own sampling
parameters; prefill plus a KV-cached decode loop, all rows in one forward per step.
Finished or cancelled rows leave the batch (their KV cache rows are dropped), so the
remaining rows run at the smaller batch size.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from serving.engine.lora_batched import gathered_lora
from serving.engine.registry import (
    AdapterUnavailable,
    EngineError,
    LoadedAdapter,
    LoadedBase,
    adapter_name_for,
)
from serving.protocol import AdapterRef, ErrorCode, GenerationParameters
from training_worker.ml import prompts

CLASSIFICATION_MAX_TOKENS = 256


@dataclass
class ClassificationRow:
    text: str
    adapter: AdapterRef


@dataclass
class GenerationRow:
    prompt: str
    adapter: AdapterRef | None
    parameters: GenerationParameters
    on_text: Callable[[str], None] | None = None  # streamed text deltas
    seed: int | None = None
    stop_at_eos: bool = True  # False: always max_new_tokens (benchmarks compare equal work)


@dataclass
class GenerationRowResult:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    token_ids: list[int] = field(default_factory=list)


def _lora_context(base: LoadedBase, adapters: Sequence[AdapterRef | None]):
    if base.peft_model is None:
        if any(a is not None for a in adapters):
            raise AdapterUnavailable("Adapter not loaded.")
        return contextlib.nullcontext()
    return gathered_lora(base.model, [adapter_name_for(a.sha256) if a else None for a in adapters])


def _backbone(base: LoadedBase):
    """The transformers model under peft's wrapper (the LoRA layers live inside it)."""
    peft_model = base.peft_model
    return peft_model.get_base_model() if peft_model is not None else base.model


def classify_rows(base: LoadedBase, rows: Sequence[ClassificationRow]) -> list[dict[str, float]]:
    """Per row ``{label: probability}`` in the adapter's label order."""
    encoded = _encode_rows(base, rows)
    model = _backbone(base)
    with torch.inference_mode(), _lora_context(base, [row.adapter for row in rows]):
        model(**encoded)
        features = base.captured.pop("features")
        if features.dim() == 3:  # decoder heads score every position; keep the last real one
            ids = encoded["input_ids"]
            non_pad = (ids != model.config.pad_token_id).int()
            positions = torch.arange(ids.shape[-1], device=ids.device)
            last = (positions * non_pad).argmax(-1)
            features = features[torch.arange(len(rows), device=ids.device), last]
        adapters = [base.adapters[adapter_name_for(row.adapter.sha256)] for row in rows]
        probabilities = _apply_heads([adapter.head for adapter in adapters], features)
    _blend_lexical(rows, adapters, probabilities)
    return [
        dict(zip(row.adapter.labels, row_probabilities, strict=True))
        for row, row_probabilities in zip(rows, probabilities, strict=True)
    ]


def _blend_lexical(
    rows: Sequence[ClassificationRow],
    adapters: Sequence[LoadedAdapter],
    probabilities: list[list[float]],
) -> None:
    """Blend, in place, the rows whose version serves a lexical head beside the adapter
    (``w * adapter + (1 - w) * lexical``, as the evaluation scored it), one batch per head."""
    groups: dict[str, list[int]] = {}
    for index, (row, adapter) in enumerate(zip(rows, adapters, strict=True)):
        if row.adapter.lexical_head_sha256 in adapter.lexical:
            groups.setdefault(row.adapter.lexical_head_sha256, []).append(index)
    for sha256, indices in groups.items():
        head = adapters[indices[0]].lexical[sha256]
        adapter_part = np.asarray([probabilities[i] for i in indices], dtype=np.float64)
        blended = head.blend(adapter_part, [rows[i].text for i in indices])
        for index, row_probabilities in zip(indices, blended.tolist(), strict=True):
            probabilities[index] = row_probabilities


def _apply_heads(heads: Sequence[torch.nn.Linear], features: torch.Tensor) -> list[list[float]]:
    """Each row's softmax through its own head. Heads of one shape (the usual case: one
    label count) are gathered per row into one batched product, as the LoRA weights are;
    otherwise one product per distinct head."""
    first = heads[0]
    same_shape = all(
        h.weight.shape == first.weight.shape and (h.bias is None) == (first.bias is None)
        for h in heads
    )
    if same_shape:
        weights = torch.stack([h.weight for h in heads])  # (B, labels, hidden)
        logits = torch.bmm(weights, features[:, :, None]).squeeze(-1)
        if first.bias is not None:
            logits = logits + torch.stack([h.bias for h in heads])
        return torch.softmax(logits.float(), dim=-1).cpu().tolist()
    out: list[list[float]] = [[] for _ in heads]
    groups: dict[int, list[int]] = {}
    for index, head in enumerate(heads):
        groups.setdefault(id(head), []).append(index)
    for indices in groups.values():
        logits = heads[indices[0]](features[indices])
        rows = torch.softmax(logits.float(), dim=-1).cpu().tolist()
        for index, row in zip(indices, rows, strict=True):
            out[index] = row
    return out


def token_limit(adapter: AdapterRef) -> int:
    """Tokens of a row the version reads: the max_seq_length its evaluation cut rows to
    (so what is served is what was scored), else ``CLASSIFICATION_MAX_TOKENS``."""
    return adapter.max_seq_length or CLASSIFICATION_MAX_TOKENS


def _encode_rows(base: LoadedBase, rows: Sequence[ClassificationRow]) -> Any:
    """The batch's tensors, each row cut to its own version's ``token_limit`` (one tokenizer
    call per distinct limit), then padded together."""
    tokenizer = base.tokenizer
    limits = [token_limit(row.adapter) for row in rows]
    texts = [row.text for row in rows]
    if len(set(limits)) == 1:
        return tokenizer(
            texts, padding=True, truncation=True, max_length=limits[0], return_tensors="pt"
        ).to(base.device)
    features: list[dict[str, list[int]]] = [{} for _ in rows]
    for limit in set(limits):
        indices = [i for i, row_limit in enumerate(limits) if row_limit == limit]
        encoded = tokenizer([texts[i] for i in indices], truncation=True, max_length=limit)
        for position, index in enumerate(indices):
            features[index] = {key: values[position] for key, values in encoded.items()}
    return tokenizer.pad(features, padding=True, return_tensors="pt").to(base.device)


def count_tokens(base: LoadedBase, texts: Sequence[str], max_length: int) -> list[int]:
    return [
        len(base.tokenizer(text, truncation=True, max_length=max_length)["input_ids"])
        for text in texts
    ]


def render_chat(base: LoadedBase, messages: Sequence[dict[str, str]]) -> str:
    """The conversation in the format the adapters were trained on (``prompts``)."""
    return prompts.render_messages(base.tokenizer, messages)


def render_prompt(base: LoadedBase, prompt: str) -> str:
    """A plain prompt as one user turn, exactly as training formats a row's prompt."""
    return prompts.render_prompt(base.tokenizer, prompt)


def encode_prompt(base: LoadedBase, rendered: str) -> list[int]:
    """Token ids of a rendered prompt (no second BOS after a chat template's own tokens)."""
    return prompts.encode_rendered(base.tokenizer, [rendered])[0]


def _context_limit(base: LoadedBase) -> int:
    return int(getattr(base.model.config, "max_position_embeddings", 2048) or 2048)


def _next_tokens(
    logits: torch.Tensor, rows: Sequence[GenerationRow], generators: list
) -> torch.Tensor:
    chosen = logits.argmax(-1)
    for i, row in enumerate(rows):
        temperature = row.parameters.temperature
        if temperature <= 0:
            continue
        probabilities = torch.softmax(logits[i].float() / temperature, dim=-1)
        top_p = row.parameters.top_p
        if 0 < top_p < 1:
            sorted_p, order = probabilities.sort(descending=True)
            outside = sorted_p.cumsum(-1) - sorted_p > top_p
            sorted_p[outside] = 0
            probabilities = torch.zeros_like(probabilities).scatter(0, order, sorted_p)
        chosen[i] = torch.multinomial(probabilities, 1, generator=generators[i])[0]
    return chosen


class _RowState:
    def __init__(self, row: GenerationRow, prompt_tokens: int, stop_hold: int):
        self.row = row
        self.prompt_tokens = prompt_tokens
        self.token_ids: list[int] = []
        self.text = ""
        self.emitted = 0
        self.stop_hold = stop_hold
        self.finish_reason: str | None = None

    def emit(self, final: bool) -> None:
        text = self.text
        safe = len(text) if final else max(self.emitted, len(text) - self.stop_hold)
        if not final:
            while safe > self.emitted and text[safe - 1] == "\ufffd":  # an unfinished UTF-8 char
                safe -= 1
        if safe > self.emitted and self.row.on_text is not None:
            self.row.on_text(text[self.emitted : safe])
        self.emitted = max(self.emitted, safe)


def generate_rows(
    base: LoadedBase,
    rows: Sequence[GenerationRow],
    cancelled: Callable[[Sequence[int]], set[int]] | None = None,
) -> list[GenerationRowResult]:
    """Generate for every row in one batch; ``cancelled(live_row_indices)`` (checked between
    decode steps) returns the rows whose client went away."""
    tokenizer = base.tokenizer
    device = base.device
    eos_id = tokenizer.eos_token_id
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id
    limit = _context_limit(base)
    prompt_ids = prompts.encode_rendered(tokenizer, [row.prompt for row in rows])
    for ids, row in zip(prompt_ids, rows, strict=True):
        if len(ids) + row.parameters.max_new_tokens > limit:
            raise EngineError(
                f"The prompt has {len(ids)} tokens; with max_new_tokens "
                f"{row.parameters.max_new_tokens} it exceeds the model's {limit}.",
                code=ErrorCode.INPUT_TOO_LONG,
            )
    width = max(len(ids) for ids in prompt_ids)
    input_ids = torch.tensor(
        [[pad_id] * (width - len(ids)) + ids for ids in prompt_ids], device=device
    )
    mask = torch.tensor(
        [[0] * (width - len(ids)) + [1] * len(ids) for ids in prompt_ids], device=device
    )
    states = [
        _RowState(row, len(ids), max((len(s) for s in row.parameters.stop), default=1) - 1)
        for row, ids in zip(rows, prompt_ids, strict=True)
    ]
    generators = []
    for row in rows:
        generator = torch.Generator(device=device)
        generator.manual_seed(row.seed if row.seed is not None else torch.seed())
        generators.append(generator)

    model = _backbone(base)
    live = list(range(len(rows)))
    past = None
    step_ids = input_ids
    with torch.inference_mode(), contextlib.ExitStack() as lora:
        lora.enter_context(_lora_context(base, [row.adapter for row in rows]))
        while live:
            live_rows = [rows[i] for i in live]
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            if past is not None:
                positions = positions[:, -1:]
            out = model(
                input_ids=step_ids,
                attention_mask=mask,
                position_ids=positions,
                cache=past,
                use_cache=True,
                logits_to_keep=1,
            )
            past = out.cache
            next_ids = _next_tokens(out.logits[:, -1, :], live_rows, [generators[i] for i in live])
            keep: list[int] = []
            for slot, row_index in enumerate(live):
                state = states[row_index]
                token = int(next_ids[slot])
                if token == eos_id and state.row.stop_at_eos:
                    state.finish_reason = "stop"
                else:
                    state.token_ids.append(token)
                    state.text = tokenizer.decode(state.token_ids, skip_special_tokens=True)
                    hits = [
                        state.text.find(s) for s in state.row.parameters.stop if s in state.text
                    ]
                    if hits:
                        state.text = state.text[: min(hits)]
                        state.finish_reason = "stop"
                    elif len(state.token_ids) >= state.row.parameters.max_new_tokens:
                        state.finish_reason = "length"
                state.emit(final=state.finish_reason is not None)
                if state.finish_reason is None:
                    keep.append(slot)
            if cancelled is not None and keep:
                gone = cancelled([live[slot] for slot in keep])
                for slot in list(keep):
                    if live[slot] in gone:
                        states[live[slot]].finish_reason = "cancelled"
                        states[live[slot]].emit(final=True)
                        keep.remove(slot)
            if not keep:
                break
            if len(keep) < len(live):  # drop finished rows: the rest runs smaller
                index = torch.tensor(keep, device=device)
                past.batch_select_indices(index)
                mask = mask[index]
                next_ids = next_ids[index]
                live = [live[slot] for slot in keep]
                lora.close()  # the per-row LoRA stacks are gathered again for the rows left
                lora.enter_context(_lora_context(base, [rows[i].adapter for i in live]))
            step_ids = next_ids[:, None]
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=-1)
    return [
        GenerationRowResult(
            text=s.text,
            finish_reason=s.finish_reason or "length",
            prompt_tokens=s.prompt_tokens,
            completion_tokens=len(s.token_ids),
            token_ids=s.token_ids,
        )
        for s in states
    ]
