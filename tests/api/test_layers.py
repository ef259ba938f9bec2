"""Which package may import which: dependencies point one way, contracts at the bottom.

Every ``import``/``from`` statement of every module under protege/ is read (lazy imports inside
functions included; operator/, serving/ and training/ are read as the protege.* packages they
are). A forbidden edge fails with the module and line that made it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import protege

ROOT = Path(protege.__file__).parent
# package → the protege packages it must never import (directly or lazily)
FORBIDDEN = {
    # the contracts: pure types and names
    "api": {"capture", "cli", "config", "evaluation", "flywheel", "models", "operator", "pii", "serving",
            "services", "stack", "store", "tasks", "training", "workload"},
    "pii": {"capture", "cli", "crds", "evaluation", "flywheel", "models", "operator", "serving", "services",
            "stack", "store", "tasks", "training", "workload"},  # detectors and redaction over api and config
    "tasks": {"capture", "cli", "evaluation", "flywheel", "operator", "serving", "stack", "training",
              "workload"},  # examples, discovery and datasets: what training and the router both read
    "capture": {"cli", "evaluation", "flywheel", "operator", "serving", "stack", "tasks", "training",
                "workload"},
    "evaluation": {"capture", "cli", "flywheel", "operator", "serving", "stack", "training", "workload"},
    "training": {"cli", "flywheel", "operator", "serving", "stack"},  # the job reports; it decides nothing
    "flywheel": {"cli", "operator", "serving", "stack"},  # decisions over contracts, not the gateway's code
    "serving": {"cli", "flywheel", "operator", "stack", "training"},
    "operator": {"cli", "stack"},
}  # fmt: skip


def imported_packages(path: Path) -> list[tuple[str, int]]:
    """The protege packages a module imports, with the line of each import."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        found += [(name.split(".")[1], node.lineno) for name in names if name.startswith("protege.")]
    return found


def test_dependencies_point_one_way() -> None:
    wrong = []
    for package, forbidden in FORBIDDEN.items():
        directory = ROOT / package
        assert directory.is_dir(), package
        for module in sorted(directory.rglob("*.py")):
            for imported, line in imported_packages(module):
                if imported in forbidden:
                    where = module.relative_to(directory)
                    wrong.append(f"protege.{package} ({where}:{line}) imports protege.{imported}")
    assert wrong == []


def test_the_check_sees_lazy_and_plain_imports(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("import protege.api.calls\n\ndef f():\n    from protege.flywheel import policy\n")
    assert imported_packages(module) == [("api", 1), ("flywheel", 4)]
