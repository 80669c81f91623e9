"""One mixed-adapter forward pass for a batch of rows over one base.

``classify_rows``: every row is a text with its adapter; one encoder pass with the
gathered LoRA, then each row's own head on its pooled features, blended with its
version's lexical head where it has one.
``DecodeBatch``: generation rows, each a prompt with its adapter and its own sampling
parameters, decoded together one token per step; rows join at any step (prefill, then
their KV cache is merged into the batch's) and leave as soon as they finish or are
stopped. ``generate_rows`` runs one fixed set of rows through it.
Forward passes only: who runs when is the scheduler's (``scheduler.py``), the lanes'
loops drive both (``batching.py``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from serving.engine.lora_batched import GatheredLora, applied, gather, lora_linears
from serving.engine.registry import (
    AdapterUnavailable,
    EngineError,
    LoadedAdapter,
    LoadedBase,
    adapter_name_for,
)
from serving.protocol import AdapterRef, ErrorCode, GenerationParameters
from training_worker.ml import data, prompts
from training_worker.ml.evaluation import label_phrase

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


def _gather(
    base: LoadedBase, adapters: Sequence[AdapterRef | None], *, segmented: bool = False
) -> GatheredLora | None:
    """The rows' LoRA stacks (None: no adapter was ever loaded on this base). ``segmented``
    for one forward (classification); a decode batch keeps per-row stacks it can select
    from and extend."""
    if base.peft_model is None:
        if any(a is not None for a in adapters):
            raise AdapterUnavailable("Adapter not loaded.")
        return None
    names = [adapter_name_for(a.sha256) if a else None for a in adapters]
    return gather(base.model, names, segmented=segmented)


def _applied(gathered: GatheredLora | None):
    return applied(gathered) if gathered is not None else contextlib.nullcontext()


def _lora_context(base: LoadedBase, adapters: Sequence[AdapterRef | None]):
    """Row ``i`` of every forward in the block uses ``adapters[i]``."""
    return _applied(_gather(base, adapters, segmented=True))


def _backbone(base: LoadedBase):
    """The transformers model under peft's wrapper (the LoRA layers live inside it)."""
    peft_model = base.peft_model
    return peft_model.get_base_model() if peft_model is not None else base.model


@dataclass
class ClassifiedRows:
    scores: list[dict[str, float]]  # per row {label: probability}, in the adapter's order
    tokens: list[int]  # tokens each row was read with (after its version's cut): usage


def classify(base: LoadedBase, rows: Sequence[ClassificationRow]) -> ClassifiedRows:
    """One forward pass for every row (each with its own adapter and head). Holds
    ``base.lock`` for the forward, so an eviction from another lane waits for it."""
    encoded = _encode_rows(base, rows)
    with base.lock, torch.inference_mode(), _lora_context(base, [r.adapter for r in rows]):
        model = _backbone(base)
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
    return ClassifiedRows(
        scores=[
            dict(zip(row.adapter.labels, row_probabilities, strict=True))
            for row, row_probabilities in zip(rows, probabilities, strict=True)
        ],
        tokens=encoded["attention_mask"].sum(-1).tolist(),
    )


# The generalist fallback's zero-shot scores: softmax over the cosines times this scale (the
# evaluation's zero-shot baseline takes the argmax of the same cosines).
ZERO_SHOT_SCALE = 20.0


