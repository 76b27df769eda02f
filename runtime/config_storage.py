"""``[storage]`` and ``[storage.s3]`` of jobline.toml: the ledger's file and where
results go (a directory, or an S3-compatible bucket). ``runtime.config`` reads them;
``runtime.results`` and ``runtime.results_s3`` build the stores."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from runtime.config_base import FilePath, Section, http_url
from runtime.errors import ConfigError

_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_PREFIX = re.compile(r"([A-Za-z0-9._-]+/)*")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
PRESIGN_MAX = 7 * 24 * 3600  # SigV4 presigned URLs live at most 7 days


class S3StoreConfig(Section):
    """``[storage.s3]``: results in an S3-compatible bucket (AWS S3, R2, MinIO, ...).

    Credentials come from the two environment variables named here, on every node that
    stores or serves results; they are never written in the file.
    """

    bucket: str
    prefix: str = ""  # "" or "a/b/": keys live at {prefix}{key}
    endpoint_url: str = (
        ""  # "" = AWS S3 in `region`; R2: https://<account>.r2.cloudflarestorage.com
    )
    region: str = "us-east-1"  # R2: "auto"
    addressing_style: Literal["auto", "path", "virtual"] = "auto"
    presign_expiry: int = Field(default=300, ge=1, le=PRESIGN_MAX)  # seconds
    serve: Literal["stream", "redirect"] = "stream"  # how the gateway answers GET .../result
    access_key_id_env: str = "AWS_ACCESS_KEY_ID"
    secret_access_key_env: str = "AWS_SECRET_ACCESS_KEY"

    @field_validator("bucket")
    @classmethod
    def _bucket_name(cls, value: str) -> str:
        if not _BUCKET.fullmatch(value) or ".." in value:
            raise ValueError(
                f"must be an S3 bucket name (3-63 lowercase letters, digits, '.', '-'), "
                f"got {value!r}"
            )
        return value

    @field_validator("prefix")
    @classmethod
    def _key_prefix(cls, value: str) -> str:
        if not _PREFIX.fullmatch(value) or any(p in {".", ".."} for p in value.split("/")):
            raise ValueError(
                f"must be empty or folder names each ending in '/' (e.g. 'jobline/results/'), "
                f"got {value!r}"
            )
        return value

    @field_validator("endpoint_url")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        return http_url(value, empty_ok=True, empty_means="AWS")

    @field_validator("access_key_id_env", "secret_access_key_env")
    @classmethod
    def _env_name(cls, value: str) -> str:
        if not _ENV_NAME.fullmatch(value):
            raise ValueError(f"must be an environment variable name, got {value!r}")
        return value

    def credential_env_names(self) -> list[str]:
        return [self.access_key_id_env, self.secret_access_key_env]

    def credentials(self, environ: Mapping[str, str]) -> tuple[str, str]:
        """(access key id, secret access key) from ``environ``; ConfigError naming every
        variable that is missing or empty."""
        missing = [name for name in self.credential_env_names() if not environ.get(name)]
        if missing:
            raise ConfigError(
                "environment", ", ".join(missing), "not set (storage.s3 needs the credentials)"
            )
        return environ[self.access_key_id_env], environ[self.secret_access_key_env]


class StorageConfig(Section):
    """``[storage]``: the ledger's SQLite file and where results go.

    Paths must be absolute on a Ray cluster (a relative path would be resolved on
    whichever node opens it); on one machine ``jobline serve`` resolves a relative path
    once, against its own working directory (``runtime.startup.resolve_paths``).
    """

    database: FilePath = Path("data/jobline.db")
    results: FilePath = Path("data/results")  # the directory store's root
    result_store: Literal["directory", "s3"] = "directory"
    s3: S3StoreConfig | None = Field(default=None, validate_default=True)
    # True: the ledger creates its database file when it is missing (a first start, a
    # laptop). False once a deployment has its ledger: a missing file then stops
    # start-up (restore a backup, or create it once with `jobline init`) rather than
    # quietly starting a second, empty ledger (a volume not mounted, a wrong path).
    create_ledger: bool = True

    @field_validator("s3")
    @classmethod
    def _s3_matches_choice(
        cls, value: S3StoreConfig | None, info: ValidationInfo
    ) -> S3StoreConfig | None:
        choice = info.data.get("result_store")
        if choice == "s3" and value is None:
            raise ValueError('required when storage.result_store = "s3"')
        if choice == "directory" and value is not None:
            raise ValueError(
                'set, but storage.result_store is "directory": set result_store = "s3" '
                "or remove [storage.s3]"
            )
        return value

    @property
    def serve_by_redirect(self) -> bool:
        """The gateway answers a result with a presigned redirect rather than the bytes."""
        return self.s3 is not None and self.s3.serve == "redirect"

    def secret_env_names(self) -> list[str]:
        """The environment variables storage reads secrets from (none for a directory)."""
        return self.s3.credential_env_names() if self.s3 is not None else []
