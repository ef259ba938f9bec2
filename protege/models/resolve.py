"""A base model's source → the directory its weights are in: the one resolver of every loader.

A pool's replicas, a training job (and each of its Ray Train workers) and ``protege eval`` all
load the base model from what :meth:`ModelResolver.resolve` returns, a local directory:

- a catalogue id: its directory in the model store, pulled there first when missing (as
  ``protege models pull`` does: an offline source's GGUF converted once) — catalogue models
  without an offline source come from the hub, as ``hf://`` does;
- ``file:///path``: the path;
- ``pvc://claim/path``: the path where the pool's pods mount the claim
  (:data:`protege.models.sources.PVC_MOUNT_ROOT`);
- ``s3://bucket/prefix``: the objects under the prefix, downloaded once into the model store
  with the artifact store's S3 settings: into a new directory, every file checked (its size,
  and its sha256 where the prefix holds a ``protege-model.json``, as ``protege models pull``
  writes), then renamed into place. A second replica or a restart on the same cache finds it
  there and reads nothing from S3 (one starting meanwhile waits for the first's download:
  :func:`protege.store.staging.exclusive`); a download that fails midway leaves nothing behind;
- ``hf://org/name``: the hub's snapshot at the spec's ``revision`` (the default branch
  without), in the hub's cache (``HF_HOME``: the model cache volume in the pods), with the
  token in ``HF_TOKEN`` when it is set (a gated or private model).

In the pods, the model store is the pool's model cache volume
(:data:`protege.models.sources.MODEL_CACHE_DIR`, ``PROTEGE_MODEL_STORE``).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

from protege.config import S3Settings, Settings
from protege.models.catalogue import lookup
from protege.models.pull import HUB_FILES, MARKER, ModelUnavailableError, pull
from protege.models.sources import (
    HF_TOKEN_VARIABLE,
    PVC_MOUNT_ROOT,
    ObjectSource,
    object_source,
    volume_source,
)
from protege.store.artifacts import s3_storage_options, sha256_file
from protege.store.retry import Backoff
from protege.store.staging import exclusive, staged_directory

log = logging.getLogger(__name__)
T = TypeVar("T")


class _Mismatch(Exception):
    """A downloaded file is not what the listing or the marker says (a transfer cut short)."""


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())[:300]


def _permanent(error: Exception) -> bool:
    """Faults that another try cannot mend: a missing object, refused access, a bad source."""
    return isinstance(error, FileNotFoundError | PermissionError | ModelUnavailableError)


@dataclass(frozen=True)
class ModelResolver:
    """Resolves sources into ``store`` (the model store: the model cache volume in the pods)."""

    store: Path
    s3: S3Settings = field(default_factory=S3Settings)
    pvc_root: PurePosixPath = PVC_MOUNT_ROOT
    hub_cache: Path | None = None  # huggingface_hub's own when None: $HF_HOME/hub
    hub_endpoint: str | None = None  # huggingface_hub's own when None: $HF_ENDPOINT or the hub
    retry: Backoff = field(default_factory=Backoff)
    sleep: Callable[[float], None] = time.sleep

    @classmethod
    def from_settings(cls, settings: Settings) -> ModelResolver:
        return cls(settings.model_dir, settings.s3)

    def resolve(self, source: str, revision: str | None = None) -> Path:
        """The local directory of the model ``source`` names (fetched into the store when needed)."""
        if source.startswith("file://"):
            return self._model_dir(Path(source.removeprefix("file://")), source)
        if (volume := volume_source(source)) is not None:
            return self._model_dir(Path(volume.model_dir(self.pvc_root)), source, claim=volume.claim)
        if (objects := object_source(source)) is not None:
            return self._from_s3(source, objects)
        if source.startswith("hf://"):
            return self._from_hub(source.removeprefix("hf://").strip("/"), revision)
        if "://" in source:
            raise ModelUnavailableError(f"{source}: use hf://, s3://, pvc://, file:// or a catalogue id")
        entry = lookup(source)
        if (self.store / entry.id / MARKER).is_file():
            return self.store / entry.id
        if entry.local is not None:
            return pull(entry.id, self.store)
        return self._from_hub(entry.hf_id, revision)

    def _model_dir(self, path: Path, source: str, *, claim: str | None = None) -> Path:
        if (path / "config.json").is_file():
            return path
        if claim is not None and not Path(self.pvc_root / claim).is_dir():
            raise ModelUnavailableError(
                f"{source}: the claim {claim!r} is not mounted at {self.pvc_root / claim}; pvc:// models "
                "load in the pool's serving and training pods, which mount the claim (elsewhere, use "
                "file:///path)"
            )
        where = f"inside the claim {claim!r} (mounted at {self.pvc_root / claim})" if claim else "here"
        raise ModelUnavailableError(
            f"{source}: {path} is not a model directory (no config.json) {where}; give the directory "
            "that holds the model's config.json, weights and tokenizer"
        )

    # --- s3:// -------------------------------------------------------------------------
    def _from_s3(self, source: str, objects: ObjectSource) -> Path:
        parts = [p for p in objects.prefix.split("/") if p]
        if any(p in (".", "..") for p in parts):
            raise ModelUnavailableError(f"{source}: a prefix with '.' or '..' parts is not supported")
        target = self.store.joinpath("s3", objects.bucket, *parts)
        if (target / MARKER).is_file():  # a directory there is whole: it was renamed into place
            return target
        with exclusive(target):  # replicas on one cache: one downloads, the others wait for it
            if (target / MARKER).is_file():
                return target
            return self._download_s3(source, objects, target)

    def _download_s3(self, source: str, objects: ObjectSource, target: Path) -> Path:
        import fsspec

        # One try per request: the backoff below is the only retry (and it logs each).
        fs = fsspec.filesystem(
            "s3",
            skip_instance_cache=True,
            use_listings_cache=False,
            **s3_storage_options(self.s3, attempts=1),
        )
        root = f"{objects.bucket}/{objects.prefix}" if objects.prefix else objects.bucket
        listing = self._retrying(f"listing {source}", lambda: fs.find(root, detail=True))
        sizes = {
            PurePosixPath(path).relative_to(root).as_posix(): int(info["size"])
            for path, info in listing.items()
            if info.get("type") == "file" and not path.endswith("/")
        }
        if not sizes:
            raise ModelUnavailableError(
                f"{source} holds no objects; upload the model's directory there (config.json, the "
                "*.safetensors weights, the tokenizer's files) or correct the bucket and prefix"
            )
        if "config.json" not in sizes:
            raise ModelUnavailableError(
                f"{source} holds no config.json at its top; point the source at the prefix of the "
                "model's directory"
            )
        expected = self._expected_digests(fs, source, root, sizes)

        def fill(staging: Path) -> None:
            digests = {}
            for name, size in sorted(sizes.items()):
                if name == MARKER:
                    continue  # replaced by the one written below
                fetch = partial(
                    self._download, fs, f"{root}/{name}", staging / name, size, expected.get(name)
                )
                digests[name] = self._retrying(f"downloading {source}/{name}", fetch)
            marker = {"id": source, "source": source, "pulled_at": datetime.now(UTC).isoformat()}
            (staging / MARKER).write_text(json.dumps({**marker, "files": digests}, indent=2))

        log.info(
            "downloading %s (%d files, %d bytes) into %s", source, len(sizes), sum(sizes.values()), target
        )
        if not staged_directory(target, fill) and not (target / MARKER).is_file():
            raise ModelUnavailableError(
                f"{target} holds files that are not a finished download of {source}; delete it and retry"
            )
        return target  # placed by this process, or by another one first

    def _expected_digests(self, fs: Any, source: str, root: str, sizes: dict[str, int]) -> dict[str, str]:
        """sha256 by file from the prefix's protege-model.json (a pulled model's), if it has one."""
        if MARKER not in sizes:
            return {}
        data = self._retrying(f"reading {source}/{MARKER}", lambda: fs.cat_file(f"{root}/{MARKER}"))
        try:
            files = dict(json.loads(data)["files"])
        except (ValueError, KeyError, TypeError):
            raise ModelUnavailableError(f"{source}/{MARKER} is not a model marker (no files)") from None
        missing = sorted(set(files) - set(sizes))
        if missing:
            raise ModelUnavailableError(
                f"{source}: its {MARKER} lists files that are not there ({', '.join(missing)}); "
                "upload the whole model directory again"
            )
        return {str(name): str(digest) for name, digest in files.items()}

    @staticmethod
    def _download(fs: Any, remote: str, local: Path, size: int, sha256: str | None) -> str:
        """One object into ``local``, checked against its listed size and its marker's sha256."""
        local.parent.mkdir(parents=True, exist_ok=True)
        fs.get_file(remote, str(local))
        if (got := local.stat().st_size) != size:
            raise _Mismatch(f"{remote}: {got} bytes arrived, the listing says {size}")
        digest = sha256_file(local)
        if sha256 is not None and digest != sha256:
            raise _Mismatch(f"{remote}: sha256 {digest}, its {MARKER} says {sha256}")
        return digest

    def _retrying(self, what: str, attempt: Callable[[], T]) -> T:
        """``attempt`` until it succeeds, with the backoff's delays between tries (S3 faults)."""
        tries = max(1, self.retry.attempts)
        for number in range(1, tries + 1):
            try:
                return attempt()
            except Exception as error:
                reason = f"{type(error).__name__}: {_one_line(error)}"
                if _permanent(error):
                    if isinstance(error, ModelUnavailableError):
                        raise
                    raise ModelUnavailableError(f"{what} failed ({reason})") from None
                if number == tries:
                    times = f"{tries} times in a row, last" if tries > 1 else "once"
                    raise ModelUnavailableError(f"{what} failed {times} with {reason}") from None
                delay = self.retry.delay(number)
                log.warning("%s failed (%s); trying again in %g s", what, reason, delay)
                self.sleep(delay)
        raise AssertionError("unreachable")

    # --- hf:// -------------------------------------------------------------------------
    def _from_hub(self, hub_id: str, revision: str | None) -> Path:
        from huggingface_hub import snapshot_download

        token = os.environ.get(HF_TOKEN_VARIABLE) or None
        try:
            path = snapshot_download(
                hub_id,
                revision=revision,
                cache_dir=self.hub_cache,
                endpoint=self.hub_endpoint,
                token=token,
                allow_patterns=HUB_FILES,
            )
        except Exception as error:  # network, auth, a revision that does not exist: the same way out
            at = f" at revision {revision!r}" if revision else ""
            gated = (
                "check that its token may read it"
                if token
                else "a gated or private model needs a token: set baseModel.tokenSecretRef"
            )
            raise ModelUnavailableError(
                f"could not fetch {hub_id}{at} from the Hugging Face hub ({type(error).__name__}: "
                f"{_one_line(error)}); {gated}; without hub access, put the model in S3 (s3://) or "
                "a volume (pvc://) instead"
            ) from None
        return Path(path)
