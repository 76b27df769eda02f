"""jobline.toml validation: a wrong file names the file, the key path and the reason."""

import math
import tomllib
from pathlib import Path
from typing import Any

import pytest

from runtime.config import load_config, parse_config
from runtime.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def default_raw() -> dict[str, Any]:
    return tomllib.loads((ROOT / "jobline.toml").read_text())


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "jobline.toml"
    path.write_text(text)
    return path


def test_the_shipped_file_loads() -> None:
    config = load_config(ROOT / "jobline.toml")
    assert config.vendors["fal"].name == "fal"
    assert config.vendors["fal"].api == "fal"
    assert config.models["flux-schnell"].route[0].vendor == "fal"
    assert config.retry.policy().max_attempts == 5


def test_zero_concurrency_is_named_exactly(tmp_path: Path) -> None:
    text = (ROOT / "jobline.toml").read_text()
    text = text.replace("concurrency = 8", "concurrency = 0", 1)
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert (
        str(info.value)
        == f"{tmp_path / 'jobline.toml'}: vendors.fal.concurrency: must be ≥ 1, got 0"
    )


def test_unknown_key_is_an_error() -> None:
    raw = default_raw()
    raw["vendors"]["fal"]["concurency"] = 3
    with pytest.raises(ConfigError) as info:
        parse_config(raw, source="x.toml")
    assert info.value.key == "vendors.fal.concurency"
    assert info.value.reason == "unknown key"


def test_unknown_top_level_section_is_an_error() -> None:
    raw = default_raw()
    raw["sweepr"] = {"interval": 1}
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    assert info.value.key == "sweepr"


def test_route_to_an_unknown_vendor() -> None:
    raw = default_raw()
    raw["models"]["sdxl"]["route"][1]["vendor"] = "runway"
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    assert info.value.key == "models.sdxl.route[1].vendor"
    assert "runway" in info.value.reason and "fal" in info.value.reason


def test_a_fairness_headroom_above_a_vendors_concurrency_is_refused() -> None:
    """Review of issue 13: headroom 50 with a vendor of 8 slots was taken silently."""
    raw = default_raw()
    raw["fairness"] = {"headroom": 50}
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    assert info.value.key == "fairness.headroom"
    assert "concurrency is" in info.value.reason and "50" in info.value.reason
    smallest = min(v["concurrency"] for v in raw["vendors"].values())
    raw["fairness"] = {"headroom": smallest}
    assert parse_config(raw).fairness.headroom == smallest


def test_missing_required_key() -> None:
    raw = default_raw()
    del raw["vendors"]["replicate"]["base_url"]
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    assert info.value.key == "vendors.replicate.base_url"
    assert info.value.reason == "required key is missing"


def test_wrong_api_shape() -> None:
    raw = default_raw()
    raw["vendors"]["fal"]["api"] = "openai"
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    assert info.value.key == "vendors.fal.api"
    assert "openai" in info.value.reason


def test_bad_base_url() -> None:
    raw = default_raw()
    raw["vendors"]["fal"]["base_url"] = "ftp://example"
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    assert info.value.key == "vendors.fal.base_url"
    assert "http" in info.value.reason


def test_empty_route() -> None:
    raw = default_raw()
    raw["models"]["sdxl"]["route"] = []
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    assert info.value.key == "models.sdxl.route"


def test_invalid_input_schema() -> None:
    raw = default_raw()
    raw["models"]["sdxl"]["input_schema"] = {"type": "nonsense"}
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    assert info.value.key == "models.sdxl.input_schema"
    assert "JSON Schema" in info.value.reason


def test_negative_price() -> None:
    raw = default_raw()
    raw["models"]["sdxl"]["price"] = -1
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    assert str(info.value) == "<config>: models.sdxl.price: must be ≥ 0, got -1"


def test_not_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, "[vendors\n"))
    assert "not valid TOML" in info.value.reason


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.toml")
    assert info.value.reason == "file not found"


