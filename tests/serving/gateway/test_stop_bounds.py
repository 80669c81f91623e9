"""`stop` is bounded as OpenAI bounds it: at most 4 strings of at most 64 characters each.

A longer one is refused (422, the field named, in each API's error shape) before the call
costs anything: no ledger row, no rate-limit count, and nothing reaches Redis, where the
request would travel to a worker (a multi-MB stop string once made a multi-MB message, and
a worker held back every token of a stream until the text outgrew the longest stop).
"""

import pytest

from billing.models import OfferKind, UsageRecord
from serving import gateway
from serving.errors import InvalidInferenceInput
from tests.billing.conftest import make_active_licence
from tests.serving.gateway.conftest import key_for

MULTI_MB = "x" * (3 * 2**20)  # 3 MiB: under Django's 5 MiB body limit, so the gateway sees it


@pytest.fixture
def bob_drafts(bob, drafting):
    """bob holds a subscription to alice's generation listing."""
    make_active_licence(bob, drafting.offers.get(kind=OfferKind.SUBSCRIPTION), sandbox=True)
    return key_for(bob)


def redis_footprint(client) -> dict[bytes, int]:
    """Every key in this test run's Redis database and the bytes it holds."""
    return {key: client.memory_usage(key) or 0 for key in client.scan_iter(count=1000)}


def test_four_stop_strings_of_64_characters_are_allowed_and_one_more_character_is_not():
    allowed = gateway.generation_parameters({"stop": ["a" * 64, "b" * 64, "c" * 64, "d" * 64]})
    assert allowed.stop == ["a" * 64, "b" * 64, "c" * 64, "d" * 64]
    assert gateway.generation_parameters({"stop": "\n\n"}).stop == ["\n\n"]

    for stop, says in (
        (["a" * 65], "At most 64 characters per string."),
        (["\n", "a" * 64, "é" * 65], "At most 64 characters per string."),
        (["a", "b", "c", "d", "e"], "A string or up to 4 strings."),
        ([""], "A string or up to 4 strings."),
        ([7], "A string or up to 4 strings."),
    ):
        with pytest.raises(InvalidInferenceInput) as refused:
            gateway.generation_parameters({"stop": stop})
        assert refused.value.fields == {"parameters.stop": [says]}


def test_a_long_stop_string_is_422_on_predict_naming_the_field(api, bob_drafts, drafting):
    response = api().post(
        f"/api/v1/models/{drafting.slug}/predict",
        {"inputs": "Draft a clause", "parameters": {"stop": ["y" * 65]}},
        format="json",
        HTTP_AUTHORIZATION=f"Bearer {bob_drafts}",
    )

    assert response.status_code == 422
    assert response.json() == {
        "error": {
            "code": "invalid_input",
            "message": "The generation parameters are not valid.",
            "fields": {"parameters.stop": ["At most 64 characters per string."]},
        }
    }
    assert UsageRecord.objects.count() == 0


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
@pytest.mark.parametrize("stop", [["y" * 65], ["a", "b", "c", "d", "e"]], ids=["long", "five"])
def test_a_stop_past_the_bounds_is_422_in_openais_shape_with_param_stop(
    api, bob_drafts, drafting, path, stop
):
    body = {"model": drafting.slug, "max_tokens": 4, "stop": stop}
    body |= {"prompt": "Draft"} if path == "/v1/completions" else {
        "messages": [{"role": "user", "content": "Draft"}]
    }  # fmt: skip

    response = api().post(path, body, format="json", HTTP_AUTHORIZATION=f"Bearer {bob_drafts}")

    assert response.status_code == 422
    error = response.json()["error"]
    assert (error["type"], error["param"], error["code"]) == (
        "invalid_request_error", "stop", "invalid_input",
    )  # fmt: skip
    assert UsageRecord.objects.count() == 0


def test_a_multi_megabyte_stop_string_never_reaches_redis(api, bob_drafts, drafting, real_redis):
    # Given bob's key and the Redis that carries calls to the workers (and counts rates)
    before = redis_footprint(real_redis)
    calls = [
        ("/api/v1/models/{slug}/predict",
         {"inputs": "Draft", "parameters": {"stop": MULTI_MB}}),
        ("/v1/completions", {"prompt": "Draft", "stop": MULTI_MB}),
        ("/v1/completions", {"prompt": "Draft", "stop": [MULTI_MB], "stream": True}),
        ("/v1/chat/completions",
         {"messages": [{"role": "user", "content": "Draft"}], "stop": MULTI_MB, "stream": True}),
    ]  # fmt: skip

    # When he sends a 3 MiB stop string through every API, streamed or not
    for path, body in calls:
        response = api().post(
            path.format(slug=drafting.slug),
            {"model": drafting.slug, **body},
            format="json",
            HTTP_AUTHORIZATION=f"Bearer {bob_drafts}",
        )
        # Then each is refused, naming the field, and the answer does not echo it back
        assert response.status_code == 422, response.content[:300]
        assert "stop" in str(response.json()["error"])
        assert len(response.content) < 1000

    # And nothing was written to Redis: no request, no stream, no rate-limit count
    after = redis_footprint(real_redis)
    # nothing new (a key an earlier test left, such as a 60 s throttle, may expire meanwhile)
    assert set(after) <= set(before)
    assert all(after[key] - before[key] < 64 * 1024 for key in after)
    assert UsageRecord.objects.count() == 0
