"""The authorization matrix (tests/hardening/authz_matrix.py), called for real.

1. Every URL pattern the resolver knows has a row (API methods: one per declared method),
   and no row names a route that is gone: a new endpoint cannot ship unclassified.
2. Each cell is requested against Postgres and the fixture world (tests/hardening/world.py),
   inside a savepoint rolled back after it, and must answer the status in the table.
3. No body leaks another user's private strings (emails, key prefixes, dataset names, job
   and licence ids, draft titles: each carries a marker) nor any row of a sealed split.
"""

import json
import re

import pytest
from django.contrib.admin import AdminSite, ModelAdmin
from django.contrib.admin.sites import site as admin_site
from django.db import transaction
from django.test import Client
from django.urls import get_resolver

from marketplace.api import BaseApi
from tests.accounts.test_scope_declarations import _walk
from tests.hardening.authz_matrix import (
    ADMIN_PUBLIC_ROUTES,
    BODIES,
    COLUMNS,
    MATRIX,
    MAY_SEE,
    ROUTE_VALUES,
    UNIFORM,
)
from tests.hardening.world import World

pytestmark = pytest.mark.django_db

HUMANS = {
    "owner", "other_expert", "buyer_licensed", "buyer_unlicensed", "moderator", "admin",
    "suspended",
}  # fmt: skip
KEY_OWNER = "owner"  # the key_* personas are alice's keys, one scope each


def resolver_routes() -> dict[str, object]:
    return {route: callback for route, callback in _walk(get_resolver().url_patterns)}


def _route_methods(route: str, callback) -> set[str]:
    view_class = getattr(callback, "view_class", None)
    if view_class is not None and issubclass(view_class, BaseApi):
        return {m for m in view_class.required_scopes if m not in ("HEAD", "OPTIONS")}
    return set()


def test_every_endpoint_has_a_row_and_every_row_an_endpoint():
    routes = resolver_routes()
    rows = {key.split(" ", 1)[1] for key in MATRIX}
    unclassified = []
    for route, callback in routes.items():
        if route.startswith("admin/"):
            # The admin site: each view sits behind admin_view (staff only), bar its own
            # login/logout pages and the static catalogue; rows below sample it for real.
            wrapped_self = getattr(getattr(callback, "__wrapped__", None), "__self__", None)
            guarded = (
                hasattr(callback, "admin_site")
                or hasattr(callback, "model_admin")
                or isinstance(wrapped_self, ModelAdmin | AdminSite)
            )
            if not guarded and route not in ADMIN_PUBLIC_ROUTES:
                unclassified.append(f"{route} (admin view without admin_view)")
            continue
        if route not in rows:
            unclassified.append(route)
        for method in _route_methods(route, callback):
            if f"{method} {route}" not in MATRIX:
                unclassified.append(f"{method} {route}")
    assert unclassified == [], "endpoints without a row in tests/hardening/authz_matrix.py"
    stale = sorted(r for r in rows if r not in routes and not r.startswith("admin/"))
    assert stale == [], "rows for routes that no longer exist"


def test_every_row_has_a_cell_for_each_persona():
    assert {len(cells) for cells in MATRIX.values()} == {len(COLUMNS)}
    for key, columns in UNIFORM.items():
        assert len(set(MATRIX[key])) == 1 and set(columns) <= set(COLUMNS), key


def test_the_leak_check_sees_what_it_looks_for(world):
    """Positive controls: the planted markers do show where they belong, so their
    absence elsewhere means something; the sealed markers are the sealed file's rows."""
    from training_worker import artifacts
    from training_worker.models import Dataset

    dataset = Dataset.objects.get(pk=world.dataset_id)
    assert dataset.name in _text(call("owner", "GET", "api/v1/datasets", world))
    keys_page = _text(call("owner", "GET", "api/v1/api_keys", world))
    assert all(m in keys_page for m in world.private["owner"][1:6])  # her 5 key prefixes
    admin_page = Client(HTTP_HOST="localhost")
    admin_page.force_login(world.users["admin"])
    users_page = admin_page.get("/admin/accounts/user/").content.decode()
    assert world.users["buyer_licensed"].email in users_page
    sealed = json.dumps(artifacts.read_jsonl(dataset.sealed_path))
    train = json.dumps(artifacts.read_jsonl(dataset.train_path))
    assert len(world.sealed_markers) >= 10
    before = owned_state(world)
    with transaction.atomic():
        deleted = call("owner", "DELETE", "api/v1/datasets/<uuid:dataset_id>", world)
        assert deleted.status_code == 204
        assert owned_state(world) != before  # the write check sees a real change
        transaction.set_rollback(True)
    split_markers = [m for m in world.sealed_markers if m.startswith("zqrow")]
    assert all(m in sealed and m not in train for m in split_markers)
    # the rest are the rows of the world's sealed benchmark set
    from evidence.benchmarks import benchmark_rows

    benchmark = json.dumps(benchmark_rows(world.benchmark))
    bench_markers = [m for m in world.sealed_markers if m not in split_markers]
    assert len(bench_markers) >= 10 and all(m in benchmark for m in bench_markers)


