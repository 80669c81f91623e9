"""Leaderboards on sealed benchmark sets: carol curates a set, alice's and eve's listings are
scored on it, anyone reads the ranked board, and no expert ever reads a row of it.

The engine here is a fake that answers from a table (each adapter right on a known share of
the rows), so the ranking, ties, supersession and the pages are tested in milliseconds;
tests/evidence/test_leaderboard_scoring.py scores a real adapter on the real engine.
"""

from __future__ import annotations

import json

import pytest
from django.core.files.storage import default_storage
from django.test import Client

from evidence import leaderboards
from evidence.benchmarks import (
    BENCHMARK_MIN_ROWS,
    benchmark_label_map_approve,
    benchmark_rows,
    benchmark_set_create,
    benchmark_set_set_active,
    benchmark_sets_seed_shipped,
    contender_label_map,
    label_map_problem,
    shipped_manifest,
)
from evidence.leaderboards import leaderboard_get, leaderboard_score, missing_scores, ranks
from evidence.models import BenchmarkLabelMap, BenchmarkSet, LeaderboardEntry
from listings import gardens
from listings import services as listing_services
from marketplace.errors import ApplicationError
from tests.conftest import make_user
from tests.evidence.benchmark_fakes import MARK, ROWS, SOURCES, FakeEngine, rows_file, truth
from tests.listings.conftest import make_listing, make_version

pytestmark = pytest.mark.django_db


@pytest.fixture
def eve(db):
    return make_user("eve@example.com", display_name="Eve", is_expert=True)


@pytest.fixture
def benchmark(carol) -> BenchmarkSet:
    return benchmark_set_create(
        moderator=carol, title="Planted set", task="text-classification",
        rows_file=rows_file(), sources=SOURCES, description="Rows planted by the tests.",
    )  # fmt: skip


def score_all(benchmark, listings, engine) -> list[str]:
    return [
        leaderboard_score(
            benchmark_id=benchmark.pk,
            listing_id=listing.pk,
            version_id=listing.live_version_id,
            engine=engine,
        )
        for listing in listings
    ]


@pytest.fixture
def board(alice, eve, carol, benchmark):
    """Three listings scored: perfect, 95 % right (overlaps the perfect one), a coin."""
    perfect = make_listing(alice, moderator=carol, title="Perfect triage")
    close = make_listing(eve, moderator=carol, title="Close second")
    coin = make_listing(alice, moderator=carol, title="Coin flip")
    engine = FakeEngine({
        perfect.live_version.adapter_sha256: 1.0,
        close.live_version.adapter_sha256: 0.95,
        coin.live_version.adapter_sha256: 0.5,
    })  # fmt: skip
    assert score_all(benchmark, [perfect, close, coin], engine) == ["scored"] * 3
    return {"perfect": perfect, "close": close, "coin": coin, "engine": engine}


# --- ranking and fit, pure ------------------------------------------------------------------


def test_overlapping_intervals_share_a_rank_and_separated_ones_do_not():
    intervals = [(0.9, 1.0), (0.85, 0.97), (0.4, 0.6), (0.41, 0.58)]
    assert ranks(intervals, higher_is_better=True) == [1, 1, 3, 3]
    # lower is better (an error rate): entirely below is better
    errors = [(0.05, 0.10), (0.08, 0.2), (0.3, 0.4)]
    assert ranks(errors, higher_is_better=False) == [1, 1, 3]
    assert ranks([], higher_is_better=True) == []


