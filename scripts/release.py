"""What a release tag publishes: one image per ``images/<name>.Dockerfile``, as
``ghcr.io/protege-dev/protege-<name>:<version>``, the references the chart and the operator use
by default (tests/test_images.py holds them to it).

    python scripts/release.py v0.1.0     # the build matrix, as JSON, for .github/workflows/images.yaml

It refuses a tag that is not ``v<version>`` of both pyproject.toml and the chart's appVersion:
published images must be the ones a chart of that version pulls. Standard library only (the
workflow runs it before installing anything).
"""

from __future__ import annotations

import json
import re
import sys
import tomllib
from pathlib import Path

REGISTRY = "ghcr.io/protege-dev"
ROOT = Path(__file__).resolve().parent.parent


class ReleaseError(Exception):
    pass


def versions(root: Path = ROOT) -> dict[str, str]:
    """The versions a release must agree on, by where they are written."""
    package = tomllib.loads((root / "pyproject.toml").read_text())["project"]["version"]
    chart = (root / "charts" / "protege" / "Chart.yaml").read_text()
    found = {"pyproject.toml version": package}
    for key in ("version", "appVersion"):
        match = re.search(rf"^{key}:\s*\"?([^\"\s]+)\"?\s*$", chart, re.MULTILINE)
        if match is None:
            raise ReleaseError(f"charts/protege/Chart.yaml has no {key}")
        found[f"Chart.yaml {key}"] = match.group(1)
    return found


def release_version(tag: str, root: Path = ROOT) -> str:
    """The version ``tag`` releases, once everything that names a version agrees with it."""
    version = tag.removeprefix("refs/tags/").removeprefix("v")
    if not tag.removeprefix("refs/tags/").startswith("v") or not version:
        raise ReleaseError(f"a release tag is v<version> (v0.1.0), not {tag!r}")
    disagree = {where: found for where, found in versions(root).items() if found != version}
    if disagree:
        listed = ", ".join(f"{where} is {found}" for where, found in disagree.items())
        raise ReleaseError(f"tag {tag} releases {version}, but {listed}: set them to {version} and tag again")
    return version


def published_image(name: str, version: str) -> str:
    return f"{REGISTRY}/protege-{name}:{version}"


def build_matrix(version: str, root: Path = ROOT) -> dict[str, list[dict[str, str]]]:
    """One entry per Dockerfile in images/: the image it publishes and how to build it."""
    dockerfiles = sorted((root / "images").glob("*.Dockerfile"))
    return {
        "include": [
            {
                "name": path.name.removesuffix(".Dockerfile"),
                "image": published_image(path.name.removesuffix(".Dockerfile"), version),
                "dockerfile": path.relative_to(root).as_posix(),
            }
            for path in dockerfiles
        ]
    }


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        print(json.dumps(build_matrix(release_version(argv[0]))))
    except ReleaseError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
