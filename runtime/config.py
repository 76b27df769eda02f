"""jobline.toml -> validated, frozen pydantic models.

The file is the single statement of the system: vendors and their limits, models with
their prices and routes, the retry and circuit policies, the sweeper, storage and the
Ray layout. A wrong file stops start-up with a ConfigError that names the file, the key
path and the reason, e.g. ``jobline.toml: vendors.fal.concurrency: must be ≥ 1, got 0``.
Unknown keys are errors. Secrets never live in the file: it names environment variables.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

import jsonschema
from pydantic import (
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from runtime.config_base import MAX_CREDITS, Array, FilePath, Section, http_url, submit_rate
from runtime.config_money import FairnessConfig, RefundsConfig, ThrottleConfig
from runtime.config_storage import StorageConfig
from runtime.errors import ConfigError
from runtime.policies import CircuitPolicy, RetryPolicy
from runtime.refunds import input_rejected_fee

DEFAULT_CONFIG_PATH = Path("jobline.toml")
# fal publishes the public keys of its webhook signatures here (fal's "Webhooks" page,
# "Verifying your webhook"; fal-client's REST_URL is https://rest.alpha.fal.ai).
FAL_JWKS_URL = "https://rest.alpha.fal.ai/.well-known/jwks.json"
# Where each vendor serves output files, from its documentation: fal's CDN
# (``https://v3.fal.media/files/...``; fal's "Model endpoints: Files"), replicate's
# (``https://replicate.delivery/...``; its "Output files" page; ``api.replicate.com``
# serves the files API).
DEFAULT_OUTPUT_HOSTS: dict[str, tuple[str, ...]] = {
    "fal": ("fal.media", "*.fal.media", "*.fal.run", "*.fal.ai"),
    "replicate": ("replicate.delivery", "*.replicate.delivery", "api.replicate.com"),
}
DEFAULT_LISTING_WAIT = 60.0  # seconds; see VendorConfig.orphan_wait
DEFAULT_FALLBACK_POLL = 5.0  # seconds; see VendorConfig.fallback_poll_interval
_OUTPUT_HOST = re.compile(
    r"(\*\.)?[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?"  # a host name, or *. and a domain
    r"|[0-9a-fA-F:.]+(/\d{1,3})?"  # an IP address or network
)


class VendorConfig(Section):
    name: str = ""  # filled in from the table key
    api: Literal["replicate", "fal"]
    base_url: str
    api_key_env: str
    # How its webhooks are verified. replicate-shaped: Standard Webhooks with the
    # ``whsec_`` secret in this environment variable (required). fal-shaped: ED25519
    # signatures checked against the public keys at ``webhook_jwks_url`` (default: fal's
    # own, FAL_JWKS_URL); a fal vendor names no secret.
    webhook_secret_env: str | None = Field(default=None, validate_default=True)
    webhook_jwks_url: str | None = Field(default=None, validate_default=True)
    concurrency: int = Field(ge=1)
    requests_per_second: float = Field(default=0.0, ge=0)  # 0 = no rate limit
    submit_timeout: float = Field(default=10.0, gt=0)
    poll_timeout: float = Field(default=5.0, gt=0)
    poll_interval: float = Field(default=1.0, gt=0)
    # While this vendor's webhooks arrive (its last 10 task ends each had theirs), a
    # task's polls due before this many seconds are left out (one is made then, and the
    # usual schedule goes on): polling is then the fallback for a lost webhook, not a race
    # with every webhook, and a lost one costs at most this much more. A lost one (a poll
    # saw the end first, then no webhook within 1.5 s; or any poll seeing an end first while
    # polls are left out) puts polling back to ``poll_interval``
    # (``runtime.polling``). None: 5 s, or ``poll_interval`` if longer; at most 60 s.
    fallback_poll_interval: float | None = Field(default=None, gt=0, le=60)
    # How long a task's status may stay unreadable (every status read failing) before
    # jobline gives up on the task; and how long a processing job may go without a
    # change before the sweeper hands it back to its processor. How long a task may
    # queue and run is the model's (``models.X.max_queue_time``, ``max_run_time``).
    stuck_after: float = Field(default=300.0, gt=0)
    # The longest the vendor lets one task live before it ends the task itself, when the
    # vendor decides it: a fal app's own request timeout, which jobline cannot set
    # (configure this to match it). replicate is told each model's bound with every
    # prediction (``Cancel-After``); this caps it. A task jobline lost track of (its submit
    # answer lost) keeps a slot until its lifetime passes (``task_lifetime_for``).
    max_task_time: float | None = Field(default=None, gt=0)
    # Where the vendor's output files may be fetched from: host names, ``*.`` wildcards
    # for subdomains, or IP addresses / networks (``127.0.0.1``, ``10.0.0.0/8``). An output
    # anywhere else is refused unfetched (a signed webhook is only as trustworthy as the
    # secret behind it). Loopback, private and link-local addresses are refused unless
    # listed here. None: the vendor's own CDNs (``DEFAULT_OUTPUT_HOSTS``).
    output_hosts: Array[str] | None = Field(default=None, validate_default=True)
    # How long a job whose submit is *in doubt* (the answer was lost: a timeout, a 5xx, a
    # cut-off body) waits for the task it may have created to show itself before it gets
    # a new attempt. None: replicate-shaped, ``DEFAULT_LISTING_WAIT`` (the prediction list
    # answers at once whether the task exists; this bounds a list that cannot be read);
    # fal-shaped, the model's whole bound (fal lists nothing: its webhook, which names the
    # job, arrives by then if the task exists; a job loses no time when it does).
    orphan_wait: float | None = Field(default=None, ge=0)

    @field_validator("fallback_poll_interval")
    @classmethod
    def _fallback_not_sooner(cls, value: float | None, info: ValidationInfo) -> float | None:
        poll = info.data.get("poll_interval")
        if value is not None and isinstance(poll, float | int) and value < poll:
            raise ValueError(
                f"must be at least poll_interval ({poll:g} s), got {value:g}: it is how long "
                "the first poll waits while webhooks arrive, never sooner than otherwise"
            )
        return value

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        return http_url(value)

    @field_validator("webhook_secret_env")
    @classmethod
    def _secret_for_replicate_only(cls, value: str | None, info: ValidationInfo) -> str | None:
        api = info.data.get("api")
        if api == "replicate" and not value:
            raise ValueError(
                "required for a replicate-shaped vendor: the environment variable holding "
                "its Standard Webhooks secret (whsec_...)"
            )
        if api == "fal" and value is not None:
            raise ValueError(
                "fal signs webhooks with ED25519, not a shared secret: name webhook_jwks_url "
                f"instead (default {FAL_JWKS_URL})"
            )
        return value

    @field_validator("webhook_jwks_url")
    @classmethod
    def _keys_for_fal_only(cls, value: str | None, info: ValidationInfo) -> str | None:
        api = info.data.get("api")
        if api == "replicate" and value is not None:
            raise ValueError("replicate signs webhooks with a secret: name webhook_secret_env")
        if api == "fal":
            value = http_url(value or FAL_JWKS_URL)
        return value

    @field_validator("output_hosts")
    @classmethod
    def _hosts(cls, value: tuple[str, ...] | None, info: ValidationInfo) -> tuple[str, ...]:
        if value is None:
            return DEFAULT_OUTPUT_HOSTS.get(info.data.get("api", ""), ())
        for host in value:
            if not _OUTPUT_HOST.fullmatch(host):
                raise ValueError(
                    f"{host!r} is not a host name, '*.' + a domain, an IP address or a network"
                )
        return tuple(host.lower() for host in value)

    @property
    def task_lifetime(self) -> int:
        """``max_task_time`` (or ``stuck_after``) in whole seconds, as vendors are told it
        when a caller names no model bound."""
        return math.ceil(self.max_task_time if self.max_task_time is not None else self.stuck_after)

    def task_lifetime_for(self, model: ModelConfig) -> float:
        """Seconds after its creation by which the vendor has ended a task of ``model``,
        whoever else forgot it: replicate is told the model's bound (``Cancel-After``,
        capped by ``max_task_time``); a fal app ends it at ``max_task_time``, if set, else
        it is taken to end within the model's bound."""
        bound = model.task_bound
        if self.max_task_time is None:
            return bound
        if self.api == "replicate":
            return min(bound, self.max_task_time)
        return self.max_task_time

    @property
    def first_poll_while_webhooks_arrive(self) -> float:
        """``fallback_poll_interval``, or its default: 5 s, or ``poll_interval`` if longer."""
        if self.fallback_poll_interval is not None:
            return self.fallback_poll_interval
        return max(DEFAULT_FALLBACK_POLL, self.poll_interval)

    def orphan_wait_for(self, model: ModelConfig) -> float:
        """How long a job waits for the task of a submit in doubt (see ``orphan_wait``)."""
        if self.orphan_wait is not None:
            return self.orphan_wait
        if self.api == "replicate":
            return DEFAULT_LISTING_WAIT
        return model.task_bound

    def api_key(self) -> str | None:
        return os.environ.get(self.api_key_env)

    def webhook_secret(self) -> str | None:
        """replicate-shaped: the webhook secret from its environment variable."""
        return os.environ.get(self.webhook_secret_env) if self.webhook_secret_env else None