def zero_shot(base: LoadedBase, texts: Sequence[str], labels: Sequence[str]) -> ClassifiedRows:
    """The router's classification fallback: each text's label by the cosine of its
    mean-pooled embedding to the label names' (the base un-adapted), as the evaluation's
    generalist zero-shot baseline. One forward for the texts and the label names."""
    strings = [*texts, *(label_phrase(label) for label in labels)]
    cut = data.classification_token_ids(base.tokenizer, strings, CLASSIFICATION_MAX_TOKENS)
    batch = data.collate_classification(
        [data.EncodedExample(ids, 0) for ids in cut], base.tokenizer.pad_token_id
    )
    batch.pop("labels")
    encoded = {name: tensor.to(base.device) for name, tensor in batch.items()}
    with base.lock, torch.inference_mode(), _lora_context(base, [None] * len(strings)):
        _backbone(base)(**encoded)
        features = base.captured.pop("features")
    if features.dim() != 2:
        raise AdapterUnavailable(f"{base.slug} has no mean-pooled embedding for zero-shot.")
    features = torch.nn.functional.normalize(features.float(), dim=-1)
    n = len(texts)
    probabilities = torch.softmax(features[:n] @ features[n:].T * ZERO_SHOT_SCALE, dim=-1)
    return ClassifiedRows(
        scores=[dict(zip(labels, row.tolist(), strict=True)) for row in probabilities],
        tokens=encoded["attention_mask"][:n].sum(-1).tolist(),
    )


def classify_rows(base: LoadedBase, rows: Sequence[ClassificationRow]) -> list[dict[str, float]]:
    """Per row ``{label: probability}`` in the adapter's label order."""
    return classify(base, rows).scores


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


def _encode_rows(base: LoadedBase, rows: Sequence[ClassificationRow]) -> dict[str, Any]:
    """The batch's tensors: each row's token ids as its evaluation read them
    (``data.classification_token_ids`` at its own version's ``token_limit``, one call per
    distinct limit), right-padded together as the evaluation pads its batches."""
    limits = [token_limit(row.adapter) for row in rows]
    ids: list[list[int]] = [[] for _ in rows]
    for limit in set(limits):
        indices = [i for i, row_limit in enumerate(limits) if row_limit == limit]
        cut = data.classification_token_ids(base.tokenizer, [rows[i].text for i in indices], limit)
        for index, row_ids in zip(indices, cut, strict=True):
            ids[index] = row_ids
    examples = [data.EncodedExample(row_ids, 0) for row_ids in ids]
    batch = data.collate_classification(examples, base.tokenizer.pad_token_id)
    batch.pop("labels")
    return {name: tensor.to(base.device) for name, tensor in batch.items()}


