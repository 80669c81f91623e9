"""The catalogue at 100,000 published listings, measured through the HTTP API.

Usage: ``nice -n 5 python bench/catalogue.py [--listings 100000] [--requests 40]
[--rps-seconds 6] [--regenerate]``.

1. Fills a bench database of its own (`<DATABASE_URL's name>_bench_catalogue`, created if
   missing, kept between runs; `--regenerate` refills it) with experts and published
   listings of varied titles, domains, tasks, tags, prices, ratings and lifts
   (bulk_create, a few thousand rows a statement).
2. Starts the web tier as deployed (`python -m marketplace.server`: gunicorn with the one
   server config, marketplace/gunicorn_conf.py) on a free port with
   bench/catalogue_site/catalogue_settings.py (the product's settings, DEBUG off) and
   catalogue_urls.py next to it (the product's URLs plus `bench/bare`, a bare JsonResponse
   view that exists only here), and warms it.
3. p50/p95 of catalogue search, each filter and each sort (and a second page by cursor),
   one request at a time over a kept-alive connection. Goal: p95 <= 50 ms.
4. Requests/s of the list endpoint against `bench/bare` on the same server, the same
   client threads, alternated twice. Goal: the list endpoint >= 25% of the bare view.

Writes bench/results/catalogue.json with the load averages seen, since the CPU is shared.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parents[1]
HERE = ROOT / "bench"
# The bench-only settings and URLconf, in a folder of their own: never on the product's path.
SITE = HERE / "catalogue_site"
sys.path[:0] = [str(ROOT), str(SITE)]
BENCH_MARKER = "bench-catalogue"  # every generated expert's display name

DOMAINS = [
    "finance", "healthcare", "legal", "code", "security", "customer-support", "science",
    "education", "other",
]  # fmt: skip
SUBJECTS = {
    "finance": ["invoice", "fraud", "ledger", "payment", "expense", "credit", "audit"],
    "healthcare": ["radiology", "triage", "discharge", "symptom", "clinical", "dosage"],
    "legal": ["contract", "clause", "liability", "lease", "compliance", "patent"],
    "code": ["python", "review", "commit", "bug", "refactor", "sql", "test"],
    "security": ["phishing", "malware", "intrusion", "spam", "vulnerability", "login"],
    "customer-support": ["refund", "ticket", "complaint", "shipping", "billing", "churn"],
    "science": ["abstract", "protein", "climate", "citation", "experiment", "genome"],
    "education": ["essay", "quiz", "grading", "syllabus", "reading", "feedback"],
    "other": ["recipe", "travel", "music", "sports", "weather", "retail"],
}
KINDS = ["classifier", "tagger", "router", "detector", "summarizer", "triage", "extractor"]
QUALIFIERS = [
    "fast", "precise", "multilingual", "compact", "robust", "expert", "calibrated",
    "small", "careful", "domain-tuned", "german", "french", "spanish", "clinical-grade",
]  # fmt: skip
TAG_VOCABULARY = sorted({w for words in SUBJECTS.values() for w in words} | set(QUALIFIERS))
SEARCHES = [
    "invoice fraud", "radiology report", "contract clause", "python code review",
    "phishing email", "customer refund", "protein abstract", "essay grading",
    "multilingual ticket router", "compact malware detector",
]  # fmt: skip


import bench_database  # noqa: E402 (bench/ is the script's folder on sys.path)


def bench_database_url(base: str) -> str:
    return bench_database.bench_database_url(base, "catalogue")


# --- data -------------------------------------------------------------------------------


def generate(count: int, experts: int, rng: random.Random) -> float:
    """Experts and `count` published listings; returns seconds taken."""
    from django.db import connection, transaction

    from accounts.models import ExpertProfile, User
    from listings.models import Listing, ListingStatus

    started = time.monotonic()
    with transaction.atomic():
        Listing.objects.all().delete()
        ExpertProfile.objects.filter(user__display_name=BENCH_MARKER).delete()
        User.objects.filter(display_name=BENCH_MARKER).delete()
        users = User.objects.bulk_create(
            User(
                email=f"expert{i}@bench.example", display_name=BENCH_MARKER, is_expert=True,
                password="!", is_active=i % 50 != 0,  # noqa: S106 ("!": unusable; every 50th owner is suspended)
            )
            for i in range(experts)
        )  # fmt: skip
        ExpertProfile.objects.bulk_create(
            ExpertProfile(user=u, headline=f"Specialist {i}", verified=i % 3 == 0)
            for i, u in enumerate(users)
        )
    now = datetime.now(UTC)
    batch: list[Listing] = []
    for i in range(count):
        domain = rng.choice(DOMAINS)
        words = rng.sample(SUBJECTS[domain], 2)
        title = f"{rng.choice(QUALIFIERS).title()} {words[0]} {words[1]} {rng.choice(KINDS)}"
        tags = sorted({*rng.sample(TAG_VOCABULARY, rng.randint(1, 3)), words[0]})
        lift = rng.gauss(0.08, 0.06) if rng.random() > 0.1 else None
        rated = rng.random() > 0.3
        on_sale = rng.random() > 0.1
        published = now - timedelta(minutes=rng.randint(0, 2 * 365 * 24 * 60))
        batch.append(
            Listing(
                owner=users[rng.randrange(experts)],
                slug=f"{'-'.join(title.lower().split())}-{i}"[:80],
                title=title,
                summary=f"Labels {words[0]} and {words[1]} texts for {domain} teams.",
                description=(
                    f"A {rng.choice(KINDS)} fine-tuned on {rng.randint(500, 50000)} "
                    f"{words[0]} examples written by a {domain} expert. Handles "
                    f"{', '.join(rng.sample(SUBJECTS[domain], 3))}."
                ),
                domain=domain,
                task=rng.choice(["text-classification", "text-generation"]),
                tags=tags,
                languages=rng.sample(["en", "de", "fr", "es"], rng.randint(1, 2)),
                commercial_use=rng.random() > 0.4,
                derivatives_allowed=rng.random() > 0.6,
                on_prem_download=rng.random() > 0.7,
                attribution_required=rng.random() > 0.3,
                status=ListingStatus.PUBLISHED,
                score_metric="macro_f1",
                score=round(rng.uniform(0.55, 0.98), 4),
                lift_over_generalist=lift,
                lift_over_generalist_low=None if lift is None else lift - 0.03,
                lift_over_generalist_high=None if lift is None else lift + 0.03,
                rating_avg=round(rng.uniform(2.5, 5.0), 2) if rated else None,
                rating_count=rng.randint(1, 400) if rated else 0,
                popularity=int(rng.paretovariate(1.2)) - 1,
                min_price_minor=rng.choice([0, 500, 900, 1900, 4900, 9900, 19900, 49900])
                if on_sale
                else None,
                price_currency=(rng.choice(["usd"] * 4 + ["eur"]) if on_sale else ""),
                created_at=published - timedelta(days=1),
                updated_at=published,
                published_at=published,
            )
        )
        if len(batch) == 5000:
            Listing.objects.bulk_create(batch)
            batch.clear()
    Listing.objects.bulk_create(batch)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    return time.monotonic() - started


# --- the server -------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(env: dict, workers: int) -> tuple[subprocess.Popen, int]:
    """The web tier exactly as deployed (marketplace.server and its one gunicorn config),
    on a free port with `workers` processes."""
    from marketplace.server import COMMAND

    port = free_port()
    # The server's output, read only if it fails to start (a pipe nobody reads can fill);
    # open for as long as the server runs.
    log = tempfile.TemporaryFile()  # noqa: SIM115
    server = subprocess.Popen(
        COMMAND,
        cwd=ROOT, env={**env, "WEB_BIND": f"127.0.0.1:{port}", "WEB_WORKERS": str(workers)},
        stdout=subprocess.DEVNULL, stderr=log, start_new_session=True,
    )  # fmt: skip

    def log_tail() -> str:
        log.seek(0)
        return log.read().decode(errors="replace")[-2000:]

    deadline = time.monotonic() + 90
    status = None
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the web server exited: {log_tail()}")
        try:
            status, _ = Client(port).get("/bench/bare")
            if status == 200:
                return server, port
        except OSError:
            pass
        time.sleep(0.2)
    stop_server(server)
    raise SystemExit(f"the web server did not answer 200 within 90 s ({status}): {log_tail()}")


def stop_server(server: subprocess.Popen) -> None:
    try:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(server.pid, signal.SIGKILL)


class Client:
    """One kept-alive HTTP/1.1 connection."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def get(self, path: str) -> tuple[int, bytes]:
        self.conn.request("GET", path)
        response = self.conn.getresponse()
        return response.status, response.read()


