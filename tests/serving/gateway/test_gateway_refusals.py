"""The gateway refuses before the engine: key scope, licence, input limits, quota, rate.

None of these calls reaches a worker, and none writes a ledger row. The engine's own
answers are tested with real inference workers in test_gateway_on_workers.py.
"""

import uuid

from django.test import override_settings
from django.urls import resolve

from billing.models import OfferKind, UsageRecord
from billing.services import licence_revoke, licence_start_free_trial, usage_record
from listings.services import listing_suspend
from serving import apis, gateway, openai_api
from serving.ratelimit import WINDOW_SECONDS, RateWindow, rate_limit_admit, rate_window_key
from tests.billing.conftest import make_offer
from tests.serving.gateway.conftest import key_for


def predict(client, key, slug, body):
    return client.post(
        f"/api/v1/models/{slug}/predict", body, format="json", HTTP_AUTHORIZATION=f"Bearer {key}"
    )


def chat(client, key, model, **extra):
    body = {"model": model, "messages": [{"role": "user", "content": "Hello"}]} | extra
    return client.post(
        "/v1/chat/completions", body, format="json", HTTP_AUTHORIZATION=f"Bearer {key}"
    )


def test_predict_and_v1_routes_reach_serving_and_model_versions_stay_with_the_studio():
    assert resolve("/api/v1/models/support-triage/predict").func.view_class is apis.PredictApi
    assert resolve("/api/v1/models/support-triage@2/predict").kwargs == {
        "listing": "support-triage@2"
    }
    studio_route = resolve(f"/api/v1/models/{uuid.uuid4()}")
    assert studio_route.func.view_class.__module__ == "training_worker.apis"
    assert resolve("/v1/chat/completions").func.view_class is openai_api.ChatCompletionsApi
    assert resolve("/v1/completions").func.view_class is openai_api.CompletionsApi
    assert resolve("/v1/models").func.view_class is openai_api.ModelListApi


def test_mallory_without_a_licence_gets_403_in_each_error_shape(api, mallory, triage):
    key = key_for(mallory)

    response = predict(api(), key, triage.slug, {"inputs": ["My invoice is wrong"]})
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "licence_required"

    response = chat(api(), key, triage.slug)
    assert response.status_code == 403
    error = response.json()["error"]
    assert error["code"] == "licence_required"
    assert error["type"] == "permission_error"
    assert set(error) == {"message", "type", "param", "code"}
    assert UsageRecord.objects.count() == 0


def test_a_key_without_the_infer_scope_is_refused(api, bob, bob_licence, triage):
    key = key_for(bob, scopes=("read",))

    response = predict(api(), key, triage.slug, {"inputs": ["My invoice is wrong"]})

    assert response.status_code == 403
    assert "'infer' scope" in response.json()["error"]["message"]
    response = api().get("/v1/models", HTTP_AUTHORIZATION=f"Bearer {key}")
    assert response.status_code == 403
    assert response.json()["error"]["type"] == "permission_error"
    assert UsageRecord.objects.count() == 0


def test_v1_without_a_key_is_401_and_unknown_paths_404_in_openai_shape(api):
    response = api().post("/v1/chat/completions", {"model": "x"}, format="json")
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"

    response = api().get("/v1/embeddings")
    assert response.status_code == 404
    assert response.json()["error"] == {
        "message": "No endpoint at /v1/embeddings.",
        "type": "not_found_error",
        "param": None,
        "code": "not_found",
    }


def test_an_unknown_listing_or_version_is_404(api, bob, bob_licence, triage):
    key = key_for(bob)

    response = predict(api(), key, "no-such-listing", {"inputs": ["x"]})
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "listing_not_found"

    response = predict(api(), key, f"{triage.slug}@9", {"inputs": ["x"]})
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "version_not_found"


@override_settings(SERVING_MAX_INPUTS=3, SERVING_MAX_INPUT_CHARS=20)
def test_inputs_past_the_limits_are_422_and_cost_nothing(api, bob, bob_licence, triage):
    key = key_for(bob)

    too_many = predict(api(), key, triage.slug, {"inputs": ["a", "b", "c", "d"]})
    too_long = predict(api(), key, triage.slug, {"inputs": ["x" * 21]})
    not_text = predict(api(), key, triage.slug, {"inputs": [3]})
    no_inputs = predict(api(), key, triage.slug, {"text": "hello"})

    for response in (too_many, too_long, not_text, no_inputs):
        assert response.status_code == 422
        assert response.json()["error"]["fields"]["inputs"]
    assert "At most 3 inputs per call" in too_many.json()["error"]["message"]
    assert UsageRecord.objects.count() == 0


