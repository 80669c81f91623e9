"""`GET /metrics`: the Prometheus text format, for the operators' scraper only.

Off (404, like any unknown path) unless METRICS_TOKEN is set; then the caller sends
`Authorization: Bearer <METRICS_TOKEN>` or gets 401.

Where each number comes from, and why it is right with many processes on many machines:

- HTTP requests (by view name and status, with latency histograms) and inference latency
  and batch size are observed in the web processes: the middleware below and the serving
  gateway, which gets the engine's batch size and time back in every answer. gunicorn
  runs several worker processes; with PROMETHEUS_MULTIPROC_DIR set (marketplace/
  gunicorn_conf.py sets it) each writes its samples to files there and a scrape sums them
  all, whichever worker answers it. Without it (runserver, tests) a scrape shows its own
  process. Scrape every web machine; Prometheus sums them.
- Celery queue depth, jobs by status, training examples/s and Stripe webhook lag are read
  at scrape time from Redis and Postgres, which every machine shares: the Celery worker
  that trains or processes a webhook (maybe on another machine) needs no exporter of its
  own, and these numbers survive any worker's death. Every web machine reports the same
  values: aggregate them with max(), not sum().
"""

import hmac
import logging
import os
import time
from datetime import timedelta

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.http import Http404, HttpResponse
from django.utils import timezone
from django.views.decorators.http import require_GET
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

logger = logging.getLogger(__name__)

# Process-local samples (or, under PROMETHEUS_MULTIPROC_DIR, this process's files).
LIVE_REGISTRY = CollectorRegistry(auto_describe=True)

