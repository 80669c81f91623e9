"""The S3 storage (STORAGE_BACKEND=s3): imported only where it is configured, so a
process on the local disk never loads boto3."""

from storages.backends.s3 import S3Storage

from marketplace.storage import refuse_sealed


class PrivateS3Storage(S3Storage):
    """A private bucket on any S3-compatible server; URLs are presigned and short-lived."""

    def url(self, name, parameters=None, expire=None, http_method=None):
        refuse_sealed(name)
        return super().url(name, parameters=parameters, expire=expire, http_method=http_method)