def test_chat_with_a_classification_model_is_a_clear_422(api, bob, bob_licence, triage):
    response = chat(api(), key_for(bob), triage.slug)

    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "wrong_task"
    assert error["type"] == "invalid_request_error"
    assert error["param"] == "model"


@override_settings(SERVING_MAX_NEW_TOKENS=8)
def test_openai_parameters_past_the_limits_are_refused(api, bob, bob_licence, triage):
    response = chat(api(), key_for(bob), triage.slug, max_tokens=9)

    assert response.status_code == 422
    assert response.json()["error"]["param"] == "max_new_tokens"


def test_a_used_up_free_trial_is_429_quota_exceeded_with_no_new_row(api, bob, triage):
    trial = licence_start_free_trial(
        buyer=bob, offer=make_offer(triage, OfferKind.FREE_TRIAL, included_calls=2)
    )
    for n in range(2):
        usage_record(licence_id=trial.id, idempotency_key=f"earlier-{n}")

    response = predict(api(), key_for(bob), triage.slug, {"inputs": ["My invoice is wrong"]})

    assert response.status_code == 429
    assert response.json()["error"]["code"] == "quota_exceeded"
    assert UsageRecord.objects.filter(licence=trial).count() == 2


def test_classification_counts_each_input_against_the_quota(api, bob, triage):
    trial = licence_start_free_trial(
        buyer=bob, offer=make_offer(triage, OfferKind.FREE_TRIAL, included_calls=2)
    )

    response = predict(api(), key_for(bob), triage.slug, {"inputs": ["a", "b", "c"]})

    assert response.status_code == 429
    assert response.json()["error"]["fields"] == {"calls_left": ["2"]}
    assert not UsageRecord.objects.filter(licence=trial).exists()


