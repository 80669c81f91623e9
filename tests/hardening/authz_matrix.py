# ruff: noqa: E501  (a table: one row per endpoint, one column per persona)
"""THE authorization matrix: every endpoint x persona -> the status it must answer.

Read a row left to right. Personas (tests/hardening/world.py):
  anon  anonymous                      own   alice, the owner expert (her objects)
  oth   eve, another expert            lic   bob, buyer holding a licence on alice's listing
  unl   dave, buyer without a licence  mod   carol, moderator (staff, moderators group)
  adm   root, administrator            sus   sam, suspended (is_active=False)
  r/t/i/k  alice's API keys with only the read / train / infer / keys scope
On /api/ and /v1/ the people call with their own full-scope key (read+train+infer+keys);
on portal pages they are signed in (a session) and the key columns send only their key,
which a page does not accept (so they read like anonymous).

Path parameters are alice's objects (her published listing, dataset, job, version, offer,
key) and bob's licence and review: ROUTE_VALUES. Bodies are valid where that matters
(BODIES); otherwise `{}`, where 422 means "allowed in, then the input was checked".
A 404 for someone else's object is deliberate: it does not reveal that the object exists.
tests/hardening/test_authorization_matrix.py fails when a route has no row here.
"""

COLUMNS = (
    "anonymous", "owner", "other_expert", "buyer_licensed", "buyer_unlicensed", "moderator",
    "admin", "suspended", "key_read", "key_train", "key_infer", "key_keys",
)  # fmt: skip

# The admin site's own pages open to all (its login and logout, the JS catalogue).
ADMIN_PUBLIC_ROUTES = {"admin/login/", "admin/logout/", "admin/jsi18n/"}


def ROUTE_VALUES(world) -> dict:
    return {
        "slug": world.listing.slug,
        "listing": world.listing.slug,
        "model": world.listing.slug,
        "dataset_id": world.dataset_id,
        "job_id": world.job_id,
        "version_id": world.version_id,
        "offer_id": world.offer_id,
        "licence_id": world.licence_id,
        "key_id": world.key_ids["key_read"],
        "review_id": world.review_id,
        "file_id": world.batch_file_id,
        "batch_id": world.batch_id,
        "evaluation_id": world.evaluation_id,
        "benchmark": world.benchmark.slug,
        "task": world.benchmark.task,
        # alice's emailed link (her address is verified: the link has nothing left to do)
        "token": verification_token(world),
    }


def verification_token(world) -> str:
    from accounts.services import email_verification_token

    return email_verification_token(user=world.users["owner"])


BODIES = {
    "POST api/v1/api_keys": {"name": "new", "scopes": ["read"]},
    "PATCH api/v1/billing/licenses/<uuid:licence_id>": {"monthly_spend_cap": 5000},
    "POST api/v1/me/verify-email": lambda w: {"token": verification_token(w)},
    "PATCH api/v1/listings/<slug:slug>": {"summary": "A new summary."},
    "POST api/v1/listings/<slug:slug>/composable": {"composable": True},
    "POST api/v1/gardens/<slug:slug>/members/restore": lambda w: {"listing": w.listing.slug},
    "POST api/v1/listings/<slug:slug>/versions": lambda w: {"model_version": w.draft_version_id},
    "POST api/v1/listings/<slug:slug>/reviews": {"rating": 4, "text": "Fine."},
    "POST api/v1/listings/<slug:slug>/reviews/<int:review_id>/reply": {"text": "Thanks."},
    "POST api/v1/listings/<slug:slug>/reports": {"reason": "spam", "text": "Looks off."},
    "POST api/v1/billing/offers": lambda w: {
        "listing": w.listing.slug,
        "kind": "per_call",
        "currency": "usd",
        "unit_amount": 150,
    },
    "PATCH api/v1/billing/offers/<uuid:offer_id>": {"unit_amount": 5000},
    "POST api/v1/billing/checkout": lambda w: {"offer_id": w.offer_id},
    # Invalid inputs: the gateway checks the licence first, and nothing reaches an engine.
    "POST api/v1/models/<str:listing>/predict": {"inputs": 5},
    "POST api/v1/models/niche/auto/predict": {"inputs": 5},
    "POST api/v1/route": {"task": "text-classification", "inputs": 5},
    # Valid bodies for a classification listing: the licence is checked, then the task.
    "POST v1/chat/completions": lambda w: {
        "model": w.listing.slug,
        "messages": [{"role": "user", "content": "Hello"}],
    },
    "POST v1/completions": lambda w: {"model": w.listing.slug, "prompt": "Hello"},
    # alice's input file: another user's is 404 (it does not reveal that it exists).
    "POST api/v1/listings/<slug:slug>/private-evaluations": {"free": False},
    "POST v1/batches": lambda w: {
        "input_file_id": w.batch_file_id,
        "endpoint": "/api/v1/models/{listing}/predict",
        "completion_window": "24h",
    },
    "POST dashboard/api-keys/": {"name": "new", "scopes": ["read"]},
    "POST catalogue/<slug:slug>/review/": {"rating": "4", "text": "Fine."},
    "POST catalogue/<slug:slug>/report/": {"reason": "spam", "text": "Looks off."},
    "POST catalogue/<slug:slug>/buy/": lambda w: {"offer": w.offer_id},
}