# --- measurements -----------------------------------------------------------------------


def cases(rng: random.Random) -> dict[str, list[str]]:
    """Case name -> the request paths it cycles through."""
    api = "/api/v1/listings?"
    sorts = ["newest", "best_lift", "rating", "popularity", "price_asc", "price_desc"]
    found = {
        "search": [api + urlencode({"q": q}) for q in SEARCHES],
        "search_newest": [api + urlencode({"q": q, "sort": "newest"}) for q in SEARCHES],
        "filter_domain": [api + urlencode({"domain": d}) for d in DOMAINS],
        "filter_domain_lift": [
            api + urlencode({"domain": d, "min_lift": 0.1, "sort": "best_lift"}) for d in DOMAINS
        ],
        "filter_tag": [api + urlencode({"tag": t}) for t in rng.sample(TAG_VOCABULARY, 10)],
        "filter_price": [
            api
            + urlencode({"currency": "usd", "min_price": lo, "max_price": hi, "sort": "price_asc"})
            for lo, hi in ((0, 900), (500, 4900), (1900, 19900), (9900, 49900))
        ],
        "filter_licence": [
            api + urlencode({"commercial_use": "true", "on_prem_download": "true", "domain": d})
            for d in DOMAINS
        ],
        "filter_rating": [api + urlencode({"min_rating": r}) for r in (3.5, 4.0, 4.5, 4.9)],
    }
    for sort in sorts:
        found[f"sort_{sort}"] = [api + urlencode({"sort": sort, "limit": 20})]
    return found


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def latency(port: int, paths: list[str], requests: int) -> dict:
    client = Client(port)
    for path in paths[:3]:  # warm this case's plans and caches
        client.get(path)
    times, rows = [], 0
    for i in range(requests):
        path = paths[i % len(paths)]
        started = time.perf_counter()
        status, body = client.get(path)
        times.append((time.perf_counter() - started) * 1000)
        if status != 200:
            raise SystemExit(f"{path} answered {status}: {body[:300]!r}")
        rows += len(json.loads(body)["data"])
    return {
        "p50_ms": round(statistics.median(times), 1),
        "p95_ms": round(percentile(times, 0.95), 1),
        "max_ms": round(max(times), 1),
        "requests": requests,
        "mean_rows": round(rows / requests, 1),
    }


