"""Where a base model's files are inside the pods that load them (pure).

The operator's renderer mounts volumes at these paths and the resolver
(:mod:`protege.models.resolve`) reads them there: the two sides share these names.

- ``MODEL_CACHE_DIR``: the pool's model cache volume in every serving worker and training pod,
  the pods' model store (``PROTEGE_MODEL_STORE``): catalogue models pulled there, ``s3://``
  models downloaded there, and the Hugging Face hub's cache beneath it (``HF_HOME``);
- ``PVC_MOUNT_ROOT``: a ``pvc://claim/path`` source's claim is mounted read-only at
  ``PVC_MOUNT_ROOT/claim``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath

MODEL_CACHE_DIR = PurePosixPath("/models/cache")
HF_HOME_DIR = MODEL_CACHE_DIR / "huggingface"
PVC_MOUNT_ROOT = PurePosixPath("/models/pvc")
HF_TOKEN_VARIABLE = "HF_TOKEN"  # the hub token, read by the resolver (and huggingface_hub)


@dataclass(frozen=True)
class ObjectSource:
    """``s3://bucket/prefix``: the model's files are the objects under the prefix."""

    bucket: str
    prefix: str  # without slashes at either end; empty: the whole bucket


@dataclass(frozen=True)
class VolumeSource:
    """``pvc://claim/path``: the model's directory at ``path`` inside the claim's volume."""

    claim: str
    path: str  # without slashes at either end; empty: the volume's root

    def mount_dir(self, root: PurePosixPath = PVC_MOUNT_ROOT) -> PurePosixPath:
        """Where a pod mounts the claim."""
        return root / self.claim

    def model_dir(self, root: PurePosixPath = PVC_MOUNT_ROOT) -> PurePosixPath:
        """Where a pod finds the model."""
        return self.mount_dir(root) / self.path if self.path else self.mount_dir(root)


def _split(source: str, scheme: str) -> tuple[str, str] | None:
    if not source.startswith(f"{scheme}://"):
        return None
    first, _, rest = source.removeprefix(f"{scheme}://").strip("/").partition("/")
    return first, rest.strip("/")


def object_source(source: str) -> ObjectSource | None:
    """The bucket and prefix of an ``s3://`` source; None for any other."""
    parts = _split(source, "s3")
    return ObjectSource(*parts) if parts else None


def volume_source(source: str) -> VolumeSource | None:
    """The claim and path of a ``pvc://`` source; None for any other."""
    parts = _split(source, "pvc")
    return VolumeSource(*parts) if parts else None