# Rows whose status does not depend on the caller, and whose every call is slow (healthz
# waits on the broker and the workers): only these columns are called.
UNIFORM = {"GET healthz": ("anonymous", "admin", "key_read")}

# (row, persona) -> whose private strings that cell may show besides the persona's own.
MAY_SEE: dict[tuple[str, str], set[str]] = {}

# fmt: off
MATRIX: dict[str, tuple[int, ...]] = {
    #                                                                anon own  oth  lic  unl  mod  adm  sus  r    t    i    k
    # --- API (/api/v1/)
    "GET api/v1/me":                                                 (401, 200, 200, 200, 200, 200, 200, 401, 200, 403, 403, 403),
    "POST api/v1/me/verify-email":                                   (409, 409, 409, 409, 409, 409, 409, 401, 409, 409, 409, 409),
    "POST api/v1/me/verify-email/resend":                            (401, 409, 409, 409, 409, 409, 409, 401, 409, 403, 403, 403),
    "GET api/v1/api_keys":                                           (401, 200, 200, 200, 200, 200, 200, 401, 200, 403, 403, 403),
    "POST api/v1/api_keys":                                          (401, 201, 201, 201, 201, 201, 201, 401, 403, 403, 403, 403),
    "DELETE api/v1/api_keys/<uuid:key_id>":                          (401, 200, 404, 404, 404, 404, 404, 401, 403, 403, 403, 403),
    "GET api/v1/base_models":                                        (401, 200, 200, 200, 200, 200, 200, 401, 200, 403, 403, 403),
    "GET api/v1/datasets":                                           (401, 200, 200, 200, 200, 200, 200, 401, 200, 403, 403, 403),
    "POST api/v1/datasets":                                          (401, 415, 415, 415, 415, 415, 415, 401, 403, 415, 403, 403),
    "DELETE api/v1/datasets/<uuid:dataset_id>":                      (401, 204, 404, 404, 404, 404, 404, 401, 403, 204, 403, 403),
    "GET api/v1/datasets/<uuid:dataset_id>":                         (401, 200, 404, 404, 404, 404, 404, 401, 200, 403, 403, 403),
    "GET api/v1/fine_tuning/jobs":                                   (401, 200, 200, 200, 200, 200, 200, 401, 200, 403, 403, 403),
    "POST api/v1/fine_tuning/jobs":                                  (401, 422, 422, 422, 422, 422, 422, 401, 403, 422, 403, 403),
    "GET api/v1/fine_tuning/jobs/<uuid:job_id>":                     (401, 200, 404, 404, 404, 404, 404, 401, 200, 403, 403, 403),
    "POST api/v1/fine_tuning/jobs/<uuid:job_id>/cancel":             (401, 409, 404, 404, 404, 404, 404, 401, 403, 409, 403, 403),
    "GET api/v1/fine_tuning/jobs/<uuid:job_id>/events":              (401, 200, 404, 404, 404, 404, 404, 401, 200, 403, 403, 403),
    "GET api/v1/fine_tuning/jobs/<uuid:job_id>/checkpoints":         (401, 200, 404, 404, 404, 404, 404, 401, 200, 403, 403, 403),
    "GET api/v1/models":                                             (401, 200, 200, 200, 200, 200, 200, 401, 200, 403, 403, 403),
    "GET api/v1/models/<uuid:version_id>":                           (401, 200, 404, 404, 404, 404, 404, 401, 200, 403, 403, 403),
    "GET api/v1/models/<uuid:version_id>/evaluation":                (401, 200, 404, 404, 404, 404, 404, 401, 200, 403, 403, 403),
    "GET api/v1/models/<uuid:version_id>/card":                      (401, 200, 404, 404, 404, 404, 404, 401, 200, 403, 403, 403),
    "GET api/v1/listings":                                           (200, 200, 200, 200, 200, 200, 200, 401, 200, 200, 200, 200),
    "POST api/v1/listings":                                          (401, 422, 422, 422, 422, 422, 422, 401, 403, 422, 403, 403),
    "GET api/v1/listings/mine":                                      (401, 200, 200, 200, 200, 200, 200, 401, 200, 403, 403, 403),
    "GET api/v1/listings/<slug:slug>":                               (200, 200, 200, 200, 200, 200, 200, 401, 200, 200, 200, 200),
    "PATCH api/v1/listings/<slug:slug>":                             (401, 409, 404, 404, 404, 404, 404, 401, 403, 409, 403, 403),
    "POST api/v1/listings/<slug:slug>/submit":                       (401, 409, 404, 404, 404, 404, 404, 401, 403, 409, 403, 403),
    "POST api/v1/listings/<slug:slug>/delist":                       (401, 200, 404, 404, 404, 404, 404, 401, 403, 200, 403, 403),
    # Gardens: any expert curates (an empty body is 422 after the scope); only a listing's
    # own expert makes it composable.
    "POST api/v1/gardens":                                           (401, 422, 422, 422, 422, 422, 422, 401, 403, 422, 403, 403),
    "POST api/v1/listings/<slug:slug>/composable":                   (401, 200, 404, 404, 404, 404, 404, 401, 403, 200, 403, 403),
    # alice's listing is no garden: the curator's own is checked, others see nothing (404)
    "POST api/v1/gardens/<slug:slug>/members/restore":               (401, 404, 404, 404, 404, 404, 404, 401, 403, 404, 403, 403),
    "POST api/v1/listings/<slug:slug>/versions":                     (401, 200, 404, 404, 404, 404, 404, 401, 403, 200, 403, 403),
    "GET api/v1/listings/<slug:slug>/reviews":                       (200, 200, 200, 200, 200, 200, 200, 401, 200, 200, 200, 200),
    "POST api/v1/listings/<slug:slug>/reviews":                      (401, 403, 403, 200, 403, 403, 403, 401, 403, 403, 403, 403),
    "POST api/v1/listings/<slug:slug>/reviews/<int:review_id>/reply":(401, 200, 404, 404, 404, 404, 404, 401, 403, 200, 403, 403),
    "POST api/v1/listings/<slug:slug>/reports":                      (401, 201, 201, 201, 201, 201, 201, 401, 201, 403, 403, 403),
    "GET api/v1/billing/offers":                                     (401, 200, 200, 200, 200, 200, 200, 401, 200, 403, 403, 403),
    "POST api/v1/billing/offers":                                    (401, 201, 403, 403, 403, 403, 403, 401, 403, 201, 403, 403),
    "DELETE api/v1/billing/offers/<uuid:offer_id>":                  (401, 200, 404, 404, 404, 404, 404, 401, 403, 200, 403, 403),
    "GET api/v1/billing/offers/<uuid:offer_id>":                     (401, 200, 404, 404, 404, 404, 404, 401, 200, 403, 403, 403),
    "PATCH api/v1/billing/offers/<uuid:offer_id>":                   (401, 200, 404, 404, 404, 404, 404, 401, 403, 200, 403, 403),
    "GET api/v1/billing/licenses":                                   (401, 200, 200, 200, 200, 200, 200, 401, 200, 403, 403, 403),
    "GET api/v1/billing/licenses/<uuid:licence_id>":                 (401, 404, 404, 200, 404, 404, 404, 401, 404, 403, 403, 403),
    "PATCH api/v1/billing/licenses/<uuid:licence_id>":               (401, 404, 404, 409, 404, 404, 404, 401, 403, 403, 404, 403),
    "POST api/v1/billing/licenses/<uuid:licence_id>/cancel":         (401, 404, 404, 200, 404, 404, 404, 401, 403, 403, 404, 403),
    "POST api/v1/billing/licenses/<uuid:licence_id>/resume":         (401, 404, 404, 409, 404, 404, 404, 401, 403, 403, 404, 403),
    "GET api/v1/billing/usage":                                      (401, 200, 200, 200, 200, 200, 200, 401, 200, 403, 403, 403),
    "GET api/v1/billing/earnings":                                   (401, 200, 200, 200, 200, 200, 200, 401, 200, 403, 403, 403),
    "GET api/v1/listings/<slug:slug>/offers":                        (200, 200, 200, 200, 200, 200, 200, 401, 200, 200, 200, 200),
    "POST api/v1/billing/checkout":                                  (401, 409, 201, 409, 201, 201, 201, 401, 403, 403, 409, 403),
    "GET api/v1/billing/connect":                                    (401, 200, 200, 200, 200, 200, 200, 401, 200, 403, 403, 403),
    "POST api/v1/billing/connect/onboard":                           (401, 201, 201, 403, 403, 403, 403, 401, 403, 201, 403, 403),
    "POST api/v1/billing/stripe/webhook":                            (400, 400, 400, 400, 400, 400, 400, 400, 400, 400, 400, 400),
    # Export: a stranger gets what GET api/v1/models/<id> answers (404); a licensee of its listing, 403.
    "GET api/v1/models/<uuid:version_id>/export":                    (401, 409, 404, 403, 404, 404, 404, 401, 409, 403, 403, 403),
    "POST api/v1/models/<str:listing>/predict":                      (401, 422, 403, 422, 403, 403, 403, 401, 403, 403, 422, 403),
    # The router: anyone with the infer scope may call niche/auto (the generalist answers
    # when no specialist they may call fits); invalid inputs are refused before any routing.
    "POST api/v1/models/niche/auto/predict":                         (401, 422, 422, 422, 422, 422, 422, 401, 403, 403, 422, 403),
    "POST api/v1/route":                                             (401, 422, 422, 422, 422, 422, 422, 401, 403, 403, 422, 403),
    # Leaderboards: public, as the catalogue is (a suspended account's key still fails
    # authentication); the world's benchmark set ranks alice's listing. Its rows are in the
    # world's sealed markers, which no cell may show.
    "GET api/v1/leaderboards":                                       (200, 200, 200, 200, 200, 200, 200, 401, 200, 200, 200, 200),
    "GET api/v1/leaderboards/<slug:benchmark>":                      (200, 200, 200, 200, 200, 200, 200, 401, 200, 200, 200, 200),
    # Compare: public (a suspended account's key still fails authentication); the world has
    # one published listing, so the call names none: 422 for all. A caller's own private
    # evaluations (read scope) and never another's: tests/evidence/test_compare.py.
    "GET api/v1/compare":                                            (422, 422, 422, 422, 422, 422, 422, 401, 422, 422, 422, 422),
    # Private evaluations (infer scope): bob's is his alone; alice, whose listing it
    # scored, gets 404 like everyone else. An empty POST is 422 after the scope.
    "GET api/v1/evaluations":                                        (401, 200, 200, 200, 200, 200, 200, 401, 403, 403, 200, 403),
    "POST api/v1/evaluations":                                       (401, 422, 422, 422, 422, 422, 422, 401, 403, 403, 422, 403),
    "GET api/v1/evaluations/<str:evaluation_id>":                    (401, 404, 404, 200, 404, 404, 404, 401, 403, 403, 404, 403),
    "DELETE api/v1/evaluations/<str:evaluation_id>":                 (401, 404, 404, 204, 404, 404, 404, 401, 403, 403, 404, 403),
    "POST api/v1/evaluations/<str:evaluation_id>/rerun":             (401, 404, 404, 409, 404, 404, 404, 401, 403, 403, 404, 403),
    "DELETE api/v1/evaluations/<str:evaluation_id>/rows":            (401, 404, 404, 204, 404, 404, 404, 401, 403, 403, 404, 403),
    # The listing's expert reads the count only, and turns free evaluation off or on.
    "GET api/v1/listings/<slug:slug>/private-evaluations":           (401, 200, 404, 404, 404, 404, 404, 401, 200, 403, 403, 403),
    "POST api/v1/listings/<slug:slug>/private-evaluations":          (401, 200, 404, 404, 404, 404, 404, 401, 403, 200, 403, 403),
    # --- OpenAI-compatible API (/v1/)
    "POST v1/chat/completions":                                      (401, 422, 403, 422, 403, 403, 403, 401, 403, 403, 422, 403),
    "POST v1/completions":                                           (401, 422, 403, 422, 403, 403, 403, 401, 403, 403, 422, 403),
    "GET v1/models":                                                 (401, 200, 200, 200, 200, 200, 200, 401, 403, 403, 200, 403),
    "GET v1/models/<str:model>":                                     (401, 200, 404, 200, 404, 404, 404, 401, 403, 403, 200, 403),
    # Batch inference: the infer scope; only the owner sees her files and batches.
    "GET v1/files":                                                  (401, 200, 200, 200, 200, 200, 200, 401, 403, 403, 200, 403),
    "POST v1/files":                                                 (401, 415, 415, 415, 415, 415, 415, 401, 403, 403, 415, 403),
    "GET v1/files/<str:file_id>":                                    (401, 200, 404, 404, 404, 404, 404, 401, 403, 403, 200, 403),
    "GET v1/files/<str:file_id>/content":                            (401, 200, 404, 404, 404, 404, 404, 401, 403, 403, 200, 403),
    "GET v1/batches":                                                (401, 200, 200, 200, 200, 200, 200, 401, 403, 403, 200, 403),
    "POST v1/batches":                                               (401, 200, 404, 404, 404, 404, 404, 401, 403, 403, 200, 403),
    "GET v1/batches/<str:batch_id>":                                 (401, 200, 404, 404, 404, 404, 404, 401, 403, 403, 200, 403),
    "POST v1/batches/<str:batch_id>/cancel":                         (401, 200, 404, 404, 404, 404, 404, 401, 403, 403, 200, 403),
    # --- Service endpoints
    "GET healthz":                                                   (503, 503, 503, 503, 503, 503, 503, 503, 503, 503, 503, 503),
    "GET metrics":                                                   (404, 404, 404, 404, 404, 404, 404, 404, 404, 404, 404, 404),
    "GET api/schema/":                                               (200, 200, 200, 200, 200, 200, 200, 401, 200, 200, 200, 200),
    "GET api/docs/":                                                 (200, 200, 200, 200, 200, 200, 200, 401, 200, 200, 200, 200),
    # --- OpenAI-compatible API (/v1/)
    "GET v1/":                                                       (404, 404, 404, 404, 404, 404, 404, 404, 404, 404, 404, 404),
    # --- Service endpoints
    "GET ^(api|v1)/":                                                (404, 404, 404, 404, 404, 404, 404, 404, 404, 404, 404, 404),
    "POST ^(api|v1)/":                                               (404, 404, 404, 404, 404, 404, 404, 404, 404, 404, 404, 404),
    # --- Portal and service pages
    "GET ":                                                          (200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200),
    "GET .well-known/niche-signing-key":                             (200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200),
    "GET signup/":                                                   (200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200),
    "POST signup/":                                                  (200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200),
    "GET verify-email/<str:token>/":                                 (200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200),
    "POST verify-email/<str:token>/":                                (302, 302, 302, 302, 302, 302, 302, 302, 302, 302, 302, 302),
    "GET login/":                                                    (200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200),
    "POST login/":                                                   (200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200),
    "POST logout/":                                                  (302, 302, 302, 302, 302, 302, 302, 302, 302, 302, 302, 302),
    "GET password/":                                                 (302, 200, 200, 200, 200, 200, 200, 302, 302, 302, 302, 302),
    "POST password/":                                                (302, 200, 200, 200, 200, 200, 200, 302, 302, 302, 302, 302),
    "GET password/done/":                                            (302, 200, 200, 200, 200, 200, 200, 302, 302, 302, 302, 302),
    "GET dashboard/":                                                (302, 200, 200, 200, 200, 200, 200, 302, 302, 302, 302, 302),
    "POST dashboard/verify-email/":                                  (302, 302, 302, 302, 302, 302, 302, 302, 302, 302, 302, 302),
    "POST dashboard/api-keys/":                                      (302, 200, 200, 200, 200, 200, 200, 302, 302, 302, 302, 302),
    "POST dashboard/api-keys/<uuid:key_id>/revoke/":                 (302, 302, 302, 302, 302, 302, 302, 302, 302, 302, 302, 302),
    "GET studio/":                                                   (302, 200, 200, 200, 200, 200, 200, 302, 302, 302, 302, 302),
    "POST studio/datasets/":                                         (302, 302, 302, 302, 302, 302, 302, 302, 302, 302, 302, 302),
    "GET studio/datasets/<uuid:dataset_id>/":                        (302, 200, 404, 404, 404, 404, 404, 302, 302, 302, 302, 302),
    "POST studio/jobs/":                                             (302, 422, 422, 422, 422, 422, 422, 302, 302, 302, 302, 302),
    "GET studio/jobs/<uuid:job_id>/":                                (302, 200, 404, 404, 404, 404, 404, 302, 302, 302, 302, 302),
    "POST studio/jobs/<uuid:job_id>/cancel/":                        (302, 302, 302, 302, 302, 302, 302, 302, 302, 302, 302, 302),
    "GET studio/models/<uuid:version_id>/":                          (302, 200, 404, 404, 404, 404, 404, 302, 302, 302, 302, 302),
    "GET studio/models/<uuid:version_id>/list/":                     (302, 200, 404, 404, 404, 404, 404, 302, 302, 302, 302, 302),
    "POST studio/models/<uuid:version_id>/list/":                    (302, 200, 404, 404, 404, 404, 404, 302, 302, 302, 302, 302),
    "GET catalogue/":                                                (200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200),
    "GET leaderboards/":                                             (200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200),
    "GET leaderboards/<str:task>/<slug:benchmark>/":                 (200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200),
    "GET compare/":                                                  (200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200),
    "GET evaluations/":                                              (302, 200, 200, 200, 200, 200, 200, 302, 302, 302, 302, 302),
    "POST evaluations/":                                             (302, 422, 422, 422, 422, 422, 422, 302, 302, 302, 302, 302),
    "GET evaluations/<str:evaluation_id>/":                          (302, 404, 404, 200, 404, 404, 404, 302, 302, 302, 302, 302),
    "POST evaluations/<str:evaluation_id>/delete/":                  (302, 404, 404, 302, 404, 404, 404, 302, 302, 302, 302, 302),
    "POST evaluations/<str:evaluation_id>/rows/delete/":             (302, 404, 404, 302, 404, 404, 404, 302, 302, 302, 302, 302),
    "POST evaluations/<str:evaluation_id>/rerun/":                   (302, 404, 404, 302, 404, 404, 404, 302, 302, 302, 302, 302),
    "POST catalogue/<slug:slug>/private-evaluations/":               (302, 302, 404, 404, 404, 404, 404, 302, 302, 302, 302, 302),
    # Curating a garden: experts only (an empty form is shown again with its error).
    "GET gardens/new/":                                              (302, 200, 200, 403, 403, 403, 403, 302, 302, 302, 302, 302),
    "POST gardens/new/":                                             (302, 200, 200, 403, 403, 403, 403, 302, 302, 302, 302, 302),
    "GET catalogue/<slug:slug>/":                                    (200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200),
    "POST catalogue/<slug:slug>/submit/":                            (302, 302, 302, 302, 302, 302, 302, 302, 302, 302, 302, 302),
    "POST catalogue/<slug:slug>/composable/":                        (302, 302, 302, 302, 302, 302, 302, 302, 302, 302, 302, 302),
    "POST catalogue/<slug:slug>/members/restore/":                   (302, 302, 302, 302, 302, 302, 302, 302, 302, 302, 302, 302),
    "POST catalogue/<slug:slug>/review/":                            (302, 302, 302, 302, 302, 302, 302, 302, 302, 302, 302, 302),
    "POST catalogue/<slug:slug>/report/":                            (302, 302, 302, 302, 302, 302, 302, 302, 302, 302, 302, 302),
    "POST catalogue/<slug:slug>/offers/":                            (302, 302, 302, 302, 302, 302, 302, 302, 302, 302, 302, 302),
    "POST catalogue/<slug:slug>/offers/<uuid:offer_id>/":            (302, 302, 302, 302, 302, 302, 302, 302, 302, 302, 302, 302),
    "POST catalogue/<slug:slug>/offers/<uuid:offer_id>/retire/":     (302, 302, 302, 302, 302, 302, 302, 302, 302, 302, 302, 302),
    "POST catalogue/<slug:slug>/buy/":                               (302, 302, 302, 302, 302, 302, 302, 302, 302, 302, 302, 302),
    "POST catalogue/<slug:slug>/try/":                               (302, 422, 403, 422, 403, 403, 403, 302, 302, 302, 302, 302),
    "GET licences/":                                                 (302, 200, 200, 200, 200, 200, 200, 302, 302, 302, 302, 302),
    "GET licences/batches/":                                         (302, 200, 200, 200, 200, 200, 200, 302, 302, 302, 302, 302),
    "POST licences/batches/<str:batch_id>/cancel/":                  (302, 302, 404, 404, 404, 404, 404, 302, 302, 302, 302, 302),
    "GET licences/return/":                                          (302, 404, 404, 404, 404, 404, 404, 302, 302, 302, 302, 302),
    "GET licences/<uuid:licence_id>/status/":                        (302, 404, 404, 200, 404, 404, 404, 302, 302, 302, 302, 302),
    "POST licences/<uuid:licence_id>/cancel/":                       (302, 302, 302, 302, 302, 302, 302, 302, 302, 302, 302, 302),
    "POST licences/<uuid:licence_id>/resume/":                       (302, 302, 302, 302, 302, 302, 302, 302, 302, 302, 302, 302),
    "POST licences/<uuid:licence_id>/spend-cap/":                    (302, 302, 302, 302, 302, 302, 302, 302, 302, 302, 302, 302),
    "GET payouts/":                                                  (302, 200, 200, 403, 403, 403, 403, 302, 302, 302, 302, 302),
    "POST payouts/onboard/":                                         (302, 302, 302, 403, 403, 403, 403, 302, 302, 302, 302, 302),
    "GET payouts/return/":                                           (302, 302, 302, 403, 403, 403, 403, 302, 302, 302, 302, 302),
    "GET earnings/":                                                 (302, 200, 200, 403, 403, 403, 403, 302, 302, 302, 302, 302),
}
# fmt: on