MICROS = 1_000_000  # the ledger keeps vendor costs in millionths of a currency unit


class RouteStep(Section):
    vendor: str
    model: str  # the vendor's own name for the model
    # What the vendor charges the operator for one task of this model that runs (billed,
    # whatever then happens to its job), in the operator's currency units (0.003: $0.003).
    # A vendor billing by the second is given its average per task.
    cost: float = Field(default=0.0, ge=0, allow_inf_nan=False)

    @property
    def cost_micros(self) -> int:
        return round(self.cost * MICROS)


class ModelConfig(Section):
    name: str = ""
    price: int = Field(ge=0, le=MAX_CREDITS)  # credits; more could never be paid
    route: Array[RouteStep] = Field(min_length=1)
    input_schema: dict[str, Any] = Field(default_factory=lambda: {"type": "object"})
    # How long one task may wait in the vendor's queue (replicate ``starting``, fal
    # ``IN_QUEUE``: a cold boot takes minutes) and how long it may run once started, in
    # seconds. A task the vendor reports queued or running within these is never given
    # up on; past them it is canceled and the job retried. replicate is told their sum.
    max_queue_time: float = Field(default=300.0, gt=0)
    max_run_time: float = Field(default=300.0, gt=0)
    # The largest output (each one, in bytes) jobline stores; a larger one fails the job.
    max_output_bytes: int = Field(default=100 * 1024 * 1024, ge=1)
    # The whole deadline of this model's jobs (seconds from submit); None: sweeper.job_deadline.
    deadline: float | None = Field(default=None, gt=0)
    # Credits kept of a job the vendor rejected for its own input (content policy, invalid
    # input); None: [refunds] input_rejected_fee_share of the price. At most the price.
    input_rejected_fee: int | None = Field(default=None, ge=0)

    @property
    def task_bound(self) -> float:
        """The longest a task of this model may live: queue and run."""
        return self.max_queue_time + self.max_run_time

    @field_validator("input_rejected_fee")
    @classmethod
    def _fee_within_price(cls, value: int | None, info: ValidationInfo) -> int | None:
        price = info.data.get("price")
        if value is not None and isinstance(price, int) and value > price:
            raise ValueError(f"must be at most the model's price ({price}), got {value}")
        return value

    @field_validator("input_schema")
    @classmethod
    def _valid_schema(cls, value: dict[str, Any]) -> dict[str, Any]:
        try:
            jsonschema.Draft202012Validator.check_schema(value)
        except jsonschema.SchemaError as exc:
            raise ValueError(f"not a valid JSON Schema: {exc.message}") from exc
        return value


