"""A simulator traffic file refuses a value of the wrong type, naming the key."""

import copy
import json
import tomllib
from pathlib import Path
from typing import Any

import pytest

from loadtests.sim.traffic import load_traffic

SHIPPED = Path(__file__).resolve().parents[2] / "loadtests" / "sim" / "traffic.toml"
RAW = tomllib.loads(SHIPPED.read_text(encoding="utf-8"))


def scalars(table: Any, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    if isinstance(table, dict):
        return [kv for k, v in table.items() for kv in scalars(v, (*prefix, k))]
    return [(prefix, table)]


def wrong(value: Any) -> Any:
    """Another TOML type: a string for a number, a number for a string."""
    return str(value) if isinstance(value, int | float) else 1


def write(tmp_path: Path, raw: dict[str, Any]) -> Path:
    path = tmp_path / "traffic.json"
    path.write_text(json.dumps(raw), encoding="utf-8")
    return path


def test_the_shipped_traffic_file_loads() -> None:
    traffic = load_traffic(SHIPPED)
    assert traffic.shape == "spike" and traffic.models["video-short"] == 1.0


@pytest.mark.parametrize(
    "key",
    [pytest.param(key, id=".".join(key)) for key, _ in scalars(RAW) if key != ("description",)],
)
def test_every_key_refuses_a_value_of_another_type(tmp_path: Path, key: tuple[str, ...]) -> None:
    raw = copy.deepcopy(RAW)
    table = raw
    for part in key[:-1]:
        table = table[part]
    bad = table[key[-1]] = wrong(table[key[-1]])
    path = write(tmp_path, raw)
    with pytest.raises(ValueError) as info:
        load_traffic(path)
    assert str(info.value).startswith(f"{path}: {'.'.join(key)}: must be "), str(info.value)
    assert str(info.value).endswith(f", got {bad!r}")


def test_a_quoted_rate_is_refused_and_a_whole_rate_is_a_number(tmp_path: Path) -> None:
    with pytest.raises(ValueError) as info:
        load_traffic(write(tmp_path, {"rate": "40", "jobs": 10}))
    assert str(info.value) == f"{tmp_path / 'traffic.json'}: rate: must be a number, got '40'"
    assert load_traffic(write(tmp_path, {"rate": 40, "jobs": 10})).rate == 40.0


def test_a_file_without_an_end_says_so_without_a_key(tmp_path: Path) -> None:
    with pytest.raises(ValueError) as info:
        load_traffic(write(tmp_path, {"rate": 1.0}))
    assert str(info.value) == (
        f"{tmp_path / 'traffic.json'}: give duration or jobs (or both): the arrivals must end"
    )