def concrete_path(route: str, world: World) -> str:
    path = route
    for name, value in ROUTE_VALUES(world).items():
        path = re.sub(rf"<(?:\w+:)?{name}>", str(value), path)
    path = path.replace("^(api|v1)/", "api/v1/no-such-endpoint")
    assert "<" not in path, f"no value for a parameter of {route}"
    return "/" + path


def client_for(persona: str, world: World) -> tuple[Client, dict, set[str]]:
    """The client, its extra headers, and whose private strings it may see."""
    client = Client(HTTP_HOST="localhost")
    if persona == "anonymous":
        return client, {}, set()
    who = KEY_OWNER if persona.startswith("key_") else persona
    return client, {}, {who}


def call(persona: str, method: str, route: str, world: World):
    client, headers, _ = client_for(persona, world)
    path = concrete_path(route, world)
    api = path.startswith(("/api/", "/v1/"))
    if persona.startswith("key_"):
        headers["HTTP_AUTHORIZATION"] = f"Bearer {world.keys[persona]}"
    elif persona in HUMANS:
        if api:
            headers["HTTP_AUTHORIZATION"] = f"Bearer {world.keys[f'{persona}:full']}"
        else:
            client.force_login(world.users[persona])
    body = BODIES.get(f"{method} {route}")
    body = body(world) if callable(body) else body
    kwargs = dict(headers)
    if method in ("POST", "PATCH", "PUT", "DELETE") and api:
        kwargs["content_type"] = "application/json"
        data = json.dumps(body or {})
    else:
        data = body or {}
    return getattr(client, method.lower())(path, data, **kwargs)


def _text(response) -> str:
    if getattr(response, "streaming", False):
        return b"".join(response.streaming_content).decode("utf-8", "replace")
    return response.content.decode("utf-8", "replace")


def owned_state(world: World) -> tuple:
    """What only alice (or bob, for his licence) may change: a refused write, whatever
    status it answers (a portal form redirects either way), must leave all of it as is."""
    from accounts.models import ApiKey
    from billing.models import Licence, Offer
    from listings.models import Listing, Review
    from serving.models import Batch
    from training_worker.models import Dataset, FineTuningJob

    return (
        ApiKey.objects.filter(user=world.users["owner"], revoked_at__isnull=True).count(),
        Dataset.objects.filter(pk=world.dataset_id, deleted_at__isnull=True).exists(),
        FineTuningJob.objects.values_list("status").get(pk=world.job_id),
        Listing.objects.values_list("status", "summary", "proposed_version").get(
            pk=world.listing.pk
        ),
        sorted(Offer.objects.filter(listing=world.listing).values_list("status", "unit_amount")),
        Review.objects.values_list("reply").get(pk=world.review_id),
        Licence.objects.values_list("status").get(pk=world.licence_id),
        Batch.objects.values_list("status").get(pk=world.batch_id),
    )


# Who may change owned_state: alice (session or keys) and bob, whose licence it is.
MAY_WRITE = {"owner", "key_read", "key_train", "key_infer", "key_keys", "buyer_licensed"}


@pytest.mark.parametrize("key", sorted(MATRIX))
def test_cell(key, world):
    method, route = key.split(" ", 1)
    wrong, leaks = [], []
    check_writes = method != "GET"
    before = owned_state(world) if check_writes else None
    for persona, expected in zip(COLUMNS, MATRIX[key], strict=True):
        if key in UNIFORM and persona not in UNIFORM[key]:
            continue
        with transaction.atomic():
            response = call(persona, method, route, world)
            text = _text(response)
            if check_writes and persona not in MAY_WRITE and owned_state(world) != before:
                wrong.append(f"{persona}: changed what is not theirs")
            transaction.set_rollback(True)
        if response.status_code != expected:
            wrong.append(f"{persona}: {response.status_code} (table says {expected})")
        may_see = client_for(persona, world)[2] | MAY_SEE.get((key, persona), set())
        for mark, owner in world.markers_not_of(*may_see).items():
            if mark in text:
                leaks.append(f"{persona} sees {owner}'s {mark}")
        leaks += [f"{persona} sees sealed row {m}" for m in world.sealed_markers if m in text]
    assert wrong == [] and leaks == [], f"{key}: {wrong} {leaks}"


def test_admin_site_pages_for_each_persona(world):
    """Index and every registered model's list: staff only; non-staff are sent to log in."""
    paths = (
        ["/admin/"]
        + [
            f"/admin/{model._meta.app_label}/{model._meta.model_name}/"
            for model in admin_site._registry
        ]
        + [f"/admin/accounts/user/{world.users['owner'].pk}/password/"]
    )
    for persona in COLUMNS:
        client, _, _ = client_for(persona, world)
        if persona in HUMANS:
            client.force_login(world.users[persona])
        for path in paths:
            status = client.get(path).status_code
            if persona == "admin":
                assert status == 200, (persona, path, status)
            elif persona == "moderator":
                assert status in (200, 403), (persona, path, status)
            else:
                assert status == 302, (persona, path, status)
