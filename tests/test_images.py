"""The published images: what a tag builds (scripts/release.py, .github/workflows/images.yaml) is
what the chart and the operator pull by default, and skaffold builds the same Dockerfiles."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import jsonpatch
import pytest
import yaml

from protege.operator.platform import Platform
from protege.version import __version__

ROOT = Path(__file__).resolve().parents[1]


def _release() -> ModuleType:
    spec = importlib.util.spec_from_file_location("release", ROOT / "scripts" / "release.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


release = _release()


def _published() -> dict[str, str]:
    matrix = release.build_matrix(__version__)
    return {entry["name"]: entry["image"] for entry in matrix["include"]}


def test_a_tag_publishes_every_dockerfile_under_the_references_the_defaults_use() -> None:
    published = _published()
    assert set(published) == {
        p.name.removesuffix(".Dockerfile") for p in (ROOT / "images").glob("*.Dockerfile")
    }
    assert {"operator", "gateway", "serving", "serving-cpu", "training"} <= set(published)
    defaults = Platform()
    assert defaults.serving_image == published["serving"]
    assert defaults.training_image == published["training"]
    assert defaults.gateway_image == published["gateway"]
    # the chart's operator image and the data pipeline's default (its templates spell them out)
    helpers = (ROOT / "charts" / "protege" / "templates" / "_helpers.tpl").read_text()
    pipeline = (ROOT / "charts" / "protege" / "templates" / "data-pipeline.yaml").read_text()
    assert f'"{release.REGISTRY}/protege-operator:%s" .Chart.AppVersion' in helpers
    assert f'"{release.REGISTRY}/protege-training:%s" .Chart.AppVersion' in pipeline


def test_a_tag_the_package_and_the_chart_do_not_carry_is_refused(tmp_path: Path) -> None:
    assert release.release_version(f"v{__version__}") == __version__
    assert release.release_version(f"refs/tags/v{__version__}") == __version__
    with pytest.raises(release.ReleaseError, match=r"v<version> \(v0.1.0\), not '0.1.0'"):
        release.release_version("0.1.0")
    with pytest.raises(release.ReleaseError, match=r"pyproject.toml version is .*set them to 9.9.9"):
        release.release_version("v9.9.9")
    # a chart bumped without the package: named, so the release owner knows which file to fix
    (tmp_path / "charts").mkdir()
    shutil.copytree(
        ROOT / "charts" / "protege", tmp_path / "charts" / "protege", ignore=shutil.ignore_patterns("charts")
    )
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    chart = tmp_path / "charts" / "protege" / "Chart.yaml"
    chart.write_text(chart.read_text().replace(f'appVersion: "{__version__}"', 'appVersion: "0.2.0"'))
    with pytest.raises(release.ReleaseError, match=r"but Chart.yaml appVersion is 0.2.0"):
        release.release_version(f"v{__version__}", tmp_path)


def test_the_workflow_builds_and_pushes_the_matrix_the_script_prints() -> None:
    script = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "release.py"), f"v{__version__}"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert json.loads(script.stdout) == release.build_matrix(__version__)
    refused = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "release.py"), "v9.9.9"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert refused.returncode == 1 and refused.stderr.startswith("error: tag v9.9.9 releases 9.9.9")

    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "images.yaml").read_text())
    assert workflow[True]["push"]["tags"] == ["v*"]  # YAML 1.1 reads the key `on` as True
    matrix_step = next(s for s in workflow["jobs"]["matrix"]["steps"] if s.get("id") == "images")
    assert 'scripts/release.py "$GITHUB_REF_NAME"' in matrix_step["run"]
    build = workflow["jobs"]["build"]
    assert build["strategy"]["matrix"] == "${{ fromJSON(needs.matrix.outputs.images) }}"
    assert build["permissions"] == {"contents": "read", "packages": "write"}
    [push] = [s for s in build["steps"] if s.get("uses", "").startswith("docker/build-push-action")]
    assert push["with"]["file"] == "${{ matrix.dockerfile }}"
    assert push["with"]["tags"] == "${{ matrix.image }}" and push["with"]["push"] is True


def test_skaffold_kind_profile_serves_with_the_cpu_image() -> None:
    skaffold = yaml.safe_load((ROOT / "skaffold.yaml").read_text())
    [kind] = [p for p in skaffold["profiles"] if p["name"] == "kind"]
    patched = jsonpatch.apply_patch(skaffold, kind["patches"])  # RFC 6902, as skaffold applies them
    dockerfiles = {a["image"]: a["docker"]["dockerfile"] for a in patched["build"]["artifacts"]}
    assert dockerfiles["protege-serving-cpu"] == "images/serving-cpu.Dockerfile"
    assert "protege-serving" not in dockerfiles  # no CUDA image to build for a cluster without GPUs
    values = patched["deploy"]["helm"]["releases"][0]["setValueTemplates"]
    assert values["platform.servingImage"] == "{{.IMAGE_FULLY_QUALIFIED_protege_serving_cpu}}"
    # every artifact is one of the published images, built from its own Dockerfile
    published = _published()
    for config in (skaffold, patched):
        for artifact in config["build"]["artifacts"]:
            name = artifact["image"].removeprefix("protege-")
            assert artifact["docker"]["dockerfile"] == f"images/{name}.Dockerfile" and name in published
