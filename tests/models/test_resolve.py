"""The one resolver of a base model's source, as the pods run it: s3:// against a real S3 store
(SeaweedFS), hf:// against a local stand-in for the Hugging Face hub's HTTP API, pvc:// and
file:// against directories."""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import s3fs

from protege.config import S3Settings
from protege.models.pull import MARKER, ModelUnavailableError, verify_model_dir
from protege.models.resolve import ModelResolver
from protege.models.sources import HF_TOKEN_VARIABLE
from protege.services.seaweedfs import SeaweedS3
from protege.store.retry import Backoff

MODEL = {
    "config.json": b'{"model_type": "llama", "hidden_size": 32}',
    "model.safetensors": bytes(range(256)) * 4096,  # 1 MiB
    "tokenizer.json": b'{"version": "1.0"}',
    "nested/extra.json": b"{}",
}


def _settings(seaweed: SeaweedS3) -> S3Settings:
    key, secret = seaweed.credentials
    return S3Settings.model_validate(
        {"endpoint_url": seaweed.endpoint_url, "access_key_id": key, "secret_access_key": secret}
    )


@pytest.fixture
def s3_model(seaweed_s3: SeaweedS3) -> tuple[s3fs.S3FileSystem, str]:
    """A model's files under a fresh prefix of the real store: (a client, the prefix as bucket/path)."""
    fs = s3fs.S3FileSystem(skip_instance_cache=True, use_listings_cache=False, **seaweed_s3.storage_options())
    prefix = f"protege-test/models/{uuid.uuid4().hex}/tiny"
    for name, data in MODEL.items():
        fs.pipe_file(f"{prefix}/{name}", data)
    return fs, prefix


def _no_staging_left(store: Path) -> list[str]:
    return [str(p) for p in store.rglob(".tmp-*")]


@pytest.mark.slow
def test_s3_model_is_downloaded_once_verified_and_then_found_in_the_cache(
    seaweed_s3: SeaweedS3, s3_model: tuple[s3fs.S3FileSystem, str], tmp_path: Path
) -> None:
    _, prefix = s3_model
    source = f"s3://{prefix}"
    models = ModelResolver(tmp_path / "cache", _settings(seaweed_s3))
    directory = models.resolve(source)

    assert directory == tmp_path / "cache" / "s3" / PurePosixPath(prefix)
    assert {p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file()} == {
        *MODEL,
        MARKER,
    }
    assert all((directory / name).read_bytes() == data for name, data in MODEL.items())
    marker = json.loads((directory / MARKER).read_text())
    assert marker["source"] == source
    assert marker["files"] == {name: hashlib.sha256(data).hexdigest() for name, data in MODEL.items()}
    assert verify_model_dir(directory) == []
    assert _no_staging_left(tmp_path) == []

    # Another replica, or a restart, on the same cache: S3 is not read at all (here it is not even
    # reachable: a closed port and one try).
    away = S3Settings.model_validate({"endpoint_url": "http://127.0.0.1:9", "access_key_id": "x",
                                      "secret_access_key": "y"})  # fmt: skip
    again = ModelResolver(tmp_path / "cache", away, retry=Backoff(attempts=1))
    assert again.resolve(source) == directory
    with pytest.raises(ModelUnavailableError, match="failed"):  # it would have failed had it tried
        again.resolve(f"s3://{prefix}-elsewhere")


