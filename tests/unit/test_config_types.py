"""jobline.toml refuses a value of the wrong TOML type, naming the key and what it wants.

TOML has real types, so nothing is converted: ``"yes"`` is no boolean, ``"8"`` no number,
``true`` no price. The cases are generated from the shipped file and from the models, so
a key added later is covered without touching this file."""

import copy
import re
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Literal

import pytest
from pydantic import BaseModel

from runtime.config import JoblineConfig, load_config, parse_config
from runtime.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = tomllib.loads((ROOT / "jobline.toml").read_text(encoding="utf-8"))

Key = tuple[str | int, ...]


def wrong_values(value: Any) -> list[Any]:
    """Values of another TOML type than ``value``'s, each one a plausible slip."""
    if isinstance(value, bool):
        return ["yes", "true", 1, 0]
    if isinstance(value, int):  # not a float: the key may be a float's (``interval = 15``)
        return [True, str(value)]
    if isinstance(value, float):
        return [True, str(value)]
    if isinstance(value, str):
        return [1, True]
    raise AssertionError(f"not a scalar: {value!r}")


def scalar_keys(table: Any, prefix: Key = ()) -> list[tuple[Key, Any]]:
    """Every scalar (bool, number, string) of a parsed TOML document, by key path."""
    if prefix[-1:] == ("input_schema",):
        return []  # a JSON Schema of the model's input, checked as one (its own types)
    if isinstance(table, dict):
        return [kv for key, value in table.items() for kv in scalar_keys(value, (*prefix, key))]
    if isinstance(table, list):
        if table and all(isinstance(item, dict) for item in table):
            return [kv for i, item in enumerate(table) for kv in scalar_keys(item, (*prefix, i))]
        return []  # an array of scalars: replaced as a whole below
    return [(prefix, table)]


def dotted(key: Key) -> str:
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in key)[1:]


def with_value(raw: dict[str, Any], key: Key, value: Any) -> dict[str, Any]:
    raw = copy.deepcopy(raw)
    table: Any = raw
    for part in key[:-1]:
        table = table.setdefault(part, {}) if isinstance(part, str) else table[part]
    table[key[-1]] = value
    return raw


def refused(raw: dict[str, Any], key: Key) -> str:
    """The reason ``parse_config`` gives for ``key``; fails the test if it names none."""
    with pytest.raises(ConfigError) as info:
        parse_config(raw, source="jobline.toml")
    reasons = dict(info.value.problems)
    assert dotted(key) in reasons, info.value.lines()
    return reasons[dotted(key)]


FILE_CASES = [
    pytest.param(key, wrong, id=f"{dotted(key)}={wrong!r}")
    for key, value in scalar_keys(SHIPPED)
    for wrong in wrong_values(value)
]


@pytest.mark.parametrize(("key", "wrong"), FILE_CASES)
def test_every_key_of_the_shipped_file_refuses_a_value_of_another_type(
    key: Key, wrong: Any
) -> None:
    reason = refused(with_value(SHIPPED, key, wrong), key)
    assert reason.startswith("must be"), reason
    assert reason.endswith(f"got {wrong!r}"), reason


# Where each section's keys live in a file, for the keys the shipped file leaves out.
def _first(section: str) -> str:
    return next(iter(SHIPPED[section]))


def _unwrap(annotation: Any) -> list[Any]:
    """The types a field's annotation allows, None and Annotated stripped."""
    if typing.get_origin(annotation) is typing.Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [t for arg in typing.get_args(annotation) for t in _unwrap(arg)]
    return [] if annotation is type(None) else [annotation]


def model_keys(model: type[BaseModel], prefix: Key) -> list[tuple[Key, Any]]:
    """Every key of ``model`` and its sections, with the one type it takes."""
    keys: list[tuple[Key, Any]] = []
    for name, field in model.model_fields.items():
        if name == "name" and prefix[:1] in (("vendors",), ("models",)):
            continue  # filled in from the table's own key
        (kind,) = _unwrap(field.annotation)
        origin = typing.get_origin(kind)
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            keys.append(((*prefix, name), kind))
            keys += model_keys(kind, (*prefix, name))
        elif origin is dict and name in ("vendors", "models"):
            table_model = typing.get_args(kind)[1]
            keys += model_keys(table_model, (*prefix, name, _first(name)))
        elif origin is tuple and name == "route":
            keys.append(((*prefix, name), kind))
            keys += model_keys(typing.get_args(kind)[0], (*prefix, name, 0))
        else:
            keys.append(((*prefix, name), kind))
    return keys


def wrong_for(kind: Any) -> tuple[list[Any], str]:
    """Values of another TOML type than ``kind`` and the start of the reason they get."""
    origin = typing.get_origin(kind)
    if kind is bool:
        return ["yes", 1], "must be true or false"
    if kind is int:
        return [True, "8", 8.5], "must be an integer"
    if kind is float:
        return [True, "15"], "must be a number"
    if kind is str:
        return [1, True], "must be a string"
    if kind is Path:
        return [1, False], "must be a path"
    if origin is Literal:
        return [1], "must be one of"
    if origin is tuple:
        return ["a"], "must be an array"
    if origin is dict or (isinstance(kind, type) and issubclass(kind, BaseModel)):
        return ["a", 1], "must be a table"
    raise AssertionError(f"no wrong value for {kind!r}: teach this test the new type")


