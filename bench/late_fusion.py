"""Would a blend of the specialist and the classic baseline beat the classic baseline?

The hand-run measurement behind a product decision: it showed that the blend would lead
the classic TF-IDF + logistic regression on every corpus, so classification specialists
are now served as that blend (``training_worker/ml/lexical_head.py``, weight chosen the
same way, by the recipe). This script keeps measuring it from the outside, with the
"oracle" bound beside it. Its classic model keeps every term, as the head did when this
was decided; the head now ships only the terms 5 training rows share, and
``bench/lexical_privacy.py`` measures that head beside this one. For each corpus of
``bench/corpora.py``, on the sealed split ``bench/quality.py`` draws:

1. the default job (``quality.default_job``, no LLM generalist), its adapter kept;
2. on the job's own validation rows (the recipe's split of the TRAINING rows), the
   specialist's class probabilities and those of a classic model fitted on the remaining
   training rows;
3. the blend weight ``w`` of ``w * p_specialist + (1 - w) * p_classic`` (grid of 0.05)
   with the lowest validation log loss; ties go to the larger ``w``
   (``lexical_head.choose_weight``, the recipe's own);
4. on the sealed rows: the specialist, the classic model fitted on all training rows (the
   evaluation's baseline) and the blend with the chosen ``w``. Also recorded, and named as
   such, the best sealed accuracy over every ``w`` ("oracle"): a bound on what any
   weight could reach, which no product could use because it looks at sealed labels.

Usage::

    python bench/late_fusion.py --corpora sotu-party spam-assassin [--job-seed 0] [--split-seed 1]

Appends one record per corpus to ``bench/results/late_fusion.json`` and prints a table.
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

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

RESULTS = Path(__file__).resolve().parent / "results" / "late_fusion.json"


def accuracy(probabilities: np.ndarray, y: np.ndarray) -> float:
    return float((probabilities.argmax(axis=1) == y).mean())


def run(name: str, job_seed: int, split_seed: int) -> dict:
    from corpora import CORPORA, build_upload
    from quality import DEFAULT_BASES, ROOT, default_job, split_upload

    from training_worker.ml import evaluation, model_selection
    from training_worker.ml.base_models import resolve_base_model_source
    from training_worker.ml.baselines import fit_classic_classifier
    from training_worker.ml.inference import load_adapter_model
    from training_worker.ml.lexical_head import WEIGHT_GRID, blend, choose_weight

    corpus = CORPORA[name]
    if corpus.task != "text-classification":
        raise SystemExit(f"{name}: late fusion is measured on classification corpora only")
    raw, filename = build_upload(name)
    train_rows, sealed_rows, labels = split_upload(
        raw, filename, corpus.task, corpus.n_sealed, split_seed
    )
    label_id = {label: i for i, label in enumerate(labels)}

    def texts(rows: list[dict]) -> list[str]:
        return [row["text"] for row in rows]

    def ids(rows: list[dict]) -> np.ndarray:
        return np.array([label_id[row["label"]] for row in rows])

    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        result = default_job(
            corpus.task, train_rows, sealed_rows, labels, generalist=False, seed=job_seed,
            output_dir=Path(folder),
        )  # fmt: skip
        wall = time.perf_counter() - started
        resolved = result.resolved_hyperparameters
        fit_indices, validation_indices = model_selection.split_validation(
            train_rows, fraction=resolved["validation_fraction"], seed=job_seed, label_key="label"
        )  # the recipe's own call: the same rows it selected its epoch on
        fit = [train_rows[i] for i in fit_indices]
        validation = [train_rows[i] for i in validation_indices]
        base = resolve_base_model_source(DEFAULT_BASES[corpus.task], ROOT / "var" / "models")
        model, tokenizer = load_adapter_model(base, result.adapter_dir, corpus.task, labels)
        max_length = resolved["max_seq_length"]
        spec_validation = evaluation.predict_class_probabilities(
            model, tokenizer, texts(validation), max_length, "cpu"
        )
        spec_sealed = evaluation.predict_class_probabilities(
            model, tokenizer, texts(sealed_rows), max_length, "cpu"
        )
    classic_fit = fit_classic_classifier(texts(fit), list(ids(fit)), job_seed)
    classic_validation = classic_fit.predict_proba(texts(validation))
    classic_all = fit_classic_classifier(texts(train_rows), list(ids(train_rows)), job_seed)
    classic_sealed = classic_all.predict_proba(texts(sealed_rows))

    y_validation, y_sealed = ids(validation), ids(sealed_rows)
    weight = choose_weight(spec_validation, classic_validation, y_validation)
    by_weight = {
        float(w): accuracy(blend(spec_sealed, classic_sealed, w), y_sealed) for w in WEIGHT_GRID
    }
    oracle_weight = max(by_weight, key=lambda w: (by_weight[w], w))
    record = {
        "corpus": name,
        "job_seed": job_seed,
        "split_seed": split_seed,
        "train_rows": len(train_rows),
        "validation_rows": len(validation),
        "sealed_rows": len(sealed_rows),
        "validation": {
            "specialist": round(accuracy(spec_validation, y_validation), 4),
            "classic_on_fit_rows": round(accuracy(classic_validation, y_validation), 4),
        },
        "blend_weight": weight,
        "sealed": {
            "specialist": round(accuracy(spec_sealed, y_sealed), 4),
            "classic": round(accuracy(classic_sealed, y_sealed), 4),
            "blend": round(by_weight[weight], 4),
            "oracle_weight": oracle_weight,
            "oracle_blend": round(by_weight[oracle_weight], 4),
        },
        "sealed_by_weight": {str(w): round(a, 4) for w, a in by_weight.items()},
        "job_wall_seconds": round(wall, 1),
        "precision": result.precision,
    }
    print(json.dumps(record), flush=True)
    return record


def main() -> None:
    from corpora import CORPORA
    from quality import SPLIT_SEED

    classification = sorted(n for n, c in CORPORA.items() if c.task == "text-classification")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpora", nargs="*", choices=classification, default=classification)
    parser.add_argument("--job-seed", type=int, default=0)
    parser.add_argument("--split-seed", type=int, default=SPLIT_SEED, help="quality.py's")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(int(os.environ.get("NICHE_BENCH_THREADS", "2")))
    records = json.loads(RESULTS.read_text()) if RESULTS.exists() else []
    for name in args.corpora:
        records.append(run(name, args.job_seed, args.split_seed))
        RESULTS.write_text(json.dumps(records, indent=2) + "\n")
    header = ("corpus", "split", "seed", "w", "specialist", "classic", "blend", "oracle")
    print("{:<20} {:>5} {:>4} {:>5} {:>10} {:>8} {:>7} {:>7}".format(*header))
    for record in records:
        sealed = record["sealed"]
        print(
            f"{record['corpus']:<20} {record['split_seed']:>5} {record['job_seed']:>4} "
            f"{record['blend_weight']:>5.2f} "
            f"{sealed['specialist']:>10.3f} {sealed['classic']:>8.3f} {sealed['blend']:>7.3f} "
            f"{sealed['oracle_blend']:>7.3f}"
        )


if __name__ == "__main__":
    main()