def test_a_listing_fits_when_its_labels_cover_the_sets_or_through_an_approved_map():
    fit = {"task": "text-classification", "set_labels": ["neg", "pos"]}
    assert contender_label_map(**fit, model_labels=["neg", "pos", "neutral"], approved=None) == {}
    assert contender_label_map(**fit, model_labels=["bad", "good"], approved=None) is None
    mapping = {"neg": "bad", "pos": "good"}
    assert contender_label_map(**fit, model_labels=["bad", "good"], approved=mapping) == {
        "bad": "neg", "good": "pos",
    }  # fmt: skip
    # a map that names labels the listing lost no longer fits
    assert contender_label_map(**fit, model_labels=["awful", "good"], approved=mapping) is None
    # generation fits by task
    assert contender_label_map(
        task="text-generation", set_labels=[], model_labels=[], approved=None
    ) == {}  # fmt: skip
    assert label_map_problem(["neg", "pos"], ["bad", "good"], {"neg": "bad", "pos": "bad"})
    assert label_map_problem(["neg", "pos"], ["bad", "good"], {"neg": "bad"})


# --- benchmark sets -------------------------------------------------------------------------


def test_a_moderator_creates_a_set_whose_rows_are_stored_sealed(benchmark, carol):
    assert benchmark.labels == ["a", "b"] and benchmark.row_count == ROWS
    assert benchmark.rows_path.startswith("sealed/benchmarks/planted-set/")
    assert benchmark.metric["name"] == "accuracy" and benchmark.metric["higher_is_better"]
    assert benchmark.sources[0]["licence"] == "CC0-1.0" and benchmark.created_by == carol
    rows = benchmark_rows(benchmark)
    assert len(rows) == ROWS and set(rows[0]) == {"text", "label"}


def test_only_moderators_create_sets_and_files_must_validate(alice, carol):
    with pytest.raises(ApplicationError) as refused:
        benchmark_set_create(
            moderator=alice, title="Mine", task="text-classification", rows_file=rows_file(),
            sources=SOURCES,
        )  # fmt: skip
    assert refused.value.status == 403
    with pytest.raises(ApplicationError) as too_few:
        benchmark_set_create(
            moderator=carol, title="Tiny", task="text-classification",
            rows_file=rows_file(BENCHMARK_MIN_ROWS - 1), sources=SOURCES,
        )  # fmt: skip
    assert too_few.value.status == 422 and too_few.value.code == "invalid_benchmark"
    with pytest.raises(ApplicationError) as no_licence:
        benchmark_set_create(
            moderator=carol, title="Unlicensed", task="text-classification",
            rows_file=rows_file(), sources=[{"name": "Somewhere"}],
        )  # fmt: skip
    assert "licence" in no_licence.value.message
    assert not BenchmarkSet.objects.exists()


def test_a_generation_set_ranks_by_its_graded_metric(carol):
    generation = benchmark_set_create(
        moderator=carol, title="Words", task="text-generation",
        rows_file=rows_file(task="text-generation"), sources=SOURCES,
    )  # fmt: skip
    assert generation.labels == []
    assert generation.metric["name"] == "character_error_rate"
    assert generation.metric["higher_is_better"] is False


def test_the_shipped_sets_are_seeded_once_and_share_no_row_with_the_demos_training_data():
    from frontend.services import DEMO_DATA
    from training_worker.ml.sealed_split import near_duplicate_key

    created = benchmark_sets_seed_shipped()
    assert sorted(s.slug for s in created) == sorted(spec["slug"] for spec in shipped_manifest())
    assert len(created) >= 2 and benchmark_sets_seed_shipped() == []
    tasks = {s.task for s in created}
    assert tasks == {"text-classification", "text-generation"}
    demo_files = {"text-classification": "word_sentiment.jsonl",
                  "text-generation": "past_tense.jsonl"}  # fmt: skip
    for benchmark in created:
        demo_rows = (DEMO_DATA / demo_files[benchmark.task]).read_text().splitlines()
        demo = {near_duplicate_key(row.get("text") or row.get("prompt"))
                for row in map(json.loads, demo_rows)}  # fmt: skip
        rows = benchmark_rows(benchmark)
        assert rows and benchmark.row_count == len(rows)
        assert all(source["licence"] for source in benchmark.sources)
        keys = {near_duplicate_key(row.get("text") or row.get("prompt")) for row in rows}
        assert len(keys) == len(rows) and not keys & demo, benchmark.slug
    sentiment = BenchmarkSet.objects.get(task="text-classification")
    assert sentiment.labels == ["negative", "positive"]  # what the demo specialist answers


