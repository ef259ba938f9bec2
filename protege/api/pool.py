"""SpecialistPool: one base model served by vLLM with many LoRA specialists, one RayService."""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Any

from pydantic import Field, HttpUrl, field_validator, model_validator

from protege.api.meta import (
    CONDITIONS_LIST_MAP,
    DNS_LABEL,
    ComputeResources,
    Condition,
    DnsLabel,
    KubeModel,
    Quantity,
    SecretKeyRef,
    Toleration,
    check_quantity,
)
from protege.api.pods import PodTemplates

MODEL_SOURCE_SCHEMES = ("hf", "s3", "pvc", "file")
_CATALOGUE_ID = re.compile(r"^[a-z0-9][a-z0-9.-]*$")
# Sources whose revision and token mean something: the hub's (hf:// and catalogue ids; catalogue
# models with an offline source ignore both). The CEL rules below and _hub_only say the same.
_HUB_SOURCE_CEL = "self.source.startsWith('hf://') || !self.source.contains('://')"
DEFAULT_MODEL_CACHE_SIZE = "20Gi"
VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)
DEFAULT_MAX_LORAS = 16


def check_model_source(value: str) -> str:
    scheme, sep, rest = value.partition("://")
    if sep:
        if scheme not in MODEL_SOURCE_SCHEMES:
            raise ValueError(
                f"model source {value!r} has scheme {scheme!r}; use one of "
                + ", ".join(f"{s}://" for s in MODEL_SOURCE_SCHEMES)
                + " or a catalogue name such as 'smollm2-135m' (see `protege models list`)"
            )
        if not rest.strip("/"):
            raise ValueError(f"model source {value!r} names no model after {scheme}://")
        if scheme in ("s3", "pvc") and ".." in rest.split("/"):
            raise ValueError(f"model source {value!r}: its path must not contain '..'")
        claim = rest.strip("/").partition("/")[0]
        if scheme == "pvc" and not (len(claim) <= 63 and re.match(DNS_LABEL, claim)):
            raise ValueError(
                f"model source {value!r}: {claim!r} is not a PersistentVolumeClaim name; use "
                "pvc://<claim>/<path inside the volume>"
            )
        return value
    if not _CATALOGUE_ID.match(value):
        raise ValueError(
            f"model source {value!r} is neither a URI (hf://org/name, s3://bucket/path, pvc://claim/path, "
            "file:///path) nor a catalogue name such as 'smollm2-135m' (see `protege models list`)"
        )
    return value


class BaseModelSpec(KubeModel):
    model_config = KubeModel.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {
                    "rule": f"!has(self.revision) || {_HUB_SOURCE_CEL}",
                    "message": "baseModel.revision pins a Hugging Face hub revision: it needs an hf:// "
                    "source or a catalogue name",
                },
                {
                    "rule": f"!has(self.tokenSecretRef) || {_HUB_SOURCE_CEL}",
                    "message": "baseModel.tokenSecretRef is a Hugging Face hub token: it needs an hf:// "
                    "source or a catalogue name",
                },
            ]
        }
    }

    source: str = Field(
        description="Where the base model comes from: a catalogue name (`protege models list`), "
        "hf://org/name, s3://bucket/prefix (downloaded once into the pool's model cache with the "
        "artifact store's S3 settings), pvc://claim/path (the claim is mounted read-only) or "
        "file:///path (a path inside the image).",
        examples=["smollm2-135m", "hf://HuggingFaceTB/SmolLM2-1.7B-Instruct"],
    )
    revision: str | None = Field(
        default=None,
        min_length=1,
        description="Hub revision (branch, tag or commit) to pin, for hf:// sources and catalogue models "
        "downloaded from the hub; the default branch when unset.",
    )
    token_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description="Secret key holding a Hugging Face token, for gated or private hub models (hf:// or a "
        "catalogue name); the serving and training pods get it as HF_TOKEN. Never inline.",
    )

    @field_validator("source")
    @classmethod
    def _source(cls, value: str) -> str:
        return check_model_source(value)

    @model_validator(mode="after")
    def _hub_only(self) -> BaseModelSpec:
        hub = self.source.startswith("hf://") or "://" not in self.source
        for field, value in (("revision", self.revision), ("tokenSecretRef", self.token_secret_ref)):
            if value is not None and not hub:
                raise ValueError(
                    f"baseModel.{field} applies to Hugging Face hub models (hf:// or a catalogue name), "
                    f"not to {self.source!r}; remove it"
                )
        return self


