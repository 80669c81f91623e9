"""A fake engine and planted rows for the leaderboard tests: each row carries a marker
(zqbench<i>mark), and the engine answers from a table, so a board's ranking is known."""

from __future__ import annotations

import io
import json
import re

ROWS = 40
MARK = re.compile(r"zqbench(\d+)mark")
SOURCES = [{"name": "Planted rows", "url": "https://example.org/rows", "licence": "CC0-1.0",
            "attribution": "The test suite"}]  # fmt: skip


def rows_file(count: int = ROWS, labels=("a", "b"), *, task: str = "text-classification"):
    """Rows that each carry a marker (zqbench<i>mark) and, for classification, a label."""
    if task == "text-classification":
        lines = [{"text": f"zqbench{i}mark word", "label": labels[i % len(labels)]}
                 for i in range(count)]  # fmt: skip
    else:
        lines = [{"prompt": f"zqbench{i}mark", "completion": f"done{i}"} for i in range(count)]
    handle = io.BytesIO("".join(json.dumps(line) + "\n" for line in lines).encode())
    handle.name = "rows.jsonl"
    return handle


def truth(index: int, labels=("a", "b")) -> str:
    return labels[index % len(labels)]


class FakeEngine:
    """Answers as the engine's protocol does: each adapter (by SHA-256) labels the first
    ``share`` of the rows right and the rest wrong; the generalist (no adapter) says "a"."""

    def __init__(self, shares: dict[str, float], labels=("a", "b")):
        self.shares, self.labels, self.calls = shares, labels, 0

    def _label(self, sha: str | None, text: str) -> str:
        index = int(MARK.search(text).group(1))
        if sha is None:
            return "a"
        right = truth(index, self.labels)
        if index < self.shares.get(sha, 0.0) * ROWS:
            return right
        return next(label for label in self.labels if label != right)

    def infer(self, request: dict) -> dict:
        self.calls += 1
        sha = (request.get("adapter") or {}).get("sha256")
        if request["task"] == "text-classification":
            outputs = [{"label": self._label(sha, t), "scores": {}} for t in request["inputs"]]
        else:
            index = int(MARK.search(request["prompt"]).group(1))
            right = index < self.shares.get(sha, 0.0) * ROWS
            outputs = {"text": f"done{index}" if right else "nope", "finish_reason": "stop"}
        return {
            "request_id": request["request_id"], "outputs": outputs,
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            "adapter_sha256": sha, "batch_size": 1, "engine_ms": 2.0,
        }  # fmt: skip