# --- scoring, supersession, the board -------------------------------------------------------


def test_the_board_ranks_by_the_pessimistic_bound_and_shows_ties(board, benchmark):
    result = leaderboard_get(slug=benchmark.slug)
    listings = {row.listing_slug: row for row in result.listings}
    perfect, close, coin = (listings[board[k].slug] for k in ("perfect", "close", "coin"))
    assert (perfect.rank, close.rank) == (1, 1) and perfect.tied and close.tied
    assert coin.rank == 3 and not coin.tied
    assert perfect.value == 1.0 and coin.ci_low <= 0.5 <= coin.ci_high
    assert perfect.version_number == 1 and perfect.scored_at is not None
    assert perfect.vs_generalist["separated"] and perfect.vs_generalist["delta"] > 0
    # the generalist is a reference row: not a listing, never ranked
    (reference,) = [row for row in result.rows if row.kind == "generalist"]
    assert reference.rank is None and reference.listing_slug == ""
    assert reference.label.startswith("Generalist")
    order = [row.listing_slug or "generalist" for row in result.rows]
    assert order.index(perfect.listing_slug) < order.index(coin.listing_slug)
    assert order[:2] == [board["perfect"].slug, board["close"].slug]  # by the low end


def test_a_version_is_scored_once_and_a_new_one_supersedes_it(board, benchmark, alice, carol):
    perfect = board["perfect"]
    engine = board["engine"]
    assert score_all(benchmark, [perfect], engine) == ["already_scored"]

    # alice's new version goes live: it is scored, the old entry is kept as history
    version = make_version(alice)
    listing_services.listing_propose_version(
        owner=alice, listing_id=perfect.pk, model_version_id=version.id
    )
    perfect = listing_services.listing_version_approve(moderator=carol, listing_id=perfect.pk)
    engine.shares[version.adapter_sha256] = 0.6
    assert score_all(benchmark, [perfect], engine) == ["scored"]

    history = LeaderboardEntry.objects.filter(benchmark=benchmark, listing=perfect)
    assert history.count() == 2
    current = history.get(superseded_at__isnull=True)
    assert current.version_id == version.id and current.detail["version_number"] == 2
    old = history.get(superseded_at__isnull=False)
    assert old.superseded_at >= old.scored_at
    (row,) = [
        r for r in leaderboard_get(slug=benchmark.slug).listings if r.listing_slug == perfect.slug
    ]
    assert row.version_number == 2 and row.value == pytest.approx(0.6)


def test_an_old_version_is_not_written_over_a_newer_live_one(board, benchmark, alice, carol):
    coin = board["coin"]
    old_version_id = coin.live_version_id
    version = make_version(alice)
    listing_services.listing_propose_version(
        owner=alice, listing_id=coin.pk, model_version_id=version.id
    )
    listing_services.listing_version_approve(moderator=carol, listing_id=coin.pk)
    LeaderboardEntry.objects.filter(version_id=old_version_id).delete()
    outcome = leaderboard_score(
        benchmark_id=benchmark.pk, listing_id=coin.pk, version_id=old_version_id,
        engine=board["engine"],
    )  # fmt: skip
    assert outcome == "stale"
    assert not LeaderboardEntry.objects.filter(version_id=old_version_id).exists()


def test_a_suspended_listing_leaves_the_board_and_its_entry_stays(board, benchmark, carol):
    listing_services.listing_suspend(
        moderator=carol, listing_id=board["coin"].pk, reason="Checking its data."
    )
    slugs = [row.listing_slug for row in leaderboard_get(slug=benchmark.slug).listings]
    assert board["coin"].slug not in slugs and len(slugs) == 2
    assert LeaderboardEntry.objects.filter(listing=board["coin"]).exists()


# --- what gets queued: the event, the sweep, gardens, label maps ----------------------------