@pytest.mark.slow
def test_two_replicas_on_one_cache_download_the_model_once(
    seaweed_s3: SeaweedS3,
    s3_model: tuple[s3fs.S3FileSystem, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two resolvers (two replicas' pods on one cache claim) start at once: one downloads, the other
    waits for it and reads the cache. Each resolves through its own lock file handle, as two
    processes would."""
    _, prefix = s3_model
    source = f"s3://{prefix}"
    downloads: list[str] = []
    both_in = threading.Barrier(2)
    original = ModelResolver._download

    started: set[int] = set()

    def counted(fs: Any, remote: str, local: Path, size: int, sha256: str | None) -> str:
        downloads.append(remote)
        if threading.get_ident() not in started:  # a replica's first file: without the lock, the
            started.add(threading.get_ident())  # other one would be downloading too by now
            with contextlib.suppress(threading.BrokenBarrierError):
                both_in.wait(timeout=1)
        return original(fs, remote, local, size, sha256)

    monkeypatch.setattr(ModelResolver, "_download", staticmethod(counted))
    resolved: list[Path] = []
    replicas = [
        threading.Thread(
            target=lambda: resolved.append(
                ModelResolver(tmp_path / "cache", _settings(seaweed_s3)).resolve(source)
            )
        )
        for _ in range(2)
    ]
    for replica in replicas:
        replica.start()
    for replica in replicas:
        replica.join(timeout=120)
    assert len(resolved) == 2 and resolved[0] == resolved[1]
    assert sorted(d.rsplit("/", 1)[-1] for d in downloads) == sorted(n.rsplit("/", 1)[-1] for n in MODEL)
    assert _no_staging_left(tmp_path) == []


@pytest.mark.slow
def test_an_s3_download_failing_midway_leaves_nothing_and_a_transient_fault_is_retried(
    seaweed_s3: SeaweedS3,
    s3_model: tuple[s3fs.S3FileSystem, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fs, prefix = s3_model
    source = f"s3://{prefix}"
    fetched: list[str] = []
    original = s3fs.S3FileSystem._get_file
    delays: list[float] = []

    async def removing_one_midway(self: s3fs.S3FileSystem, rpath: str, lpath: str, **kwargs: Any) -> Any:
        fetched.append(rpath)
        if len(fetched) == 1:  # after the listing, before the last file: that object goes away
            await self._rm_file(f"{prefix}/tokenizer.json")
        return await original(self, rpath, lpath, **kwargs)

    monkeypatch.setattr(s3fs.S3FileSystem, "_get_file", removing_one_midway)
    models = ModelResolver(tmp_path / "cache", _settings(seaweed_s3), sleep=delays.append)
    with pytest.raises(ModelUnavailableError, match=r"downloading .*tokenizer\.json failed \(FileNotFound"):
        models.resolve(source)
    assert not (tmp_path / "cache" / "s3" / PurePosixPath(prefix)).exists()
    assert _no_staging_left(tmp_path) == []
    assert delays == []  # a missing object is not retried

    fs.pipe_file(f"{prefix}/tokenizer.json", MODEL["tokenizer.json"])
    faults = iter([ConnectionResetError("connection reset by peer")])

    async def failing_once(self: s3fs.S3FileSystem, rpath: str, lpath: str, **kwargs: Any) -> Any:
        fault = next(faults, None)
        if fault is not None:
            raise fault
        return await original(self, rpath, lpath, **kwargs)

    monkeypatch.setattr(s3fs.S3FileSystem, "_get_file", failing_once)
    directory = models.resolve(source)
    assert delays == [0.5] and verify_model_dir(directory) == []


@pytest.mark.slow
def test_s3_files_are_checked_against_a_pulled_models_marker(
    seaweed_s3: SeaweedS3, s3_model: tuple[s3fs.S3FileSystem, str], tmp_path: Path
) -> None:
    """A model pulled with `protege models pull` and uploaded carries the sha256 of every file."""
    fs, prefix = s3_model
    digests = {name: hashlib.sha256(data).hexdigest() for name, data in MODEL.items()}
    digests["model.safetensors"] = "0" * 64  # what the upload should have been
    fs.pipe_file(f"{prefix}/{MARKER}", json.dumps({"files": digests}).encode())
    delays: list[float] = []
    models = ModelResolver(tmp_path / "cache", _settings(seaweed_s3), sleep=delays.append)
    with pytest.raises(ModelUnavailableError, match=r"safetensors failed 4 times .* its protege-model"):
        models.resolve(f"s3://{prefix}")
    assert delays == [0.5, 1.0, 2.0]
    assert not any((tmp_path / "cache").rglob("config.json"))
    assert _no_staging_left(tmp_path) == []

    digests["model.safetensors"] = hashlib.sha256(MODEL["model.safetensors"]).hexdigest()
    digests["missing.safetensors"] = "1" * 64
    fs.pipe_file(f"{prefix}/{MARKER}", json.dumps({"files": digests}).encode())
    with pytest.raises(ModelUnavailableError, match=r"lists files that are not there \(missing\."):
        models.resolve(f"s3://{prefix}")
    del digests["missing.safetensors"]
    fs.pipe_file(f"{prefix}/{MARKER}", json.dumps({"files": digests}).encode())
    directory = models.resolve(f"s3://{prefix}")
    assert json.loads((directory / MARKER).read_text())["files"] == digests


@pytest.mark.slow
def test_an_empty_s3_prefix_or_one_without_a_model_says_what_to_fix(
    seaweed_s3: SeaweedS3, s3_model: tuple[s3fs.S3FileSystem, str], tmp_path: Path
) -> None:
    fs, prefix = s3_model
    models = ModelResolver(tmp_path / "cache", _settings(seaweed_s3))
    with pytest.raises(ModelUnavailableError, match=r"holds no objects; upload the model's directory there"):
        models.resolve(f"s3://{prefix}-nothing-here")
    fs.rm_file(f"{prefix}/config.json")
    with pytest.raises(ModelUnavailableError, match=r"holds no config\.json at its top"):
        models.resolve(f"s3://{prefix}")
    with pytest.raises(ModelUnavailableError, match=r"holds no config\.json at its top"):
        models.resolve(f"s3://{prefix.rpartition('/')[0]}")  # the prefix above the model's
    assert not any((tmp_path / "cache").rglob("config.json")) and _no_staging_left(tmp_path) == []


def test_pvc_sources_resolve_to_where_the_pods_mount_the_claim(tmp_path: Path) -> None:
    root = tmp_path / "models" / "pvc"
    model = root / "weights" / "llama" / "v1"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    models = ModelResolver(tmp_path / "cache", pvc_root=PurePosixPath(root))

    assert models.resolve("pvc://weights/llama/v1") == model
    assert models.resolve("pvc://weights/llama/v1/") == model
    with pytest.raises(ModelUnavailableError, match=r"\) inside the claim 'weights' \(mounted at"):
        models.resolve("pvc://weights/llama/v2")
    with pytest.raises(ModelUnavailableError, match=r"the claim 'other' is not mounted at .*pvc/other"):
        models.resolve("pvc://other/llama/v1")
    (root / "weights" / "config.json").write_text("{}")
    assert models.resolve("pvc://weights") == root / "weights"  # a model at the volume's root


def test_file_and_catalogue_sources(tmp_path: Path) -> None:
    models = ModelResolver(tmp_path / "cache")
    with pytest.raises(ModelUnavailableError, match="not a model directory"):
        models.resolve(f"file://{tmp_path}")
    (tmp_path / "config.json").write_text("{}")
    assert models.resolve(f"file://{tmp_path}") == tmp_path
    pulled = tmp_path / "cache" / "smollm2-135m"  # as `protege models pull` leaves it
    pulled.mkdir(parents=True)
    (pulled / MARKER).write_text(json.dumps({"files": {}}))
    assert models.resolve("smollm2-135m") == pulled


# --- hf:// against a stand-in for the hub's HTTP API ---------------------------------------


class FakeHub:
    """The hub's HTTP API for one repository, org/name, at one revision; gated when ``token`` is set."""

    COMMIT = "c0ffee" + "0" * 34

    def __init__(self, files: dict[str, bytes], revision: str, token: str | None = None) -> None:
        self.files, self.revision, self.token = files, revision, token
        self.requests: list[tuple[str, str, str | None]] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                hub.answer(self, head=False)

            def do_HEAD(self) -> None:
                hub.answer(self, head=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def answer(self, request: BaseHTTPRequestHandler, *, head: bool) -> None:
        path = request.path.split("?")[0]
        authorization = request.headers.get("Authorization")
        self.requests.append((request.command, path, authorization))
        status, body, headers = 404, b"{}", {"X-Error-Code": "RevisionNotFound"}
        if self.token and authorization != f"Bearer {self.token}":
            status, headers = 401, {"X-Error-Code": "GatedRepo"}
        elif path == f"/api/models/org/name/revision/{self.revision}":
            status, body = 200, json.dumps({"id": "org/name", "sha": self.COMMIT}).encode()
        elif path == f"/api/models/org/name/tree/{self.COMMIT}":
            tree = [
                {"type": "file", "path": name, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
                for name, data in self.files.items()
            ]
            status, body = 200, json.dumps(tree).encode()
        elif path.removeprefix(f"/org/name/resolve/{self.COMMIT}/") in self.files:
            body = self.files[path.removeprefix(f"/org/name/resolve/{self.COMMIT}/")]
            etag = f'"{hashlib.sha1(body).hexdigest()}"'
            status, headers = 200, {"X-Repo-Commit": self.COMMIT, "ETag": etag}
        request.send_response(status)
        for name, value in headers.items():
            request.send_header(name, value)
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        if not head:
            request.wfile.write(body)

    def __enter__(self) -> FakeHub:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hub_files(monkeypatch: pytest.MonkeyPatch) -> dict[str, bytes]:
    """The files of org/name; huggingface_hub online (another test may have imported it offline)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_IMPLICIT_TOKEN", True)  # no token of this machine's
    return {"config.json": MODEL["config.json"], "model.safetensors": b"w" * 1000, "README.md": b"# card"}


def test_hf_source_fetches_the_pinned_revision_with_the_token_into_the_hub_cache(
    hub_files: dict[str, bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(HF_TOKEN_VARIABLE, "hf_secret")  # as the pod gets it from baseModel.tokenSecretRef
    with FakeHub(hub_files, revision="v1.1", token="hf_secret") as hub:
        models = ModelResolver(tmp_path / "cache", hub_cache=tmp_path / "hf" / "hub", hub_endpoint=hub.url)
        directory = models.resolve("hf://org/name", "v1.1")
        assert hub.requests[0][:2] == ("GET", "/api/models/org/name/revision/v1.1")
        assert {authorization for _, _, authorization in hub.requests} == {"Bearer hf_secret"}
    assert directory == tmp_path / "hf" / "hub" / "models--org--name" / "snapshots" / FakeHub.COMMIT
    assert sorted(p.name for p in directory.iterdir()) == ["config.json", "model.safetensors"]  # no README
    assert (directory / "model.safetensors").read_bytes() == hub_files["model.safetensors"]

    # A restart with the hub out of reach: the revision is found in the hub cache.
    assert models.resolve("hf://org/name", "v1.1") == directory


def test_a_gated_hf_model_without_its_token_says_to_set_the_secret(
    hub_files: dict[str, bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(HF_TOKEN_VARIABLE, raising=False)
    with FakeHub(hub_files, revision="main", token="hf_secret") as hub:
        models = ModelResolver(tmp_path / "cache", hub_cache=tmp_path / "hf" / "hub", hub_endpoint=hub.url)
        gated = r"org/name at revision 'main' .*set baseModel\.tokenSecretRef"
        with pytest.raises(ModelUnavailableError, match=gated):
            models.resolve("hf://org/name", "main")
        assert hub.requests and all(authorization is None for _, _, authorization in hub.requests)


def test_the_resolver_has_no_other_schemes(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailableError, match=r"gs://b/m: use hf://, s3://, pvc://, file://"):
        ModelResolver(tmp_path).resolve("gs://b/m")