class ModelCacheSpec(KubeModel):
    """Where the pool's serving and training pods keep base-model weights (mounted at /models/cache)."""

    size: Quantity = Field(
        default=DEFAULT_MODEL_CACHE_SIZE,
        description="Size limit of the cache when it is an emptyDir (without claimName): room for the "
        "weights (about 2 bytes per parameter in bf16). Each serving worker and training pod requests "
        "this much ephemeral storage on top of its working space, so it is placed on a node with the disk.",
    )
    claim_name: DnsLabel | None = Field(
        default=None,
        description="An existing PersistentVolumeClaim to keep the cache on instead of an emptyDir, so "
        "replicas, restarts and training jobs share one copy (ReadWriteMany when the pods run on several "
        "nodes); size is then not used.",
    )

    @field_validator("size")
    @classmethod
    def _size(cls, value: str | int) -> str | int:
        return check_quantity(value, "modelCache.size")


class EngineSpec(KubeModel):
    """vLLM engine settings shared by every replica of the pool."""

    # the same checks as the validators below, for the API server (a refused apply, not a Failed pool)
    model_config = KubeModel.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {
                    "rule": f"!has(self.maxLoraRank) || self.maxLoraRank in {list(VLLM_LORA_RANKS)}",
                    "message": "engine.maxLoraRank must be a rank vLLM supports: one of "
                    f"{list(VLLM_LORA_RANKS)}",
                },
                {
                    "rule": "!has(self.maxCpuLoras) || "
                    f"self.maxCpuLoras >= (has(self.maxLoras) ? self.maxLoras : {DEFAULT_MAX_LORAS})",
                    "message": "engine.maxCpuLoras must be at least engine.maxLoras; raise it or leave it "
                    "unset",
                },
            ]
        }
    }

    max_loras: int = Field(
        default=DEFAULT_MAX_LORAS, ge=1, le=256, description="Adapters resident on a replica at once (LRU)."
    )
    max_lora_rank: int = Field(
        default=32, description=f"Largest adapter rank accepted; one of {VLLM_LORA_RANKS}."
    )
    max_cpu_loras: int | None = Field(
        default=None, ge=1, description="Adapters cached in host memory; at least maxLoras when set."
    )
    max_model_len: int = Field(default=4096, ge=256, le=1_048_576, description="Context length in tokens.")
    max_num_seqs: int | None = Field(default=None, ge=1, description="Sequences batched at once per replica.")
    gpu_memory_utilization: float = Field(
        default=0.9, gt=0, le=0.99, description="Share of accelerator memory vLLM may reserve."
    )
    dtype: str = Field(
        default="auto",
        pattern=r"^(auto|bfloat16|float16|float32)$",
        description="Weight and compute dtype. auto: the model's own on GPUs; on a CPU pool, decided on "
        "each replica's node: bfloat16 where its CPU computes it natively (AVX512-BF16 or AMX), else "
        "float32 (bf16 emulated on AVX2 decoded at a third of float32's speed).",
    )
    tensor_parallel_size: int = Field(default=1, ge=1, le=16, description="GPUs one replica is sharded over.")
    extra_args: dict[str, Any] = Field(
        default_factory=dict,
        description="Further vLLM engine arguments, passed as they are (e.g. {enablePrefixCaching: true}).",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )

    @field_validator("max_lora_rank")
    @classmethod
    def _rank(cls, value: int) -> int:
        if value not in VLLM_LORA_RANKS:
            raise ValueError(f"maxLoraRank {value} is not a rank vLLM supports; use one of {VLLM_LORA_RANKS}")
        return value

    @model_validator(mode="after")
    def _cpu_loras(self) -> EngineSpec:
        if self.max_cpu_loras is not None and self.max_cpu_loras < self.max_loras:
            raise ValueError(
                f"maxCpuLoras ({self.max_cpu_loras}) must be at least maxLoras ({self.max_loras}); "
                "raise it or leave it unset"
            )
        return self


