"""Seeded synthetic datasets for benchmarks: realistic-looking, noisy support tickets."""

from __future__ import annotations

import random

TOPIC_WORDS: dict[str, list[str]] = {
    "billing": [
        "invoice",
        "charge",
        "refund",
        "payment",
        "card",
        "billed",
        "price",
        "subscription",
        "receipt",
        "overcharged",
        "fee",
        "discount",
        "credit",
        "plan",
        "renewal",
        "tax",
        "amount",
        "paid",
        "bank",
        "statement",
        "cost",
    ],
    "shipping": [
        "delivery",
        "package",
        "parcel",
        "courier",
        "tracking",
        "shipped",
        "arrived",
        "late",
        "address",
        "warehouse",
        "box",
        "damaged",
        "carrier",
        "dispatch",
        "postage",
        "lost",
        "transit",
        "week",
        "driver",
        "doorstep",
    ],
    "technical": [
        "error",
        "crash",
        "bug",
        "app",
        "login",
        "password",
        "screen",
        "update",
        "install",
        "browser",
        "slow",
        "freeze",
        "server",
        "sync",
        "version",
        "settings",
        "loading",
        "reboot",
        "connection",
        "device",
    ],
    "account": [
        "profile",
        "email",
        "username",
        "account",
        "delete",
        "close",
        "verify",
        "settings",
        "privacy",
        "name",
        "phone",
        "security",
        "login",
        "password",
        "access",
        "permission",
        "data",
        "change",
        "register",
    ],
}
FILLER_WORDS = [
    "i",
    "the",
    "a",
    "my",
    "please",
    "help",
    "with",
    "this",
    "order",
    "today",
    "yesterday",
    "again",
    "still",
    "not",
    "working",
    "need",
    "you",
    "can",
    "your",
    "when",
    "it",
    "is",
    "was",
    "have",
    "has",
    "been",
    "why",
    "how",
    "what",
    "thanks",
    "hello",
    "hi",
    "problem",
    "issue",
    "question",
    "urgent",
    "customer",
    "service",
    "team",
    "support",
    "week",
    "month",
    "time",
    "really",
    "very",
    "just",
    "also",
    "but",
    "and",
    "or",
    "so",
    "if",
    "because",
    "since",
    "after",
    "before",
    "there",
]


def noisy_topic_rows(
    n_rows: int, seed: int, label_noise: float = 0.10, topic_share: float = 0.22
) -> list[dict]:
    """``[{"text", "label"}]`` over 4 topics with overlapping vocabulary (``account`` shares
    words with ``technical``), lengths 3-60 words and ``label_noise`` of labels flipped."""
    rng = random.Random(seed)
    labels = sorted(TOPIC_WORDS)
    rows = []
    for _ in range(n_rows):
        label = rng.choice(labels)
        length = max(3, min(60, int(rng.lognormvariate(2.6, 0.6))))
        words = []
        for _ in range(length):
            draw = rng.random()
            if draw < topic_share:
                words.append(rng.choice(TOPIC_WORDS[label]))
            elif draw < topic_share + 0.08:
                # Words of another topic: the vocabulary overlaps, as in real tickets.
                words.append(rng.choice(TOPIC_WORDS[rng.choice(labels)]))
            else:
                words.append(rng.choice(FILLER_WORDS))
        if rng.random() < label_noise:
            label = rng.choice([other for other in labels if other != label])
        rows.append({"text": " ".join(words), "label": label})
    return rows


def separable_topic_rows(n_rows: int, seed: int) -> list[dict]:
    """Clean, easily separable rows for tiny tests."""
    return noisy_topic_rows(n_rows, seed, label_noise=0.0, topic_share=0.6)