def test_secrets_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    config = parse_config(default_raw())
    monkeypatch.delenv("FAL_KEY", raising=False)
    assert config.vendors["fal"].api_key() is None
    monkeypatch.setenv("FAL_KEY", "sk-test")
    assert config.vendors["fal"].api_key() == "sk-test"


def test_secrets_are_not_accepted_in_the_file() -> None:
    raw = default_raw()
    raw["vendors"]["fal"]["api_key"] = "sk-live-oops"
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    assert info.value.key == "vendors.fal.api_key"


def test_config_is_frozen() -> None:
    config = parse_config(default_raw())
    with pytest.raises(Exception):  # noqa: B017 - pydantic raises ValidationError
        config.vendors["fal"].concurrency = 99  # type: ignore[misc]


def test_fal_vendors_name_a_key_set_and_replicate_vendors_a_secret() -> None:
    """fal signs webhooks with ED25519 (its keys are public, at a JWKS URL); replicate with
    a Standard Webhooks secret. Each names its own, and only its own."""
    raw = default_raw()
    del raw["vendors"]["fal"]["webhook_jwks_url"]
    fal = parse_config(raw).vendors["fal"]
    assert fal.webhook_jwks_url == "https://rest.alpha.fal.ai/.well-known/jwks.json"
    assert fal.webhook_secret_env is None and fal.webhook_secret() is None
    for vendor, key, value, says in (
        ("fal", "webhook_secret_env", "FAL_WEBHOOK_SECRET", "ED25519"),
        ("fal", "webhook_jwks_url", "ftp://keys", "http"),
        ("replicate", "webhook_jwks_url", "https://keys", "webhook_secret_env"),
    ):
        raw = default_raw()
        raw["vendors"][vendor][key] = value
        with pytest.raises(ConfigError) as info:
            parse_config(raw)
        assert info.value.key == f"vendors.{vendor}.{key}" and says in info.value.reason
    raw = default_raw()
    del raw["vendors"]["replicate"]["webhook_secret_env"]
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    assert info.value.key == "vendors.replicate.webhook_secret_env"
    assert "required" in info.value.reason


def test_each_model_has_its_own_bounds_cap_and_deadline() -> None:
    config = load_config(ROOT / "jobline.toml")
    video = config.models["video-short"]
    assert (video.max_queue_time, video.max_run_time) == (900.0, 900.0)
    assert video.max_output_bytes > 60 * 1024 * 1024  # field case 5: a 60 MiB mp4
    assert config.job_deadline(video) == 2400.0 > video.task_bound
    flux = config.models["flux-schnell"]
    assert config.job_deadline(flux) == config.sweeper.job_deadline
    replicate, fal = config.vendors["replicate"], config.vendors["fal"]
    assert replicate.task_lifetime_for(video) == video.task_bound  # sent as Cancel-After
    capped = replicate.model_copy(update={"max_task_time": 60.0})
    assert capped.task_lifetime_for(video) == 60.0
    assert fal.model_copy(update={"max_task_time": 3600.0}).task_lifetime_for(flux) == 3600.0


def test_orphan_waits_per_vendor_shape() -> None:
    raw = default_raw()
    for vendor in raw["vendors"].values():
        vendor.pop("orphan_wait", None)
    config = parse_config(raw)
    flux = config.models["flux-schnell"]
    assert config.vendors["replicate"].orphan_wait_for(flux) == 60.0  # a list read answers
    assert config.vendors["fal"].orphan_wait_for(flux) == flux.task_bound  # its webhook comes


def test_output_hosts_default_to_the_vendors_cdn_and_are_validated() -> None:
    raw = default_raw()
    for vendor in raw["vendors"].values():
        vendor.pop("output_hosts", None)
    config = parse_config(raw)
    assert "*.fal.media" in (config.vendors["fal"].output_hosts or ())
    assert "replicate.delivery" in (config.vendors["replicate"].output_hosts or ())
    raw["vendors"]["fal"]["output_hosts"] = ["http://evil/"]
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    assert info.value.key == "vendors.fal.output_hosts"