S3 = {"result_store": "s3", "s3": {"bucket": "jobline-results"}}
MODEL_CASES = [
    pytest.param(key, wrong, wanted, id=f"{dotted(key)}={wrong!r}")
    for key, kind in model_keys(JoblineConfig, ())
    for wrongs, wanted in [wrong_for(kind)]
    for wrong in wrongs
]


@pytest.mark.parametrize(("key", "wrong", "wanted"), MODEL_CASES)
def test_every_key_of_every_section_refuses_a_value_of_another_type(
    key: Key, wrong: Any, wanted: str
) -> None:
    raw = copy.deepcopy(SHIPPED)
    if key[:2] == ("storage", "s3") and len(key) > 2:
        raw["storage"] = {**raw.get("storage", {}), **copy.deepcopy(S3)}
    reason = refused(with_value(raw, key, wrong), key)
    assert reason.startswith(wanted), reason
    assert reason.endswith(f"got {wrong!r}"), reason


def test_the_model_walk_reaches_every_section() -> None:
    """A guard on the generator above: the cases cover nested sections and route steps."""
    keys = {dotted(key) for key, _ in model_keys(JoblineConfig, ())}
    assert {"ray.nearby_calls", "storage.create_ledger", "storage.s3.presign_expiry"} <= keys
    assert {"models.flux-schnell.price", "models.flux-schnell.route[0].cost"} <= keys
    assert {"vendors.fal.concurrency", "fairness.headroom", "refunds.input_rejected_fee_share"} <= (
        keys
    )


def test_a_price_of_true_is_no_price_of_one_credit(tmp_path: Path) -> None:
    text = (ROOT / "jobline.toml").read_text(encoding="utf-8")
    model = _first("models")
    price = SHIPPED["models"][model]["price"]
    text, n = re.subn(
        rf"(\[models\.{re.escape(model)}\][^\[]*?)price = {price}\b", r"\1price = true", text
    )
    assert n == 1
    path = tmp_path / "jobline.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: models.{model}.price: must be an integer, got True"


@pytest.mark.parametrize("wrong", ["yes", "on", "true", "no", "off", 1, 0])
def test_nearby_calls_takes_only_true_or_false(wrong: Any) -> None:
    raw = with_value(SHIPPED, ("ray", "nearby_calls"), wrong)
    with pytest.raises(ConfigError) as info:
        parse_config(raw, source="jobline.toml")
    assert (
        str(info.value) == f"jobline.toml: ray.nearby_calls: must be true or false, got {wrong!r}"
    )


def test_a_quoted_concurrency_is_refused_and_an_integer_interval_is_a_number() -> None:
    vendor = _first("vendors")
    key: Key = ("vendors", vendor, "concurrency")
    assert refused(with_value(SHIPPED, key, "8"), key) == "must be an integer, got '8'"
    assert refused(with_value(SHIPPED, ("sweeper", "interval"), "15"), ("sweeper", "interval")) == (
        "must be a number, got '15'"
    )
    config = parse_config(with_value(SHIPPED, ("sweeper", "interval"), 15))
    assert config.sweeper.interval == 15.0
    assert isinstance(config.sweeper.interval, float)


def test_the_values_toml_writes_as_something_else_still_load() -> None:
    """A path is a TOML string, a tuple an array, a section a table: read as such."""
    raw = with_value(SHIPPED, ("logging", "file"), "logs/jobline.jsonl")
    raw = with_value(raw, ("vendors", _first("vendors"), "output_hosts"), ["127.0.0.1"])
    raw = with_value(raw, ("ray", "processor_resources"), {"CPU": 1})
    config = parse_config(raw)
    assert config.logging.file == Path("logs/jobline.jsonl")
    assert config.vendors[_first("vendors")].output_hosts == ("127.0.0.1",)
    assert config.ray.processor_resources == {"CPU": 1.0}


def test_an_array_of_the_wrong_items_is_refused_naming_the_item() -> None:
    key: Key = ("vendors", _first("vendors"), "output_hosts")
    with pytest.raises(ConfigError) as info:
        parse_config(with_value(SHIPPED, key, ["127.0.0.1", 8]))
    assert (f"{dotted(key)}[1]", "must be a string, got 8") in info.value.problems


def toml_blocks(markdown: Path) -> list[str]:
    return re.findall(r"```toml\n(.*?)```", markdown.read_text(encoding="utf-8"), re.S)


@pytest.mark.parametrize(
    "path",
    [ROOT / "jobline.toml", *sorted((ROOT / "deploy").rglob("*.toml"))],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_the_shipped_and_deployed_files_load(path: Path) -> None:
    load_config(path)


def test_the_docs_config_examples_load_into_the_shipped_file() -> None:
    blocks = [
        b for doc in (ROOT / "README.md", ROOT / "deploy/README.md") for b in toml_blocks(doc)
    ]
    assert blocks, "no ```toml example found: update this test"
    for block in blocks:
        raw = copy.deepcopy(SHIPPED)
        for section, table in tomllib.loads(block).items():
            raw[section] = {**raw.get(section, {}), **table}
        parse_config(raw, source="a README example")


def test_a_config_survives_its_own_json() -> None:
    """The chaos harness hands a config to its child process as JSON: strict mode still
    reads the paths, tuples and routes it wrote."""
    config = load_config(ROOT / "jobline.toml")
    config = config.model_copy(
        update={"storage": config.storage.model_copy(update={"database": Path("/x/l.db")})}
    )
    assert JoblineConfig.model_validate_json(config.model_dump_json()) == config
