"""A gathered batched-LoRA forward (Punica's BGMV, S-LoRA): many adapters, one pass.

peft's ``adapter_names=`` path loops over the distinct adapters inside every LoRA layer
at every step (a Python loop, a sub-batch copy and two small matmuls per adapter). Here,
once per batch, each row's A and B are gathered by adapter index into per-row stacks;
then every LoRA layer at every step does exactly three kernels whatever the number of
adapters:

    y = base(x);  h = bmm(x, A_rows^T);  y = baddbmm(y, h, (s * B_rows)^T)

Rows without an adapter gather a zero slot. The result equals, per row, what peft
computes for that row's adapter (``B(A(x)) * s``) up to float rounding; the scaling is
folded into B, which is where the rounding differs.

``gather`` computes the per-row stacks once for a batch's rows; ``applied`` swaps the
``forward`` of each peft LoRA ``Linear`` for the length of a ``with`` block, so one thread
at a time may run a gathered batch on a model (callers hold the base's lock around it).
A decode batch gathers when its rows change and applies the stacks around each step.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from peft.tuners.lora import Linear as LoraLinear


def lora_linears(model: torch.nn.Module) -> list[LoraLinear]:
    """The LoRA layers, without walking into them: each holds a ModuleDict entry per loaded
    adapter, and ``named_modules()`` over 100 adapters cost ~10 ms per batch."""
    found, stack = [], [model]
    while stack:
        module = stack.pop()
        if isinstance(module, LoraLinear):
            found.append(module)
        else:
            stack.extend(child for child in module._modules.values() if child is not None)
    return found


def _gathered_forward(self: LoraLinear, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    result = self.base_layer(x, *args, **kwargs)
    shape = result.shape
    if len(self._niche_rows) == 3:  # segmented: every adapter's A side by side, rows masked
        a_cat_t, b_cat_t, mask = self._niche_rows  # (in, k*r), (k*r, out), (B, k*r)
        x3 = x.reshape(shape[0], -1, x.shape[-1])
        if x3.dtype != a_cat_t.dtype:
            x3 = x3.to(a_cat_t.dtype)
        hidden = torch.matmul(x3, a_cat_t).mul_(mask[:, None, :])  # other adapters' slots: 0
        result.view(-1, shape[-1]).addmm_(
            hidden.view(-1, hidden.shape[-1]), b_cat_t.to(result.dtype)
        )
        return result
    a_t, b_t = self._niche_rows  # per row (B, in, r), (B, r, out); or one for all (in, r), (r, out)
    if a_t.dim() == 2:  # every row uses the same adapter: two plain products, no gather
        x2 = x.reshape(-1, x.shape[-1])
        if x2.dtype != a_t.dtype:
            x2 = x2.to(a_t.dtype)
        result.view(-1, shape[-1]).addmm_(x2 @ a_t, b_t.to(result.dtype))
        return result
    x3 = x.reshape(shape[0], -1, x.shape[-1])
    if x3.dtype != a_t.dtype:
        x3 = x3.to(a_t.dtype)
    hidden = torch.bmm(x3, a_t)
    # In place on the base layer's fresh output: no second (B, T, out) tensor per layer.
    result.view(shape[0], -1, shape[-1]).baddbmm_(hidden, b_t.to(result.dtype))
    return result


def _uniform_stack(layer: LoraLinear, name: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    """A^T and (s*B)^T of the one adapter every row uses: (in, r) and (r, out); a zero
    rank-1 pair where the adapter skips this layer (or for the base model)."""
    weight = layer.base_layer.weight
    if name is None or name not in layer.lora_A:
        return weight.new_zeros(weight.shape[1], 1), weight.new_zeros(1, weight.shape[0])
    a = layer.lora_A[name].weight  # (r, in)
    b = layer.lora_B[name].weight * float(layer.scaling[name])  # (out, r)
    return a.t(), b.t()


def _slots(
    layer: LoraLinear, distinct: Sequence[str | None], rank: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``distinct`` adapters' A (k, r, in) and s*B (k, out, r), zero-padded to ``rank``;
    a zero slot for None or an adapter this layer lacks."""
    weight = layer.base_layer.weight
    zeros = None
    a_slots, b_slots, scales = [], [], []
    for name in distinct:
        if name is None or name not in layer.lora_A:
            if zeros is None:
                zeros = (
                    weight.new_zeros(rank, weight.shape[1]),
                    weight.new_zeros(weight.shape[0], rank),
                )
            a_slots.append(zeros[0])
            b_slots.append(zeros[1])
            scales.append(0.0)
            continue
        a = layer.lora_A[name].weight  # (r, in)
        b = layer.lora_B[name].weight  # (out, r)
        if a.shape[0] != rank:  # a smaller rank: zero rows of A and columns of B add nothing
            a = torch.nn.functional.pad(a, (0, 0, 0, rank - a.shape[0]))
            b = torch.nn.functional.pad(b, (0, rank - b.shape[1]))
        a_slots.append(a)
        b_slots.append(b)
        scales.append(float(layer.scaling[name]))
    scale = torch.tensor(scales, dtype=weight.dtype, device=weight.device)[:, None, None]
    return torch.stack(a_slots), torch.stack(b_slots) * scale