class RetryConfig(Section):
    base: float = Field(default=1.0, gt=0)
    factor: float = Field(default=2.0, ge=1)
    cap: float = Field(default=60.0, gt=0)
    max_attempts: int = Field(default=5, ge=1)  # per vendor

    def policy(self) -> RetryPolicy:
        return RetryPolicy(
            base=self.base, factor=self.factor, cap=self.cap, max_attempts=self.max_attempts
        )


class CircuitConfig(Section):
    failure_threshold: int = Field(default=5, ge=1)
    failure_rate: float = Field(default=0.5, gt=0, le=1)
    window: float = Field(default=30.0, gt=0)
    min_calls: int = Field(default=10, ge=1)
    cooldown: float = Field(default=15.0, gt=0)
    half_open_probes: int = Field(default=1, ge=1)
    # A vendor that refuses the account or the model (401, 402, 403 locked, 404 model gone)
    # serves nobody for a while (a locked balance lasts hours): its circuit opens at once
    # for this long, then one probe tries again.
    refused_cooldown: float = Field(default=300.0, gt=0)

    def policy(self) -> CircuitPolicy:
        return CircuitPolicy(
            failure_threshold=self.failure_threshold,
            failure_rate=self.failure_rate,
            window=self.window,
            min_calls=self.min_calls,
            cooldown=self.cooldown,
            half_open_probes=self.half_open_probes,
        )


