"""Schemathesis against Niche's own OpenAPI schema: every operation, every persona.

The schema comes from the running app (GET /api/schema/), requests go through the
in-process WSGI app against the test database and its fixture world. Each example draws
a persona (anonymous, forged credentials as generated from the security schemes,
alice's key of each scope, a full key of each other user, the suspended user's key,
alice's session) and, half the time, real path parameters (the
world's listing, dataset, job, version, offer, licence, key and review) in place of
generated ones, so handlers past the 404 run too; the schema has no OpenAPI links for
a stateful run, and these real ids stand in for them.

Checks: no 5xx, the status code is declared, the content type and the body match the
schema. The one tolerated 5xx: 503 `engine_unavailable` from the serving operations,
since no inference worker runs here (the schema declares it).

Examples per operation: FUZZ_EXAMPLES (default 8 in `make test`; `make reliability`
sets it higher for the deep run). FUZZ_SEED fixes the seed (default: derandomized).
"""

import os
import re

import hypothesis
import pytest
import schemathesis
import yaml
from django.core import signals
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections, transaction
from django.test import Client
from hypothesis import HealthCheck
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from marketplace.schema import LINKS
from tests.hardening.world import SCOPES, World

FUZZ_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "8"))
FUZZ_SEED = os.environ.get("FUZZ_SEED")

pytestmark = pytest.mark.django_db

APP = get_wsgi_application()
SCHEMA = schemathesis.openapi.from_wsgi("/api/schema/?format=json", APP)
SCHEMA.config.generation.update(allow_x00=False)
OPERATIONS = {
    op.label: op for op in (result.ok() for result in SCHEMA.get_all_operations())
}  # fmt: skip
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
OTHER_USERS = (
    "other_expert", "buyer_licensed", "buyer_unlicensed", "moderator", "admin", "suspended",
)  # fmt: skip
# Who calls: None (whatever credentials were generated: forged ones must be refused),
# "anonymous" (none at all), a key of the world, or "session:<user>".
CALLERS = (
    [None, "anonymous"]
    + [f"key_{scope}" for scope in SCOPES]
    + [f"{who}:full" for who in OTHER_USERS]
    + ["session:owner"]
)
SERVING = re.compile(r"(/predict|^POST /v1/)")


@pytest.fixture(scope="module", autouse=True)
def keep_the_test_connection():
    """The WSGI handler closes the database connection after each request, which would
    close the test's transaction; Django's test client unhooks the same signal handler."""
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    yield
    signals.request_started.connect(close_old_connections)
    signals.request_finished.connect(close_old_connections)


def real_path_parameters(world: World) -> dict[str, list]:
    return {
        "slug": [world.listing.slug, world.draft.slug, world.eve_listing.slug],
        "listing": [world.listing.slug, f"{world.listing.slug}@1"],
        "model": [world.listing.slug, world.eve_listing.slug],
        "dataset_id": [world.dataset_id, world.eve_dataset_id],
        "job_id": [world.job_id, world.eve_job_id],
        "version_id": [world.version_id, world.draft_version_id, world.eve_version_id],
        "offer_id": [world.offer_id],
        "licence_id": [world.licence_id],
        "key_id": [world.key_ids["key_read"], world.key_ids["other_expert:full"]],
        "review_id": [world.review_id],
        "file_id": [world.batch_file_id],
        "batch_id": [world.batch_id],
    }


def _headers(world: World, caller: str | None, case) -> dict:
    if caller is None:
        return {}  # generated credentials, if any, stay: they must be refused
    # Otherwise no generated bearer token: it would be tried first and refused.
    for name in [h for h in (case.headers or {}) if h.lower() == "authorization"]:
        del case.headers[name]
    if caller == "anonymous":
        return {}
    if caller.startswith("session:"):
        client = Client()  # a fresh session each time
        client.force_login(world.users[caller.split(":", 1)[1]])
        # As the case's cookies: the transport's cookie jar keeps earlier cases' cookies,
        # and a cookie set there wins over a Cookie header.
        case.cookies = {name: morsel.value for name, morsel in client.cookies.items()}
        return {}
    return {"Authorization": f"Bearer {world.keys[caller]}"}