class ReplicaSpec(KubeModel):
    """Serve autoscaling of the pool's replicas."""

    model_config = KubeModel.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {"rule": "self.min <= self.max", "message": "replicas.min must not exceed replicas.max"}
            ]
        }
    }

    min: int = Field(
        default=1, ge=0, le=1000, description="Fewest replicas; 0 lets an idle pool scale to zero."
    )
    max: int = Field(default=1, ge=1, le=1000, description="Most replicas.")
    target_ongoing_requests: int = Field(
        default=16, ge=1, le=10_000, description="Ongoing requests per replica the autoscaler aims at."
    )

    @model_validator(mode="after")
    def _ordered(self) -> ReplicaSpec:
        if self.min > self.max:
            raise ValueError(
                f"replicas.min ({self.min}) exceeds replicas.max ({self.max}); raise max or lower min"
            )
        return self


class GatewayReplicas(KubeModel):
    """Bounds of the gateway's HorizontalPodAutoscaler."""

    model_config = KubeModel.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {
                    "rule": "self.min <= self.max",
                    "message": "gateway.replicas.min must not exceed gateway.replicas.max",
                }
            ]
        }
    }

    min: int = Field(
        default=2,
        ge=1,
        le=1000,
        description="Fewest gateway pods (2: one can be drained or rolled while the other serves).",
    )
    max: int = Field(default=10, ge=1, le=1000, description="Most gateway pods; equal to min: a fixed count.")

    @model_validator(mode="after")
    def _ordered(self) -> GatewayReplicas:
        if self.min > self.max:
            raise ValueError(
                f"gateway.replicas.min ({self.min}) exceeds gateway.replicas.max ({self.max}); raise max or "
                "lower min"
            )
        return self


class GatewaySpec(KubeModel):
    """The pool's gateway pods: how many (a HorizontalPodAutoscaler on CPU), and how they stop."""

    replicas: GatewayReplicas = Field(
        default_factory=GatewayReplicas, description="Bounds of the gateway's HorizontalPodAutoscaler."
    )
    target_cpu_utilization: int = Field(
        default=70,
        ge=1,
        le=1000,
        description="Average CPU use the autoscaler aims at, in percent of each pod's CPU request (500m).",
    )
    drain_seconds: int = Field(
        default=30,
        ge=1,
        le=3600,
        description="When a gateway pod stops (rolling update, scale-down, node drain), calls in flight get "
        "this long to finish before they are cut; then its call log is flushed to NATS and it exits.",
    )


class TeacherSpec(KubeModel):
    """The big model the specialists learn from and fall back to (any OpenAI-compatible API)."""

    url: HttpUrl = Field(description="Base URL of the OpenAI-compatible API, e.g. https://llm.example/v1.")
    model: str = Field(min_length=1, description="Model name to request from the teacher.")
    api_key_secret_ref: SecretKeyRef | None = Field(
        default=None, description="Secret key holding the teacher's API key; never inline."
    )
    timeout_seconds: float = Field(default=120, gt=0, le=3600, description="Per-call timeout.")


