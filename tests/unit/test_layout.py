"""The floor plan (DESIGN §2), checked on the source: which package may import which.

Every module is parsed and every import in it is found, at the top of the file or
inside a function, including ``importlib.import_module("...")`` with a literal name.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def imported(path: Path, package: tuple[str, ...]) -> Iterator[tuple[int, str]]:
    """(line, module) for every import in ``path``, a module of ``package`` (relative
    imports are made absolute)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                yield node.lineno, ".".join((*base, node.module or ""))
            else:
                yield node.lineno, node.module or ""
        elif (
            isinstance(node, ast.Call)
            and _call_name(node.func) in ("importlib.import_module", "import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            yield node.lineno, node.args[0].value


def _call_name(func: ast.expr) -> str:
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
        return f"{func.value.id}.{func.attr}"
    return ""


def offences(package: str, forbidden: set[str], allowed_in: dict[str, set[str]]) -> list[str]:
    found = []
    for path in modules(package):
        relative = str(path.relative_to(ROOT))
        package = path.relative_to(ROOT).parent.parts
        for line, module in imported(path, package):
            top = module.split(".", 1)[0]
            if top in forbidden and top not in allowed_in.get(relative, set()):
                found.append(f"{relative}:{line} imports {module}")
    return found


def test_the_building_blocks_import_no_actor_fake_harness_or_ray() -> None:
    assert modules("runtime")
    assert offences("runtime", {"actors", "vendors_fake", "loadtests", "ray"}, {}) == []


RAY_MODULE = "actors/hosting/ray_calls.py"


def test_one_module_imports_ray_and_the_actors_never_import_the_harness() -> None:
    assert (ROOT / RAY_MODULE).is_file()
    assert modules("actors")
    allowed = {RAY_MODULE: {"ray"}}
    assert offences("actors", {"loadtests", "vendors_fake", "ray"}, allowed) == []


def test_the_fakes_import_nothing_of_jobline() -> None:
    assert offences("vendors_fake", {"runtime", "actors", "loadtests"}, {}) == []


def test_the_checker_sees_imports_inside_functions(tmp_path: Path) -> None:
    source = tmp_path / "sample.py"
    source.write_text(
        "import os\n"
        "def late():\n"
        "    from ray.util import queue\n"
        "    import importlib\n"
        "    importlib.import_module('actors.hosting')\n"
        "    from .sibling import thing\n",
        encoding="utf-8",
    )
    names = [module for _, module in sorted(imported(source, ("runtime", "api")))]
    assert names == ["os", "ray.util", "importlib", "actors.hosting", "runtime.api.sibling"]


def test_unit_tests_refuse_to_start_ray() -> None:
    import ray

    with pytest.raises(RuntimeError, match="must not start Ray"):
        ray.init()