@pytest.mark.parametrize("label", sorted(OPERATIONS))
def test_every_operation_as_every_persona(label, world):
    operation = OPERATIONS[label]
    real = real_path_parameters(world)
    names = [p.name for p in operation.path_parameters]
    statuses: list[int] = []

    @hypothesis.settings(
        max_examples=FUZZ_EXAMPLES,
        deadline=None,
        derandomize=FUZZ_SEED is None,
        database=None,
        suppress_health_check=list(HealthCheck),
        phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
    )
    @hypothesis.given(
        case=operation.as_strategy(),
        caller=st.sampled_from(CALLERS),
        use_real=st.booleans(),
        data=st.data(),
    )
    def run(case, caller, use_real, data):
        if use_real and names:
            for name in names:
                if name in real:
                    case.path_parameters[name] = data.draw(st.sampled_from(real[name]))
        headers = _headers(world, caller, case)
        response = case.call(headers=headers)
        statuses.append(response.status_code)
        if response.status_code == 503 and SERVING.search(label):
            assert response.json()["error"]["code"] == "engine_unavailable", response.text
            return
        case.validate_response(response, checks=CHECKS, headers=headers)

    if FUZZ_SEED is not None:
        run = hypothesis.seed(int(FUZZ_SEED))(run)
    run()
    assert statuses, f"{label}: no request was sent"


def test_the_schema_generates_without_warnings_and_validates(tmp_path):
    """drf-spectacular's own checks: no operationId collision, no guessed types, valid
    OpenAPI 3 (--validate); any warning fails."""
    from django.core.management import call_command

    call_command(
        "spectacular", "--file", str(tmp_path / "schema.yaml"), "--validate", "--fail-on-warn"
    )
    schema = yaml.safe_load((tmp_path / "schema.yaml").read_text())
    operations = [op for item in schema["paths"].values() for op in item.values()]
    assert len({op["operationId"] for op in operations}) == len(OPERATIONS)
    links = [link for op in operations for r in op["responses"].values()
             for link in r.get("links", {}).values()]  # fmt: skip
    assert len(links) == sum(len(targets) for targets in LINKS.values())


FUZZ_STATEFUL_EXAMPLES = int(os.environ.get("FUZZ_STATEFUL_EXAMPLES", "6"))
# Bodies that name the world's real objects, so a create succeeds and its links are walked.
REAL_BODIES = {
    "POST /api/v1/api_keys": lambda w: {"name": "stateful", "scopes": ["read"]},
    "POST /api/v1/billing/offers": lambda w: {
        "listing": w.listing.slug, "kind": "per_call", "currency": "usd", "unit_amount": 120,
    },
    "POST /api/v1/listings": lambda w: {
        "model_version": w.draft_version_id, "title": "Stateful", "summary": "s",
        "domain": "healthcare",
    },
    "POST /api/v1/fine_tuning/jobs": lambda w: {"training_file": w.dataset_id},
}  # fmt: skip


def test_stateful_runs_follow_the_schema_links(world):
    """Schemathesis' state machine over the schema's OpenAPI links (create -> read, update,
    delete the created object), as alice with her full key: same checks, no 5xx."""
    steps: list[str] = []

    class Stateful(SCHEMA.as_state_machine()):
        def setup(self):  # each scenario starts from the same world: a savepoint
            self.savepoint = transaction.savepoint()

        def teardown(self):
            transaction.savepoint_rollback(self.savepoint)

        def before_call(self, case):
            real = REAL_BODIES.get(case.operation.label)
            if real is not None and isinstance(case.body, dict):
                case.body.update(real(world))

        def get_call_kwargs(self, case):
            return {"headers": {"Authorization": f"Bearer {world.keys['owner:full']}"}}

        def validate_response(self, response, case, additional_checks=None, **kwargs):
            steps.append(f"{case.operation.label} {response.status_code}")
            if response.status_code == 503 and SERVING.search(case.operation.label):
                return
            case.validate_response(response, checks=CHECKS, transport_kwargs=kwargs)

    Stateful.run(
        settings=hypothesis.settings(
            max_examples=FUZZ_STATEFUL_EXAMPLES,
            stateful_step_count=6,
            deadline=None,
            derandomize=FUZZ_SEED is None,
            database=None,
            suppress_health_check=list(HealthCheck),
            # No shrinking: a replay meets another server clock, and Hypothesis would
            # call that flaky; the failing steps are printed as they ran.
            phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
        )
    )
    assert steps
    created = [s for s in steps if s.split()[-1] in ("201", "202")]
    assert created, f"no create succeeded, so no link was followed: {steps[:20]}"
    print(f"stateful: {len(steps)} steps, {len(created)} creates")
