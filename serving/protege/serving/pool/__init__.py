"""A SpecialistPool as a Ray Serve application: one base model on vLLM, many LoRA adapters."""

from protege.serving.pool.config import ENTRYPOINT, deployment_options, engine_args, serve_application

__all__ = ["ENTRYPOINT", "deployment_options", "engine_args", "serve_application"]