def test_a_published_listing_is_queued_on_the_sets_it_fits_by_the_event(
    benchmark, alice, carol, monkeypatch, django_capture_on_commit_callbacks
):
    from serving.engine import service

    engine = FakeEngine({})
    monkeypatch.setattr(service, "engine_get", lambda: engine)
    version = make_version(alice)
    engine.shares[version.adapter_sha256] = 0.9
    listing = listing_services.listing_create(
        owner=alice, model_version_id=version.id, title="Evented", summary="s.", domain="other"
    )
    listing_services.listing_submit(owner=alice, listing_id=listing.pk)
    # approval records listing.version_live; its delivery queues the score (eager here)
    with django_capture_on_commit_callbacks(execute=True):
        listing_services.listing_approve(moderator=carol, listing_id=listing.pk)
    entry = LeaderboardEntry.objects.get(benchmark=benchmark, listing=listing)
    assert entry.version_id == version.id and entry.value == pytest.approx(0.9)
    assert engine.calls > 0


def test_the_sweep_queues_what_is_missing_never_gardens_nor_unfit_listings(
    benchmark, alice, carol, monkeypatch
):
    member = make_listing(alice, moderator=carol, title="Member")
    gardens.listing_set_composable(owner=alice, listing_id=member.pk, composable=True)
    curator = make_user("cy@example.com", is_expert=True)
    garden = gardens.garden_create(
        curator=curator, kind="router", members=[member.slug], title="A garden", summary="g.",
        domain="other",
    )  # fmt: skip
    listing_services.listing_submit(owner=curator, listing_id=garden.pk)
    listing_services.listing_approve(moderator=carol, listing_id=garden.pk)
    other_labels = make_version(alice)
    other_labels.labels = ["x", "y"]
    other_labels.save(update_fields=["labels"])
    unfit = listing_services.listing_create(
        owner=alice, model_version_id=other_labels.id, title="Unfit", summary="s.", domain="other"
    )
    listing_services.listing_submit(owner=alice, listing_id=unfit.pk)
    unfit = listing_services.listing_approve(moderator=carol, listing_id=unfit.pk)

    missing = {listing_id for _, listing_id, _ in missing_scores()}
    assert missing == {str(member.pk)}  # not the garden, not the listing of other labels

    # a moderator-approved label map makes it fit
    benchmark_label_map_approve(
        moderator=carol, benchmark_id=benchmark.pk, listing_id=unfit.pk,
        mapping={"a": "x", "b": "y"},
    )  # fmt: skip
    assert {listing_id for _, listing_id, _ in missing_scores()} == {str(member.pk), str(unfit.pk)}

    sent = []
    monkeypatch.setattr(leaderboards, "send_after_commit", lambda *args: sent.append(args))
    assert leaderboards.leaderboards_sweep() == 2
    assert leaderboards.leaderboards_sweep() == 0  # queued already: not twice
    assert {args[2] for args in sent} == {str(member.pk), str(unfit.pk)}


def test_the_label_map_scores_the_listing_through_the_map(benchmark, alice, carol):
    version = make_version(alice)
    version.labels = ["x", "y"]
    version.save(update_fields=["labels"])
    listing = listing_services.listing_create(
        owner=alice, model_version_id=version.id, title="Mapped", summary="s.", domain="other"
    )
    listing_services.listing_submit(owner=alice, listing_id=listing.pk)
    listing = listing_services.listing_approve(moderator=carol, listing_id=listing.pk)
    with pytest.raises(ApplicationError):
        benchmark_label_map_approve(
            moderator=carol, benchmark_id=benchmark.pk, listing_id=listing.pk,
            mapping={"a": "x", "b": "x"},
        )  # fmt: skip
    benchmark_label_map_approve(
        moderator=carol, benchmark_id=benchmark.pk, listing_id=listing.pk,
        mapping={"a": "y", "b": "x"},
    )  # fmt: skip

    class Swapped(FakeEngine):  # answers in its own label names
        def _label(self, sha, text):
            return {"a": "y", "b": "x"}[truth(int(MARK.search(text).group(1)))] if sha else "a"

    assert score_all(benchmark, [listing], Swapped({})) == ["scored"]
    assert LeaderboardEntry.objects.get(listing=listing).value == 1.0


