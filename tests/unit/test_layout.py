"""The layout rules of DESIGN §2 that keep the fakes independent witnesses.

``vendors_fake`` imports nothing of jobline (``runtime``, ``actors``, ``loadtests``), not
even inside a function: a fake that shared jobline's signing or parsing code could only
confirm jobline's own mistakes. Checked on the source, so a lazy import is caught too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
JOBLINE = ("runtime", "actors", "loadtests", "tests")


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """Every module an ``import`` or ``from ... import`` names, anywhere in the file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Call) and getattr(node.func, "id", "") == "__import__":
            args = node.args
            if args and isinstance(args[0], ast.Constant) and isinstance(args[0].value, str):
                found.append((node.lineno, args[0].value))
    return found


FAKE_SOURCES = sorted((ROOT / "vendors_fake").rglob("*.py"))


@pytest.mark.parametrize("path", FAKE_SOURCES, ids=lambda p: p.name)
def test_the_fakes_import_nothing_of_jobline(path: Path) -> None:
    offending = [
        f"{path.name}:{line}: import {module}"
        for line, module in imported_modules(path)
        if module.split(".")[0] in JOBLINE
    ]
    assert not offending, offending


def test_the_check_sees_imports_inside_functions(tmp_path: Path) -> None:
    source = tmp_path / "sneaky.py"
    source.write_text(
        "def f():\n    from runtime.webhooks import sign\n    import actors.processor\n"
        "    __import__('runtime.config')\n"
    )
    assert [m for _, m in imported_modules(source)] == [
        "runtime.webhooks",
        "actors.processor",
        "runtime.config",
    ]


def test_there_are_fake_sources_to_check() -> None:
    names = {path.name for path in FAKE_SOURCES}
    assert {"core.py", "server.py", "signing.py", "runner.py"} <= names