def count_tokens(base: LoadedBase, texts: Sequence[str], max_length: int) -> list[int]:
    """Tokens each text is read with (``_encode_rows``'s cut): what usage counts."""
    return [
        len(ids) for ids in data.classification_token_ids(base.tokenizer, list(texts), max_length)
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


def context_limit(base: LoadedBase) -> int:
    """Positions the base was trained for: prompt plus new tokens must fit in them."""
    return prompts.context_limit(base.model.config)  # as the evaluation reads it


def _next_tokens(logits: torch.Tensor, states: Sequence[RowState]) -> torch.Tensor:
    chosen = logits.argmax(-1)
    for i, state in enumerate(states):
        temperature = state.row.parameters.temperature
        if temperature <= 0:
            continue
        probabilities = torch.softmax(logits[i].float() / temperature, dim=-1)
        top_p = state.row.parameters.top_p
        if 0 < top_p < 1:
            sorted_p, order = probabilities.sort(descending=True)
            outside = sorted_p.cumsum(-1) - sorted_p > top_p
            sorted_p[outside] = 0
            probabilities = torch.zeros_like(probabilities).scatter(0, order, sorted_p)
        chosen[i] = torch.multinomial(probabilities, 1, generator=state.generator)[0]
    return chosen


class RowState:
    """One generation row's progress: its tokens and text so far, what it has streamed, its
    own sampling generator. It outlives a preemption: the row is prefilled again from here
    (prompt plus the tokens it made) and goes on where it stopped."""

    def __init__(self, row: GenerationRow, prompt_ids: list[int], device: torch.device):
        self.row = row
        self.prompt_ids = prompt_ids
        self.prompt_tokens = len(prompt_ids)
        self.token_ids: list[int] = []
        self.text = ""
        self.emitted = 0
        self.stop_hold = max((len(s) for s in row.parameters.stop), default=1) - 1
        self.finish_reason: str | None = None
        self.peak_rows = 0  # the most rows it shared a forward pass with (itself included)
        # Its own generator: sampling never touches (or reseeds) torch's global one.
        self.generator = torch.Generator(device=device)
        if row.seed is not None:
            self.generator.manual_seed(row.seed)
        else:
            self.generator.seed()

    @property
    def prefill_ids(self) -> list[int]:
        """What a (re)admission prefills: the prompt, then every token made so far."""
        return self.prompt_ids + self.token_ids

    def accept(self, token: int, tokenizer, eos_id: int | None) -> None:
        """Take the sampled token; decide whether the row is done (eos, a stop string, its
        token budget) and stream what is safe to stream."""
        if token == eos_id and self.row.stop_at_eos:
            self.finish_reason = "stop"
        else:
            self.token_ids.append(token)
            self.text = tokenizer.decode(self.token_ids, skip_special_tokens=True)
            hits = [self.text.find(s) for s in self.row.parameters.stop if s in self.text]
            if hits:
                self.text = self.text[: min(hits)]
                self.finish_reason = "stop"
            elif len(self.token_ids) >= self.row.parameters.max_new_tokens:
                self.finish_reason = "length"
        self.emit(final=self.finish_reason is not None)

    def stop(self, reason: str) -> None:
        """End the row from outside (its client left, its deadline passed)."""
        self.finish_reason = reason
        self.emit(final=True)

    def emit(self, final: bool) -> None:
        text = self.text
        safe = len(text) if final else max(self.emitted, len(text) - self.stop_hold)
        if not final:
            while safe > self.emitted and text[safe - 1] == "\ufffd":  # an unfinished UTF-8 char
                safe -= 1
        if safe > self.emitted and self.row.on_text is not None:
            self.row.on_text(text[self.emitted : safe])
        self.emitted = max(self.emitted, safe)

    def result(self) -> GenerationRowResult:
        return GenerationRowResult(
            text=self.text,
            finish_reason=self.finish_reason or "length",
            prompt_tokens=self.prompt_tokens,
            completion_tokens=len(self.token_ids),
            token_ids=self.token_ids,
        )


def _left_pad(tensor: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    """Zeros on the left of ``dim`` up to ``width`` (masked positions: they add nothing)."""
    missing = width - tensor.shape[dim]
    if missing <= 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


class DecodeBatch:
    """The running generation rows of one base, decoded together one token per step
    (iteration-level batching, as vLLM and TGI do).

    Between steps rows *join* (``join``: their prompts are prefilled together, their first
    token sampled, then their KV cache is merged into the running batch's, both sides
    left-padded to one width with masked zeros) and *leave* (``leave``, or on their own when
    they finish: their cache rows are dropped and the padding every remaining row has is
    trimmed). Each row's positions come from its own attention mask, so what a row computes
    does not depend on who else is in the batch: a request that joins a running batch
    mid-way makes the tokens it makes alone (tested, greedy).

    The rows' LoRA stacks are gathered when the rows change and applied around each step,
    under ``base.lock`` (so an eviction asked for by the other lane never changes the model
    under a forward, and nothing stays patched between steps). One thread (the generation
    lane's) drives a batch."""

    def __init__(self, base: LoadedBase):
        self.base = base
        self.states: list[RowState] = []
        self.cache: Any = None  # transformers' DynamicCache: (rows, heads, width, head_dim)
        self.mask: torch.Tensor | None = None  # (rows, width): 1 where a row has a token
        self.next_ids: torch.Tensor | None = None  # each row's sampled, not yet fed, token
        tokenizer = base.tokenizer
        self.eos_id = tokenizer.eos_token_id
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id
        self._gathered: GatheredLora | None = None  # the rows' LoRA stacks, in row order
        self._checked_for: tuple | None = None  # the model and adapters they were checked on

    def __len__(self) -> int:
        return len(self.states)

    def join(self, states: Sequence[RowState]) -> list[RowState]:
        """Prefill ``states`` (left-padded among themselves; a preempted row prefills its
        prompt and the tokens it made), sample each one's next token and merge the rows
        still going into the batch. Returns the rows that finished at that token (they do
        not join)."""
        if not states:
            return []
        device = self.base.device
        prefill = [state.prefill_ids for state in states]
        width = max(len(ids) for ids in prefill)
        input_ids = torch.tensor(
            [[self.pad_id] * (width - len(ids)) + ids for ids in prefill], device=device
        )
        mask = torch.tensor(
            [[0] * (width - len(ids)) + [1] * len(ids) for ids in prefill], device=device
        )
        with self.base.lock:  # the joining rows' own stacks, then their prefill
            gathered = _gather(self.base, [s.row.adapter for s in states])
            logits, cache = self._forward(input_ids, mask, None, gathered)
        next_ids = _next_tokens(logits, states)
        if self.states:
            self._merge(cache, mask, next_ids)
            self._gathered = self._joined_stacks(gathered)
        else:
            self.cache, self.mask, self.next_ids = cache, mask, next_ids
            self._gathered = gathered
        first = len(self.states)
        self.states.extend(states)
        return self._accept(range(first, len(self.states)))

    def step(self) -> list[RowState]:
        """One decoding step: every row feeds its pending token and samples the next.
        Returns the rows that finished (they have left the batch)."""
        if not self.states:
            return []
        assert self.mask is not None and self.next_ids is not None
        self.mask = torch.cat([self.mask, torch.ones_like(self.mask[:, :1])], dim=-1)
        with self.base.lock:
            gathered = self._running_stacks()
            logits, self.cache = self._forward(
                self.next_ids[:, None], self.mask, self.cache, gathered
            )
        self.next_ids = _next_tokens(logits, self.states)
        return self._accept(range(len(self.states)))

    def leave(self, states: Sequence[RowState]) -> None:
        """Drop rows from the batch (cancelled, past their deadline, preempted); their
        ``RowState`` is untouched. Rows not in the batch are ignored."""
        gone = {id(s) for s in states}
        keep = [i for i, state in enumerate(self.states) if id(state) not in gone]
        if len(keep) == len(self.states):
            return
        if not keep:
            self.close()
            return
        index = torch.tensor(keep, device=self.base.device)
        self.cache.batch_select_indices(index)
        self.mask = self.mask[index]
        self.next_ids = self.next_ids[index]
        self.states = [self.states[i] for i in keep]
        if self._gathered is not None:
            self._gathered = self._gathered.select(index)
        self._trim()

    def close(self) -> None:
        """Empty the batch."""
        self._gathered = self._checked_for = None
        self.states, self.cache, self.mask, self.next_ids = [], None, None, None

    # ------------------------------------------------------------------ internals
    def _accept(self, positions: range) -> list[RowState]:
        tokenizer = self.base.tokenizer
        tokens = self.next_ids.tolist()
        finished = []
        rows = len(self.states)
        for position in positions:
            state = self.states[position]
            state.peak_rows = max(state.peak_rows, rows)
            state.accept(int(tokens[position]), tokenizer, self.eos_id)
            if state.finish_reason is not None:
                finished.append(state)
        self.leave(finished)
        return finished

    def _forward(self, input_ids, mask, cache, gathered) -> tuple[torch.Tensor, Any]:
        """One forward (the caller holds ``base.lock``): logits of each row's last token."""
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, -input_ids.shape[1] :]
        with torch.inference_mode(), _applied(gathered):
            out = _backbone(self.base)(
                input_ids=input_ids,
                attention_mask=mask,
                position_ids=positions,
                cache=cache,
                use_cache=True,
                logits_to_keep=1,
            )
        return out.logits[:, -1, :], out.cache

    def _joined_stacks(self, joining: GatheredLora | None) -> GatheredLora | None:
        """The stacks after ``joining``'s rows were appended (None: gather at the next step)."""
        if self._gathered is None or joining is None or joining.layers != self._gathered.layers:
            self._checked_for = None
            return None
        return self._gathered.concat(joining)

    def _running_stacks(self) -> GatheredLora | None:
        """The rows' stacks, gathered again only when the LoRA layers changed since (a load
        may add some; an eviction never touches a running row's: they are pinned, and the
        stacks are copies). Under ``base.lock``."""
        key = (id(self.base.model), frozenset(self.base.adapters))
        if key != self._checked_for:
            self._checked_for = key
            stale = self._gathered is None or (
                lora_linears(self.base.model) != self._gathered.layers
            )
            if self.base.peft_model is not None and stale:
                self._gathered = _gather(self.base, [s.row.adapter for s in self.states])
        return self._gathered

    def _merge(self, cache, mask: torch.Tensor, next_ids: torch.Tensor) -> None:
        """Append the joining rows' cache below the running rows', both left-padded to the
        wider one (each row's tokens stay right-aligned; the padding is masked)."""
        from transformers.cache_utils import DynamicLayer

        width = max(self.mask.shape[1], mask.shape[1])
        for layer in [*self.cache.layers, *cache.layers]:
            if type(layer) is not DynamicLayer:
                raise EngineError(
                    "Joining a running batch needs full-attention cache layers; "
                    f"this base has {type(layer).__name__}."
                )
        for mine, theirs in zip(self.cache.layers, cache.layers, strict=True):
            mine.keys = torch.cat(
                [_left_pad(mine.keys, width, -2), _left_pad(theirs.keys, width, -2)]
            )
            mine.values = torch.cat(
                [_left_pad(mine.values, width, -2), _left_pad(theirs.values, width, -2)]
            )
        self.mask = torch.cat([_left_pad(self.mask, width, 1), _left_pad(mask, width, 1)])
        self.next_ids = torch.cat([self.next_ids, next_ids])

    def _trim(self) -> None:
        """Drop the columns no remaining row uses (the padding of rows that left)."""
        first = int(self.mask.any(0).to(torch.int8).argmax())
        if first == 0:
            return
        self.mask = self.mask[:, first:]
        for layer in self.cache.layers:
            layer.keys = layer.keys[..., first:, :]
            layer.values = layer.values[..., first:, :]


def generate_rows(
    base: LoadedBase,
    rows: Sequence[GenerationRow],
    cancelled: Callable[[Sequence[int]], set[int]] | None = None,
) -> list[GenerationRowResult]:
    """Generate for every row in one batch that starts together (the lanes let rows join
    and leave at any step; this runs one fixed set, for evaluation parity, tests and
    benchmarks). ``cancelled(live_row_indices)``, checked after every step, returns the
    rows whose client went away."""
    limit = context_limit(base)
    prompt_ids = prompts.encode_rendered(base.tokenizer, [row.prompt for row in rows])
    for ids, row in zip(prompt_ids, rows, strict=True):
        if len(ids) + row.parameters.max_new_tokens > limit:
            raise EngineError(
                f"The prompt has {len(ids)} tokens; with max_new_tokens "
                f"{row.parameters.max_new_tokens} it exceeds the model's {limit}.",
                code=ErrorCode.INPUT_TOO_LONG,
            )
    states = [RowState(row, ids, base.device) for row, ids in zip(rows, prompt_ids, strict=True)]
    index_of = {id(state): i for i, state in enumerate(states)}
    batch = DecodeBatch(base)
    try:
        batch.join(states)
        while batch.states:
            if cancelled is not None:
                gone = cancelled([index_of[id(s)] for s in batch.states])
                stopped = [s for s in batch.states if index_of[id(s)] in gone]
                for state in stopped:
                    state.stop("cancelled")
                batch.leave(stopped)
            batch.step()
    finally:
        batch.close()
    return [state.result() for state in states]
