"""An S3-compatible emulator for the tests: moto's standalone server on 127.0.0.1.

It speaks the S3 protocol over HTTP on a free port (signatures, multipart uploads,
ACLs, presigned URLs), so the storage code runs exactly as against AWS or MinIO: the
same django-storages backend, configured from the same environment variables
(marketplace/settings/object_storage.py). It is an emulator, not Amazon S3.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from dataclasses import dataclass, field

_SERVE = """
import logging, sys
from moto.server import ThreadedMotoServer
logging.getLogger("werkzeug").setLevel(logging.ERROR)
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
print(server.get_host_and_port()[1], flush=True)
sys.stdin.read()
server.stop()
"""
REGION = "us-east-1"
ACCESS_KEY = "niche-test-access-key"
SECRET_KEY = "niche-test-secret-key-0123456789"


@dataclass
class S3Emulator:
    endpoint_url: str
    server: subprocess.Popen = field(repr=False)

    @classmethod
    def start(cls) -> S3Emulator:
        """In a process of its own, so its memory never counts as the test's."""
        server = subprocess.Popen(
            [sys.executable, "-c", _SERVE],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        port = int(server.stdout.readline())
        return cls(endpoint_url=f"http://127.0.0.1:{port}", server=server)

    def stop(self) -> None:
        self.server.stdin.close()  # it serves until its stdin closes
        try:
            self.server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.server.kill()
            self.server.wait()

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=REGION,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
        )

    def new_bucket(self) -> str:
        name = f"niche-test-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def env(self, bucket: str) -> dict[str, str]:
        """The variables an operator sets for an S3-compatible store (docs/deploy.md)."""
        return {
            "STORAGE_BACKEND": "s3",
            "AWS_STORAGE_BUCKET_NAME": bucket,
            "AWS_S3_ENDPOINT_URL": self.endpoint_url,
            "AWS_S3_REGION_NAME": REGION,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_S3_ADDRESSING_STYLE": "path",  # as for MinIO
        }

    def keys(self, bucket: str) -> dict[str, int]:
        """Every object in `bucket`: key -> size."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket)
        return {item["Key"]: item["Size"] for page in pages for item in page.get("Contents", [])}
