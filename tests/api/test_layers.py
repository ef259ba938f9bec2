"""Which package may import which: dependencies point one way, contracts at the bottom.

Every ``import``/``from`` statement of every module of the ``protege`` namespace package is read
(lazy imports inside functions included), in all four of its parts: ./protege and the protege/
folders of operator/, serving/ and training/. A forbidden edge fails with the module and line
that made it.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PARTS = [REPO / root / "protege" for root in (".", "operator", "serving", "training")]
# protege's packages and top-level modules (by name, without .py) → where each lives
PACKAGES = {
    child.name.removesuffix(".py"): child
    for part in PARTS
    for child in part.iterdir()
    if child.suffix == ".py" or (child.is_dir() and child.name != "__pycache__")
}
# package → the protege packages it must never import (directly or lazily)
FORBIDDEN = {
    # the contracts: pure types and names
    "api": {"capture", "cli", "config", "evaluation", "flywheel", "models", "operator", "pii", "serving",
            "services", "stack", "store", "tasks", "testing", "training", "workload"},
    "pii": {"capture", "cli", "crds", "evaluation", "flywheel", "models", "operator", "serving", "services",
            "stack", "store", "tasks", "testing", "training", "workload"},  # detectors and redaction
    "tasks": {"capture", "cli", "evaluation", "flywheel", "operator", "serving", "stack", "testing",
              "training", "workload"},  # examples, discovery and datasets: what training and the router read
    "capture": {"cli", "evaluation", "flywheel", "operator", "serving", "stack", "tasks", "testing",
                "training", "workload"},
    "evaluation": {"capture", "cli", "flywheel", "operator", "serving", "stack", "testing", "training",
                   "workload"},
    "training": {"cli", "flywheel", "operator", "serving", "stack", "testing",
                 "workload"},  # the job reports; it decides nothing
    "flywheel": {"cli", "operator", "serving", "stack", "testing",
                 "workload"},  # decisions over contracts, not the gateway's code
    "serving": {"cli", "flywheel", "operator", "stack", "testing", "training", "workload"},
    "operator": {"cli", "stack", "testing", "workload"},
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
        directory = PACKAGES[package]
        assert directory.is_dir(), package
        for module in sorted(directory.rglob("*.py")):
            for imported, line in imported_packages(module):
                if imported in forbidden:
                    where = module.relative_to(directory)
                    wrong.append(f"protege.{package} ({where}:{line}) imports protege.{imported}")
    assert wrong == []


# Only the local stack (`protege up`, the demo), the shipped workload and the test doubles themselves
# may import the test doubles or the workload (the CLI too, inside the commands that run them).
LOCAL_ONLY = {"testing", "workload"}
MAY_USE_LOCAL_ONLY = {"cli", "stack", "testing", "workload"}


def test_no_runtime_package_imports_the_test_doubles_or_the_workload() -> None:
    wrong = []
    assert {"api", "cli", "config", "operator", "serving", "training"} <= PACKAGES.keys()
    for name, part in sorted(PACKAGES.items()):
        if name in MAY_USE_LOCAL_ONLY:
            continue
        for module in sorted([part] if part.suffix == ".py" else part.rglob("*.py")):
            wrong += [
                f"{module}:{line} imports protege.{name}"
                for name, line in imported_packages(module)
                if name in LOCAL_ONLY
            ]
    assert wrong == []


def test_the_cli_imports_the_local_stack_only_inside_its_commands() -> None:
    """What the images run (the CLI among them) must import without protege.stack, .testing or .workload:
    .dockerignore leaves them out of every image (tests/test_packaging.py)."""
    wrong = []
    for module in sorted(PACKAGES["cli"].rglob("*.py")):
        tree = ast.parse(module.read_text(), str(module))
        for node in tree.body:  # module level only: imports inside functions run with their command
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                wrong += [
                    f"{module.name}:{node.lineno} {name}"
                    for name in names
                    if name.startswith(("protege.stack", "protege.testing", "protege.workload"))
                ]
    assert wrong == []


def test_the_check_sees_lazy_and_plain_imports(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("import protege.api.calls\n\ndef f():\n    from protege.flywheel import policy\n")
    assert imported_packages(module) == [("api", 1), ("flywheel", 4)]
