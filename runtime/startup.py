"""What `jobline serve` checks before it starts Ray: the environment and the paths.

Pure functions of the config and an environment mapping; they name every problem at
once, one line each, so that an operator fixes a start-up in one go and not one
variable per attempt (DESIGN §7).

- ``required_environment``: every variable the config names for a secret (the admin
  token, each vendor's key, replicate-shaped webhook secrets, the S3 credentials), with
  the key that names it.
- ``missing_environment``: those of them unset or empty in an environment.
- ``path_problems``: paths that would be resolved against some process's working
  directory on a cluster (every role opens its paths on its own node, in whatever
  directory Ray started it).
- ``resolve_paths``: on one machine, relative paths made absolute once, on the driver,
  against its working directory, before any actor sees them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from runtime.config import JoblineConfig


@dataclass(frozen=True, slots=True)
class Requirement:
    """One environment variable and the config key that names it."""

    variable: str
    key: str  # e.g. "vendors.fal.api_key_env"


def required_environment(config: JoblineConfig) -> list[Requirement]:
    """Every secret variable the config names, in the file's order, each once."""
    found = [Requirement(config.gateway.admin_token_env, "gateway.admin_token_env")]
    for name, vendor in config.vendors.items():
        found.append(Requirement(vendor.api_key_env, f"vendors.{name}.api_key_env"))
        if vendor.webhook_secret_env:  # replicate-shaped; fal publishes public keys
            found.append(
                Requirement(vendor.webhook_secret_env, f"vendors.{name}.webhook_secret_env")
            )
    if config.storage.s3 is not None:
        s3 = config.storage.s3
        found.append(Requirement(s3.access_key_id_env, "storage.s3.access_key_id_env"))
        found.append(Requirement(s3.secret_access_key_env, "storage.s3.secret_access_key_env"))
    seen: set[str] = set()
    unique = []
    for requirement in found:
        if requirement.variable not in seen:
            seen.add(requirement.variable)
            unique.append(requirement)
    return unique


def missing_environment(config: JoblineConfig, environ: Mapping[str, str]) -> list[str]:
    """One line per required variable that is unset or empty in ``environ``; never a value."""
    return [
        f"{r.variable} is not set ({r.key} names it)"
        for r in required_environment(config)
        if not environ.get(r.variable)
    ]


def config_paths(config: JoblineConfig) -> dict[str, Path]:
    """The paths a role opens on its own node, by config key."""
    paths = {"storage.database": config.storage.database}
    if config.storage.result_store == "directory":
        paths["storage.results"] = config.storage.results
    if config.logging.file is not None:
        paths["logging.file"] = config.logging.file
    if config.metrics.targets_file is not None:
        paths["metrics.targets_file"] = config.metrics.targets_file
    return paths


def path_problems(config: JoblineConfig) -> list[tuple[str, str]]:
    """``(key, reason)`` for every relative path: refused on a cluster."""
    return [
        (
            key,
            f"must be an absolute path on a Ray cluster, got {str(path)!r} (it would be "
            "resolved against the working directory of whichever node opens it)",
        )
        for key, path in config_paths(config).items()
        if not path.is_absolute()
    ]


def resolve_paths(config: JoblineConfig, base: Path) -> JoblineConfig:
    """``config`` with every relative path made absolute against ``base`` (one machine)."""

    def absolute(path: Path) -> Path:
        return path if path.is_absolute() else (base / path).resolve()

    storage = config.storage.model_copy(
        update={
            "database": absolute(config.storage.database),
            "results": absolute(config.storage.results),
        }
    )
    logging = config.logging.model_copy(
        update={"file": absolute(config.logging.file) if config.logging.file else None}
    )
    metrics = config.metrics.model_copy(
        update={
            "targets_file": (
                absolute(config.metrics.targets_file) if config.metrics.targets_file else None
            )
        }
    )
    return config.model_copy(update={"storage": storage, "logging": logging, "metrics": metrics})
