"""Packaging: the runtime dependencies are exactly what the package imports."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
#: distribution name -> the module it provides, where they differ
MODULE_OF = {"pyyaml": "yaml"}
#: imported directly but installed by a declared dependency (requests needs urllib3)
TRANSITIVE = {"urllib3"}


def _third_party_imports() -> set[str]:
    stdlib = set(sys.stdlib_module_names) | {"tomllib"}  # 3.11+; tomli before
    found: set[str] = set()
    for path in (REPO / "sepcli").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            found.update(n.split(".")[0] for n in names)
    return {n for n in found if n not in stdlib and n != "sepcli"}


def _declared() -> set[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    names = set()
    for requirement in project["dependencies"]:
        dist = re.match(r"[A-Za-z0-9_.-]+", requirement).group(0).lower()
        names.add(MODULE_OF.get(dist, dist.replace("-", "_")))
    return names


def _optional() -> set[str]:
    """Modules of the extras a user installs for a feature (``live``: sounddevice);
    ``test`` is for the test suite, never imported by the package."""
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    names = set()
    for extra, requirements in extras.get("optional-dependencies", {}).items():
        if extra == "test":
            continue
        for requirement in requirements:
            dist = re.match(r"[A-Za-z0-9_.-]+", requirement).group(0).lower()
            names.add(MODULE_OF.get(dist, dist.replace("-", "_")))
    return names


def test_runtime_dependencies_are_what_the_package_imports():
    imported, declared = _third_party_imports(), _declared()
    assert imported - declared - _optional() - TRANSITIVE == set(), "imported but not a dependency"
    assert _optional() <= imported, "an extra nothing in sepcli imports"
    assert declared - imported == set(), "a dependency nothing in sepcli imports (test-only?)"
