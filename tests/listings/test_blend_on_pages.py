"""A version served as a blend says so wherever its evaluation is shown: the listing page
(with the adapter alone as its own bar), the public API, the card; one that is not says
why."""

from django.test import Client

from tests.listings.test_lift_over_strongest_baseline import (
    CLASSIC,
    SPECIALIST,
    Y_TRUE,
    published_with,
)
from training_worker.ml import evaluation
from training_worker.ml.evaluation_report import Blend, read_evaluation
from training_worker.model_cards import render_model_card
from training_worker.models import BaseModel

ADAPTER_ALONE = [0, 0, 0, 1, 1, 1, 1, 1, 0, 0]  # 6 of 10; the blend (SPECIALIST) gets 9
BLEND = {
    "weight": 0.35,
    "method": "w x adapter + (1 - w) x classic",
    "validation_rows": 40,
    "validation": {"adapter": {"accuracy": 0.7, "log_loss": 0.6}},
}


def blended_report(**blend) -> dict:
    return evaluation.classification_report(
        Y_TRUE, SPECIALIST, ["billing", "shipping"], 0, [0] * 10, "embedding_cosine",
        seed=0, resamples=200,
        baselines=[evaluation.BaselinePredictions("classic_tfidf_logreg", "tf-idf", CLASSIC)],
        blend=Blend.from_dict({**BLEND, **blend}),
        adapter_pred=ADAPTER_ALONE if blend.get("weight", 0) < 1 else None,
    )  # fmt: skip


def test_the_report_keeps_the_adapter_alone_with_the_blends_lift_over_it():
    report = blended_report()
    alone = report["blend"]["adapter_alone"]
    assert (alone["accuracy"], alone["label"]) == (0.6, "Adapter alone")
    assert alone["lift"]["delta"] == 0.3  # 0.9 served - 0.6 alone, paired on the same rows
    assert "adapter_alone" not in report["baselines"]  # never a baseline to beat

    typed = read_evaluation(report)
    assert typed.blend.is_blended and typed.blend.validation_rows == 40
    assert typed.as_dict()["blend"] == report["blend"]
    public = typed.as_public_dict()["blend"]
    assert (public["weight"], public["lexical_weight"], public["is_blended"]) == (0.35, 0.65, True)
    assert public["adapter_alone"]["value"] == 0.6
    # Reports from before the blend read as before.
    older = {k: v for k, v in report.items() if k != "blend"}
    assert read_evaluation(older).blend is None
    assert read_evaluation(older).as_public_dict()["blend"] is None


def test_the_listing_page_and_api_say_it_is_a_blend_and_draw_the_adapter_alone(alice, carol, api):
    listing = published_with(alice, carol, blended_report())

    page = Client().get(f"/catalogue/{listing.slug}/").content.decode()
    blend = page[page.index('data-testid="blend"') :]
    blend = blend[: blend.index("</p>")]
    assert "Served as a blend: <strong>0.35</strong>" in blend and "<strong>0.65</strong>" in blend
    assert "40 validation rows" in blend
    assert "The adapter alone scores 0.600" in blend and "blending adds 0.300" in blend
    chart = page[page.index('data-testid="baseline-chart"') : page.index("</svg>")]
    assert chart.count('data-bar="adapter_alone"') == 1
    assert "Adapter alone (no blend)" in chart

    public = api().get(f"/api/v1/listings/{listing.slug}").json()
    assert public["evaluation"]["blend"]["weight"] == 0.35
    assert public["evaluation"]["blend"]["adapter_alone"]["value"] == 0.6


def test_a_version_served_alone_says_why_and_draws_no_extra_bar(alice, carol):
    report = blended_report(
        weight=1.0, reason="the adapter alone scored best on the validation rows"
    )
    listing = published_with(alice, carol, report)

    page = Client().get(f"/catalogue/{listing.slug}/").content.decode()

    assert (
        "Served as the LoRA adapter alone (the adapter alone scored best on the validation "
        "rows)." in page
    )
    assert 'data-bar="adapter_alone"' not in page


def test_the_card_says_what_is_served_and_names_the_lexical_heads_hash(db):
    common = {
        "name": "x", "base_model": BaseModel.objects.get(slug="minilm-l6"),
        "task": "text-classification", "labels": ["billing", "shipping"],
        "licence": "apache-2.0", "run_record": {}, "adapter_sha256": "a" * 64,
    }  # fmt: skip

    card = render_model_card(evaluation=blended_report(), lexical_head_sha256="b" * 64, **common)
    assert (
        "Blend: what is served and scored above is 0.35 x the adapter's probabilities + "
        "0.65 x a classic TF-IDF + logistic regression model" in card
    )
    assert f"SHA-256 `{'b' * 64}`" in card and f"- Lexical head SHA-256: `{'b' * 64}`" in card
    assert "The adapter alone scores accuracy 0.6000 [" in card and "the blend adds +0.3000" in card
    assert "as `base_model.json` (`blend`) of the download describes" in card

    alone = render_model_card(
        evaluation=blended_report(weight=1.0, reason="lexical_blend is off"), **common
    )
    assert "Blend: none, the adapter alone is served (lexical_blend is off)." in alone
    assert "Lexical head" not in alone
