"""Fault profiles: presets, files, validation, and the latency distributions they draw."""

from __future__ import annotations

import copy
import json
import random
import statistics
import tomllib
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from vendors_fake import FaultProfile, Latency, load_profile, merge_profile, preset, preset_names
from vendors_fake.profile import ProfileError
from vendors_fake.tasks import draw_latency


def test_the_presets() -> None:
    assert set(preset_names()) >= {"calm", "flaky", "outage", "hostile", "zero"}
    for name in preset_names():
        assert preset(name).description
    assert preset("zero").model_dump(exclude={"description"}) == FaultProfile().model_dump(
        exclude={"description"}
    )
    calm = preset("calm")
    assert calm.failure == calm.rejection == 0 and not calm.submit.any and not calm.status.any
    flaky = preset("flaky")
    assert flaky.failure + flaky.rejection == pytest.approx(0.1)
    assert flaky.run_time.p99 == 10 * flaky.run_time.p50
    assert flaky.submit.rate_limited > 0
    # a bad day has cold starts, lost answers, retried webhooks, several images, videos,
    # data URIs, payload errors and big webhook bodies, at low rates
    assert 0 < flaky.cold_start <= 0.1 and 0 < flaky.data_uri <= 0.1
    assert 0 < flaky.payload_error <= 0.05 and flaky.webhooks.retries > 0
    lost = flaky.lost_answers
    assert 0 < lost.hang + lost.server_error + lost.cut_off <= 0.02
    assert flaky.output_spec("minimax/video-01").kind == "video"
    assert (flaky.output_spec("fal-ai/flux/schnell").count_max or 1) > 1
    assert flaky.logs.p99 > 64 * 1024 > flaky.logs.p50
    assert preset("calm").lost_answers == preset("zero").lost_answers  # calm stays calm
    assert preset("outage").outage.duration == 30
    hooks = preset("hostile").webhooks
    assert min(hooks.duplicated, hooks.delayed, hooks.out_of_order, hooks.bad_signature) > 0
    for name in ("calm", "flaky", "hostile", "outage"):  # a demo of a few hundred jobs is quick
        p = preset(name)
        median = p.run_time.p50 if p.run_time.kind == "lognormal" else p.run_time.high
        assert 0.2 <= median <= 1.0
    with pytest.raises(KeyError):
        preset("nope")


