"""What dropping rare terms from the lexical head costs, side by side in one run.

The lexical head ships to buyers, so it keeps only the terms that at least k distinct
training rows share (``training_worker/ml/lexical_head.py``: k = ``MIN_TRAINING_ROWS``).
This measures what that costs against the old vocabulary (every term, k = 1: the classic
baseline's) on the classification corpora of ``bench/corpora.py``, on the sealed splits
``bench/quality.py`` draws. For each corpus and split:

1. the default job (``quality.default_job``, no LLM generalist), its adapter kept; its
   report's accuracy is the served blend as the recipe shipped it (k = MIN_TRAINING_ROWS);
2. the adapter's class probabilities on the job's validation rows (the recipe's own split
   of the training rows) and on the sealed rows;
3. for each k: a head fitted on the rows left after validation chooses the blend weight
   on the validation rows (``lexical_head.choose_weight``, the recipe's own), a head fitted
   on all training rows is scored on the sealed rows, alone and blended at that weight;
   its file size (``to_bytes``) and term count are recorded.

The adapter is trained once per corpus and split, so every k is compared on the same
adapter. Usage::

    nice -n 5 python bench/lexical_privacy.py [--corpora afinn-sentiment ...]
        [--split-seeds 1729 1 2] [--ks 1 2 3 5 10] [--job-seed 0] [--out file.json]
    python bench/lexical_privacy.py --merge a.json b.json   # runs made side by side

Writes ``bench/results/lexical_privacy.json`` (every record, per-corpus means, the machine's
load) and prints a table: accuracy of the lexical head alone and of the served blend, every
term vs k = MIN_TRAINING_ROWS, with the difference and the head's size.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import argparse
import dataclasses
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

RESULTS = Path(__file__).resolve().parent / "results" / "lexical_privacy.json"
EVERY_TERM = 1  # k = 1: the vocabulary the head had before, the classic baseline's


def accuracy(probabilities: np.ndarray, y: np.ndarray) -> float:
    return round(float((probabilities.argmax(axis=1) == y).mean()), 4)


def run(name: str, split_seed: int, job_seed: int, ks: list[int]) -> dict:
    from corpora import CORPORA, build_upload
    from quality import DEFAULT_BASES, ROOT, default_job, split_upload

    from training_worker.ml import evaluation, lexical_head, model_selection
    from training_worker.ml.base_models import resolve_base_model_source
    from training_worker.ml.inference import load_adapter_model

    corpus = CORPORA[name]
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
        job_seconds = time.perf_counter() - started
        resolved = result.resolved_hyperparameters
        fit_indices, validation_indices = model_selection.split_validation(
            train_rows, fraction=resolved["validation_fraction"], seed=job_seed, label_key="label"
        )  # the recipe's own call: the rows it chose its blend weight on
        fit = [train_rows[i] for i in fit_indices]
        validation = [train_rows[i] for i in validation_indices]
        base = resolve_base_model_source(DEFAULT_BASES[corpus.task], ROOT / "var" / "models")
        model, tokenizer = load_adapter_model(base, result.adapter_dir, corpus.task, labels)
        max_length = resolved["max_seq_length"]
        adapter_validation = evaluation.predict_class_probabilities(
            model, tokenizer, texts(validation), max_length, "cpu"
        )
        adapter_sealed = evaluation.predict_class_probabilities(
            model, tokenizer, texts(sealed_rows), max_length, "cpu"
        )
    y_validation, y_sealed = ids(validation), ids(sealed_rows)

    by_k = {}
    for k in ks:
        started = time.perf_counter()
        fit_head = lexical_head.fit(
            texts(fit), list(ids(fit)), n_labels=len(labels), seed=job_seed, min_training_rows=k
        )
        head = lexical_head.fit(
            texts(train_rows), list(ids(train_rows)), n_labels=len(labels), seed=job_seed,
            min_training_rows=k,
        )  # fmt: skip
        fit_seconds = time.perf_counter() - started
        if head is None or fit_head is None:
            by_k[str(k)] = {"head": None}
            continue
        weight = lexical_head.choose_weight(
            adapter_validation, fit_head.predict_proba(texts(validation)), y_validation
        )
        lexical_sealed = head.predict_proba(texts(sealed_rows))
        blended = lexical_head.blend(adapter_sealed, lexical_sealed, weight)
        by_k[str(k)] = {
            "terms": {v.name: len(v.terms) for v in head.vectorisers},
            "head_bytes": len(dataclasses.replace(head, weight=0.5).to_bytes()),
            "blend_weight": weight,
            "lexical_alone": accuracy(lexical_sealed, y_sealed),
            # w = 1: no head would be written; the adapter alone is served
            "served_blend": accuracy(blended, y_sealed),
            "fit_seconds_two_heads": round(fit_seconds, 1),
        }
    record = {
        "corpus": name,
        "split_seed": split_seed,
        "job_seed": job_seed,
        "train_rows": len(train_rows),
        "validation_rows": len(validation),
        "sealed_rows": len(sealed_rows),
        "adapter_alone": accuracy(adapter_sealed, y_sealed),
        "recipe_report": {
            "accuracy": result.evaluation["metrics"]["accuracy"],
            "blend_weight": result.evaluation["blend"]["weight"],
            "classic_baseline": result.evaluation["baselines"]["classic_tfidf_logreg"]["accuracy"],
        },
        "by_k": by_k,
        "job_seconds": round(job_seconds, 1),
        "precision": result.precision,
    }
    print(json.dumps(record), flush=True)
    return record


def summarise(records: list[dict], ks: list[int], shipped_k: int) -> dict:
    """Per corpus, the mean over its splits of each k's figures, and the shipped k's
    difference from the every-term head (k = 1)."""
    summary = {}
    for corpus in sorted({r["corpus"] for r in records}):
        mine = [r for r in records if r["corpus"] == corpus]

        def mean(values: list[float]) -> float:
            return round(float(np.mean(values)), 4)

        per_k = {}
        for k in ks:
            got = [r["by_k"][str(k)] for r in mine if "lexical_alone" in r["by_k"][str(k)]]
            if len(got) != len(mine):
                per_k[str(k)] = None
                continue
            per_k[str(k)] = {
                "lexical_alone": mean([g["lexical_alone"] for g in got]),
                "served_blend": mean([g["served_blend"] for g in got]),
                "blend_weight": mean([g["blend_weight"] for g in got]),
                "head_bytes": int(np.mean([g["head_bytes"] for g in got])),
                "terms": int(np.mean([sum(g["terms"].values()) for g in got])),
            }
        old, new = per_k.get(str(EVERY_TERM)), per_k.get(str(shipped_k))
        summary[corpus] = {
            "splits": [r["split_seed"] for r in mine],
            "adapter_alone": mean([r["adapter_alone"] for r in mine]),
            "recipe_report_accuracy": mean([r["recipe_report"]["accuracy"] for r in mine]),
            "by_k": per_k,
            "shipped_minus_every_term": (
                {
                    "lexical_alone": round(new["lexical_alone"] - old["lexical_alone"], 4),
                    "served_blend": round(new["served_blend"] - old["served_blend"], 4),
                    "head_bytes_ratio": round(new["head_bytes"] / old["head_bytes"], 3),
                }
                if old and new
                else None
            ),
        }
    return summary


def print_table(records: list[dict], summary: dict, shipped_k: int) -> None:
    old, new = str(EVERY_TERM), str(shipped_k)
    header = ("corpus", "split", "adapter", "lex k=1", f"lex k={new}", "blend k=1",
              f"blend k={new}", "diff", "KiB k=1", f"KiB k={new}")  # fmt: skip
    line = "{:<19} {:>5} {:>7} {:>8} {:>8} {:>9} {:>9} {:>7} {:>8} {:>8}"
    print(line.format(*header))
    for r in records:
        a, b = r["by_k"].get(old, {}), r["by_k"].get(new, {})
        if "lexical_alone" not in a or "lexical_alone" not in b:
            print(f"{r['corpus']:<19} {r['split_seed']:>5}  (no head at one of the k)")
            continue
        print(
            line.format(
                r["corpus"],
                r["split_seed"],
                f"{r['adapter_alone']:.3f}",
                f"{a['lexical_alone']:.3f}",
                f"{b['lexical_alone']:.3f}",
                f"{a['served_blend']:.3f}",
                f"{b['served_blend']:.3f}",
                f"{b['served_blend'] - a['served_blend']:+.3f}",
                f"{a['head_bytes'] / 1024:.0f}",
                f"{b['head_bytes'] / 1024:.0f}",
            )
        )
    print()
    print("mean over splits (served blend; k=1 is the old vocabulary):")
    for corpus, s in summary.items():
        per_k = "  ".join(
            f"k={k}: {v['served_blend']:.3f}" for k, v in s["by_k"].items() if v is not None
        )
        diff = s["shipped_minus_every_term"]
        print(f"  {corpus:<19} adapter {s['adapter_alone']:.3f}  {per_k}")
        if diff:
            print(
                f"  {'':<19} k={new} - k=1: blend {diff['served_blend']:+.4f}, lexical alone "
                f"{diff['lexical_alone']:+.4f}, head size x{diff['head_bytes_ratio']:.3f}"
            )


def merge(paths: list[Path], out: Path) -> None:
    """One results file from runs made at the same time (each record compares every k
    on one adapter, so records of several runs sit side by side)."""
    from training_worker.ml.lexical_head import MIN_TRAINING_ROWS

    runs = [json.loads(path.read_text()) for path in paths]
    records = [record for run in runs for record in run["records"]]
    ks = sorted({int(k) for run in runs for k in run["ks"]})
    summary = summarise(records, ks, MIN_TRAINING_ROWS)
    document = {
        **{key: runs[0][key] for key in ("what", "shipped_min_training_rows")},
        "ks": ks,
        "runs": [
            {
                "file": path.name,
                "machine": run["machine"],
                "wall_seconds": run["wall_seconds"],
                "corpora_splits": sorted({(r["corpus"], r["split_seed"]) for r in run["records"]}),
            }
            for path, run in zip(paths, runs, strict=True)
        ],
        "summary": summary,
        "records": records,
    }
    out.write_text(json.dumps(document, indent=2) + "\n")
    print_table(records, summary, MIN_TRAINING_ROWS)


def main() -> None:
    from corpora import CLASSIFICATION_CORPORA
    from quality import SPLIT_SEED

    from training_worker.ml.lexical_head import MIN_TRAINING_ROWS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--corpora", nargs="*", choices=CLASSIFICATION_CORPORA, default=CLASSIFICATION_CORPORA
    )
    parser.add_argument("--split-seeds", nargs="*", type=int, default=[SPLIT_SEED, 1, 2])
    parser.add_argument("--ks", nargs="*", type=int, default=[1, 2, 3, MIN_TRAINING_ROWS, 10])
    parser.add_argument("--job-seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--merge", nargs="*", type=Path, help="combine these runs' files")
    args = parser.parse_args()
    if args.merge:
        merge(args.merge, args.out)
        return
    ks = sorted(set(args.ks) | {EVERY_TERM, MIN_TRAINING_ROWS})

    import torch

    torch.set_num_threads(int(os.environ.get("NICHE_BENCH_THREADS", "2")))
    started, load_before = time.perf_counter(), os.getloadavg()
    records = []
    for split_seed in args.split_seeds:
        for name in args.corpora:
            records.append(run(name, split_seed, args.job_seed, ks))
            summary = summarise(records, ks, MIN_TRAINING_ROWS)
            document = {
                "what": __doc__.splitlines()[0],
                "shipped_min_training_rows": MIN_TRAINING_ROWS,
                "ks": ks,
                "machine": {
                    "cpus": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(),
                    "python": platform.python_version(),
                    "load_average_before": [round(x, 2) for x in load_before],
                    "load_average_after": [round(x, 2) for x in os.getloadavg()],
                },
                "wall_seconds": round(time.perf_counter() - started, 1),
                "summary": summary,
                "records": records,
            }
            args.out.write_text(json.dumps(document, indent=2) + "\n")
    print_table(records, summary, MIN_TRAINING_ROWS)
    print(f"\nwall {time.perf_counter() - started:.0f} s; load before {load_before}, "
          f"after {os.getloadavg()}")  # fmt: skip


if __name__ == "__main__":
    main()
