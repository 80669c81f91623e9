"""Generation recipe sweep: which defaults make a SmolLM2 specialist clearly better, measured
on validation rows carved from the TRAINING rows of real corpora (never the sealed rows).

For each corpus of ``bench/corpora.py`` with task text-generation: the upload goes through
``validate_dataset`` and the platform's ``draw_sealed_split`` (the bench's split seed, as in
``bench/quality.py``); the sealed rows are dropped here and never read. From the training
rows (fixed shuffle) the first ``--fit`` rows train and the next ``--val`` rows score. Each
configuration runs the platform's recipe (``recipe._Run.setup`` + ``train``, the code a
studio job runs, validation split off so every config trains the same rows and epochs)
with hyperparameter overrides, then greedy-decodes the validation prompts as the sealed
evaluation does (``evaluation.evaluated_completions``) and scores exact match and the
corpus's graded metric (``graded_metrics.choose_graded_metric``).

Usage::

    python bench/generation_recipe.py --corpora cmudict-g2p --configs base all_linear
    python bench/generation_recipe.py --list

Appends one record per (corpus, config) to ``bench/results/generation_recipe.json``.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

RESULTS = ROOT / "bench" / "results" / "generation_recipe.json"
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

# Named configurations: overrides of the platform's hyperparameters (None = auto).
CONFIGS: dict[str, dict[str, Any]] = {
    "old_default": {"learning_rate": 1e-3, "target_modules": ["q_proj", "v_proj"], "lora_r": 8},
    "qv_lr2e-3": {"learning_rate": 2e-3, "target_modules": ["q_proj", "v_proj"], "lora_r": 8},
    "all_linear": {"learning_rate": 1e-3, "target_modules": ALL_LINEAR, "lora_r": 8},
    "all_linear_lr2e-3": {"learning_rate": 2e-3, "target_modules": ALL_LINEAR, "lora_r": 8},
    "all_linear_lr5e-4": {"learning_rate": 5e-4, "target_modules": ALL_LINEAR, "lora_r": 8},
    "all_linear_r16": {"learning_rate": 1e-3, "target_modules": ALL_LINEAR, "lora_r": 16},
    "all_linear_r4": {"learning_rate": 1e-3, "target_modules": ALL_LINEAR, "lora_r": 4},
    "all_linear_bs8": {
        "learning_rate": 1e-3, "target_modules": ALL_LINEAR, "lora_r": 8, "batch_size": 8,
    },
    "all_linear_bs32": {
        "learning_rate": 2e-3, "target_modules": ALL_LINEAR, "lora_r": 8, "batch_size": 32,
    },
    "all_linear_neftune5": {
        "learning_rate": 1e-3, "target_modules": ALL_LINEAR, "lora_r": 8, "neftune_alpha": 5.0,
    },
    "all_linear_lr3e-3": {"learning_rate": 3e-3, "target_modules": ALL_LINEAR, "lora_r": 8},
    "all_linear_lr5e-3": {"learning_rate": 5e-3, "target_modules": ALL_LINEAR, "lora_r": 8},
    "all_linear_lr2e-3_6ep": {
        "learning_rate": 2e-3, "target_modules": ALL_LINEAR, "lora_r": 8, "n_epochs": 6,
    },
    "all_linear_lr2e-3_neftune5": {
        "learning_rate": 2e-3, "target_modules": ALL_LINEAR, "lora_r": 8, "neftune_alpha": 5.0,
    },
    "all_linear_lr2e-3_bs8": {
        "learning_rate": 2e-3, "target_modules": ALL_LINEAR, "lora_r": 8, "batch_size": 8,
    },
    "all_linear_lr2e-3_r16": {"learning_rate": 2e-3, "target_modules": ALL_LINEAR, "lora_r": 16},
    "qv_lr2e-3_5ep": {
        "learning_rate": 2e-3, "target_modules": ["q_proj", "v_proj"], "lora_r": 8, "n_epochs": 5,
    },
    "qv_lr5e-3_5ep": {
        "learning_rate": 5e-3, "target_modules": ["q_proj", "v_proj"], "lora_r": 8, "n_epochs": 5,
    },
    "all_linear_no_group": {
        "learning_rate": 1e-3, "target_modules": ALL_LINEAR, "lora_r": 8,
        "group_by_length": False,
    },
}  # fmt: skip


def training_and_validation(name: str, n_fit: int, n_val: int) -> tuple[list, list]:
    from corpora import CORPORA, build_upload
    from quality import split_upload

    corpus = CORPORA[name]
    raw, filename = build_upload(name)
    train_rows, _sealed_dropped, _ = split_upload(raw, filename, corpus.task, corpus.n_sealed)
    rows = list(train_rows)
    random.Random(7).shuffle(rows)
    return rows[:n_fit], rows[n_fit : n_fit + n_val]


def run_config(
    corpus: str, config: str, fit: list, val: list, epochs: int, beams: tuple[int, ...] = (1,)
) -> dict[str, Any]:
    import numpy as np
    import torch
    from quality import DEFAULT_BASES

    from training_worker.ml import evaluation, graded_metrics, prompts
    from training_worker.ml.base_models import resolve_base_model_source
    from training_worker.ml.config import LoraHyperparameters
    from training_worker.ml.recipe import SilentCallbacks, TrainingSpec, _Run

    overrides = dict(CONFIGS[config])
    overrides.setdefault("n_epochs", epochs)
    overrides["validation_fraction"] = 0.0
    base = resolve_base_model_source(DEFAULT_BASES["text-generation"], ROOT / "var" / "models")
    with tempfile.TemporaryDirectory() as folder:
        spec = TrainingSpec(
            task="text-generation",
            base_model_path=base,
            base_model_revision=None,
            train_rows=fit,
            sealed_rows=val,  # validation rows carved from the training rows
            labels=[],
            hyperparameters=LoraHyperparameters.from_dict(overrides),
            seed=0,
            output_dir=Path(folder),
        )
        run = _Run(spec, SilentCallbacks())
        run.setup()
        run.train()
        run.model.eval()
        references = [row["completion"] for row in val]
        lengths = [len(run.tokenizer(r, add_special_tokens=False)["input_ids"]) for r in references]
        new_tokens = min(64, max(lengths) + 1)
        metric = graded_metrics.choose_graded_metric(fit)
        strict = graded_metrics.strict_exact_match(fit)
        decoded = {}
        for width in beams:
            started = time.perf_counter()
            answers = evaluation.evaluated_completions(
                run.model, run.tokenizer, [row["prompt"] for row in val], new_tokens, run.device,
                num_beams=width,
            )  # fmt: skip
            pairs = list(zip(answers, references, strict=True))
            decoded[width] = {
                "answers": answers,
                "exact_match": round(
                    float(np.mean([evaluation.exact_match(a, r, strict) for a, r in pairs])), 4
                ),
                "graded": round(float(np.mean([metric.score(a, r) for a, r in pairs])), 4),
                "decode_seconds": round(time.perf_counter() - started, 1),
            }
        first = decoded[beams[0]]
        record = {
            "corpus": corpus,
            "config": config,
            "overrides": overrides,
            "beams": beams[0],
            "fit_rows": len(fit),
            "validation_rows": len(val),
            "exact_match": first["exact_match"],
            "graded_metric": metric.name,
            "graded": first["graded"],
            "train_seconds": round(run.train_seconds, 1),
            "decode_seconds": first["decode_seconds"],
            "trained_tokens": run.trained_tokens,
            "max_seq_length": run.resolved.max_seq_length,
            "n_epochs": run.resolved.n_epochs,
            "prompt_format": "empty system turn"
            if prompts.injects_default_system(run.tokenizer)
            else "template as is",
            "final_loss": run.step_metrics[-1]["loss"] if run.step_metrics else None,
            "load_average": [round(x, 2) for x in os.getloadavg()],
            "torch_threads": torch.get_num_threads(),
            "decoding": {
                str(width): {k: v for k, v in d.items() if k != "answers"}
                for width, d in decoded.items()
            },
            "examples": [
                {"prompt": v["prompt"], "reference": r, "answer": a}
                for v, r, a in list(zip(val, references, first["answers"], strict=True))[:3]
            ],
        }
        run.cleanup()
    return record


def system_turn(corpora: list[str], n_val: int, out: Path) -> None:
    """The base model prompted zero-shot and few-shot (3 training rows as earlier turns)
    with its template's default system turn and with an empty one, on validation rows:
    does leaving SmolLM2's identity prompt out weaken the baselines? (prompts.py)"""
    import numpy as np
    from quality import DEFAULT_BASES
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from training_worker.ml import evaluation, graded_metrics
    from training_worker.ml.base_models import resolve_base_model_source

    path = resolve_base_model_source(DEFAULT_BASES["text-generation"], ROOT / "var" / "models")
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, use_safetensors=True).eval()
    records = json.loads(out.read_text()) if out.exists() else []
    for corpus in corpora:
        fit, val = training_and_validation(corpus, 600, n_val)
        metric = graded_metrics.choose_graded_metric(fit)
        strict = graded_metrics.strict_exact_match(fit)
        references = [row["completion"] for row in val]
        for system in ("default", "empty"):
            for shots in (0, 3):
                conversations = []
                for row in val:
                    turns = [] if system == "default" else [{"role": "system", "content": ""}]
                    for shot in fit[:shots]:
                        turns += [
                            {"role": "user", "content": shot["prompt"]},
                            {"role": "assistant", "content": shot["completion"]},
                        ]
                    turns.append({"role": "user", "content": row["prompt"]})
                    conversations.append(
                        tokenizer.apply_chat_template(
                            turns, tokenize=False, add_generation_prompt=True
                        )
                    )
                answers = evaluation.greedy_completions(
                    model, tokenizer, conversations, 24, "cpu", rendered=True, batch_size=20
                )
                pairs = list(zip(answers, references, strict=True))
                record = {
                    "corpus": corpus,
                    "config": "system_turn",
                    "system_turn": system,
                    "shots": shots,
                    "validation_rows": len(val),
                    "exact_match": round(
                        float(np.mean([evaluation.exact_match(a, r, strict) for a, r in pairs])), 4
                    ),
                    "graded_metric": metric.name,
                    "graded": round(float(np.mean([metric.score(a, r) for a, r in pairs])), 4),
                }
                print(json.dumps(record), flush=True)
                records.append(record)
                out.write_text(json.dumps(records, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpora", nargs="+", default=["cmudict-g2p"])
    parser.add_argument("--configs", nargs="+", default=["old_default", "all_linear"])
    parser.add_argument("--fit", type=int, default=800)
    parser.add_argument("--val", type=int, default=150)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument(
        "--beams", type=int, nargs="+", default=[1], help="decode with each width (1 = greedy)"
    )
    parser.add_argument("--list", action="store_true")
    parser.add_argument(
        "--system-turn",
        action="store_true",
        help="baselines with and without the default system turn",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.list:
        for name, overrides in CONFIGS.items():
            print(name, json.dumps(overrides))
        return
    import torch

    torch.set_num_threads(int(os.environ.get("NICHE_BENCH_THREADS", "2")))
    if args.system_turn:
        system_turn(args.corpora, args.val, args.out)
        return
    records = json.loads(args.out.read_text()) if args.out.exists() else []
    for corpus in args.corpora:
        fit, val = training_and_validation(corpus, args.fit, args.val)
        for config in args.configs:
            print(f"== {corpus} {config}", flush=True)
            record = run_config(corpus, config, fit, val, args.epochs, tuple(args.beams))
            print(
                f"   EM {record['exact_match']:.3f}  {record['graded_metric']} "
                f"{record['graded']:.3f}  train {record['train_seconds']} s  "
                f"tokens {record['trained_tokens']}  decode {record['decode_seconds']} s",
                flush=True,
            )
            records.append(record)
            args.out.write_text(json.dumps(records, indent=2) + "\n")


if __name__ == "__main__":
    main()
