"""Data-parallel LoRA training over several workers with Ray Train (``training.workers > 1``).

Each worker runs the same :func:`train_lora` inside a ``TorchTrainer``; Ray Train sets up
the process group (NCCL on GPUs, gloo on CPUs) and transformers' Trainer then runs it as
distributed data parallel. ``training.batchSize`` is the batch of one optimizer step
across all workers. Each worker resolves the base model from its source on its own node
(:class:`protege.models.resolve.ModelResolver`: a path resolved on the driver's node need
not exist on the others; each finds the model in, or fetches it into, its pod's model cache)
and trains in a directory of its own node. Rank 0 reports the adapter as the run's Ray Train
checkpoint, which Ray Train persists to the run's :class:`RunStorage`: in a RayJob, the
artifact store (storage every pod reaches), so the driver on the head pod downloads what rank
0 wrote on a worker pod. The run's copy there is removed once the driver has it.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from protege.api.specialist import TrainingSpec
from protege.training.trainer.lora import TrainResult

if TYPE_CHECKING:
    import pyarrow.fs

    from protege.store.artifacts import ArtifactStore

RUNS_AREA = "scratch/ray-train"  # under the artifact store's root: runs while their driver downloads them


@dataclass(frozen=True)
class RunStorage:
    """Where Ray Train persists a run: a path on ``filesystem`` (None: the local one, for one node)."""

    path: str
    filesystem: pyarrow.fs.FileSystem | None = None

    @classmethod
    def in_store(cls, store: ArtifactStore) -> RunStorage:
        """The artifact store's runs area, through the store's own filesystem (its S3 endpoint and keys)."""
        import pyarrow.fs

        return cls(f"{store.root}/{RUNS_AREA}", pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(store.fs)))

    def remove(self, name: str) -> None:
        import pyarrow.fs

        filesystem = self.filesystem or pyarrow.fs.LocalFileSystem()
        path = f"{self.path}/{name}"
        if filesystem.get_file_info(path).type is not pyarrow.fs.FileType.NotFound:
            filesystem.delete_dir(path)


def _worker_loop(config: dict[str, Any]) -> None:
    import ray.train

    from protege.config import load_settings
    from protege.models.resolve import ModelResolver
    from protege.training.trainer.lora import train_lora

    context = ray.train.get_context()
    if context.get_world_size() != config["workers"]:
        raise RuntimeError(f"ran on {context.get_world_size()} workers, not {config['workers']}")
    spec = TrainingSpec.model_validate(config["spec"])
    model_dir = ModelResolver.from_settings(load_settings()).resolve(config["base_model"], config["revision"])
    with tempfile.TemporaryDirectory(prefix=f"protege-rank{context.get_world_rank()}-") as work:
        result = train_lora(
            model_dir,
            config["train_rows"],
            config["validation_rows"],
            spec,
            Path(work),
            max_steps=config["max_steps"],
            eval_every=config["eval_every"],
        )
        metrics = {k: v for k, v in result.__dict__.items() if k != "adapter_dir"}
        # every rank reports (a barrier); rank 0's adapter is the run's checkpoint, uploaded to storage
        rank0 = context.get_world_rank() == 0
        checkpoint = ray.train.Checkpoint.from_directory(str(result.adapter_dir)) if rank0 else None
        ray.train.report({"result": json.dumps(metrics)}, checkpoint=checkpoint)


def train_lora_distributed(
    base_model: str,
    train_rows: Sequence[dict[str, Any]],
    validation_rows: Sequence[dict[str, Any]],
    spec: TrainingSpec,
    output_dir: Path,
    *,
    storage: RunStorage,
    name: str,
    revision: str | None = None,
    max_steps: int | None = None,
    eval_every: int | None = None,
) -> TrainResult:
    """Train the base model ``base_model`` (a pool's baseModel.source, at ``revision``) on
    ``spec.workers`` Ray Train workers; rank 0's adapter comes back through ``storage`` (the run
    ``name`` there) into ``output_dir``/adapter."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    per_worker = spec.model_copy(update={"batch_size": max(1, spec.batch_size // spec.workers)})
    use_gpu = spec.resources.gpu > 0
    resources = {"GPU": float(spec.resources.gpu)} if use_gpu else {"CPU": 1.0}
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={
            "spec": per_worker.to_kube(),
            "base_model": base_model,
            "revision": revision,
            "train_rows": list(train_rows),
            "validation_rows": list(validation_rows),
            "max_steps": max_steps,
            "eval_every": eval_every,
            "workers": spec.workers,
        },
        scaling_config=ScalingConfig(
            num_workers=spec.workers, use_gpu=use_gpu, resources_per_worker=resources
        ),
        run_config=RunConfig(storage_path=storage.path, storage_filesystem=storage.filesystem, name=name),
    )
    try:
        run = trainer.fit()
        if run.checkpoint is None:
            raise RuntimeError("the training run reported no adapter: rank 0 never reported its checkpoint")
        adapter = output_dir / "adapter"
        run.checkpoint.to_directory(str(adapter))
        metrics = json.loads((run.metrics or {})["result"])
    finally:
        storage.remove(name)
    return TrainResult(adapter_dir=adapter, **metrics)
