"""Pytest fixtures with real local services (a pytest plugin, registered as `protege`).

``nats_server`` and ``seaweed_s3`` start once per test session; ``s3_artifact_store`` gives
each test its own prefix in the real S3 store.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from protege.services.nats import NatsServer
from protege.services.seaweedfs import SeaweedS3
from protege.store.artifacts import ArtifactStore


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    with NatsServer(tmp_path_factory.mktemp("nats")) as server:
        yield server


@pytest.fixture(scope="session")
def seaweed_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    with SeaweedS3(tmp_path_factory.mktemp("seaweedfs"), buckets=("protege-test",)) as store:
        yield store


@pytest.fixture
def s3_artifact_store(seaweed_s3: SeaweedS3) -> ArtifactStore:
    return ArtifactStore(f"s3://protege-test/{uuid.uuid4().hex}", seaweed_s3.storage_options())


@pytest.fixture
def file_artifact_store(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore((tmp_path / "artifacts").as_uri())