def test_latency_draws_follow_their_distribution() -> None:
    rng = random.Random(1)
    assert draw_latency(Latency(kind="fixed", seconds=0.3), rng) == 0.3
    uniform = [draw_latency(Latency(kind="uniform", low=1, high=2), rng) for _ in range(5000)]
    assert min(uniform) >= 1 and max(uniform) <= 2
    assert statistics.fmean(uniform) == pytest.approx(1.5, abs=0.03)
    lognormal = Latency(kind="lognormal", p50=0.5, p99=5.0)
    draws = sorted(draw_latency(lognormal, rng) for _ in range(40_000))
    assert draws[len(draws) // 2] == pytest.approx(0.5, rel=0.05)
    assert draws[int(len(draws) * 0.99)] == pytest.approx(5.0, rel=0.12)
    capped = Latency(kind="lognormal", p50=1, p99=100, cap=2)
    assert max(draw_latency(capped, rng) for _ in range(1000)) == 2


@pytest.mark.parametrize(
    "bad",
    [
        {"nonsense": 1},
        {"failure": 1.5},
        {"failure": 0.6, "rejection": 0.3, "never_finish": 0.2},
        {"status": {"hang": 0.5, "server_error": 0.6}},
        {"run_time": {"kind": "lognormal", "p50": 1.0, "p99": 0.5}},
        {"run_time": {"kind": "uniform", "low": 2, "high": 1}},
        {"run_time": {"kind": "gamma"}},
        {"webhooks": {"lost": -0.1}},
        {"concurrency_limit": 0},
    ],
)
def test_bad_profiles_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        FaultProfile.model_validate(bad)


def test_partial_updates_merge_nested_tables() -> None:
    base = preset("flaky")
    merged = merge_profile(base, {"submit": {"server_error": 0.5}, "failure": 0})
    assert merged.submit.server_error == 0.5
    assert merged.submit.rate_limited == base.submit.rate_limited
    assert merged.failure == 0 and merged.rejection == base.rejection


def test_profiles_load_from_toml_and_json(tmp_path: Path) -> None:
    flat = tmp_path / "flat.toml"
    flat.write_text("failure = 0.25\n[status]\nserver_error = 0.1\n")
    assert load_profile(flat).failure == 0.25
    assert load_profile(str(flat)).status.server_error == 0.1
    named = tmp_path / "named.toml"
    named.write_text("[mine]\nrejection = 0.5\n")
    assert load_profile(named).rejection == 0.5
    two = tmp_path / "two.toml"
    two.write_text("[a]\nfailure = 0.1\n[b]\nfailure = 0.2\n")
    with pytest.raises(ValueError, match="name one"):
        load_profile(two)
    as_json = tmp_path / "p.json"
    as_json.write_text(json.dumps(preset("hostile").model_dump()))
    assert load_profile(as_json) == preset("hostile")
    assert load_profile("calm") == preset("calm")
    with pytest.raises(FileNotFoundError, match="not a preset"):
        load_profile("no-such-profile")
    bad = tmp_path / "bad.toml"
    bad.write_text("fialure = 0.1\n")
    with pytest.raises(ProfileError) as info:
        load_profile(bad)
    assert str(info.value) == f"{bad}: fialure: unknown key"


def _scalars(table: Any, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    """Every scalar key of a profile document (arrays of scalars left out), by path."""
    if isinstance(table, dict):
        return [kv for k, v in table.items() for kv in _scalars(v, (*prefix, k))]
    return [] if isinstance(table, list) else [(prefix, table)]


def _wrong(value: Any) -> Any:
    """A value of another TOML type: a string for a number or a boolean, else a number."""
    if isinstance(value, bool):
        return "yes"
    return str(value) if isinstance(value, int | float) else 1


_PRESETS = tomllib.loads(
    (Path(__file__).resolve().parents[2] / "vendors_fake" / "profiles.toml").read_text()
)


@pytest.mark.parametrize(
    ("name", "key"),
    [
        pytest.param(name, key, id=f"{name}:{'.'.join(key)}")
        for name, doc in _PRESETS.items()
        for key, value in _scalars(doc)
        if key != ("description",)
    ],
)
def test_a_profile_key_refuses_a_value_of_another_type(
    tmp_path: Path, name: str, key: tuple[str, ...]
) -> None:
    """Nothing is converted: "0.5" is no rate, 1 no boolean (was: read as 0.5 and true)."""
    doc = copy.deepcopy(_PRESETS[name])
    table = doc
    for part in key[:-1]:
        table = table[part]
    wrong = table[key[-1]] = _wrong(table[key[-1]])
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ProfileError) as info:
        load_profile(path)
    assert f"{path}: {'.'.join(key)}: must be " in str(info.value)
    assert str(info.value).endswith(f", got {wrong!r}")


def test_profile_types_the_file_writes_otherwise_still_load() -> None:
    """An integer is a rate or a number of seconds; an array is a list of codes."""
    profile = merge_profile(preset("calm"), {"submit": {"hang": 1, "server_error_codes": [503]}})
    assert profile.submit.hang == 1.0 and profile.submit.server_error_codes == (503,)
    with pytest.raises(ProfileError) as info:
        merge_profile(
            preset("calm"), {"cold_start": True, "refusal": {"status": 401, "models": ["a", 2]}}
        )
    assert str(info.value).splitlines() == [
        "profile: cold_start: must be a number, got True",
        "profile: refusal.models[1]: must be a string, got 2",
    ]
