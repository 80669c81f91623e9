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

The override swaps the ``forward`` of each peft LoRA ``Linear`` for the length of a
``with`` block, so one thread at a time may run a gathered batch on a model (the
engine's batcher thread is that one thread).
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator, Sequence

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
    a_rows_t, b_rows_t = self._niche_rows  # (B, in, r), (B, r, out)
    shape = result.shape
    x3 = x.reshape(shape[0], -1, x.shape[-1])
    if x3.dtype != a_rows_t.dtype:
        x3 = x3.to(a_rows_t.dtype)
    hidden = torch.bmm(x3, a_rows_t)
    # In place on the base layer's fresh output: no second (B, T, out) tensor per layer.
    result.view(shape[0], -1, shape[-1]).baddbmm_(hidden, b_rows_t.to(result.dtype))
    return result


def _row_stacks(
    layer: LoraLinear, adapters: Sequence[str | None], rank: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's A^T and (s*B)^T, zero-padded to ``rank``: (B, in, r) and (B, r, out).

    The distinct adapters (plus a zero slot for rows without one) are stacked once, then
    gathered by each row's index: a handful of tensor ops per layer, whatever the batch
    size or the number of distinct adapters.
    """
    weight = layer.base_layer.weight
    zero_a = torch.zeros(rank, weight.shape[1], dtype=weight.dtype, device=weight.device)
    zero_b = torch.zeros(weight.shape[0], rank, dtype=weight.dtype, device=weight.device)
    distinct = list(dict.fromkeys(adapters))
    a_slots, b_slots, scales = [], [], []
    for name in distinct:
        if name is None or name not in layer.lora_A:
            a_slots.append(zero_a)  # the base model, or an adapter that skips this layer
            b_slots.append(zero_b)
            scales.append(0.0)
            continue
        a = layer.lora_A[name].weight
        b = layer.lora_B[name].weight
        if a.shape[0] != rank:  # a smaller rank: zero rows of A and columns of B add nothing
            a = torch.cat([a, zero_a[: rank - a.shape[0]]])
            b = torch.cat([b, zero_b[:, : rank - b.shape[1]]], dim=1)
        a_slots.append(a)
        b_slots.append(b)
        scales.append(float(layer.scaling[name]))
    scale = torch.tensor(scales, dtype=weight.dtype, device=weight.device)[:, None, None]
    slot_of = {name: slot for slot, name in enumerate(distinct)}
    index = torch.tensor([slot_of[name] for name in adapters], device=weight.device)
    a_stack = torch.stack(a_slots).transpose(1, 2)  # (k, in, r)
    b_stack = (torch.stack(b_slots) * scale).transpose(1, 2)  # (k, r, out)
    return a_stack[index].contiguous(), b_stack[index].contiguous()


@contextlib.contextmanager
def gathered_lora(model: torch.nn.Module, adapters: Sequence[str | None]) -> Iterator[None]:
    """Within the block, row ``i`` of every forward uses adapter ``adapters[i]`` (None: base).

    The batch size of every forward inside must be ``len(adapters)``.
    """
    layers = lora_linears(model)
    try:
        for layer in layers:
            names = [n for n in dict.fromkeys(adapters) if n is not None and n in layer.lora_A]
            for name in names:
                if name in layer.lora_variant or layer.use_dora.get(name, False):
                    raise ValueError(f"adapter {name!r} uses a LoRA variant; not supported")
            rank = max((layer.lora_A[n].weight.shape[0] for n in names), default=1)
            layer._niche_rows = _row_stacks(layer, adapters, rank)
            layer.forward = types.MethodType(_gathered_forward, layer)
        yield
    finally:
        for layer in layers:
            layer.__dict__.pop("forward", None)
            layer.__dict__.pop("_niche_rows", None)