def second_page(port: int, requests: int) -> dict:
    """Keyset pages: page 2 of each sort through the cursor page 1 handed out."""
    client = Client(port)
    paths = []
    for sort in ("newest", "best_lift", "price_asc"):
        _, body = client.get(f"/api/v1/listings?sort={sort}")
        cursor = json.loads(body)["next_cursor"]
        paths.append(f"/api/v1/listings?{urlencode({'sort': sort, 'cursor': cursor})}")
    return latency(port, paths, requests)


def throughput(port: int, path: str, seconds: float, threads: int) -> float:
    done = [0] * threads
    failures: list[str] = []
    stop = time.monotonic() + seconds

    def hammer(slot: int) -> None:
        client = Client(port)
        while time.monotonic() < stop and not failures:
            try:
                status, body = client.get(path)
            except OSError as exc:
                failures.append(f"{path}: {exc!r}")
                return
            if status != 200:
                failures.append(f"{path} answered {status}: {body[:300]!r}")
                return
            done[slot] += 1

    started = time.monotonic()
    workers = [threading.Thread(target=hammer, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    if failures:  # a failed request is not a fast one: never count around it
        raise SystemExit(failures[0])
    return sum(done) / (time.monotonic() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listings", type=int, default=100_000)
    parser.add_argument("--experts", type=int, default=2000)
    parser.add_argument("--requests", type=int, default=40, help="per case")
    parser.add_argument("--rps-seconds", type=float, default=6.0)
    parser.add_argument("--client-threads", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2, help="web worker processes")
    parser.add_argument("--regenerate", action="store_true")
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()

    base_url = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/niche")
    if not base_url.startswith("postgres"):
        raise SystemExit("The catalogue bench needs Postgres: set DATABASE_URL=postgres://...")
    database_url = bench_database_url(base_url)
    bench_database.ensure_database(database_url)
    os.environ["DATABASE_URL"] = database_url
    os.environ["DJANGO_SETTINGS_MODULE"] = "catalogue_settings"

    import django

    django.setup()
    from django.core.management import call_command

    from listings.models import Listing, ListingStatus

    call_command("migrate", verbosity=0)
    rng = random.Random(args.seed)
    published = Listing.objects.filter(status=ListingStatus.PUBLISHED).count()
    generation_s = None
    if args.regenerate or published != args.listings:
        print(f"generating {args.listings:,} listings…", flush=True)
        generation_s = round(generate(args.listings, args.experts, rng), 1)
        print(f"  {generation_s} s", flush=True)

    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(SITE)]),
        "LOG_LEVEL": "WARNING",  # no access line per request on the console
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    server, port = start_server(env, args.workers)
    loads = [os.getloadavg()]
    try:
        results = {}
        for name, paths in cases(rng).items():
            results[name] = latency(port, paths, args.requests)
            print(f"{name:22s} p50 {results[name]['p50_ms']:6.1f} ms  "
                  f"p95 {results[name]['p95_ms']:6.1f} ms", flush=True)  # fmt: skip
        results["second_page"] = second_page(port, args.requests)
        print(f"{'second_page':22s} p50 {results['second_page']['p50_ms']:6.1f} ms  "
              f"p95 {results['second_page']['p95_ms']:6.1f} ms", flush=True)  # fmt: skip
        loads.append(os.getloadavg())
        list_rps, bare_rps = [], []
        for _ in range(2):
            list_rps.append(throughput(port, "/api/v1/listings", args.rps_seconds,
                                       args.client_threads))  # fmt: skip
            bare_rps.append(throughput(port, "/bench/bare", args.rps_seconds,
                                       args.client_threads))  # fmt: skip
        loads.append(os.getloadavg())
    finally:
        stop_server(server)

    worst_p95 = max(r["p95_ms"] for r in results.values())
    ratio = statistics.mean(list_rps) / statistics.mean(bare_rps)
    summary = {
        "listings_published": Listing.objects.filter(status=ListingStatus.PUBLISHED).count(),
        "generation_s": generation_s,
        "latency": results,
        "worst_p95_ms": worst_p95,
        "goal_p95_ms": 50,
        "p95_goal_met": worst_p95 <= 50,
        "list_rps": [round(r, 1) for r in list_rps],
        "bare_rps": [round(r, 1) for r in bare_rps],
        "list_to_bare_ratio": round(ratio, 3),
        "goal_ratio": 0.25,
        "ratio_goal_met": ratio >= 0.25,
        "server": f"python -m marketplace.server (marketplace/gunicorn_conf.py), "
        f"{args.workers} workers, DEBUG off",
        "client_threads": args.client_threads,
        "load_averages": [[round(x, 2) for x in load] for load in loads],
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    out = HERE / "results" / "catalogue.json"
    out.write_text(json.dumps(summary, indent=2) + "\n")
    print(
        f"worst p95 {worst_p95} ms (goal <= 50); list {statistics.mean(list_rps):.0f} req/s vs "
        f"bare {statistics.mean(bare_rps):.0f} req/s = {ratio:.0%} (goal >= 25%); "
        f"load {loads[0][0]:.1f} -> {loads[-1][0]:.1f}; wrote {out.relative_to(ROOT)}"
    )


if __name__ == "__main__":
    main()
