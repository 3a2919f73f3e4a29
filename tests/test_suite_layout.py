"""The test suite's own layout: a test module never imports another test
module (importing one runs its module-level code again and drags its
fixtures along); what tests share lives in support.py (helpers) and
conftest.py (fixtures)."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent
SHARED = {"support", "conftest"}


def local_modules() -> set:
    """The modules of tests/ that are not there to be shared."""
    return {p.stem for p in TESTS.glob("*.py")} - SHARED


def imported_test_modules(source: str, local: set) -> list:
    """(line, module) for every import in source of a module in local:
    import statements, from-imports (relative ones too), and
    importlib.import_module / __import__ with a literal name."""
    found = []
    for node in ast.walk(ast.parse(source)):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            # from test_x import f, from .test_x import f; from . import test_x
            names = [node.module] if node.module else [a.name for a in node.names]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if called in ("import_module", "__import__"):
                names = [node.args[0].value.lstrip(".")]
        found += [(node.lineno, n) for n in names if n.split(".")[0] in local]
    return sorted(found)


def test_no_test_module_imports_another():
    local = local_modules()
    bad = [f"{path.name}:{line}: imports {name}"
           for path in sorted(TESTS.glob("test_*.py"))
           for line, name in imported_test_modules(path.read_text(), local)]
    assert not bad, "test modules import each other; move what they share to support.py or conftest.py:\n" + \
        "\n".join(bad)


def test_the_check_sees_every_form_of_import():
    local = {"test_a", "test_b", "helpers_b"}
    source = ("import os\nimport test_a\nfrom test_b import thing\nimport test_a.sub as s\n"
              "from . import helpers_b\nimport importlib\nimportlib.import_module('test_b')\n"
              "from support import get\nimport conftest\n")
    assert imported_test_modules(source, local) == [(2, "test_a"), (3, "test_b"), (4, "test_a.sub"),
                                                    (5, "helpers_b"), (7, "test_b")]
