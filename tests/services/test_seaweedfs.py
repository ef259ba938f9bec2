"""The local S3 store keeps what it stored across a stop, which SIGKILLs it mid-shutdown."""

from __future__ import annotations

from pathlib import Path

import pytest

from protege.services.seaweedfs import SeaweedS3
from protege.store.artifacts import ArtifactStore

pytestmark = pytest.mark.slow


def test_what_was_stored_is_there_after_a_stop(tmp_path: Path) -> None:
    server = SeaweedS3(tmp_path / "s3", buckets=("kept",)).start()
    try:
        ArtifactStore("s3://kept/objects", server.storage_options()).put_object("t", "a", b"kept" * 1000)
        server.stop()  # SIGTERM, then SIGKILL 1 s later while its filer idles (useful_grace)
        assert server.log_path.read_text().count("Shutting down volume server") == 0  # it was killed
        server.start()
        store = ArtifactStore("s3://kept/objects", server.storage_options())
        assert store.get_object("t", "a") == b"kept" * 1000
    finally:
        server.stop()
