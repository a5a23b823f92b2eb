"""What `pip install .` installs: every third-party module the package imports is one of its declared dependencies
(a module that is only there through a test extra, or through another package's dependencies, breaks a plain
install, as `packaging` did for `images base`)."""

from __future__ import annotations

import ast
import importlib.metadata as md
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _imported_modules() -> dict[str, set[str]]:
    """Top-level modules imported anywhere in aixsss_ops (lazy imports inside functions too), with where."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / "aixsss_ops").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top != "aixsss_ops":
                    found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def test_every_imported_third_party_module_is_a_declared_dependency():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {_canon(re.split(r"[\s\[<>=!~;(]", d, maxsplit=1)[0]) for d in project["dependencies"]}
    providers = md.packages_distributions()
    undeclared = {}
    for module, where in _imported_modules().items():
        dists = {_canon(d) for d in providers.get(module, [module])}
        if not dists & declared:
            undeclared[module] = sorted(where)
    assert not undeclared, f"imported but not in [project].dependencies of pyproject.toml: {undeclared}"
