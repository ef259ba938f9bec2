import copy
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from protege.api.naming import NAME_RULE, is_dns_1035_label
from protege.api.pool import SpecialistPoolSpec
from protege.api.resources import RESOURCE_KINDS
from protege.api.specialist import _MICRO_BATCH_MESSAGE, TrainingSpec
from protege.crds import CrdCatalogue, crd_files, drifted, render_crd, structural_errors
from protege.crds.schema import to_structural


def test_committed_crds_match_the_models(repo: Path) -> None:
    assert drifted(repo / "crds") == [], "crds/ is stale: run `protege crds -o crds`"


def test_drift_is_detected(tmp_path: Path) -> None:
    for name, text in crd_files().items():
        (tmp_path / name).write_text(text)
    assert drifted(tmp_path) == []
    victim = next(iter(crd_files()))
    (tmp_path / victim).write_text((tmp_path / victim).read_text().replace("maxLoras", "maxLora"))
    assert drifted(tmp_path) == [victim]


@pytest.mark.parametrize("kind", RESOURCE_KINDS, ids=lambda k: k.kind)
def test_crds_validate_against_apiextensions_v1(kind: object) -> None:
    crd = render_crd(kind)  # type: ignore[arg-type]
    kubernetes_validate.validate(crd, "1.31", strict=True)
    broken = copy.deepcopy(crd)
    broken["spec"]["versions"][0]["servd"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, "1.31", strict=True)


