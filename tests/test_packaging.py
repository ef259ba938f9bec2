"""The layout rules: one `protege` namespace in four parts, protege.* imports, and no top-level
`operator` package to shadow the stdlib."""

import fnmatch
import runpy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import protege.operator
import protege.serving
import protege.training

# The parts of the `protege` namespace package: the core, and the published top-level folders.
ROOTS = (".", "operator", "serving", "training")


def test_top_level_folders_import_as_protege_packages(repo: Path) -> None:
    for package, folder in (
        (protege.operator, "operator"),
        (protege.serving, "serving"),
        (protege.training, "training"),
    ):
        assert Path(next(iter(package.__path__))).resolve() == (repo / folder / "protege" / folder).resolve()


def test_protege_is_one_namespace_package_in_four_parts(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No part has a protege/__init__.py, each package lives in one part, and setup.py gives
    setuptools every package with its folder (a wheel then holds one protege/ tree)."""
    found: dict[str, Path] = {}
    for root in ROOTS:
        part = repo / root / "protege"
        assert not (part / "__init__.py").exists(), part
        if root != ".":  # the folder holds its part (and a README): no module of its own
            assert {p.name for p in (repo / root).iterdir()} <= {"protege", "README.md", "__pycache__"}
            assert {p.name for p in part.iterdir()} <= {root, "__pycache__"}
        for module in part.rglob("*.py"):
            if "__pycache__" in module.parts:
                continue
            name = ".".join(module.parent.relative_to(repo / root).parts)
            assert found.setdefault(name, module.parent) == module.parent, f"{name} in two parts"
    arguments: dict[str, Any] = {}
    monkeypatch.setattr("setuptools.setup", lambda **kwargs: arguments.update(kwargs))
    monkeypatch.chdir(repo)
    runpy.run_path(str(repo / "setup.py"))
    assert set(arguments["packages"]) == found.keys()
    assert {name: (repo / path).resolve() for name, path in arguments["package_dir"].items()} == {
        name: path.resolve() for name, path in found.items()
    }


def test_operator_folder_never_shadows_the_standard_library(repo: Path) -> None:
    assert not (repo / "operator" / "__init__.py").exists()
    # `python -m` puts the current directory first on sys.path: the stdlib must still win.
    result = subprocess.run(
        [sys.executable, "-m", "json.tool", "--help"], cwd=repo, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    probe = "import operator, sys; print(operator.__file__)"
    out = subprocess.run([sys.executable, "-c", probe], cwd=repo, capture_output=True, text=True, check=True)
    assert "site-packages" not in out.stdout and str(repo / "operator") not in out.stdout


def test_nothing_imports_a_top_level_package_by_folder_name(repo: Path) -> None:
    offenders = []
    sources = [*repo.glob("protege/**/*.py"), *repo.glob("*/protege/**/*.py")]
    for path in [*sources, *repo.glob("tests/**/*.py"), *repo.glob("bench/**/*.py")]:
        for line in path.read_text().splitlines():
            stripped = line.strip()
            if stripped.startswith(("from serving", "import serving", "from training", "import training")):
                offenders.append(f"{path}: {stripped}")
            if stripped.startswith("from operator import") and "protege" in str(path.parent):
                offenders.append(f"{path}: {stripped}")
    assert offenders == []


def test_the_gateway_runs_without_training_libraries(repo: Path) -> None:
    """The gateway image installs the serving extra alone: no torch, transformers, sentence-transformers."""
    import tomllib

    extras = tomllib.loads((repo / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    heavy = ("torch", "transformers", "sentence-transformers", "peft", "scikit-learn")
    assert not [d for d in extras["serving"] if d.split("[")[0].split(">")[0].split("=")[0] in heavy]
    probe = (
        "import sys, protege.serving.gateway.app, protege.serving.router.router; "
        "heavy = ('torch', 'transformers', 'sentence_transformers', 'sklearn'); "
        "print(sorted(m for m in heavy if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=repo, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"  # and a call that needs an embedding: tests/serving/test_router.py


# What the images' entry points must not load; .dockerignore leaves each out of every image.
LOCAL_ONLY = ("protege.testing", "protege.workload", "protege.stack")


def test_what_production_images_run_loads_no_demo_workload_or_test_double(repo: Path) -> None:
    """The images' entry points (the CLI behind `protege gateway`, the operator, the pool, the training
    job, the curator) load none of the demo, the shipped workload, the teachers that stand in for a
    model or the pytest plugins: those stay for tests and the local stack."""
    entry = "protege.cli, protege.operator.main, protege.serving.pool.app, protege.training.job"
    probe = (
        f"import sys, {entry}, protege.training.curation; "
        f"held = {LOCAL_ONLY!r}; "
        "print(sorted(m for m in sys.modules if m.startswith(held)))"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=repo, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def dockerignored(patterns: list[str], path: str) -> bool:
    """Whether Docker leaves ``path`` out of the build context (a folder's pattern covers its tree)."""
    folders = [path.rsplit("/", depth)[0] for depth in range(path.count("/") + 1)]  # path, its parents
    excluded = False
    for line in patterns:
        rule = line.removeprefix("!").strip("/")
        if rule.startswith("**/"):  # at any depth
            candidates = {f.split("/", i)[-1] for f in folders for i in range(f.count("/") + 1)}
        else:
            candidates = set(folders)
        if any(fnmatch.fnmatchcase(c, rule.removeprefix("**/")) for c in candidates):
            excluded = not line.startswith("!")
    return excluded


def test_no_image_contains_the_demo_workload_or_test_doubles(repo: Path) -> None:
    """Every image COPYs the tree; .dockerignore (the build context is the repository) drops what the
    entry points must not load, and nothing `pip install .` needs."""
    lines = (repo / ".dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    assert dockerignored(patterns, "protege/testing/plugin.py")  # the matcher itself
    assert dockerignored(patterns, "serving/__pycache__/x.pyc")
    for module in LOCAL_ONLY:
        folder = module.replace(".", "/")
        assert (repo / folder).is_dir(), folder
        assert dockerignored(patterns, folder), f"{folder} would be in the images"
    copied = set()
    for dockerfile in (repo / "images").glob("*.Dockerfile"):
        for line in dockerfile.read_text().splitlines():
            if line.startswith("COPY "):
                copied |= {word for word in line.split()[1:-1] if not word.startswith("--")}
    assert {"pyproject.toml", "setup.py", "protege", "operator", "serving", "training"} <= copied
    for path in sorted(copied):
        assert not dockerignored(patterns, path), path
    for module in (repo / "protege").rglob("*.py"):
        relative = module.relative_to(repo).as_posix()
        if not relative.startswith(tuple(m.replace(".", "/") + "/" for m in LOCAL_ONLY)):
            assert not dockerignored(patterns, relative), relative