class SweeperConfig(Section):
    interval: float = Field(default=15.0, gt=0)
    job_deadline: float = Field(default=900.0, gt=0)  # seconds from submit to the end


class GatewayConfig(Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    public_url: str = "http://127.0.0.1:8080"  # where vendors send webhooks
    replicas: int = Field(default=2, ge=1)
    max_body_bytes: int = Field(default=64 * 1024, ge=1024)
    # JSON nested deeper is refused with a 400 (deep values cannot cross the actors).
    max_json_depth: int = Field(default=32, ge=2, le=200)
    # Vendor webhooks have their own limit: replicate posts the whole prediction (input
    # and logs), fal the whole result (data URIs in sync mode): several MB.
    max_webhook_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    admin_token_env: str = "JOBLINE_ADMIN_TOKEN"
    webhook_tolerance: float = Field(default=300.0, gt=0)
    # Per account; the admin sets an account's own (PUT /v1/accounts/{id}/limits). Both
    # are enforced by the ledger, so they hold across every gateway replica.
    max_jobs_in_flight_per_account: int = Field(default=1000, ge=1)
    submits_per_second_per_account: float = Field(default=0.0, ge=0)  # 0: no limit
    submit_burst_per_account: int = Field(default=20, ge=1)
    # Statements and job lists one account may read at once, per replica (more wait their
    # turn, up to four times as many; past that, 429).
    reads_in_flight_per_account: int = Field(default=1, ge=1)
    # Event streams (GET /v1/events and /v1/jobs/{id}/events) one account may hold open at
    # once, per replica; past that, 429. Their ledger reads wait for the account's read
    # slots like any other expensive read.
    event_streams_per_account: int = Field(default=16, ge=1)

    # Slow clients: a connection must send a request's headers within header_timeout of
    # their first byte, and its body within body_timeout; an idle keep-alive connection
    # (or one that sends nothing) is closed after idle_timeout. Seconds.
    header_timeout: float = Field(default=10.0, gt=0)
    body_timeout: float = Field(default=30.0, gt=0)
    idle_timeout: float = Field(default=30.0, gt=0)
    # API keys. A revoked key is refused everywhere within key_revocation_poll (gateways
    # follow the ledger's revocation feed), and within key_cache_ttl even if that feed
    # cannot be read. Unknown keys are remembered for unknown_key_cache_ttl; each source
    # address may try failed_auth_burst unknown keys, then failed_auths_per_second.
    key_cache_ttl: float = Field(default=60.0, gt=0)
    key_revocation_poll: float = Field(default=1.0, gt=0)
    unknown_key_cache_ttl: float = Field(default=10.0, gt=0)
    failed_auths_per_second: float = Field(default=5.0, gt=0)
    failed_auth_burst: int = Field(default=50, ge=1)
    key_use_flush_interval: float = Field(default=10.0, gt=0)  # last-use writes, batched

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str) -> str:
        return http_url(value)

    def admin_token(self) -> str | None:
        return os.environ.get(self.admin_token_env)

    @field_validator("submits_per_second_per_account")
    @classmethod
    def _submit_rate(cls, value: float) -> float:
        return submit_rate(value)


class TracingConfig(Section):
    # The share of jobs whose spans are exported (decided by the trace id, so every actor
    # agrees without a message). A span that ends in an error is exported whatever the ratio.
    sample_ratio: float = Field(default=1.0, ge=0.0, le=1.0)
    # Spans are exported in batches from a thread of their own, at least this often.
    export_interval: float = Field(default=1.0, gt=0)


