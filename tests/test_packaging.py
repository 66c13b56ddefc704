"""`pip install rankloop` (no extras) has every module rankloop imports, except the few behind an
extra whose import is guarded with a message naming that extra. The end-to-end form of this check
(a fresh venv, `pip install .`, `rankloop quickstart --tiny`) is `.ci/bare-quickstart`, run by CI."""

from __future__ import annotations

import ast
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")

ROOT = Path(__file__).resolve().parents[1]
# Imported only on optional paths, each guarded by an ImportError that names the extra.
OPTIONAL = {"vaderSentiment": "sentiment", "psycopg": "postgres"}


def requirement_names(reqs: list[str]) -> set[str]:
    return {re.split(r"[\s<>=!~;\[]", r, maxsplit=1)[0].lower().replace("_", "-") for r in reqs}


def imported_top_levels() -> dict[str, str]:
    """Every top-level module imported anywhere in rankloop/ (module level or inside a function),
    with one file that imports it."""
    out: dict[str, str] = {}
    for path in sorted((ROOT / "rankloop").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for n in names:
                out.setdefault(n.split(".")[0], str(path.relative_to(ROOT)))
    return out


def test_every_import_is_a_declared_dependency():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    required = requirement_names(project["dependencies"])
    dists = packages_distributions()  # top-level module -> the installed distributions providing it
    missing = []
    for mod, where in imported_top_levels().items():
        if mod == "rankloop" or mod in sys.stdlib_module_names:
            continue
        providers = {d.lower().replace("_", "-") for d in dists.get(mod, [])}
        if mod in OPTIONAL:
            extra = OPTIONAL[mod]
            assert providers & requirement_names(project["optional-dependencies"][extra]), \
                f"{mod} ({where}) should be in the [{extra}] extra"
        elif not providers & required:
            missing.append(f"{mod} (imported by {where}; provided by {sorted(providers) or 'nothing installed'})")
    assert not missing, "imported but not in [project].dependencies: " + "; ".join(missing)
