"""Data-parallel LoRA training over several workers with Ray Train (``training.workers > 1``).

Each worker runs the same :func:`train_lora` inside a ``TorchTrainer``; Ray Train sets up
the process group (NCCL on GPUs, gloo on CPUs) and transformers' Trainer then runs it as
distributed data parallel. ``training.batchSize`` is the batch of one optimizer step
across all workers. Each worker resolves the base model from its source on its own node
(:class:`protege.models.resolve.ModelResolver`: a path resolved on the driver's node need
not exist on the others; each finds the model in, or fetches it into, its pod's model cache).
Rank 0 writes the adapter and the result into ``output_dir``, which must be storage every
worker's node shares (a PVC in a RayJob); on one node any directory does.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from protege.api.specialist import TrainingSpec
from protege.training.trainer.lora import TrainResult

RESULT_FILE = "train-result.json"


def _worker_loop(config: dict[str, Any]) -> None:
    import ray.train

    from protege.config import load_settings
    from protege.models.resolve import ModelResolver
    from protege.training.trainer.lora import train_lora

    spec = TrainingSpec.model_validate(config["spec"])
    output = Path(config["output_dir"])
    model_dir = ModelResolver.from_settings(load_settings()).resolve(config["base_model"], config["revision"])
    result = train_lora(
        model_dir,
        config["train_rows"],
        config["validation_rows"],
        spec,
        output,
        max_steps=config["max_steps"],
        eval_every=config["eval_every"],
    )
    context = ray.train.get_context()
    if context.get_world_size() != config["workers"]:
        raise RuntimeError(f"ran on {context.get_world_size()} workers, not {config['workers']}")
    if context.get_world_rank() == 0:
        data = {**result.__dict__, "adapter_dir": str(result.adapter_dir)}
        (output / RESULT_FILE).write_text(json.dumps(data))


def train_lora_distributed(
    base_model: str,
    train_rows: Sequence[dict[str, Any]],
    validation_rows: Sequence[dict[str, Any]],
    spec: TrainingSpec,
    output_dir: Path,
    *,
    revision: str | None = None,
    max_steps: int | None = None,
    eval_every: int | None = None,
) -> TrainResult:
    """Train the base model ``base_model`` (a pool's baseModel.source, at ``revision``) on
    ``spec.workers`` Ray Train workers (rank 0's result)."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    per_worker = spec.model_copy(update={"batch_size": max(1, spec.batch_size // spec.workers)})
    use_gpu = spec.resources.gpu > 0
    resources = {"GPU": float(spec.resources.gpu)} if use_gpu else {"CPU": 1.0}
    output_dir.mkdir(parents=True, exist_ok=True)
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={
            "spec": per_worker.to_kube(),
            "base_model": base_model,
            "revision": revision,
            "train_rows": list(train_rows),
            "validation_rows": list(validation_rows),
            "output_dir": str(output_dir),
            "max_steps": max_steps,
            "eval_every": eval_every,
            "workers": spec.workers,
        },
        scaling_config=ScalingConfig(
            num_workers=spec.workers, use_gpu=use_gpu, resources_per_worker=resources
        ),
        run_config=RunConfig(storage_path=str(output_dir / "ray-train"), name="lora"),
    )
    trainer.fit()
    data = json.loads((output_dir / RESULT_FILE).read_text())
    data["adapter_dir"] = Path(data["adapter_dir"])
    return TrainResult(**data)
