"""The artifact store: content-addressed blobs and named, versioned artifacts over fsspec.

Layout under the store's root URL (``file:///...`` or ``s3://bucket/prefix``)::

    blobs/sha256/ab/abcdef...                      one immutable blob, named by its digest
    <kind>/<name>/<version>/<relative path>        the files of one artifact version
    <kind>/<name>/<version>/manifest.json          written last: the version exists once it does

A version id is derived from the files' digests, so the same content always gets the same
version and a version never changes. Every read is checked against its digest: a corrupted
object raises :class:`CorruptedArtifactError` and is never handed out.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from protege.config import S3Settings, Settings
from protege.store.staging import staged_directory

_CHUNK = 1 << 20
_KIND = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,127}$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
MANIFEST = "manifest.json"


class ArtifactError(Exception):
    """Base class of artifact store errors."""


class ArtifactNotFoundError(ArtifactError, FileNotFoundError):
    pass


class CorruptedArtifactError(ArtifactError):
    """Stored bytes do not match their recorded sha256: never use them."""


class FileEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str = Field(description="Path inside the artifact, '/'-separated.")
    sha256: str = Field(description="Hex sha256 of the file.")
    size: int = Field(ge=0, description="Size in bytes.")


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    schema_version: int = Field(default=1, description="Manifest schema version.")
    kind: str = Field(description="Artifact kind: dataset, adapter, report, model, ...")
    name: str = Field(description="Artifact name, e.g. the specialist or task it belongs to.")
    version: str = Field(description="Content-derived version id.")
    created_at: AwareDatetime = Field(description="When this version was first stored.")
    files: list[FileEntry] = Field(description="Every file of the version with its digest.")
    metadata: dict[str, Any] = Field(default_factory=dict, description="Lineage, metrics, parameters.")

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)


def s3_storage_options(s3: S3Settings, *, attempts: int | None = None) -> dict[str, Any]:
    """fsspec's options for an S3 client with the settings' endpoint and keys (the AWS credential
    chain without keys); ``attempts`` caps its tries per request (its own retries with backoff)."""
    options: dict[str, Any] = {}
    if s3.endpoint_url:
        options["client_kwargs"] = {"endpoint_url": str(s3.endpoint_url), "region_name": s3.region}
    if s3.access_key_id and s3.secret_access_key:
        options["key"] = s3.access_key_id.get_secret_value()
        options["secret"] = s3.secret_access_key.get_secret_value()
    if attempts is not None:
        options["config_kwargs"] = {"retries": {"total_max_attempts": attempts}}
    return options


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def content_version(files: Iterable[FileEntry]) -> str:
    """The version id of a file set: the same files always give the same id."""
    listing = "\n".join(f"{f.path}\0{f.sha256}" for f in sorted(files, key=lambda f: f.path))
    return "v" + hashlib.sha256(listing.encode()).hexdigest()[:16]


def _check(pattern: re.Pattern[str], value: str, what: str, example: str) -> str:
    if not pattern.match(value):
        raise ValueError(
            f"artifact {what} {value!r} is not valid; use lowercase letters, digits and '-', e.g. {example!r}"
        )
    return value


def _relative(path: str) -> str:
    pure = PurePosixPath(path)
    if pure.is_absolute() or ".." in pure.parts or not pure.parts:
        raise ValueError(f"artifact file path {path!r} must be relative and stay inside the artifact")
    return pure.as_posix()


class ArtifactStore:
    def __init__(self, url: str, storage_options: Mapping[str, Any] | None = None) -> None:
        self.url = url.rstrip("/")
        options = dict(storage_options or {})
        if self.url.startswith("s3://"):
            # Other processes write here (the flywheel, jobs, the operator): a cached listing
            # would hide their new versions from a long-running reader such as the router.
            options.setdefault("use_listings_cache", False)
        self.fs, root = fsspec.core.url_to_fs(self.url, **options)
        # Listing a name's versions reads each manifest once per store, not on every listing.
        self._manifests: dict[tuple[str, str, str], Manifest] = {}
        self.root = root.rstrip("/")
        self._local = isinstance(self.fs, LocalFileSystem)
        if self._local:
            self.fs.makedirs(self.root, exist_ok=True)

    @classmethod
    def from_settings(cls, settings: Settings, *, attempts: int | None = None) -> ArtifactStore:
        """The configured store; ``attempts`` caps the S3 client's tries per request (its own
        retries with backoff), for a reader that retries by itself, such as a periodic refresh."""
        url = settings.artifact_store_url
        options = s3_storage_options(settings.s3, attempts=attempts) if url.startswith("s3://") else {}
        return cls(url, options)

    # --- paths -------------------------------------------------------------------------
    def _path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def _blob_path(self, digest: str) -> str:
        if not _DIGEST.match(digest):
            raise ValueError(f"{digest!r} is not a blob digest; digests look like 'sha256:<64 hex digits>'")
        hexdigest = digest.removeprefix("sha256:")
        return self._path("blobs", "sha256", hexdigest[:2], hexdigest)

    def _version_path(self, kind: str, name: str, version: str, *rest: str) -> str:
        _check(_KIND, kind, "kind", "adapter")
        _check(_NAME, name, "name", "invoice-extractor")
        return self._path(kind, name, version, *rest)

    def uri(self, kind: str, name: str, version: str) -> str:
        """URL of a version's directory, for consumers that read files directly (vLLM, Ray Serve)."""
        path = self._version_path(kind, name, version)
        return f"{self.fs.protocol if isinstance(self.fs.protocol, str) else self.fs.protocol[0]}://{path}"

    # --- writing -----------------------------------------------------------------------
    def _write_bytes(self, path: str, data: bytes) -> None:
        if self._local:
            self._atomic_local(path, lambda handle: handle.write(data))
        else:
            self.fs.pipe_file(path, data)

    def _write_file(self, path: str, source: Path) -> None:
        if self._local:

            def copy(handle: Any) -> None:
                with source.open("rb") as src:
                    while chunk := src.read(_CHUNK):
                        handle.write(chunk)

            self._atomic_local(path, copy)
        else:
            self.fs.put_file(str(source), path)

    def _atomic_local(self, path: str, write: Any) -> None:
        directory = os.path.dirname(path)
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as handle:
                write(handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    # --- blobs -------------------------------------------------------------------------
    def put_blob(self, data: bytes) -> str:
        """Store ``data`` once; return its digest ``sha256:<hex>``."""
        digest = "sha256:" + sha256_bytes(data)
        path = self._blob_path(digest)
        if not self.fs.exists(path):
            self._write_bytes(path, data)
        return digest

    def get_blob(self, digest: str) -> bytes:
        path = self._blob_path(digest)
        data = self._read(path, f"blob {digest}")
        actual = sha256_bytes(data)
        if "sha256:" + actual != digest:
            raise CorruptedArtifactError(
                f"blob {digest} is corrupted: its stored bytes hash to sha256:{actual}; "
                "delete it and store it again"
            )
        return data

    def has_blob(self, digest: str) -> bool:
        return bool(self.fs.exists(self._blob_path(digest)))

    def list_blobs(self) -> list[str]:
        base = self._path("blobs", "sha256")
        if not self.fs.exists(base):
            return []
        return sorted("sha256:" + PurePosixPath(p).name for p in self.fs.find(base) if "/.tmp-" not in p)

    # --- keyed objects -----------------------------------------------------------------
    # Small objects under a caller-chosen key in an area (curated examples, registries):
    # writing the same key again replaces the object atomically, so a writer that derives
    # keys from content is idempotent by construction.
    def _object_path(self, area: str, key: str) -> str:
        _check(_KIND, area, "area", "examples")
        _check(_NAME, key, "key", "acme.3f2a9c")
        return self._path("objects", area, key)

    def put_object(self, area: str, key: str, data: bytes) -> None:
        self._write_bytes(self._object_path(area, key), data)

    def get_object(self, area: str, key: str) -> bytes:
        return self._read(self._object_path(area, key), f"object {area}/{key}")

    def has_object(self, area: str, key: str) -> bool:
        return bool(self.fs.exists(self._object_path(area, key)))

    def list_objects(self, area: str, prefix: str = "") -> list[str]:
        """Keys in ``area`` starting with ``prefix``, sorted."""
        base = self._path("objects", _check(_KIND, area, "area", "examples"))
        if not self.fs.exists(base):
            return []
        names = (PurePosixPath(p).name for p in self.fs.ls(base, detail=False))
        return sorted(n for n in names if n.startswith(prefix) and not n.startswith(".tmp-"))

    def delete_object(self, area: str, key: str) -> None:
        self.fs.rm(self._object_path(area, key))

    def _read(self, path: str, what: str) -> bytes:
        try:
            return bytes(self.fs.cat_file(path))
        except FileNotFoundError:
            raise ArtifactNotFoundError(f"{what} is not in the store at {self.url}") from None

    # --- versioned artifacts -----------------------------------------------------------
    def put_artifact(
        self,
        kind: str,
        name: str,
        files: Path | Mapping[str, bytes],
        metadata: Mapping[str, Any] | None = None,
    ) -> Manifest:
        """Store a file set (a directory, or path → bytes) as a version of ``kind/name``.

        Storing the same files again returns the existing version; the manifest is written last.
        """
        sources = self._collect(files)
        entries = [
            FileEntry(path=p, sha256=digest, size=size) for p, (digest, size, _) in sorted(sources.items())
        ]
        if not entries:
            raise ValueError(f"artifact {kind}/{name} has no files; give at least one")
        version = content_version(entries)
        existing = self._maybe_manifest(kind, name, version)
        if existing is not None:
            return existing
        for path, (_, _, source) in sources.items():
            target = self._version_path(kind, name, version, path)
            if isinstance(source, Path):
                self._write_file(target, source)
            else:
                self._write_bytes(target, source)
        manifest = Manifest(
            kind=kind,
            name=name,
            version=version,
            created_at=datetime.now(UTC),
            files=entries,
            metadata=dict(metadata or {}),
        )
        self._write_bytes(
            self._version_path(kind, name, version, MANIFEST), manifest.model_dump_json(indent=2).encode()
        )
        return manifest

    @staticmethod
    def _collect(files: Path | Mapping[str, bytes]) -> dict[str, tuple[str, int, Path | bytes]]:
        if isinstance(files, Path):
            if not files.is_dir():
                raise ArtifactNotFoundError(f"{files} is not a directory of artifact files")
            return {
                p.relative_to(files).as_posix(): (sha256_file(p), p.stat().st_size, p)
                for p in sorted(files.rglob("*"))
                if p.is_file()
            }
        return {_relative(p): (sha256_bytes(data), len(data), data) for p, data in files.items()}

    def _maybe_manifest(self, kind: str, name: str, version: str) -> Manifest | None:
        try:
            return self.manifest(kind, name, version)
        except ArtifactNotFoundError:
            return None

    def manifest(self, kind: str, name: str, version: str) -> Manifest:
        known = self._manifests.get((kind, name, version))
        if known is not None:  # a version is immutable once its manifest exists
            return known
        data = self._read(self._version_path(kind, name, version, MANIFEST), f"{kind}/{name}@{version}")
        manifest = Manifest.model_validate_json(data)
        if content_version(manifest.files) != version:
            raise CorruptedArtifactError(
                f"{kind}/{name}@{version}: its manifest lists files of another version; "
                "the manifest was altered"
            )
        self._manifests[(kind, name, version)] = manifest
        return manifest

    def versions(self, kind: str, name: str) -> list[Manifest]:
        """Every complete version of ``kind/name``, oldest first."""
        base = self._path(
            _check(_KIND, kind, "kind", "adapter"), _check(_NAME, name, "name", "invoice-extractor")
        )
        if not self.fs.exists(base):
            return []
        found = []
        for entry in self.fs.ls(base, detail=False):
            version = PurePosixPath(entry).name
            manifest = self._maybe_manifest(kind, name, version)
            if manifest is not None:
                found.append(manifest)
        return sorted(found, key=lambda m: (m.created_at, m.version))

    def delete(self, kind: str, name: str) -> int:
        """Remove every version of ``kind/name`` (a deleted Specialist's adapters); idempotent.

        Returns how many versions there were.
        """
        count = len(self.versions(kind, name))
        for key in [key for key in self._manifests if key[:2] == (kind, name)]:
            del self._manifests[key]
        base = self._path(_check(_KIND, kind, "kind", "adapter"), _check(_NAME, name, "name", "x"))
        if self.fs.exists(base):
            self.fs.rm(base, recursive=True)
        return count

    def names(self, kind: str) -> list[str]:
        base = self._path(_check(_KIND, kind, "kind", "adapter"))
        if not self.fs.exists(base):
            return []
        return sorted(PurePosixPath(p).name for p in self.fs.ls(base, detail=False))

    def latest(self, kind: str, name: str) -> Manifest:
        versions = self.versions(kind, name)
        if not versions:
            raise ArtifactNotFoundError(f"no version of {kind}/{name} in the store at {self.url}")
        return versions[-1]

    def read_file(self, kind: str, name: str, version: str, path: str) -> bytes:
        """One file of a version, checked against the manifest."""
        manifest = self.manifest(kind, name, version)
        entry = next((f for f in manifest.files if f.path == _relative(path)), None)
        if entry is None:
            raise ArtifactNotFoundError(f"{kind}/{name}@{version} has no file {path!r}")
        data = self._read(
            self._version_path(kind, name, version, entry.path), f"{kind}/{name}@{version}/{path}"
        )
        self._verify(manifest, entry, sha256_bytes(data))
        return data

    def download(self, kind: str, name: str, version: str, destination: Path) -> Manifest:
        """Copy a version's files into ``destination`` (new, or an empty directory), verifying each.

        The files go to a temporary directory beside ``destination``, which is renamed into
        place only once every file matched its manifest's sha256: a failure midway (the store
        away, a transfer cut short, a corrupted file) leaves nothing at ``destination``, so a
        directory there is always a whole, verified version.
        """
        manifest = self.manifest(kind, name, version)

        def fill(staging: Path) -> None:
            for entry in manifest.files:
                target = staging / entry.path
                target.parent.mkdir(parents=True, exist_ok=True)
                self.fs.get_file(self._version_path(kind, name, version, entry.path), str(target))
                self._verify(manifest, entry, sha256_file(target))

        if not staged_directory(destination, fill):  # replaces a missing or empty destination only
            raise FileExistsError(
                f"{destination} already holds files; download {kind}/{name}@{version} "
                "into a new or empty directory"
            )
        return manifest

    @staticmethod
    def _verify(manifest: Manifest, entry: FileEntry, actual: str) -> None:
        if actual != entry.sha256:
            raise CorruptedArtifactError(
                f"{manifest.kind}/{manifest.name}@{manifest.version}/{entry.path} is corrupted: sha256 "
                f"{actual} instead of {entry.sha256}; store the artifact again"
            )
