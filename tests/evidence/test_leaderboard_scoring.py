"""Leaderboard scoring for real: alice's published listings (real LoRA adapters in storage)
are scored on carol's sealed sets through this process's engine (serving.engine.service
.engine_get, as an inference worker runs it), at batch priority; a new version supersedes
the entry; and nothing alice can download (the export bundle, the card) holds a row."""

from __future__ import annotations

import io
import json
import zipfile

import pytest

from evidence.benchmarks import benchmark_set_create
from evidence.leaderboards import leaderboard_get, leaderboard_score
from evidence.models import LeaderboardEntry
from listings import services as listing_services
from serving.protocol import TEXT_GENERATION
from tests.integration.specialists import LABELS, publish_specialist, real_version
from tests.training_worker.conftest import tiny_causal_built  # noqa: F401  (fixture)

pytestmark = pytest.mark.django_db

MARKER = "zqleaderrow"
SOURCES = [{"name": "Planted tickets", "url": "", "licence": "CC0-1.0", "attribution": ""}]


def rows_file(lines: list[dict]) -> io.BytesIO:
    handle = io.BytesIO("".join(json.dumps(line) + "\n" for line in lines).encode())
    handle.name = "rows.jsonl"
    return handle


@pytest.fixture
def tickets(alice, carol, tmp_path):
    return publish_specialist(alice, carol, folder=tmp_path, title="Ticket triage")


@pytest.fixture
def ticket_set(carol):
    lines = [{"text": f"{MARKER}{i} my {LABELS[i % 3]} ticket", "label": LABELS[i % 3]}
             for i in range(24)]  # fmt: skip
    return benchmark_set_create(
        moderator=carol, title="Tickets", task="text-classification", rows_file=rows_file(lines),
        sources=SOURCES,
    )  # fmt: skip


def score(benchmark, listing) -> str:
    return leaderboard_score(
        benchmark_id=benchmark.pk, listing_id=listing.pk, version_id=listing.live_version_id
    )


def test_a_real_listing_is_scored_and_a_new_version_supersedes_it(
    api, alice, carol, tickets, ticket_set, tmp_path
):
    # When the scoring task runs on this process's engine
    assert score(ticket_set, tickets) == "scored"

    # Then the entry holds the metric with its interval, the version and the generalist
    entry = LeaderboardEntry.objects.get(benchmark=ticket_set, listing=tickets)
    assert entry.metric == "accuracy" and entry.higher_is_better and entry.rows == 24
    assert 0.0 <= entry.ci_low <= entry.value <= entry.ci_high <= 1.0
    assert entry.detail["rows_scored"] == 24 and entry.detail["errors"] == 0
    assert entry.detail["version_number"] == 1 and entry.detail["base_model"] == "minilm-l6"
    assert entry.detail["generalist"]["rows_scored"] == 24
    board = leaderboard_get(slug=ticket_set.slug)
    assert [row.kind for row in board.rows].count("generalist") == 1
    assert board.listings[0].rank == 1 and board.listings[0].version_number == 1

    # When alice's new version goes live, it is scored and supersedes the first entry
    version = real_version(alice, task="text-classification", folder=tmp_path)
    listing_services.listing_propose_version(
        owner=alice, listing_id=tickets.pk, model_version_id=version.id
    )
    tickets = listing_services.listing_version_approve(moderator=carol, listing_id=tickets.pk)
    assert score(ticket_set, tickets) == "scored"
    entries = LeaderboardEntry.objects.filter(benchmark=ticket_set, listing=tickets)
    assert entries.count() == 2
    assert entries.get(superseded_at__isnull=True).version_id == version.id
    assert entries.get(superseded_at__isnull=False).detail["version_number"] == 1
    assert leaderboard_get(slug=ticket_set.slug).listings[0].version_number == 2

    # And nothing alice can download about her version holds a row of the set
    reader = api(alice, scopes=["read"])
    bundle = reader.get(f"/api/v1/models/{version.id}/export")
    assert bundle.status_code == 200
    with zipfile.ZipFile(io.BytesIO(b"".join(bundle.streaming_content))) as archive:
        for name in archive.namelist():
            assert MARKER.encode() not in archive.read(name), name
    for path in (f"/api/v1/models/{version.id}", f"/api/v1/models/{version.id}/card",
                 f"/api/v1/models/{version.id}/evaluation", f"/api/v1/listings/{tickets.slug}",
                 f"/api/v1/leaderboards/{ticket_set.slug}"):  # fmt: skip
        response = reader.get(path)
        assert response.status_code == 200 and MARKER not in response.content.decode(), path


@pytest.mark.usefixtures("tiny_causal_built")
def test_a_generation_listing_is_scored_by_the_graded_metric(alice, carol, tmp_path):
    clauses = publish_specialist(
        alice, carol, task=TEXT_GENERATION, folder=tmp_path, title="Clause writer"
    )
    lines = [{"prompt": f"{MARKER}{i}", "completion": f"word{i}"} for i in range(20)]
    words = benchmark_set_create(
        moderator=carol, title="Words", task=TEXT_GENERATION, rows_file=rows_file(lines),
        sources=SOURCES,
    )  # fmt: skip
    assert score(words, clauses) == "scored"
    entry = LeaderboardEntry.objects.get(benchmark=words, listing=clauses)
    assert entry.metric == "character_error_rate" and entry.higher_is_better is False
    assert entry.ci_low <= entry.value <= entry.ci_high and entry.rows == 20
    (row,) = leaderboard_get(slug=words.slug).listings
    assert row.bound == entry.ci_high  # lower is better: ranked by the high end