def _minute_of(user=None, key_id=None) -> str:
    import time

    subject = f"user:{user.pk}" if user is not None else f"key:{key_id}"
    return rate_window_key(subject, int(time.time() // WINDOW_SECONDS))


@override_settings(SERVING_RATE_LIMIT_PER_MINUTE=2)
def test_a_second_key_buys_no_more_calls_than_the_users_limit(
    api, bob, bob_licence, triage, real_redis
):
    # Given bob's first key made this minute's two calls (the gateway counts them as bob's)
    from accounts.selectors import api_key_resolve

    first, second = key_for(bob), key_for(bob)
    first_key = api_key_resolve(plaintext=first)
    for _ in range(2):
        rate_limit_admit(windows=gateway._rate_windows(bob, first_key))

    # When he calls with his second key
    response = predict(api(), second, triage.slug, {"inputs": ["My invoice is wrong"]})

    # Then it is refused as his account's limit, nothing is written, nothing counted
    assert response.status_code == 429
    error = response.json()["error"]
    assert error["code"] == "rate_limited"
    assert error["fields"] == {"limit_per_minute": ["2"], "limited_by": ["user"]}
    assert 1 <= int(response["Retry-After"]) <= 60
    assert UsageRecord.objects.count() == 0
    assert int(real_redis.get(_minute_of(user=bob))) == 2


@override_settings(SERVING_RATE_LIMIT_PER_MINUTE=5)
def test_a_key_past_its_own_lower_limit_gets_429_and_the_user_keeps_the_rest(
    api, bob, bob_licence, triage, real_redis
):
    from accounts.services import api_key_create

    ci_key, ci_plaintext = api_key_create(
        user=bob, name="ci", scopes=["infer"], rate_limit_per_minute=1
    )
    rate_limit_admit(windows=gateway._rate_windows(bob, ci_key))  # its one call this minute

    response = predict(api(), ci_plaintext, triage.slug, {"inputs": ["My invoice is wrong"]})

    assert response.status_code == 429
    assert response.json()["error"]["fields"] == {
        "limit_per_minute": ["1"],
        "limited_by": ["api_key"],
    }
    assert "Retry-After" in response
    assert UsageRecord.objects.count() == 0
    # the refused call counted in neither window: bob has four calls left this minute
    assert int(real_redis.get(_minute_of(user=bob))) == 1
    assert int(real_redis.get(_minute_of(key_id=ci_key.pk))) == 1


def test_every_key_of_a_user_and_the_portal_count_in_one_window(bob, api):
    from accounts.services import api_key_create

    plain, _ = api_key_create(user=bob, name="plain", scopes=["infer"])
    capped, _ = api_key_create(user=bob, name="capped", scopes=["infer"], rate_limit_per_minute=7)

    windows = [gateway._rate_windows(bob, key) for key in (plain, capped, None)]

    user_window = RateWindow(subject=f"user:{bob.pk}", limit=600)
    assert windows == [
        [user_window],
        [user_window, RateWindow(subject=f"key:{capped.pk}", limit=7)],
        [user_window],
    ]


def test_a_revoked_licence_stops_at_once(api, bob, carol, bob_licence, triage):
    licence_revoke(licence_id=bob_licence.id, reason="chargeback", actor=carol)

    response = predict(api(), key_for(bob), triage.slug, {"inputs": ["My invoice is wrong"]})

    assert response.status_code == 403
    assert response.json()["error"]["code"] == "licence_required"
    assert UsageRecord.objects.count() == 0


def test_a_listing_suspended_by_a_moderator_stops_being_served_at_once(
    api, bob, carol, bob_licence, triage
):
    listing_suspend(moderator=carol, listing_id=triage.id, reason="misleading evaluation")

    response = predict(api(), key_for(bob), triage.slug, {"inputs": ["My invoice is wrong"]})
    openai = api().post(
        "/v1/completions",
        {"model": triage.slug, "prompt": "x"},
        format="json",
        HTTP_AUTHORIZATION=f"Bearer {key_for(bob)}",
    )

    assert response.status_code == 404
    assert openai.status_code == 404
    assert openai.json()["error"]["type"]
    assert UsageRecord.objects.count() == 0


def test_v1_models_lists_only_what_this_key_may_call(
    api, alice, bob, mallory, carol, triage, bob_licence
):
    from tests.listings.conftest import make_listing

    make_listing(alice, moderator=carol, title="Contract clause finder")  # bob holds none

    bobs = api().get("/v1/models", HTTP_AUTHORIZATION=f"Bearer {key_for(bob)}")
    mallorys = api().get("/v1/models", HTTP_AUTHORIZATION=f"Bearer {key_for(mallory)}")
    alices = api().get("/v1/models", HTTP_AUTHORIZATION=f"Bearer {key_for(alice)}")

    assert bobs.status_code == 200
    assert bobs.json()["object"] == "list"
    # the router first (any key with infer may call it), then what this key may call
    assert [m["id"] for m in bobs.json()["data"]] == ["niche/auto", triage.slug]
    assert bobs.json()["data"][1]["object"] == "model"
    assert bobs.json()["data"][0]["owned_by"] == "niche"
    assert [m["id"] for m in mallorys.json()["data"]] == ["niche/auto"]
    assert len(alices.json()["data"]) == 3  # the owner calls her own listings


def test_v1_models_retrieve_answers_only_for_a_callable_model(
    api, bob, mallory, triage, bob_licence
):
    bobs = api().get(f"/v1/models/{triage.slug}@1", HTTP_AUTHORIZATION=f"Bearer {key_for(bob)}")
    mallorys = api().get(
        f"/v1/models/{triage.slug}", HTTP_AUTHORIZATION=f"Bearer {key_for(mallory)}"
    )

    assert bobs.status_code == 200
    assert bobs.json()["id"] == triage.slug
    assert mallorys.status_code == 404
    assert mallorys.json()["error"]["code"] == "model_not_found"


def test_a_repeat_call_resolves_its_target_with_the_licence_check_alone(
    bob, bob_licence, triage, django_assert_num_queries
):
    # Given bob has called triage once (the version's adapter fields are now known:
    # a ModelVersion is immutable once written)
    model = gateway.ModelRef.parse(triage.slug)
    first = gateway.target_resolve(user=bob, model=model)
    # When he calls again, then the only query is the licence check
    with django_assert_num_queries(1):
        again = gateway.target_resolve(user=bob, model=model)
    assert again == first
    assert again.adapter.model_version_id == str(
        triage.versions.get(number=again.check.version_number).model_version_id
    )
