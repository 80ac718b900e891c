"""Nothing read from Kafka, Redis or HTTP is ever run as code: the package (and its Redis
scripts) contains no pickle, marshal, shelve, eval, exec or dynamic import. The linter bans some
of these too (ruff S301, S307, S102); this test reads the source itself, so it holds whatever
the linter's configuration becomes."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from .conftest import REPO

PACKAGE = REPO / "src" / "engine"
#: Modules that turn bytes into objects or code.
BANNED_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "marshal", "shelve",
                  "jsonpickle", "joblib", "importlib", "runpy", "code", "codeop"}
BANNED_CALLS = {"eval", "exec", "compile", "__import__", "execfile"}
#: Attribute calls that deserialise objects (yaml's unsafe loaders, numpy's pickled arrays).
BANNED_ATTRIBUTES = {"load_all", "unsafe_load", "full_load", "loads_pickle"}


def offences(path: Path, root: Path = REPO) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        where = f"{path.relative_to(root)}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import):
            found += [f"{where} import {a.name}" for a in node.names
                      if a.name.split(".")[0] in BANNED_MODULES]
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module.split(".")[0] in BANNED_MODULES:
                found.append(f"{where} from {node.module} import")
        elif isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name) and func.id in BANNED_CALLS:
                found.append(f"{where} {func.id}()")
            if isinstance(func, ast.Attribute) and func.attr in BANNED_ATTRIBUTES:
                found.append(f"{where} .{func.attr}()")
            if isinstance(func, ast.Attribute) and func.attr == "load" and any(
                    kw.arg == "allow_pickle" and not (isinstance(kw.value, ast.Constant)
                                                      and kw.value.value is False)
                    for kw in node.keywords):
                found.append(f"{where} .load(allow_pickle=...)")
    return found


def test_the_package_never_unpickles_evaluates_or_executes() -> None:
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 50
    found = [o for path in files for o in offences(path)]
    assert found == []


def test_the_redis_scripts_never_evaluate_strings() -> None:
    scripts = sorted((REPO / "state").rglob("*.lua"))
    assert scripts
    for script in scripts:
        text = script.read_text()
        for banned in ("loadstring", "load(", "dofile", "loadfile"):
            assert banned not in text, f"{script.name} uses {banned}"


@pytest.mark.parametrize("source", [
    "import pickle\n", "from marshal import loads\n", "eval('1')\n", "exec('x=1')\n",
    "import importlib\n", "numpy.load(f, allow_pickle=True)\n", "yaml.unsafe_load(s)\n",
])
def test_the_check_finds_each_kind(tmp_path: Path, source: str) -> None:
    path = tmp_path / "probe.py"
    path.write_text(source)
    assert offences(path, tmp_path)
