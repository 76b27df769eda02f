"""[storage]: the result store choice and [storage.s3], validated with clear errors."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from runtime.config import JoblineConfig, load_config, parse_config
from runtime.config_storage import S3StoreConfig
from runtime.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
S3 = {"bucket": "jobline-results", "endpoint_url": "http://127.0.0.1:9000"}


def with_storage(**storage: Any) -> JoblineConfig:
    raw = tomllib.loads((ROOT / "jobline.toml").read_text())
    raw["storage"] = {**raw["storage"], **storage}
    return parse_config(raw, source="jobline.toml")


def error_of(**storage: Any) -> str:
    with pytest.raises(ConfigError) as raised:
        with_storage(**storage)
    return str(raised.value)


def test_a_directory_is_the_single_node_default() -> None:
    storage = load_config(ROOT / "jobline.toml").storage
    assert (storage.result_store, storage.s3) == ("directory", None)
    assert not storage.serve_by_redirect
    assert storage.secret_env_names() == []


def test_the_commented_s3_example_in_the_shipped_file_is_valid(tmp_path: Path) -> None:
    text = (ROOT / "jobline.toml").read_text()
    text = text.replace('result_store = "directory" ', 'result_store = "s3"        ', 1)
    text = text.replace("# [storage.s3]", "[storage.s3]")
    for key in S3StoreConfig.model_fields:
        text = text.replace(f"# {key} = ", f"{key} = ")
    (tmp_path / "jobline.toml").write_text(text)
    storage = load_config(tmp_path / "jobline.toml").storage
    assert storage.s3 is not None
    assert storage.s3.bucket == "jobline-results"
    assert storage.s3.region == "auto"
    assert storage.secret_env_names() == ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]


def test_s3_settings_and_their_defaults() -> None:
    storage = with_storage(result_store="s3", s3={**S3, "serve": "redirect"}).storage
    assert storage.s3 is not None
    assert storage.s3.prefix == ""
    assert storage.s3.presign_expiry == 300
    assert storage.s3.addressing_style == "auto"
    assert storage.serve_by_redirect


def test_s3_without_its_table_is_named() -> None:
    assert error_of(result_store="s3") == (
        'jobline.toml: storage.s3: required when storage.result_store = "s3"'
    )


def test_an_s3_table_the_choice_ignores_is_an_error() -> None:
    assert 'storage.s3: set, but storage.result_store is "directory"' in error_of(s3=S3)


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("bucket", "Jobline_Results", "must be an S3 bucket name"),
        ("bucket", "ab", "must be an S3 bucket name"),
        ("prefix", "/results", "must be empty or folder names each ending in '/'"),
        ("prefix", "results", "must be empty or folder names each ending in '/'"),
        ("prefix", "a/../b/", "must be empty or folder names each ending in '/'"),
        ("endpoint_url", "minio:9000", "must be empty (AWS) or an http:// or https:// URL"),
        ("presign_expiry", 0, "must be ≥ 1, got 0"),
        ("presign_expiry", 8 * 24 * 3600, "must be ≤ 604800"),
        ("serve", "proxy", "must be one of 'stream' or 'redirect'"),
        ("addressing_style", "dns", "must be one of"),
        ("access_key_id_env", "MY-KEY", "must be an environment variable name"),
        ("secret_access_key", "abc", "unknown key"),  # a secret in the file: refused
    ],
)
def test_bad_s3_values_name_key_and_reason(field: str, value: Any, reason: str) -> None:
    message = error_of(result_store="s3", s3={**S3, field: value})
    assert message.startswith(f"jobline.toml: storage.s3.{field}: ")
    assert reason in message


def test_an_unknown_result_store_is_named() -> None:
    message = error_of(result_store="r2")
    assert message.startswith("jobline.toml: storage.result_store: must be one of")
