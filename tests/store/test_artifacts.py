"""Blobs and versioned artifacts on a local directory and on a real S3 store (SeaweedFS)."""

from pathlib import Path

import pytest

from protege.store import ArtifactNotFoundError, ArtifactStore, CorruptedArtifactError


@pytest.fixture(params=["file", pytest.param("s3", marks=pytest.mark.slow)])
def store(request: pytest.FixtureRequest) -> ArtifactStore:
    return request.getfixturevalue(f"{request.param}_artifact_store")  # type: ignore[no-any-return]


def test_blobs_are_content_addressed_and_verified(store: ArtifactStore) -> None:
    digest = store.put_blob(b"hello")
    assert digest == "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
    assert store.put_blob(b"hello") == digest
    other = store.put_blob(b"world")
    assert store.get_blob(digest) == b"hello"
    assert store.list_blobs() == sorted([digest, other])
    assert store.has_blob(other)


def test_corrupted_blob_is_an_error_never_data(store: ArtifactStore) -> None:
    digest = store.put_blob(b"precious bytes")
    store.fs.pipe_file(store._blob_path(digest), b"bit rot")  # behind the store's back
    with pytest.raises(CorruptedArtifactError, match="is corrupted: its stored bytes hash to sha256:"):
        store.get_blob(digest)


def test_missing_and_malformed_blobs(store: ArtifactStore) -> None:
    with pytest.raises(ArtifactNotFoundError, match="is not in the store"):
        store.get_blob("sha256:" + "0" * 64)
    with pytest.raises(ValueError, match="digests look like 'sha256:<64 hex digits>'"):
        store.get_blob("md5:abc")


def test_versioned_artifacts(store: ArtifactStore, tmp_path: Path) -> None:
    v1 = store.put_artifact(
        "dataset", "sql-writer", {"train.jsonl": b"a\n", "test.jsonl": b"b\n"}, {"task": "t-1"}
    )
    assert store.put_artifact("dataset", "sql-writer", {"test.jsonl": b"b\n", "train.jsonl": b"a\n"}) == v1
    v2 = store.put_artifact("dataset", "sql-writer", {"train.jsonl": b"a\nc\n", "test.jsonl": b"b\n"})
    assert v1.version != v2.version and v1.version.startswith("v")
    assert [m.version for m in store.versions("dataset", "sql-writer")] == [v1.version, v2.version]
    assert store.latest("dataset", "sql-writer") == v2
    assert store.manifest("dataset", "sql-writer", v1.version).metadata == {"task": "t-1"}
    assert store.read_file("dataset", "sql-writer", v2.version, "train.jsonl") == b"a\nc\n"
    assert store.names("dataset") == ["sql-writer"]
    out = tmp_path / "out"
    store.download("dataset", "sql-writer", v1.version, out)
    assert (out / "train.jsonl").read_bytes() == b"a\n"


def test_directories_keep_their_layout(store: ArtifactStore, tmp_path: Path) -> None:
    source = tmp_path / "adapter"
    (source / "nested").mkdir(parents=True)
    (source / "adapter_config.json").write_text("{}")
    (source / "nested" / "weights.bin").write_bytes(bytes(range(256)) * 100)
    manifest = store.put_artifact("adapter", "sql-writer", source)
    assert sorted(f.path for f in manifest.files) == ["adapter_config.json", "nested/weights.bin"]
    assert store.uri("adapter", "sql-writer", manifest.version).endswith(
        f"adapter/sql-writer/{manifest.version}"
    )
    out = tmp_path / "copy"
    store.download("adapter", "sql-writer", manifest.version, out)
    assert (out / "nested" / "weights.bin").read_bytes() == bytes(range(256)) * 100


def test_corrupted_artifact_file_is_refused(store: ArtifactStore, tmp_path: Path) -> None:
    manifest = store.put_artifact("adapter", "a1", {"w.bin": b"good weights"})
    store.fs.pipe_file(store._version_path("adapter", "a1", manifest.version, "w.bin"), b"evil weights")
    with pytest.raises(CorruptedArtifactError, match=r"a1@.*/w\.bin is corrupted"):
        store.read_file("adapter", "a1", manifest.version, "w.bin")
    with pytest.raises(CorruptedArtifactError):
        store.download("adapter", "a1", manifest.version, tmp_path / "d")
    assert not (tmp_path / "d" / "w.bin").exists()


def test_a_download_is_renamed_into_place_whole_or_leaves_nothing(
    store: ArtifactStore, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    manifest = store.put_artifact("adapter", "a2", {"a_config.json": b"{}", "b_weights.bin": b"good"})
    store.fs.pipe_file(store._version_path("adapter", "a2", manifest.version, "b_weights.bin"), b"evil")
    with pytest.raises(CorruptedArtifactError):  # found on the second file, the first one was fine
        store.download("adapter", "a2", manifest.version, out / "cache" / "a2")
    assert list((out / "cache").iterdir()) == []  # no half-written version, no temporary left
    store.fs.pipe_file(store._version_path("adapter", "a2", manifest.version, "b_weights.bin"), b"good")
    (out / "empty").mkdir()
    store.download("adapter", "a2", manifest.version, out / "empty")  # an empty directory will do
    assert (out / "empty" / "b_weights.bin").read_bytes() == b"good"
    with pytest.raises(FileExistsError, match="into a new or empty directory"):
        store.download("adapter", "a2", manifest.version, out / "empty")
    assert sorted(p.name for p in out.iterdir()) == ["cache", "empty"]


def test_bad_names_and_paths(store: ArtifactStore) -> None:
    with pytest.raises(ValueError, match="must be relative and stay inside the artifact"):
        store.put_artifact("dataset", "x", {"../escape": b""})
    with pytest.raises(ValueError, match="artifact name 'Bad Name' is not valid"):
        store.put_artifact("dataset", "Bad Name", {"a": b""})
    with pytest.raises(ValueError, match="has no files"):
        store.put_artifact("dataset", "x", {})
    with pytest.raises(ArtifactNotFoundError, match="no version of dataset/none"):
        store.latest("dataset", "none")


@pytest.mark.slow
def test_a_long_running_reader_sees_what_other_processes_write(s3_artifact_store: ArtifactStore) -> None:
    """The router reads the task registry for hours while the flywheel writes new versions."""
    reader = s3_artifact_store
    with pytest.raises(ArtifactNotFoundError):
        reader.latest("registry", "tasks")  # lists the (empty) prefix
    options = {**reader.fs.storage_options, "skip_instance_cache": True}  # another process's client
    writer = ArtifactStore(reader.url, options)
    first = writer.put_artifact("registry", "tasks", {"tasks.json": b"{}"})
    assert reader.latest("registry", "tasks").version == first.version
    second = writer.put_artifact("registry", "tasks", {"tasks.json": b'{"tasks": []}'})
    assert reader.latest("registry", "tasks").version == second.version  # no stale listing
