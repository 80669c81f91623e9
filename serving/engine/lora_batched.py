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


def lora_linears(model: torch.nn.Module) -> list[tuple[str, LoraLinear]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, LoraLinear)]


def _gathered_forward(self: LoraLinear, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    result = self.base_layer(x, *args, **kwargs)
    a_rows_t, b_rows_t = self._niche_rows  # (B, in, r), (B, r, out)
    shape = result.shape
    x3 = x.reshape(shape[0], -1, x.shape[-1]).to(a_rows_t.dtype)
    hidden = torch.bmm(x3, a_rows_t)
    out = torch.baddbmm(result.reshape(shape[0], -1, shape[-1]), hidden, b_rows_t)
    return out.reshape(shape)


def _row_stacks(
    layer: LoraLinear, adapters: Sequence[str | None], rank: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per distinct adapter (plus a zero slot) A and s*B padded to ``rank``; then per row."""
    base = layer.base_layer
    in_features, out_features = base.in_features, base.out_features
    weight = base.weight
    distinct = list(dict.fromkeys(adapters))
    a_stack = torch.zeros(
        len(distinct), rank, in_features, dtype=weight.dtype, device=weight.device
    )
    b_stack = torch.zeros(
        len(distinct), out_features, rank, dtype=weight.dtype, device=weight.device
    )
    for slot, name in enumerate(distinct):
        if name is None or name not in layer.lora_A:
            continue  # the base model, or an adapter that does not touch this layer
        a = layer.lora_A[name].weight
        b = layer.lora_B[name].weight
        r = a.shape[0]
        a_stack[slot, :r] = a
        b_stack[slot, :, :r] = b * layer.scaling[name]
    index = torch.tensor([distinct.index(name) for name in adapters], device=weight.device)
    # Gather once per batch: every decode step then reuses these per-row views.
    return a_stack[index].transpose(1, 2).contiguous(), b_stack[index].transpose(1, 2).contiguous()


@contextlib.contextmanager
def gathered_lora(model: torch.nn.Module, adapters: Sequence[str | None]) -> Iterator[None]:
    """Within the block, row ``i`` of every forward uses adapter ``adapters[i]`` (None: base).

    The batch size of every forward inside must be ``len(adapters)``.
    """
    layers = lora_linears(model)
    try:
        for _, layer in layers:
            names = [n for n in dict.fromkeys(adapters) if n is not None and n in layer.lora_A]
            for name in names:
                if name in layer.lora_variant or layer.use_dora.get(name, False):
                    raise ValueError(f"adapter {name!r} uses a LoRA variant; not supported")
            rank = max((layer.lora_A[n].weight.shape[0] for n in names), default=1)
            layer._niche_rows = _row_stacks(layer, adapters, rank)
            layer.forward = types.MethodType(_gathered_forward, layer)
        yield
    finally:
        for _, layer in layers:
            layer.__dict__.pop("forward", None)
            layer.__dict__.pop("_niche_rows", None)
