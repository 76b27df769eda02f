"""A real S3-compatible server on loopback: moto's server mode (``moto[server]``).

moto answers the S3 REST API over HTTP like AWS does (multipart uploads, versioning,
presigned GETs); it does not check signatures or the expiry of presigned URLs, so the
tests here prove what jobline sends and reads, not S3's own authorization.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import boto3
import pytest
from moto.server import ThreadedMotoServer

from runtime.config_storage import S3StoreConfig
from runtime.results_s3 import S3ResultStore

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

ACCESS_KEY = "test-access-key-id"
SECRET_KEY = "test-secret-access-key-not-for-logs"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
_buckets = itertools.count()


@dataclass
class S3Server:
    endpoint_url: str
    server: ThreadedMotoServer

    def admin(self) -> S3Client:
        """A plain boto3 client on the server: the tests' own view of the bucket."""
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name="us-east-1",
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
        )

    def new_bucket(self, *, versioned: bool = False) -> str:
        name = f"jobline-test-{next(_buckets)}"
        admin = self.admin()
        admin.create_bucket(Bucket=name)
        if versioned:
            admin.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
        return name

    def config(self, bucket: str, **overrides: object) -> S3StoreConfig:
        fields: dict[str, object] = {
            "bucket": bucket,
            "endpoint_url": self.endpoint_url,
            "addressing_style": "path",
            **overrides,
        }
        return S3StoreConfig.model_validate(fields)


@pytest.fixture(name="s3_server", scope="module")
def s3_server_fixture() -> Iterator[S3Server]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield S3Server(f"http://{host}:{port}", server)
    server.stop()


@pytest.fixture(name="s3_store")
async def s3_store_fixture(s3_server: S3Server) -> AsyncIterator[S3ResultStore]:
    """A store on a fresh bucket of the loopback S3 server."""
    store = S3ResultStore.from_config(s3_server.config(s3_server.new_bucket()), CREDENTIALS)
    yield store
    await store.close()