class ConsoleConfig(Section):
    # Where operators open Grafana (e.g. "https://grafana.example.com"): the console's
    # operator view links each dashboard of dashboards/ there. Empty: no links.
    grafana_url: str = ""

    @field_validator("grafana_url")
    @classmethod
    def _http_url_or_empty(cls, value: str) -> str:
        return http_url(value, empty_ok=True)


_RESOURCE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")


class RayConfig(Section):
    """``[ray]``: the cluster jobline runs on and where each role is placed.

    The app's name on the cluster is its ``namespace``: ``jobline serve`` deploys it
    detached under that name, ``status`` and ``stop`` find it by it. The ledger runs on
    the one node offering the custom resource ``ledger_resource``; one gateway (times
    ``[gateway] replicas``) runs on every node offering ``gateway_resource``; processors
    ask for ``processor_resources``. A Ray that jobline starts itself offers all three.
    """

    address: str = ""  # empty: start a local Ray; "auto" or host:port: join a cluster
    namespace: str = "jobline"
    ledger_resource: str = "jobline_ledger"
    gateway_resource: str = "jobline_gateway"
    processor_resources: dict[str, float] = Field(default_factory=dict)
    max_restarts: int = Field(default=-1, ge=-1)  # -1: restart actors forever
    # A Ray start-up (or join) that times out on a loaded machine is tried this often.
    start_attempts: int = Field(default=3, ge=1)
    # Roles on the same machine call each other over a Unix socket instead of a Ray actor
    # call (tens of microseconds instead of milliseconds of CPU); false: always through Ray.
    nearby_calls: bool = True

    @field_validator("ledger_resource", "gateway_resource")
    @classmethod
    def _resource_name(cls, value: str) -> str:
        if not _RESOURCE_NAME.fullmatch(value) or value in {"CPU", "GPU", "memory"}:
            raise ValueError(f"must be a custom resource name like 'jobline_ledger', got {value!r}")
        return value

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, value: str) -> str:
        if not _RESOURCE_NAME.fullmatch(value):
            raise ValueError(f"must be a name of letters, digits, '_', '.', '-', got {value!r}")
        return value

    @property
    def joins_cluster(self) -> bool:
        return bool(self.address)


class LoggingConfig(Section):
    """``[logging]``: every role logs JSON lines (time, level, role, job id, trace id)."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    # JSON lines appended to this file, on every node, by every role placed there (and
    # by `jobline serve`); unset: only stderr (Ray's worker logs, a container's log).
    file: FilePath | None = None


class MetricsConfig(Section):
    """``[metrics]``: where Prometheus finds every role's metrics on a cluster."""

    # A Prometheus file_sd file, rewritten whenever the roles move: one target per role,
    # scraped through a gateway (its node's own, when it has one). Written on the
    # ledger's node (the head), like Ray's own prom_metrics_service_discovery.json.
    targets_file: FilePath | None = None


class JoblineConfig(Section):
    gateway: GatewayConfig = GatewayConfig()
    storage: StorageConfig = StorageConfig()
    ray: RayConfig = RayConfig()
    retry: RetryConfig = RetryConfig()
    circuit: CircuitConfig = CircuitConfig()
    sweeper: SweeperConfig = SweeperConfig()
    console: ConsoleConfig = ConsoleConfig()
    tracing: TracingConfig = TracingConfig()
    logging: LoggingConfig = LoggingConfig()
    metrics: MetricsConfig = MetricsConfig()
    refunds: RefundsConfig = RefundsConfig()
    throttle: ThrottleConfig = ThrottleConfig()
    fairness: FairnessConfig = FairnessConfig()
    vendors: dict[str, VendorConfig] = Field(min_length=1)
    models: dict[str, ModelConfig] = Field(min_length=1)

    def vendor(self, name: str) -> VendorConfig:
        return self.vendors[name]

    def model(self, name: str) -> ModelConfig:
        return self.models[name]

    def input_rejected_fee(self, model: str, price: int) -> int:
        """Credits kept of a job of ``model`` and ``price`` rejected for its own input."""
        own = self.models[model].input_rejected_fee
        return input_rejected_fee(price, self.refunds.input_rejected_fee_share, own)

    def job_deadline(self, model: ModelConfig) -> float:
        """Seconds from submit by which a job of ``model`` must end."""
        return model.deadline if model.deadline is not None else self.sweeper.job_deadline