def test_a_failing_version_is_left_alone_after_a_few_tries(benchmark, alice, carol, monkeypatch):
    listing = make_listing(alice, moderator=carol, title="Broken")

    class Down:
        def infer(self, request):
            return {"request_id": request["request_id"],
                    "error": {"code": "adapter_unavailable", "message": "gone"}}  # fmt: skip

    for _ in range(leaderboards.MAX_FAILURES):
        assert score_all(benchmark, [listing], Down()) == ["failed"]
    sent = []
    monkeypatch.setattr(leaderboards, "send_after_commit", lambda *args: sent.append(args))
    assert leaderboards.leaderboards_sweep() == 0 and sent == []
    assert not LeaderboardEntry.objects.exists()


def test_a_closed_set_is_neither_scored_nor_shown(board, benchmark, carol):
    benchmark_set_set_active(moderator=carol, benchmark_id=benchmark.pk, active=False)
    assert missing_scores() == []
    with pytest.raises(ApplicationError) as closed:
        leaderboard_get(slug=benchmark.slug)
    assert closed.value.status == 404


# --- API and pages --------------------------------------------------------------------------


def test_anyone_reads_the_sets_and_a_ranked_board_over_the_api(board, benchmark):
    client = Client()
    sets = client.get("/api/v1/leaderboards").json()
    (listed,) = sets["data"]
    assert listed["id"] == benchmark.slug and listed["entries"] == 3
    assert listed["row_count"] == ROWS and listed["labels"] == ["a", "b"]
    assert listed["sources"][0]["licence"] == "CC0-1.0" and listed["metric"]["name"] == "accuracy"
    assert set(sets) >= {"data", "has_more", "first_id", "last_id"}

    body = client.get(f"/api/v1/leaderboards/{benchmark.slug}").json()
    assert body["object"] == "leaderboard" and "low end" in body["ranking"]
    ranked = [row for row in body["data"] if row["kind"] == "listing"]
    assert [row["rank"] for row in ranked] == [1, 1, 3]
    first = ranked[0]
    assert first["model"] == f"{board['perfect'].slug}@1" and first["version"] == 1
    assert first["tied"] and first["scored_at"] and first["ranked_by"] == first["ci_low"]
    (reference,) = [row for row in body["data"] if row["kind"] == "generalist"]
    assert reference["rank"] is None and reference["model"] is None

    page = client.get(f"/api/v1/leaderboards/{benchmark.slug}?limit=2").json()
    assert len(page["data"]) == 2 and page["has_more"]
    rest = client.get(f"/api/v1/leaderboards/{benchmark.slug}?after={page['last_id']}").json()
    assert [r["id"] for r in page["data"] + rest["data"]] == [r["id"] for r in body["data"]]
    missing = client.get("/api/v1/leaderboards/no-such-set")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "benchmark_not_found"
    assert client.get("/api/v1/leaderboards?after=nope").status_code == 422


def test_the_pages_explain_the_set_and_rank_in_plain_words(board, benchmark):
    client = Client()
    index = client.get("/leaderboards/").content.decode()
    assert benchmark.title in index and "3 specialists ranked" in index
    page = client.get(f"/leaderboards/text-classification/{benchmark.slug}/")
    assert page.status_code == 200
    text = page.content.decode()
    assert "No expert ever sees these rows" in text and "CC0-1.0" in text
    assert "low end of that range (higher is better)" in text and "share a rank" in text
    assert "rank 1 is shared" in text and 'data-testid="leaderboard-chart"' in text
    assert board["perfect"].title in text and "v1" in text and "Generalist" in text
    assert client.get(f"/leaderboards/text-generation/{benchmark.slug}/").status_code == 404


# --- the admin -------------------------------------------------------------------------------


