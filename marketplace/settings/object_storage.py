"""Where files live: the local disk (embedded default) or an S3-compatible bucket.

STORAGE_BACKEND=local keeps every file under STORAGE_ROOT (MEDIA_ROOT) on this machine;
STORAGE_BACKEND=s3 puts them in one private bucket (AWS S3, MinIO, Ceph, R2, ...), so web
and worker machines share nothing but Postgres, Redis and the bucket. Read by base.py
(default local) and production.py (default s3); tests start an S3-compatible emulator
and build the same configuration from the same variables.
"""

from django.core.exceptions import ImproperlyConfigured

from marketplace.settings.env import env_choice, env_int, env_str

BACKENDS = ("local", "s3")
# Canned ACLs an object may be written with: never a public one. Empty sends no ACL
# (buckets with Object Ownership "bucket owner enforced" refuse ACL headers).
PRIVATE_ACLS = ("private", "bucket-owner-full-control", "")
# Multipart parts and the bytes an opened object keeps in memory before it spills to a
# temporary file: a large upload or download holds a few parts in memory, never all of it.
PART_BYTES = 5 * 1024 * 1024  # the smallest part S3 accepts
PART_CONCURRENCY = 2


def storage_backend(default: str) -> str:
    return env_choice("STORAGE_BACKEND", default, choices=BACKENDS)


def default_storage_config(backend: str) -> dict:
    """The STORAGES["default"] entry for `backend`, read from the environment."""
    if backend == "local":
        # Its folder is MEDIA_ROOT (STORAGE_ROOT), read when first used.
        return {"BACKEND": "marketplace.storage.LocalStorage"}
    from botocore.config import Config

    def optional(name: str) -> str | None:
        return env_str(name, "").strip() or None

    if not env_str("AWS_STORAGE_BUCKET_NAME", "").strip():
        raise ImproperlyConfigured(
            "STORAGE_BACKEND=s3 needs AWS_STORAGE_BUCKET_NAME (the bucket every file goes to)."
        )
    addressing = env_choice("AWS_S3_ADDRESSING_STYLE", "auto", choices=("auto", "path", "virtual"))
    return {
        "BACKEND": "marketplace.storage_s3.PrivateS3Storage",
        "OPTIONS": {
            "bucket_name": env_str("AWS_STORAGE_BUCKET_NAME").strip(),
            "endpoint_url": optional("AWS_S3_ENDPOINT_URL"),  # None: AWS itself
            "region_name": optional("AWS_S3_REGION_NAME"),
            # None: boto3's own chain (instance role, web identity, ~/.aws).
            "access_key": optional("AWS_ACCESS_KEY_ID"),
            "secret_key": optional("AWS_SECRET_ACCESS_KEY"),
            "default_acl": env_choice("AWS_DEFAULT_ACL", "private", choices=PRIVATE_ACLS) or None,
            # Every URL is presigned, and briefly valid.
            "querystring_auth": True,
            "querystring_expire": env_int("STORAGE_URL_EXPIRE_SECONDS", 300, minimum=1),
            "file_overwrite": False,  # as on the local disk: a taken name gets a new one
            "max_memory_size": PART_BYTES,
            "transfer_config": _transfer_config(),
            "client_config": Config(
                s3={"addressing_style": addressing},  # MinIO: path
                signature_version="s3v4",  # presigned URLs carry X-Amz-Expires
                retries={"max_attempts": 5, "mode": "standard"},
            ),
        },
    }


def _transfer_config():
    from boto3.s3.transfer import TransferConfig

    config = TransferConfig(
        multipart_threshold=PART_BYTES,
        multipart_chunksize=PART_BYTES,
        max_concurrency=PART_CONCURRENCY,
    )
    # Parts held in memory at once (s3transfer's default, 10, would hold ten: 50 MiB).
    config.max_in_memory_upload_chunks = PART_CONCURRENCY
    return config