def _segmented_stacks(
    layer: LoraLinear, distinct: Sequence[str | None], index: torch.Tensor, rank: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every distinct adapter's A^T side by side (in, k*r), their (s*B)^T stacked (k*r, out),
    and each row's mask (B, k*r): 1 on its own adapter's r columns. Two plain products per
    layer for any mix of adapters: a batch of few rows per adapter runs as fast as one
    adapter's (a per-row batched product, on a CPU, cost more than the base layer)."""
    a, b = _slots(layer, distinct, rank)
    k = a.shape[0]
    a_cat_t = a.reshape(k * rank, -1).t()  # (in, k*r)
    b_cat_t = b.permute(0, 2, 1).reshape(k * rank, -1)  # (k*r, out)
    one_hot = torch.nn.functional.one_hot(index, k).to(a.dtype)  # (B, k)
    return a_cat_t, b_cat_t, one_hot.repeat_interleave(rank, dim=1)


def _row_stacks(
    layer: LoraLinear, distinct: Sequence[str | None], index: torch.Tensor, rank: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's A^T and (s*B)^T, zero-padded to ``rank``: (B, in, r) and (B, r, out).

    The ``distinct`` adapters (None, or one this layer lacks: a zero slot) are stacked once,
    then gathered by each row's slot in ``index``: a handful of tensor ops per layer,
    whatever the batch size or the number of distinct adapters. The results are transposed
    views of the gathered copies (bmm reads them as they are: no second copy).
    """
    a, b = _slots(layer, distinct, rank)
    a_rows = torch.index_select(a, 0, index)  # (B, r, in)
    b_rows = torch.index_select(b, 0, index)  # (B, out, r)
    return a_rows.transpose(1, 2), b_rows.transpose(1, 2)


@dataclass(eq=False)
class GatheredLora:
    """Each LoRA layer of a model with its rows' stacks, ready to be ``applied``. A decode
    batch keeps one in step with its rows: ``select`` when rows leave, ``concat`` when rows
    join (whose stacks their prefill gathered), so its rows change without a new gather.

    When every row uses one adapter (``uniform``: its name, or None for the base) a stack
    is that adapter's own (in, r) and (r, out) pair, used by all rows: no per-row copies,
    two plain products per layer (the common case: one specialist's traffic)."""

    layers: list[LoraLinear]
    stacks: list[tuple[torch.Tensor, torch.Tensor]]
    rows: int = 0
    uniform: str | bool | None = False  # False: rows differ; else the one adapter (None: base)
    segmented: bool = False  # stacks of (A_cat^T, B_cat^T, mask): one forward, no select/concat

    def select(self, index: torch.Tensor) -> GatheredLora:
        """Only the rows at ``index``, in that order."""
        if self.segmented:
            raise ValueError("segmented stacks serve one forward; gather per row to select")
        if self.uniform is not False:
            return GatheredLora(self.layers, self.stacks, len(index), self.uniform)
        return GatheredLora(
            self.layers,
            [(a.index_select(0, index), b.index_select(0, index)) for a, b in self.stacks],
            len(index),
        )

    def concat(self, other: GatheredLora) -> GatheredLora:
        """These rows, then ``other``'s (gathered on the same LoRA layers); per layer the
        smaller rank is zero-padded to the larger one (zeros add nothing)."""
        if other.layers != self.layers:
            raise ValueError("gathered on different LoRA layers")
        if self.segmented or other.segmented:
            raise ValueError("segmented stacks serve one forward; gather per row to concat")
        rows = self.rows + other.rows
        if self.uniform is not False and self.uniform == other.uniform:
            return GatheredLora(self.layers, self.stacks, rows, self.uniform)
        stacks = []
        for (a1, b1), (a2, b2) in zip(self.per_row_stacks(), other.per_row_stacks(), strict=True):
            rank = max(a1.shape[2], a2.shape[2])
            a = torch.cat([_pad_rank(a1, rank, dim=2), _pad_rank(a2, rank, dim=2)])
            b = torch.cat([_pad_rank(b1, rank, dim=1), _pad_rank(b2, rank, dim=1)])
            stacks.append((a, b))
        return GatheredLora(self.layers, stacks, rows)

    def per_row_stacks(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The stacks with a leading row dimension (a uniform pair repeated per row)."""
        if self.uniform is False:
            return self.stacks
        return [
            (a.expand(self.rows, *a.shape), b.expand(self.rows, *b.shape)) for a, b in self.stacks
        ]


def _pad_rank(stack: torch.Tensor, rank: int, dim: int) -> torch.Tensor:
    missing = rank - stack.shape[dim]
    if missing == 0:
        return stack
    shape = list(stack.shape)
    shape[dim] = missing
    return torch.cat([stack, stack.new_zeros(shape)], dim=dim)


def gather(
    model: torch.nn.Module, adapters: Sequence[str | None], *, segmented: bool = False
) -> GatheredLora:
    """Row ``i`` will use adapter ``adapters[i]`` (None: the base) in every LoRA layer.
    ``segmented`` (one forward only): the adapters side by side when they are at most
    SEGMENTED_MAX_ADAPTERS, else per-row stacks."""
    layers = lora_linears(model)
    distinct = list(dict.fromkeys(adapters))
    segmented = segmented and len(distinct) <= SEGMENTED_MAX_ADAPTERS
    if len(distinct) == 1:
        name = distinct[0]
        for layer in layers:
            _refuse_variants(layer, [name])
        stacks = [_uniform_stack(layer, name) for layer in layers]
        return GatheredLora(layers=layers, stacks=stacks, rows=len(adapters), uniform=name)
    slot_of = {name: slot for slot, name in enumerate(distinct)}
    index = None
    stacks = []
    for layer in layers:
        if index is None:  # one device for the model's layers
            index = torch.tensor(
                [slot_of[n] for n in adapters], device=layer.base_layer.weight.device
            )
        names = [n for n in distinct if n is not None and n in layer.lora_A]
        _refuse_variants(layer, names)
        rank = max((layer.lora_A[n].weight.shape[0] for n in names), default=1)
        stacks.append(
            (_segmented_stacks if segmented else _row_stacks)(layer, distinct, index, rank)
        )
    return GatheredLora(layers=layers, stacks=stacks, rows=len(adapters), segmented=segmented)


# Side by side, a batch's adapters beat per-row stacks while they are few: with 8 distinct
# adapters in 32 MiniLM rows 0.89 of a merged model's throughput against 0.82, with ~27
# (drawn from 100) 0.79 against 0.88-0.93 (bench/serving.py, 2 cores).
SEGMENTED_MAX_ADAPTERS = 8


def _refuse_variants(layer: LoraLinear, names) -> None:
    for name in names:
        if (
            name is not None
            and name in layer.lora_A
            and (name in layer.lora_variant or layer.use_dora.get(name, False))
        ):
            raise ValueError(f"adapter {name!r} uses a LoRA variant; not supported")


@contextlib.contextmanager
def applied(gathered: GatheredLora) -> Iterator[None]:
    """Within the block every forward runs the gathered rows (its batch size must be the
    number of rows gathered)."""
    try:
        for layer, rows in zip(gathered.layers, gathered.stacks, strict=True):
            layer._niche_rows = rows
            layer.forward = types.MethodType(_gathered_forward, layer)
        yield
    finally:
        for layer in gathered.layers:
            layer.__dict__.pop("forward", None)
            layer.__dict__.pop("_niche_rows", None)


@contextlib.contextmanager
def gathered_lora(model: torch.nn.Module, adapters: Sequence[str | None]) -> Iterator[None]:
    """Within the block, row ``i`` of every forward uses adapter ``adapters[i]`` (None: base).

    The batch size of every forward inside must be ``len(adapters)``.
    """
    with applied(gather(model, adapters)):
        yield
