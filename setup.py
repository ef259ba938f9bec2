"""The package list for setuptools (the rest of the metadata is in pyproject.toml).

``protege`` is a namespace package in four parts: the core in ./protege and the published
top-level folders operator/, serving/ and training/, each holding its part as
<folder>/protege/<folder>/. ``[tool.setuptools.packages.find]`` maps a package to one root
only, so the list and each package's folder are built here; a wheel gets one protege/ tree.
"""

from pathlib import Path

from setuptools import find_namespace_packages, setup

HERE = Path(__file__).parent
ROOTS = (".", "operator", "serving", "training")

package_dir: dict[str, str] = {}
for root in ROOTS:
    part = HERE / root / "protege"
    for name in ["protege", *(f"protege.{sub}" for sub in find_namespace_packages(part))]:
        # `protege` itself maps to the first root; every package below it lives in one root only
        package_dir.setdefault(name, Path(root, *name.split(".")).as_posix())

setup(packages=sorted(package_dir), package_dir=package_dir)
