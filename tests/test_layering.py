"""Data flows one way: the packages that must not import each other, checked on the source with `ast`.

Every import counts, including those inside functions and ``if TYPE_CHECKING:`` blocks: a lazy
import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "monitor"


def module_name(path: Path, root: Path = PACKAGE_ROOT) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, root: Path = PACKAGE_ROOT) -> set[str]:
    """Every module ``path`` imports, absolute (``from . import x`` resolved against the package)."""
    module = module_name(path, root)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            # `from monitor import api` imports the subpackage `monitor.api`.
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return found


def within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def violations(importer: str, forbidden: str) -> list[str]:
    """``module -> imported`` for every module of ``importer`` that imports ``forbidden``."""
    found = []
    for path in sorted(PACKAGE_ROOT.rglob("*.py")):
        module = module_name(path)
        if within(module, importer):
            found += [f"{module} -> {name}" for name in sorted(imported_modules(path)) if within(name, forbidden)]
    return found


RULES = [
    pytest.param("monitor.api", "monitor.ingest", id="api-not-ingest"),
    pytest.param("monitor.scoring", "monitor.api", id="scoring-not-api"),
    pytest.param("monitor.scoring", "monitor.sim", id="scoring-not-sim"),
    pytest.param("monitor.store", "monitor.analyze", id="store-not-analyze"),
]


@pytest.mark.parametrize(("importer", "forbidden"), RULES)
def test_forbidden_imports_are_absent(importer: str, forbidden: str) -> None:
    assert violations(importer, forbidden) == []


def test_the_walker_sees_real_imports() -> None:
    # Guards against a walker that silently finds nothing, which would pass every rule above.
    assert violations("monitor.api", "monitor.config") != []
    assert violations("monitor.ingest", "monitor.scoring")  # the loop calls the Scorer seam
    assert "monitor.transformers_scorer" not in imported_modules(PACKAGE_ROOT / "scoring" / "factory.py")
    assert "monitor.scoring.transformers_scorer" in imported_modules(PACKAGE_ROOT / "scoring" / "factory.py")


def test_relative_imports_are_resolved(tmp_path: Path) -> None:
    package = tmp_path / "monitor" / "scoring"
    package.mkdir(parents=True)
    (package / "x.py").write_text("from ..api import deps\nfrom . import base\nfrom .. import sim\n")
    found = imported_modules(package / "x.py", root=tmp_path / "monitor")
    assert {"monitor.api.deps", "monitor.scoring.base", "monitor.sim"} <= found
