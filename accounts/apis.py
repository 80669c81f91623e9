"""API of the accounts context: /me, email verification and API keys."""

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.response import Response

from accounts import selectors, services
from accounts.authentication import ApiKeyAuthentication, calling_api_key
from accounts.models import DEFAULT_API_KEY_SCOPES, ApiKeyScope
from marketplace.api import PUBLIC, BaseApi, ObjectTypeField
from marketplace.pagination import CursorIdPagination, list_schema


class ApiKeyOutput(serializers.Serializer):
    id = serializers.UUIDField()
    object = ObjectTypeField("api_key")
    name = serializers.CharField()
    prefix = serializers.CharField()
    scopes = serializers.ListField(child=serializers.CharField())
    created_at = serializers.DateTimeField()
    last_used_at = serializers.DateTimeField(allow_null=True)
    revoked_at = serializers.DateTimeField(allow_null=True)
    rate_limit_per_minute = serializers.IntegerField(
        allow_null=True,
        help_text="This key's own limit, under the account's; null: the account's alone.",
    )


class EmailVerificationOutput(serializers.Serializer):
    object = ObjectTypeField("email_verification")
    email = serializers.EmailField()
    email_verified = serializers.BooleanField()
    email_verified_at = serializers.DateTimeField(allow_null=True)


class MeApi(BaseApi):
    required_scopes = {"GET": "read"}

    class Output(serializers.Serializer):
        class Meta:
            ref_name = "Me"

        id = serializers.IntegerField()
        email = serializers.EmailField()
        display_name = serializers.CharField()
        is_expert = serializers.BooleanField()
        is_buyer = serializers.BooleanField()
        is_moderator = serializers.BooleanField()
        email_verified = serializers.BooleanField(
            help_text="API keys and free trials need a verified address."
        )
        email_verified_at = serializers.DateTimeField(allow_null=True)
        expert_verified = serializers.SerializerMethodField()
        auth = serializers.SerializerMethodField()

        def get_expert_verified(self, user) -> bool:
            profile = getattr(user, "expert_profile", None)
            return bool(profile and profile.verified)

        def get_auth(self, _user) -> dict:
            key = self.context.get("api_key")
            if key is None:
                return {"method": "session"}
            return {"method": "api_key", "key_id": str(key.id), "scopes": key.scopes}

    @extend_schema(responses=Output)
    def get(self, request):
        context = {"api_key": calling_api_key(request)}
        return Response(self.Output(request.user, context=context).data)


class EmailVerifyApi(BaseApi):
    """`POST /api/v1/me/verify-email {"token"}`: the emailed link's token verifies its
    address. Public: like the link opened in any browser, the signed token alone says
    which account and address it is for; a token works once."""

    required_scopes = {"POST": PUBLIC}
    # Keys are still checked (a revoked one is 401); a browser session is not needed, and
    # without SessionAuthentication a session cookie brings no CSRF check to a call that
    # the token alone authorises.
    authentication_classes = [ApiKeyAuthentication]

    class Input(serializers.Serializer):
        class Meta:
            ref_name = "EmailVerifyInput"

        token = serializers.CharField(max_length=1000)

    @extend_schema(request=Input, responses={200: EmailVerificationOutput})
    def post(self, request):
        data = self.Input(data=request.data)
        data.is_valid(raise_exception=True)
        user = services.email_verification_confirm(token=data.validated_data["token"])
        return Response(EmailVerificationOutput(user).data)


class EmailVerificationResendApi(BaseApi):
    """`POST /api/v1/me/verify-email/resend`: mail the caller a new link (throttled). Any
    key may ask (`read`): the link goes to the account's own address."""

    required_scopes = {"POST": "read"}

    @extend_schema(request=None, responses={202: EmailVerificationOutput})
    def post(self, request):
        services.email_verification_send(
            user=request.user, site_url=request.build_absolute_uri("/")
        )
        return Response(EmailVerificationOutput(request.user).data, status=202)


class ApiKeyListCreateApi(BaseApi):
    """GET needs `read`. POST needs `keys`, and a key may not mint one wider than itself."""

    required_scopes = {"GET": "read", "POST": "keys"}

    class Input(serializers.Serializer):
        class Meta:
            ref_name = "ApiKeyCreateInput"

        name = serializers.CharField(max_length=100)
        scopes = serializers.ListField(
            child=serializers.ChoiceField(choices=ApiKeyScope.values),
            default=lambda: [str(s) for s in DEFAULT_API_KEY_SCOPES],
        )
        rate_limit_per_minute = serializers.IntegerField(
            required=False,
            allow_null=True,
            min_value=1,
            help_text="Calls a minute through this key, at most the account's "
            "(SERVING_RATE_LIMIT_PER_MINUTE); omitted: the account's limit alone.",
        )

    class CreatedOutput(ApiKeyOutput):
        class Meta:
            ref_name = "ApiKeyCreated"

        key = serializers.CharField(help_text="The secret. Shown once; store it now.")

    @extend_schema(responses=list_schema(ApiKeyOutput))
    def get(self, request):
        paginator = CursorIdPagination()
        page = paginator.paginate_queryset(selectors.api_key_list(user=request.user), request)
        return paginator.get_paginated_response(ApiKeyOutput(page, many=True).data)

    @extend_schema(request=Input, responses={201: CreatedOutput})
    def post(self, request):
        data = self.Input(data=request.data)
        data.is_valid(raise_exception=True)
        key, plaintext = services.api_key_create(
            user=request.user, minted_by=calling_api_key(request), **data.validated_data
        )
        body = ApiKeyOutput(key).data | {"key": plaintext}
        return Response(body, status=201)


class ApiKeyDetailApi(BaseApi):
    """DELETE needs `keys`, and a key may not revoke one wider than itself."""

    required_scopes = {"DELETE": "keys"}

    @extend_schema(responses={200: ApiKeyOutput})  # the revoked key, not an empty 204
    def delete(self, request, key_id):
        key = services.api_key_revoke(
            user=request.user, key_id=key_id, revoked_by=calling_api_key(request)
        )
        return Response(ApiKeyOutput(key).data)