class SpecialistPoolSpec(KubeModel):
    model_config = KubeModel.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.engine) || !has(self.engine.tensorParallelSize) || "
                    "self.engine.tensorParallelSize <= 1 || "
                    "(has(self.resources) && has(self.resources.gpu) && "
                    "self.resources.gpu >= self.engine.tensorParallelSize)",
                    "message": "engine.tensorParallelSize needs at least as many GPUs per replica "
                    "(resources.gpu) as it shards the model over",
                }
            ]
        }
    }

    base_model: BaseModelSpec = Field(
        description="The base model every specialist of the pool adapts; immutable (adapters are "
        "trained for it).",
        json_schema_extra={
            "x-kubernetes-validations": [
                {  # its token Secret may change: the weights do not
                    "rule": "self.source == oldSelf.source && has(self.revision) == has(oldSelf.revision) "
                    "&& (!has(self.revision) || self.revision == oldSelf.revision)",
                    "message": "baseModel is immutable: every adapter of the pool was trained for it; "
                    "create a new pool for another base model",
                }
            ]
        },
    )
    model_cache: ModelCacheSpec = Field(
        default_factory=ModelCacheSpec,
        description="Where the serving and training pods keep the base model's weights: an emptyDir of "
        "modelCache.size by default, or an existing PersistentVolumeClaim.",
    )
    engine: EngineSpec = Field(default_factory=EngineSpec, description="vLLM engine settings.")
    replicas: ReplicaSpec = Field(default_factory=ReplicaSpec, description="Autoscaling bounds.")
    resources: ComputeResources = Field(
        default_factory=lambda: ComputeResources(gpu=1),
        description="Resources of each serving replica.",
    )
    node_selector: dict[str, str] = Field(
        default_factory=dict, description="Node labels for the GPU workers."
    )
    tolerations: list[Toleration] = Field(
        default_factory=list, description="Tolerations for the GPU workers."
    )
    teacher: TeacherSpec = Field(description="The teacher model: source of labels and the fallback.")
    image: str | None = Field(default=None, description="Serving image; the operator's default when unset.")
    gateway: GatewaySpec = Field(
        default_factory=GatewaySpec, description="The gateway's autoscaling and shutdown."
    )
    pod_template: PodTemplates = Field(
        default_factory=PodTemplates,
        description="What to set on the pool's gateway, serving and training pods (pull secrets, service "
        "account, priority class, annotations, labels), over the platform's.",
    )
    max_training_jobs: int = Field(
        default=2,
        ge=1,
        le=1000,
        description="Training jobs of the pool's Specialists running at once; the others wait, with a "
        "Trained=False WaitingForTrainingSlot condition, until one ends.",
    )

    @model_validator(mode="after")
    def _tensor_parallel_fits(self) -> SpecialistPoolSpec:
        if self.engine.tensor_parallel_size > 1 and self.resources.gpu < self.engine.tensor_parallel_size:
            raise ValueError(
                f"engine.tensorParallelSize is {self.engine.tensor_parallel_size} but resources.gpu is "
                f"{self.resources.gpu}; give each replica at least as many GPUs as it is sharded over"
            )
        return self


class PoolPhase(StrEnum):
    PENDING = "Pending"
    PROVISIONING = "Provisioning"
    READY = "Ready"
    DEGRADED = "Degraded"
    FAILED = "Failed"


class SpecialistPoolStatus(KubeModel):
    phase: PoolPhase = Field(default=PoolPhase.PENDING, description="Summary of the pool's state.")
    observed_generation: int | None = Field(default=None, description="Generation last reconciled.")
    conditions: list[Condition] = Field(
        default_factory=list,
        json_schema_extra=CONDITIONS_LIST_MAP,
        description="Ready: whether the Serve application runs, and why not, in KubeRay's and Serve's words.",
    )
    ready_replicas: int = Field(
        default=0, ge=0, description="Serving replicas that are up (KubeRay's numServeEndpoints)."
    )
    endpoint: str | None = Field(
        default=None, description="In-cluster OpenAI base URL of the pool's gateway (agents point here)."
    )
    service_name: str | None = Field(default=None, description="Name of the RayService serving the pool.")