@pytest.mark.parametrize("kind", RESOURCE_KINDS, ids=lambda k: k.kind)
def test_crds_are_structural_with_kubernetes_conventions(kind: object) -> None:
    crd = render_crd(kind)  # type: ignore[arg-type]
    version = crd["spec"]["versions"][0]
    schema = version["schema"]["openAPIV3Schema"]
    assert structural_errors(schema) == []
    assert "$ref" not in yaml.safe_dump(schema)
    assert version["subresources"] == {"status": {}}
    assert crd["spec"]["names"]["categories"] == ["protege"] and crd["spec"]["names"]["shortNames"]
    columns = {c["name"] for c in version["additionalPrinterColumns"]}
    assert {"Phase", "Ready", "Age"} <= columns
    conditions = schema["properties"]["status"]["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map" and conditions["x-kubernetes-list-map-keys"] == [
        "type"
    ]


def test_specialist_crd_carries_enums_ranges_nullables_and_cel() -> None:
    spec = render_crd(RESOURCE_KINDS[1])["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"][
        "spec"
    ]
    training = spec["properties"]["training"]["properties"]
    assert training["method"]["enum"] == ["lora", "qlora"]
    assert training["dropout"]["exclusiveMaximum"] is True and training["dropout"]["maximum"] == 1
    assert training["alpha"]["nullable"] is True
    assert training["resources"]["properties"]["cpu"] == {
        "description": "CPU request and limit per worker.",
        "default": "4",
        "x-kubernetes-int-or-string": True,
    }
    assert (
        spec["properties"]["rollout"]["x-kubernetes-validations"][0]["message"]
        == "rollout.canarySteps must end at 100"
    )
    assert spec["required"] == ["pool", "task"]


def test_structural_check_finds_problems() -> None:
    bad = {"type": "object", "properties": {"a": {"description": "no type"}, "b": {"$ref": "#/x"}}}
    assert structural_errors(bad) == [
        ".a: has no type",
        ".b: $ref/$defs are not allowed; inline them",
        ".b: has no type",
    ]
    assert to_structural({"anyOf": [{"type": "integer"}, {"type": "null"}], "default": None}) == {
        "type": "integer",
        "nullable": True,
    }


def test_example_manifests_validate_against_the_crds(repo: Path) -> None:
    catalogue = CrdCatalogue.from_paths(sorted((repo / "crds").glob("*.yaml")))
    for path in sorted((repo / "examples").glob("*.yaml")):
        document = yaml.safe_load(path.read_text())
        assert catalogue.errors(document) == [], path
    pool = yaml.safe_load((repo / "examples" / "pool.yaml").read_text())
    pool["spec"]["engine"]["maxLoras"] = 0
    pool["spec"]["replicas"]["mn"] = 1
    assert catalogue.errors(pool) == [
        "spec.engine.maxLoras: 0 is less than the minimum of 1",
        "spec.replicas: Additional properties are not allowed ('mn' was unexpected)",
    ]


def _example(name: str, repo: Path) -> dict:  # type: ignore[type-arg]
    document = yaml.safe_load((repo / "examples" / f"{name}.yaml").read_text())
    document["metadata"]["namespace"] = "agents"
    return dict(document)


def test_the_crds_cel_rules_pass_the_examples_and_refuse_what_they_name(repo: Path) -> None:
    """The rules evaluated as the API server evaluates them on a create (cel-python), and the Python
    checks that mirror them (the local driver's, the models') agree with them."""
    catalogue = CrdCatalogue.from_paths(sorted((repo / "crds").glob("*.yaml")))
    specialist, pool = _example("specialist", repo), _example("pool", repo)
    assert catalogue.errors(specialist) == [] and catalogue.errors(pool) == []

    for name in ("sql-writer", "a", "x" * 63, "7-eleven", "Sql-writer", "sql-", "x" * 64, "sql_writer"):
        renamed = {**specialist, "metadata": {**specialist["metadata"], "name": name}}
        expected = [] if is_dns_1035_label(name) else [f"(root): {NAME_RULE}"]
        assert catalogue.errors(renamed) == expected, name
    assert not is_dns_1035_label("7-eleven") and is_dns_1035_label("x" * 63)  # both sides can say no

    inverted = copy.deepcopy(pool)
    inverted["spec"]["replicas"] = {"min": 3, "max": 2}
    assert catalogue.errors(inverted) == ["spec.replicas: replicas.min must not exceed replicas.max"]
    short = copy.deepcopy(specialist)
    short["spec"]["rollout"]["canarySteps"] = [10, 50]
    assert catalogue.errors(short) == ["spec.rollout: rollout.canarySteps must end at 100"]

    def training(**fields: object) -> dict:  # type: ignore[type-arg]
        changed = copy.deepcopy(specialist)
        changed["spec"]["training"] = {**changed["spec"].get("training", {}), **fields}
        return changed

    for fields, fits in (
        ({"microBatchSize": 2}, True),  # of the default batchSize 8
        ({"microBatchSize": 3}, False),
        ({"batchSize": 12, "workers": 2, "microBatchSize": 3}, True),  # 6 examples per worker
        ({"batchSize": 12, "workers": 2, "microBatchSize": 4}, False),
    ):
        errors = catalogue.errors(training(**fields))
        assert errors == ([] if fits else [f"spec.training: {_MICRO_BATCH_MESSAGE}"]), fields
        if not fits:  # the model agrees
            with pytest.raises(ValueError, match="microBatchSize must divide"):
                TrainingSpec.model_validate(training(**fields)["spec"]["training"])


def test_what_would_fail_only_later_is_refused_at_apply(repo: Path) -> None:
    """vLLM's ranks, maxCpuLoras against maxLoras, tensor parallelism within the GPUs, and the fields a
    resource cannot change (transition rules: evaluated against the stored object, as on an update)."""
    catalogue = CrdCatalogue.from_paths(sorted((repo / "crds").glob("*.yaml")))
    pool, specialist = _example("pool", repo), _example("specialist", repo)

    def pool_with(**engine: object) -> dict:  # type: ignore[type-arg]
        changed = copy.deepcopy(pool)
        changed["spec"]["engine"] = {**changed["spec"].get("engine", {}), **engine}
        return changed

    assert catalogue.errors(pool_with(maxLoraRank=48)) == [
        "spec.engine: engine.maxLoraRank must be a rank vLLM supports: one of "
        "[8, 16, 32, 64, 128, 256, 320, 512]"
    ]
    assert catalogue.errors(pool_with(maxLoras=8, maxCpuLoras=4)) == [
        "spec.engine: engine.maxCpuLoras must be at least engine.maxLoras; raise it or leave it unset"
    ]
    assert catalogue.errors(pool_with(maxCpuLoras=8)) == [  # maxLoras left to its default, 16
        "spec.engine: engine.maxCpuLoras must be at least engine.maxLoras; raise it or leave it unset"
    ]
    sharded = pool_with(tensorParallelSize=4)
    sharded["spec"]["resources"] = {**sharded["spec"].get("resources", {}), "gpu": 2}
    assert catalogue.errors(sharded) == [
        "spec: engine.tensorParallelSize needs at least as many GPUs per replica (resources.gpu) as it "
        "shards the model over"
    ]
    for wrong in (pool_with(maxLoraRank=48), pool_with(maxLoras=8, maxCpuLoras=4), sharded):  # models agree
        with pytest.raises(ValueError, match=r"maxLoraRank|maxCpuLoras|tensorParallelSize"):
            SpecialistPoolSpec.model_validate(wrong["spec"])

    moved = copy.deepcopy(pool)
    moved["spec"]["baseModel"] = {"source": "smollm2-360m"}
    assert catalogue.errors(moved, old=pool) == [
        "spec.baseModel: baseModel is immutable: every adapter of the pool was trained for it; create a new "
        "pool for another base model"
    ]
    assert catalogue.errors(moved) == []  # a create has nothing to compare with
    elsewhere = copy.deepcopy(specialist)
    elsewhere["spec"]["pool"] = "another-pool"
    assert catalogue.errors(elsewhere, old=specialist) == [
        "spec.pool: spec.pool is immutable: its adapters are trained for that pool's base model; delete the "
        "Specialist and create it for the other pool"
    ]
    assert catalogue.errors(specialist, old=specialist) == []


def test_a_base_models_token_and_revision_need_a_hub_source_and_its_token_may_change(repo: Path) -> None:
    """tokenSecretRef and revision mean something for hub models only (refused at apply otherwise, as by
    the models); an update may point the token at another Secret, never the weights elsewhere."""
    catalogue = CrdCatalogue.from_paths(sorted((repo / "crds").glob("*.yaml")))
    pool = _example("pool", repo)
    token = {"name": "hf-token", "key": "token"}

    def with_base(**base: object) -> dict:  # type: ignore[type-arg]
        changed = copy.deepcopy(pool)
        changed["spec"]["baseModel"] = base
        return changed

    for fine in (
        with_base(source="hf://meta-llama/Llama-3.2-1B-Instruct", revision="main", tokenSecretRef=token),
        with_base(source="llama3.2-1b", tokenSecretRef=token),  # a gated model of the catalogue
        with_base(source="s3://models/llama-3.2-1b"),
        with_base(source="pvc://weights/llama-3.2-1b"),
    ):
        assert catalogue.errors(fine) == [], fine["spec"]["baseModel"]
        SpecialistPoolSpec.model_validate(fine["spec"])
    token_rule = (
        "spec.baseModel: baseModel.tokenSecretRef is a Hugging Face hub token: it needs an hf:// source or a "
        "catalogue name"
    )
    revision_rule = (
        "spec.baseModel: baseModel.revision pins a Hugging Face hub revision: it needs an hf:// source or a "
        "catalogue name"
    )
    for wrong, expected in (
        (with_base(source="s3://models/llama-3.2-1b", tokenSecretRef=token), [token_rule]),
        (with_base(source="pvc://weights/llama-3.2-1b", revision="v1"), [revision_rule]),
        (
            with_base(source="file:///models/llama", revision="v1", tokenSecretRef=token),
            [revision_rule, token_rule],
        ),
    ):
        assert catalogue.errors(wrong) == expected
        with pytest.raises(ValueError, match=r"applies to Hugging Face hub models .* remove it"):
            SpecialistPoolSpec.model_validate(wrong["spec"])

    gated = with_base(source="hf://org/name", revision="v1", tokenSecretRef=token)
    rotated = with_base(source="hf://org/name", revision="v1", tokenSecretRef={"name": "hf-2", "key": "t"})
    assert catalogue.errors(rotated, old=gated) == []
    immutable = [
        "spec.baseModel: baseModel is immutable: every adapter of the pool was trained for it; create a new "
        "pool for another base model"
    ]
    for moved in (
        with_base(source="hf://org/name", revision="v2", tokenSecretRef=token),
        with_base(source="hf://org/name", tokenSecretRef=token),
        with_base(source="hf://org/other", revision="v1", tokenSecretRef=token),
    ):
        assert catalogue.errors(moved, old=gated) == immutable, moved["spec"]["baseModel"]
    assert (
        catalogue.errors(
            with_base(source="hf://org/name", revision="v2"), old=with_base(source="hf://org/name")
        )
        == immutable
    )


def test_a_model_cache_is_an_emptydir_size_or_a_claim(repo: Path) -> None:
    catalogue = CrdCatalogue.from_paths(sorted((repo / "crds").glob("*.yaml")))
    pool = _example("pool", repo)

    def cached(**cache: object) -> dict:  # type: ignore[type-arg]
        return {**pool, "spec": {**pool["spec"], "modelCache": cache}}

    assert catalogue.errors(cached(size="100Gi")) == [] and catalogue.errors(cached(claimName="cache")) == []
    assert catalogue.errors(cached(claimName="Model_Cache")) == [
        "spec.modelCache.claimName: 'Model_Cache' does not match '^[a-z0-9]([-a-z0-9]*[a-z0-9])?$'"
    ]
    with pytest.raises(ValueError, match=r"modelCache\.size 'lots' is not a Kubernetes quantity"):
        SpecialistPoolSpec.model_validate(cached(size="lots")["spec"])  # as resources' (int-or-string)
    assert SpecialistPoolSpec.model_validate(pool["spec"]).model_cache.size == "20Gi"
    with pytest.raises(ValueError, match=r"'pvc://Weights/m': 'Weights' is not a PersistentVolumeClaim name"):
        SpecialistPoolSpec.model_validate({**pool["spec"], "baseModel": {"source": "pvc://Weights/m"}})
    with pytest.raises(ValueError, match=r"has scheme 'gs'"):  # no pod could load it: refused
        SpecialistPoolSpec.model_validate({**pool["spec"], "baseModel": {"source": "gs://models/m"}})
