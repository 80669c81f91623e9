"""Length-grouped batches: every row once per epoch, as many batches as plain shuffling,
far less padding, and the same batches for the same seed."""

import math
import random

import torch

from training_worker.ml.data import length_grouped_batches


def padded_tokens(batches: list[list[int]], lengths: list[int]) -> int:
    return sum(len(batch) * max(lengths[i] for i in batch) for batch in batches)


def test_length_grouped_batches_cover_every_row_once_with_little_padding():
    rng = random.Random(0)
    lengths = [rng.randint(4, 80) for _ in range(1_000)]

    grouped = length_grouped_batches(lengths, 16, torch.Generator().manual_seed(1))
    order = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(1)).tolist()
    shuffled = [order[i : i + 16] for i in range(0, len(order), 16)]

    assert sorted(i for batch in grouped for i in batch) == list(range(len(lengths)))
    assert len(grouped) == math.ceil(len(lengths) / 16)
    assert sum(len(batch) < 16 for batch in grouped) <= 1
    real_tokens = sum(lengths)
    # Plain shuffling pads most rows to near the longest; grouping stays close to the data
    assert padded_tokens(grouped, lengths) < 1.1 * real_tokens
    assert padded_tokens(shuffled, lengths) > 1.5 * real_tokens


def test_same_seed_same_batches_and_the_order_of_batches_is_shuffled():
    lengths = [n % 50 + 1 for n in range(400)]

    first = length_grouped_batches(lengths, 8, torch.Generator().manual_seed(5))
    again = length_grouped_batches(lengths, 8, torch.Generator().manual_seed(5))
    other = length_grouped_batches(lengths, 8, torch.Generator().manual_seed(6))

    assert first == again and first != other
    widths = [max(lengths[i] for i in batch) for batch in first]
    assert widths != sorted(widths) and widths != sorted(widths, reverse=True)