def test_carol_creates_a_set_in_the_admin_and_its_pages_show_no_row(carol, alice):
    client = Client()
    client.force_login(carol)
    form = client.get("/admin/evidence/benchmarkset/add/")
    assert form.status_code == 200
    response = client.post(
        "/admin/evidence/benchmarkset/add/",
        {"title": "Admin set", "slug": "", "task": "text-classification",
         "description": "From the admin.", "sources_json": json.dumps(SOURCES),
         "rows_file": rows_file()},
    )  # fmt: skip
    assert response.status_code == 302, response.content.decode()[:2000]
    created = BenchmarkSet.objects.get(slug="admin-set")
    assert created.created_by == carol and created.row_count == ROWS
    change_path = f"/admin/evidence/benchmarkset/{created.pk}/change/"
    for path in ("/admin/evidence/benchmarkset/", change_path):
        page = client.get(path).content.decode()
        assert "zqbench" not in page
    change = client.get(change_path).content.decode()
    assert created.rows_sha256 in change and "CC0-1.0" in change
    refused = client.post(
        "/admin/evidence/benchmarkset/add/",
        {"title": "Bad set", "task": "text-classification", "sources_json": json.dumps(SOURCES),
         "rows_file": rows_file(3)},
    )  # fmt: skip
    assert refused.status_code == 200 and "needs at least 20" in refused.content.decode()
    # an expert without staff is sent to log in
    expert = Client()
    expert.force_login(alice)
    assert expert.get("/admin/evidence/benchmarkset/").status_code == 302


def test_carol_approves_a_label_map_in_the_admin(benchmark, carol, alice):
    version = make_version(alice)
    version.labels = ["x", "y"]
    version.save(update_fields=["labels"])
    listing = make_listing(alice, moderator=carol, title="Other names")
    listing.live_version = version
    listing.save(update_fields=["live_version"])
    client = Client()
    client.force_login(carol)
    response = client.post(
        "/admin/evidence/benchmarklabelmap/add/",
        {"benchmark": benchmark.pk, "listing": listing.pk, "mapping": '{"a": "x", "b": "y"}'},
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    label_map = BenchmarkLabelMap.objects.get(listing=listing)
    assert label_map.approved_by == carol and label_map.mapping == {"a": "x", "b": "y"}


# --- privacy: no expert reads a row ---------------------------------------------------------


def test_no_expert_reaches_a_row_through_any_page_or_endpoint(board, benchmark, alice, eve):
    """alice (and eve) own scored listings: every API answer and page they can fetch about
    the boards, their listings and versions is free of every row's marker; so is the storage
    name of the rows, which no answer names."""
    perfect = board["perfect"]
    paths = [
        "/api/v1/leaderboards", f"/api/v1/leaderboards/{benchmark.slug}",
        f"/api/v1/listings/{perfect.slug}", "/api/v1/listings", "/api/v1/listings/mine",
        f"/api/v1/models/{perfect.live_version_id}",
        f"/api/v1/models/{perfect.live_version_id}/evaluation",
        f"/api/v1/models/{perfect.live_version_id}/card",
        "/leaderboards/", f"/leaderboards/text-classification/{benchmark.slug}/",
        f"/catalogue/{perfect.slug}/", "/catalogue/", f"/studio/models/{perfect.live_version_id}/",
        "/studio/", "/dashboard/", "/api/schema/",
        "/admin/", "/admin/evidence/benchmarkset/", "/admin/evidence/leaderboardentry/",
        f"/admin/evidence/benchmarkset/{benchmark.pk}/change/",
    ]  # fmt: skip
    for who in (alice, eve):
        client = Client()
        client.force_login(who)
        for path in paths:
            response = client.get(path)
            text = response.content.decode("utf-8", "replace")
            assert response.status_code in (200, 302, 404), (path, response.status_code)
            assert "zqbench" not in text and benchmark.rows_path not in text, path
    assert default_storage.exists(benchmark.rows_path)  # the rows are there, sealed