# Field case: `price = 99999999999999999999` and `public_url = "not a url"` were accepted.
# Every number is finite and bounded, every URL an http(s) URL with a host.
BAD_VALUES: list[tuple[str, Any, str]] = [
    ("models.sdxl.price", 99999999999999999999, "must be ≤ 1000000000000"),
    ("models.sdxl.price", 10**12 + 1, "must be ≤ 1000000000000"),
    ("models.sdxl.max_run_time", math.inf, "must be a finite number"),
    ("models.sdxl.max_queue_time", math.nan, "must be > 0"),  # nan compares false
    ("models.sdxl.max_output_bytes", 2**70, "must be at most 1_000_000_000_000"),
    ("models.sdxl.deadline", 1e300, "must be at most 1_000_000_000_000"),
    ("vendors.fal.poll_interval", math.inf, "must be a finite number"),
    ("vendors.fal.concurrency", 10**13, "must be at most"),
    ("retry.cap", math.inf, "must be a finite number"),
    ("circuit.cooldown", math.inf, "must be a finite number"),
    ("sweeper.job_deadline", math.inf, "must be a finite number"),
    ("gateway.webhook_tolerance", math.inf, "must be a finite number"),
    ("gateway.max_body_bytes", 2**64, "must be at most"),
    ("gateway.public_url", "not a url", "must be an http:// or https:// URL with a host"),
    ("gateway.public_url", "ftp://example.com", "must be an http:// or https:// URL"),
    ("gateway.public_url", "http://", "must be an http:// or https:// URL with a host"),
    ("gateway.public_url", "http://host:99999", "must be an http:// or https:// URL"),
    ("gateway.public_url", "http://exa mple.com", "must be an http:// or https:// URL"),
    ("vendors.fal.base_url", "https:///no-host", "must be an http:// or https:// URL"),
    ("vendors.fal.webhook_jwks_url", "keys.json", "must be an http:// or https:// URL"),
    ("console.grafana_url", "grafana", "must be empty or an http:// or https:// URL"),
]


@pytest.mark.parametrize(("key", "value", "reason"), BAD_VALUES)
def test_a_wrong_value_is_named_with_its_key(key: str, value: Any, reason: str) -> None:
    raw = default_raw()
    *sections, name = key.split(".")
    table = raw
    for section in sections:
        table = table.setdefault(section, {})
    table[name] = value
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    assert info.value.key == key
    assert reason in info.value.reason


def test_good_urls_and_large_sane_numbers_pass() -> None:
    raw = default_raw()
    raw["gateway"]["public_url"] = "https://jobs.example.com:8443/"
    raw["console"]["grafana_url"] = "http://[::1]:3000"
    raw["models"]["sdxl"]["price"] = 10**12
    config = parse_config(raw)
    assert config.gateway.public_url == "https://jobs.example.com:8443"
    assert config.models["sdxl"].price == 10**12


def test_a_fallback_poll_sooner_than_the_poll_interval_is_refused() -> None:
    raw = default_raw()
    raw["vendors"]["fal"]["poll_interval"] = 2.0
    raw["vendors"]["fal"]["fallback_poll_interval"] = 1.5
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    assert info.value.key == "vendors.fal.fallback_poll_interval"
    assert "at least poll_interval (2 s), got 1.5" in info.value.reason
    del raw["vendors"]["fal"]["fallback_poll_interval"]  # unset: 5 s, or the poll interval
    assert parse_config(raw).vendors["fal"].first_poll_while_webhooks_arrive == 5.0
    raw["vendors"]["fal"]["poll_interval"] = 8.0
    assert parse_config(raw).vendors["fal"].first_poll_while_webhooks_arrive == 8.0
    raw["vendors"]["fal"]["fallback_poll_interval"] = 86400.0  # review: a lost webhook's wait
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    assert info.value.reason == "must be ≤ 60.0, got 86400.0"