def load_config(path: str | Path = DEFAULT_CONFIG_PATH) -> JoblineConfig:
    """Read and validate a jobline.toml; raises ConfigError naming file, key and reason."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(str(path), "", "file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), "", f"not valid TOML: {exc}") from None
    return parse_config(raw, source=str(path))


def parse_config(raw: dict[str, Any], source: str = "<config>") -> JoblineConfig:
    """Validate an already-parsed TOML document (tests and tools build these in memory).

    Raises one ConfigError naming every wrong key (``ConfigError.lines()``), in the
    order of the file's sections."""
    raw = _with_names(raw)
    try:
        config = JoblineConfig.model_validate(raw)
    except ValidationError as exc:
        raise _config_error(source, validation_problems(exc)) from None
    problems = _route_problems(config) + _headroom_problems(config)
    if problems:
        raise _config_error(source, problems)
    return config


def validation_problems(exc: ValidationError) -> list[tuple[str, str]]:
    """``(key path, reason)`` of each error of ``exc``, in the words of this file's errors
    (``ray.nearby_calls``, ``must be true or false, got 'yes'``): for other files a user
    writes in TOML or JSON."""
    return [(_key_path(error["loc"]), _reason(error)) for error in exc.errors()]


def _config_error(source: str, problems: list[tuple[str, str]]) -> ConfigError:
    (key, reason), *more = problems
    return ConfigError(source, key, reason, tuple(more))


def _with_names(raw: dict[str, Any]) -> dict[str, Any]:
    """Copy each vendors.X / models.X table's key into its `name` field."""
    raw = dict(raw)
    for section in ("vendors", "models"):
        tables = raw.get(section)
        if isinstance(tables, dict):
            raw[section] = {
                name: ({**table, "name": name} if isinstance(table, dict) else table)
                for name, table in tables.items()
            }
    return raw


def _route_problems(config: JoblineConfig) -> list[tuple[str, str]]:
    known = ", ".join(sorted(config.vendors))
    return [
        (
            f"models.{model.name}.route[{i}].vendor",
            f"unknown vendor {step.vendor!r} (known: {known})",
        )
        for model in config.models.values()
        for i, step in enumerate(model.route)
        if step.vendor not in config.vendors
    ]


def _headroom_problems(config: JoblineConfig) -> list[tuple[str, str]]:
    """``[fairness] headroom`` above a vendor's concurrency keeps more slots than it has."""
    headroom = config.fairness.headroom
    return [
        (
            "fairness.headroom",
            f"{headroom} slots kept for quiet accounts, but vendors.{vendor.name}.concurrency "
            f"is {vendor.concurrency}: at most the smallest vendor concurrency",
        )
        for vendor in config.vendors.values()
        if headroom > vendor.concurrency
    ][:1]


def _key_path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else part
    return path


_BOUNDS = {
    "greater_than_equal": ("≥", "ge"),
    "greater_than": (">", "gt"),
    "less_than_equal": ("≤", "le"),
    "less_than": ("<", "lt"),
}
# A value of the wrong TOML type (every section is strict: ``runtime.config_base``).
_TYPES = {
    "bool_type": "must be true or false",
    "int_type": "must be an integer",
    "float_type": "must be a number",
    "string_type": "must be a string",
    "tuple_type": "must be an array",
    "list_type": "must be an array",
    "dict_type": "must be a table",
    "model_type": "must be a table",
    "path_type": "must be a path (a string)",
}


def _reason(error: Any) -> str:
    kind = error["type"]
    ctx = error.get("ctx") or {}
    got = error.get("input")
    if kind in _BOUNDS:
        symbol, name = _BOUNDS[kind]
        return f"must be {symbol} {ctx[name]}, got {got!r}"
    if kind in _TYPES:
        return f"{_TYPES[kind]}, got {got!r}"
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required key is missing"
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    if kind == "too_short":
        return f"must have at least {ctx.get('min_length')} item(s)"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected')}, got {got!r}"
    return f"{error['msg'].lower()}, got {got!r}"
