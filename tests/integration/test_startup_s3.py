"""Start-up asks the result bucket once, with the node's own credentials (moto on loopback)."""

from __future__ import annotations

from runtime.config_storage import StorageConfig
from runtime.results_s3 import bucket_problems
from tests.integration.s3_fixtures import CREDENTIALS, S3Server, s3_server_fixture  # noqa: F401


def storage(s3_server: S3Server, bucket: str) -> StorageConfig:
    return StorageConfig(result_store="s3", s3=s3_server.config(bucket))


def test_a_bucket_that_answers_is_no_problem(s3_server: S3Server) -> None:
    assert bucket_problems(storage(s3_server, s3_server.new_bucket()), CREDENTIALS) == []


def test_a_missing_bucket_is_named_with_its_endpoint_in_one_line(s3_server: S3Server) -> None:
    (line,) = bucket_problems(storage(s3_server, "no-such-bucket"), CREDENTIALS)
    assert line.startswith(f"storage.s3: bucket 'no-such-bucket' at {s3_server.endpoint_url}: ")
    assert CREDENTIALS["AWS_SECRET_ACCESS_KEY"] not in line


def test_missing_credentials_are_left_to_the_environment_check(s3_server: S3Server) -> None:
    assert bucket_problems(storage(s3_server, "no-such-bucket"), {}) == []
    assert bucket_problems(StorageConfig(), CREDENTIALS) == []  # a directory store
