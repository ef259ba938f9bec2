"""Artifact storage (datasets, adapters, reports, models) over file:// and s3://."""

from protege.store.artifacts import (
    ArtifactError,
    ArtifactNotFoundError,
    ArtifactStore,
    CorruptedArtifactError,
    FileEntry,
    Manifest,
    content_version,
)

__all__ = [
    "ArtifactError",
    "ArtifactNotFoundError",
    "ArtifactStore",
    "CorruptedArtifactError",
    "FileEntry",
    "Manifest",
    "content_version",
]