HTTP_REQUESTS = Counter(
    "niche_http_requests",
    "HTTP requests answered, by view name (never the raw path), method and status.",
    ["view", "method", "status"],
    registry=LIVE_REGISTRY,
)
HTTP_LATENCY = Histogram(
    "niche_http_request_duration_seconds",
    "Time from the first middleware to the response, by view name and method.",
    ["view", "method"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
    registry=LIVE_REGISTRY,
)
INFERENCE_LATENCY = Histogram(
    "niche_inference_latency_seconds",
    "Inference calls answered by the engine, end to end at the gateway, by task.",
    ["task"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
    registry=LIVE_REGISTRY,
)
# By listing (its slug; a garden's own), for the compare page's p50/p95: bounded by the
# catalogue's size, and never a row's content. The router's generalist, sold by no
# listing, is not observed here.
LISTING_INFERENCE_LATENCY = Histogram(
    "niche_listing_inference_latency_seconds",
    "Inference calls answered, end to end at the gateway, by the listing called.",
    ["listing"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
    registry=LIVE_REGISTRY,
)
INFERENCE_ENGINE_TIME = Histogram(
    "niche_inference_engine_seconds",
    "The engine's own time on a call (pickup to answer, batching wait included), by task.",
    ["task"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
    registry=LIVE_REGISTRY,
)
INFERENCE_BATCH_SIZE = Histogram(
    "niche_inference_batch_size",
    "Rows in the forward pass an inference call shared, by task.",
    ["task"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
    registry=LIVE_REGISTRY,
)

INFERENCE_FIRST_TOKEN = Histogram(
    "niche_inference_first_token_seconds",
    "Streamed generations: time from the call to the engine's first event at the gateway.",
    ["task"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
    registry=LIVE_REGISTRY,
)

ROUTER_DECISIONS = Counter(
    "niche_router_decisions_total",
    "Inputs the specialist router decided (niche/auto, /api/v1/route), by task and by who "
    "answers: a specialist or the generalist.",
    ["task", "answered_by"],
    registry=LIVE_REGISTRY,
)
ROUTER_DECIDE_TIME = Histogram(
    "niche_router_decide_seconds",
    "The router's own time per request (embedding the inputs, scoring every candidate).",
    ["task"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
    registry=LIVE_REGISTRY,
)

_KNOWN_METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}
# kombu's Redis transport keeps priorities 3, 6 and 9 of a queue in sibling lists.
_PRIORITY_SEPARATOR = "\x06\x16"
_PRIORITY_STEPS = (3, 6, 9)
WEBHOOK_LAG_WINDOW = timedelta(hours=1)


def view_label(request) -> str:
    """The route's name (or its pattern when unnamed): bounded, unlike raw paths."""
    match = getattr(request, "resolver_match", None)
    if match is None:
        return "<unresolved>"
    return match.view_name or match.route or "<unnamed>"


def observe_inference(
    *, task: str, latency_s: float, engine_s: float, batch_size: int, listing: str = ""
) -> None:
    INFERENCE_LATENCY.labels(task=task).observe(latency_s)
    if listing:
        LISTING_INFERENCE_LATENCY.labels(listing=listing).observe(latency_s)
    INFERENCE_ENGINE_TIME.labels(task=task).observe(engine_s)
    INFERENCE_BATCH_SIZE.labels(task=task).observe(batch_size)


def observe_routing(*, task: str, seconds: float, specialist: int, generalist: int) -> None:
    ROUTER_DECIDE_TIME.labels(task=task).observe(seconds)
    if specialist:
        ROUTER_DECISIONS.labels(task=task, answered_by="specialist").inc(specialist)
    if generalist:
        ROUTER_DECISIONS.labels(task=task, answered_by="generalist").inc(generalist)


def observe_stream_first_token(*, task: str, seconds: float) -> None:
    INFERENCE_FIRST_TOKEN.labels(task=task).observe(seconds)


def observe_stream_done(*, task: str, latency_s: float, listing: str = "") -> None:
    """A stream that ended with its done event counts as one answered call, end to end (the
    engine's own time and batch are not sent over a stream, so those two stay call-only)."""
    INFERENCE_LATENCY.labels(task=task).observe(latency_s)
    if listing:
        LISTING_INFERENCE_LATENCY.labels(listing=listing).observe(latency_s)


def listing_latency_buckets(slugs) -> dict[str, list[tuple[float, float]]]:
    """Each listing's cumulative latency buckets, ``[(upper bound in s, calls at or under
    it), ..., (inf, all calls)]``, as a scrape of this machine would show them: every web
    process's samples under PROMETHEUS_MULTIPROC_DIR, else this process's. A listing with
    no call yet is absent."""
    wanted = set(slugs)
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client.multiprocess import MultiProcessCollector

        families = MultiProcessCollector(None).collect()
    else:
        families = LISTING_INFERENCE_LATENCY.collect()
    buckets: dict[str, list[tuple[float, float]]] = {}
    for family in families:
        if family.name != "niche_listing_inference_latency_seconds":
            continue
        for sample in family.samples:
            slug = sample.labels.get("listing")
            if sample.name.endswith("_bucket") and slug in wanted:
                upper = float(sample.labels["le"])
                buckets.setdefault(slug, []).append((upper, float(sample.value)))
    return {slug: sorted(rows) for slug, rows in buckets.items()}


class MetricsMiddleware:
    """Counts and times every request by its view name; outermost, so it times them all.
    Sync and async: under ASGI a request reaches an async view with no thread in between."""

    sync_capable = async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request):
        if self.is_async:
            return self._acall(request)
        started = time.perf_counter()
        response = self.get_response(request)
        self._observe(request, response, time.perf_counter() - started)
        return response

    async def _acall(self, request):
        started = time.perf_counter()
        response = await self.get_response(request)
        self._observe(request, response, time.perf_counter() - started)
        return response

    @staticmethod
    def _observe(request, response, elapsed: float) -> None:
        view = view_label(request)
        method = request.method if request.method in _KNOWN_METHODS else "other"
        HTTP_REQUESTS.labels(view=view, method=method, status=str(response.status_code)).inc()
        HTTP_LATENCY.labels(view=view, method=method).observe(elapsed)


_redis_client = None


def _redis():
    global _redis_client
    if _redis_client is None:
        import redis

        _redis_client = redis.Redis.from_url(
            settings.CELERY_BROKER_URL, socket_timeout=2, socket_connect_timeout=2
        )
    return _redis_client


def queue_names() -> list[str]:
    return [queue.name for queue in settings.CELERY_TASK_QUEUES]


def queue_depths() -> dict[str, int]:
    """Messages waiting in each Celery queue (LLEN of its Redis lists, priorities summed)."""
    names = queue_names()
    pipe = _redis().pipeline(transaction=False)
    for name in names:
        pipe.llen(name)
        for step in _PRIORITY_STEPS:
            pipe.llen(f"{name}{_PRIORITY_SEPARATOR}{step}")
    lengths = pipe.execute()
    per_queue = 1 + len(_PRIORITY_STEPS)
    return {name: sum(lengths[i * per_queue : (i + 1) * per_queue]) for i, name in enumerate(names)}


class SharedStateCollector:
    """Numbers every machine shares, read from Redis and Postgres at scrape time."""

    def collect(self):
        errors = GaugeMetricFamily(
            "niche_metrics_source_up",
            "1 when this scrape could read the source, 0 when it failed.",
            labels=["source"],
        )
        for source, collect in (
            ("redis", self._queues),
            ("jobs", self._jobs),
            ("training", self._training),
            ("webhooks", self._webhooks),
            ("billing", self._billing),
        ):
            try:
                yield from collect()
                errors.add_metric([source], 1)
            # Redis, the database or a query may fail: the other sources still report.
            except Exception as exc:
                errors.add_metric([source], 0)
                _note_failure(source, exc)
        yield errors

    @staticmethod
    def _queues():
        depth = GaugeMetricFamily(
            "niche_celery_queue_depth",
            "Messages waiting in a Celery queue (not yet taken by a worker).",
            labels=["queue"],
        )
        for name, length in queue_depths().items():
            depth.add_metric([name], length)
        yield depth

    @staticmethod
    def _jobs():
        from training_worker.selectors import job_counts_by_status

        jobs = GaugeMetricFamily(
            "niche_fine_tuning_jobs", "Fine-tuning jobs by status.", labels=["status"]
        )
        for status, count in job_counts_by_status().items():
            jobs.add_metric([status], count)
        yield jobs

    @staticmethod
    def _training():
        from training_worker.selectors import training_throughput

        running, examples_per_s = training_throughput()
        yield GaugeMetricFamily(
            "niche_training_examples_per_second",
            "Summed training throughput of the running jobs with a fresh heartbeat, "
            "from the progress workers write about once a second.",
            value=examples_per_s,
        )
        yield GaugeMetricFamily(
            "niche_training_jobs_live",
            "Running fine-tuning jobs whose worker sent a heartbeat recently.",
            value=running,
        )

    @staticmethod
    def _webhooks():
        from billing.selectors import stripe_webhook_lag

        lag = stripe_webhook_lag(since=timezone.now() - WEBHOOK_LAG_WINDOW)
        quantiles = GaugeMetricFamily(
            "niche_stripe_webhook_lag_seconds",
            "Stripe event created -> processed here, over events processed in the last hour.",
            labels=["quantile"],
        )
        for label, value in (("0.5", lag.lag_p50_s), ("0.95", lag.lag_p95_s), ("1", lag.lag_max_s)):
            if value is not None:
                quantiles.add_metric([label], value)
        yield quantiles
        yield GaugeMetricFamily(
            "niche_stripe_webhook_events_processed_last_hour",
            "Stripe events processed in the last hour.",
            value=lag.processed,
        )
        yield GaugeMetricFamily(
            "niche_stripe_webhook_unprocessed_events",
            "Stripe events stored but not processed yet.",
            value=lag.unprocessed,
        )
        yield GaugeMetricFamily(
            "niche_stripe_webhook_oldest_unprocessed_age_seconds",
            "Age of the oldest Stripe event not processed yet (0 when none waits).",
            value=lag.oldest_unprocessed_age_s or 0.0,
        )

    @staticmethod
    def _billing():
        from billing.models import IntentStatus
        from billing.selectors import billing_health

        health = billing_health()
        drift = GaugeMetricFamily(
            "niche_billing_drift",
            "Open disagreements between Stripe and our books that the reconciler could not "
            "repair by itself, by kind (admin: Reconciliation issues).",
            labels=["kind"],
        )
        for kind, count in sorted(health.drift_by_kind.items()):
            drift.add_metric([kind], count)
        yield drift
        intents = GaugeMetricFamily(
            "niche_stripe_intents",
            "Writes to Stripe in the outbox not yet succeeded, by status.",
            labels=["status"],
        )
        for status in (IntentStatus.PENDING, IntentStatus.FAILED):
            intents.add_metric([status], health.intents_by_status.get(status, 0))
        yield intents
        yield GaugeMetricFamily(
            "niche_metering_failing_periods",
            "Open metering periods whose last report to Stripe failed (each backs off alone).",
            value=health.failing_periods,
        )
        yield GaugeMetricFamily(
            "niche_domain_event_deliveries_failed",
            "Domain-event deliveries that exhausted their retries.",
            value=health.failing_event_deliveries,
        )
        if health.last_reconciliation_age_s is not None:
            yield GaugeMetricFamily(
                "niche_billing_reconciliation_age_seconds",
                "Seconds since the reconciler last finished a run.",
                value=health.last_reconciliation_age_s,
            )


def _note_failure(source: str, exc: BaseException) -> None:
    logger.warning("metrics source %s failed: %s: %s", source, type(exc).__name__, exc)


def scrape_registry() -> CollectorRegistry:
    """What one scrape shows: every web process's samples plus the shared state."""
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client.multiprocess import MultiProcessCollector

        MultiProcessCollector(registry)
    else:
        registry.register(LIVE_REGISTRY)
    registry.register(SharedStateCollector())
    return registry


def _token_matches(request) -> bool:
    header = request.headers.get("Authorization", "")
    expected = f"Bearer {settings.METRICS_TOKEN}"
    return hmac.compare_digest(header.encode(), expected.encode())


@require_GET
def metrics(request):
    if not settings.METRICS_TOKEN:
        raise Http404("No metrics endpoint: METRICS_TOKEN is not set.")
    if not _token_matches(request):
        response = HttpResponse(
            "Send Authorization: Bearer <METRICS_TOKEN>.\n", status=401, content_type="text/plain"
        )
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    return HttpResponse(generate_latest(scrape_registry()), content_type=CONTENT_TYPE_LATEST)
