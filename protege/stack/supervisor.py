"""`protege up`: the whole loop on one machine, each part a process, each restarted if it dies.

Started in order, each waited for: NATS (the call log) and SeaweedFS (the S3 store), a
local Ray head whose Serve runs the pool's application (vLLM CPU build, multi-LoRA), the
recorded teacher when no ``teacher.url`` is set, the gateway (capture and routing) and the
flywheel (curation, discovery, the operator's decision core). All state lives under one
directory, so a restarted part — or a restarted `protege up` — carries on from it.
"""

from __future__ import annotations

import json
import os
import secrets
import time
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from protege.api.meta import quantity_value
from protege.config import Settings, as_environment, gateway_settings, load_settings
from protege.flywheel.local import write_atomically
from protege.models.pull import pull
from protege.services.nats import NatsServer
from protege.services.process import ServiceError, ServiceProcess, free_port, pid_alive, terminate_pid
from protege.services.ray import LocalRay
from protege.services.seaweedfs import SeaweedS3, read_credentials
from protege.serving.pool.config import serve_application
from protege.stack.components import FlywheelProcess, GatewayProcess
from protege.stack.config import StackConfig
from protege.store.artifacts import ArtifactStore

STATE_FILE = "state.json"
HOST = "127.0.0.1"


class StackError(RuntimeError):
    """The stack could not start or stop; the message says which part and why."""


def read_state(directory: Path) -> dict[str, Any]:
    path = directory / STATE_FILE
    return dict(json.loads(path.read_text())) if path.exists() else {}


class Stack:
    def __init__(
        self,
        directory: Path,
        config: StackConfig,
        *,
        teacher: Any = None,  # an ASGI app to serve as the teacher when teacher.url is unset
        say: Callable[[str], None] = lambda _: None,
    ) -> None:
        self.dir, self.config, self.say = directory.resolve(), config, say
        self.settings: Settings = load_settings()
        self.teacher_app = teacher
        self.teacher_server: Any = None
        self.nats = NatsServer(self.dir / "nats", detach=True, stream=self.settings.call_log.stream)
        self.s3 = SeaweedS3(self.dir / "s3", detach=True)
        self.ray: LocalRay | None = None
        self.gateway: GatewayProcess | None = None
        self.flywheel: FlywheelProcess | None = None
        self.serve_port = free_port(HOST)
        self.restarts: dict[str, int] = {}
        self.started_at = time.time()

    # --- where things are --------------------------------------------------------------
    @property
    def routes_path(self) -> Path:
        return self.dir / "routes.json"

    @property
    def flywheel_state(self) -> Path:
        return self.dir / "flywheel"

    @property
    def engine_url(self) -> str:
        return f"http://{HOST}:{self.serve_port}"

    @property
    def gateway_url(self) -> str:
        assert self.gateway is not None
        return self.gateway.url

    @property
    def store(self) -> ArtifactStore:
        return ArtifactStore(STORE_URL, self.s3.storage_options())

    @property
    def teacher_model(self) -> str:
        from protege.testing.recorded_teacher import MODEL

        return str(self.settings.teacher.model) if self.settings.teacher.url else MODEL

    def agent_key(self) -> str:
        """The agent's gateway key (made at the first start, kept in ``<dir>/agent-key``, 0600)."""
        from protege.serving.gateway.auth import hash_key, new_key

        path = self.dir / "agent-key"
        if not path.exists():
            key = new_key()
            path.touch(mode=0o600)
            path.write_text(key)
            entry = {"sha256": hash_key(key), "tenant": self.config.tenant, "app": self.config.app}
            write_atomically(self.dir / "api-keys.yaml", yaml.safe_dump([{**entry, "name": "agent"}]))
        return path.read_text().strip()

    def pool_token(self) -> str:
        """The token the gateway sends the pool's engine, which refuses calls without it (made at
        the first start, kept in ``<dir>/pool-token``, 0600; never logged)."""
        path = self.dir / "pool-token"
        if not path.exists():
            path.touch(mode=0o600)
            path.write_text(secrets.token_urlsafe(32))
        return path.read_text().strip()

    def environment(self) -> dict[str, str]:
        """Settings every part shares: call log (each part takes its own identity from the NATS
        credentials directory), store, models (S3 credentials included: local only)."""
        shared = shared_settings(
            self.nats.url, self.s3.endpoint_url, self.s3.data_dir, self.nats.credentials_dir
        )
        shared["model_store"] = str(self.settings.model_dir.resolve())
        return {**os.environ, **as_environment(shared), "PYTHONUNBUFFERED": "1"}

    def gateway_settings(self, teacher: Mapping[str, Any]) -> dict[str, Any]:
        """The gateway's own settings, beyond the shared ones: the pool's gateway as the operator
        configures it (:func:`protege.config.gateway_settings`), on this machine. ``teacher``: the
        stand-in teacher's url and model, or nothing when the settings name a teacher."""
        return gateway_settings(
            teacher=teacher,
            engine_url=self.engine_url,
            routes_table=self.routes_path,
            api_keys_file=self.dir / "api-keys.yaml",
            router={"timeout_seconds": self.config.specialist_timeout_seconds},
            call_log={"spool_dir": str(self.dir / "gateway" / "spool")},
            pool_token=self.pool_token(),
        )

    # --- start -------------------------------------------------------------------------
    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self._start("nats", self.nats)
        self._start("s3", self.s3)
        source = self.config.pool.base_model.source
        if "://" not in source:  # a catalogue id: pulled once, verified, then found in the model store
            self.say(f"base model {source}: provisioning into {self.settings.model_dir}")
            pull(source, self.settings.model_dir)
        env = self.environment()
        # Jobs wait for CPUs on purpose (one at a time beside serving): never time them out waiting.
        # The pool's replicas require the pool token (the gateway sends it) and preload the versions
        # the routing table routes to.
        ray_env = {
            **env,
            **as_environment({"pool_token": self.pool_token(), "router": {"table": str(self.routes_path)}}),
            "RAY_JOB_START_TIMEOUT_SECONDS": "86400",
        }
        self.ray = LocalRay(self.dir / "ray", num_cpus=self.config.ray_cpus, env=ray_env, detach=True)
        self._start("ray", self.ray)
        self.deploy_pool()
        teacher = self._teacher()
        self.agent_key()
        gateway_env = {**env, **as_environment(self.gateway_settings(teacher))}
        port = self.config.gateway_port or free_port(HOST)
        self.gateway = GatewayProcess(self.dir / "gateway", HOST, port, gateway_env, free_port(HOST))
        self._start("gateway", self.gateway)
        self.flywheel = FlywheelProcess(
            self.flywheel_state, self._flywheel_config(), self.flywheel_state / "heartbeat.json", env
        )
        self._start("flywheel", self.flywheel)
        self._write_state()

    def _start(self, name: str, service: ServiceProcess) -> None:
        self.say(f"starting {name}")
        try:
            service.start()
        except ServiceError as error:
            raise StackError(f"{name} did not start: {error}") from error
        self._write_state()

    def _teacher(self) -> dict[str, str]:
        if self.settings.teacher.url:
            return {}
        if self.teacher_app is None:
            raise StackError(
                "no teacher: set teacher.url (PROTEGE_TEACHER__URL, PROTEGE_TEACHER__MODEL) to your LLM, "
                "or let the stack serve the shipped workload's recorded teacher"
            )
        from protege.serving.server import ServerThread

        self.say("starting the recorded teacher (answers the shipped workload from recordings)")
        self.teacher_server = ServerThread(self.teacher_app).start()
        return {"url": self.teacher_server.url + "/v1", "model": self.teacher_model}

    def _flywheel_config(self) -> Path:
        assert self.ray is not None
        pool = self.config.pool.to_kube()
        serving_cpus = float(self.config.pool.replicas.max) * quantity_value(self.config.pool.resources.cpu)
        config = {
            "state": str(self.flywheel_state),
            "routes": str(self.routes_path),
            "ray_address": self.ray.address,
            "ray_token": self.ray.token,
            "job_cpus": max(1.0, self.config.ray_cpus - serving_cpus),
            "job_yields_cpus": True,  # one machine serves and trains: answers first
            "pool_name": self.config.pool_name,
            "pool": pool,
            "policy": self.config.policy,
            "pace": self.config.flywheel.model_dump(),
        }
        path = self.dir / "flywheel.json"
        path.touch(mode=0o600)  # it holds the Ray token
        write_atomically(path, json.dumps(config, indent=1))
        os.chmod(path, 0o600)
        return path

    # --- serving -----------------------------------------------------------------------
    def _ray_request(self, method: str, path: str, body: Any = None) -> Any:
        assert self.ray is not None
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            self.ray.address + path,
            data=data,
            method=method,
            headers={**self.ray.headers, "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            text = response.read()
        return json.loads(text) if text else None

    def deploy_pool(self) -> None:
        """Deploy the pool's Serve application (what KubeRay's RayService does from serveConfigV2)."""
        self.say(f"deploying pool {self.config.pool_name} on Ray Serve (vLLM warms up in the background)")
        application = serve_application(self.config.pool_name, self.config.pool)
        config = {"http_options": {"host": HOST, "port": self.serve_port}, "applications": [application]}
        self._ray_request("PUT", "/api/serve/applications/", config)

    def serving_status(self) -> tuple[str, str]:
        """(status, message) of the pool's Serve application: DEPLOYING, RUNNING, DEPLOY_FAILED, ..."""
        try:
            found = self._ray_request("GET", "/api/serve/applications/")
        except (OSError, ValueError) as error:
            return "UNKNOWN", str(error)
        application = (found or {}).get("applications", {}).get(self.config.pool_name)
        if not application:
            return "NOT_STARTED", ""
        return str(application.get("status")), str(application.get("message") or "")

    def wait_serving(self, timeout: float = 900) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status, message = self.serving_status()
            if status == "RUNNING":
                return
            if status == "DEPLOY_FAILED":
                raise StackError(f"pool {self.config.pool_name} failed to deploy: {message}")
            time.sleep(2)
        raise StackError(f"pool {self.config.pool_name} was not serving after {timeout:.0f} s")

    def stop_training(self) -> list[str]:
        """Stop the flywheel, then every training job not yet ended; the jobs stopped.

        What serves keeps serving: the demo does this before its report, whose held-out
        answers then have the CPUs a job would have taken.
        """
        if self.flywheel is not None:
            self.flywheel.stop(timeout=30)
        return self.ray.stop_jobs(timeout=30) if self.ray is not None else []

    # --- supervise ---------------------------------------------------------------------
    def parts(self) -> dict[str, ServiceProcess | None]:
        return {
            "nats": self.nats,
            "s3": self.s3,
            "ray": self.ray,
            "gateway": self.gateway,
            "flywheel": self.flywheel,
        }

    def check(self) -> list[str]:
        """Start again any part that died; what was restarted, with why."""
        restarted = []
        for name, part in self.parts().items():
            if part is None or part.process is None or part.process.poll() is None:
                continue
            code = part.process.returncode
            part.process = None
            self.restarts[name] = self.restarts.get(name, 0) + 1
            self._start(name, part)
            if name == "ray":
                self.deploy_pool()
            restarted.append(f"{name} exited with code {code}; restarted")
        return restarted

    def stop(self) -> None:
        for name, part in reversed(self.parts().items()):
            if part is not None:
                self.say(f"stopping {name}")
                part.stop(timeout=30)
        if self.teacher_server is not None:
            self.teacher_server.stop()
        (self.dir / STATE_FILE).unlink(missing_ok=True)

    def _write_state(self) -> None:
        state = {
            "supervisor": os.getpid(),
            "gateway": self.gateway.url + "/v1" if self.gateway else None,
            "engine": self.engine_url,
            "nats": self.nats.url,
            "nats_credentials": str(self.nats.credentials_dir),
            "s3": {"endpoint": self.s3.endpoint_url, "dir": str(self.s3.data_dir)},
            "ray": self.ray.address if self.ray else None,
            "model": self.teacher_model,
            "key_file": str(self.dir / "agent-key"),
            "pids": {name: part.pid for name, part in self.parts().items() if part is not None and part.pid},
        }
        write_atomically(self.dir / STATE_FILE, json.dumps(state, indent=1))


STORE_URL = "s3://protege/stack"


def shared_settings(
    nats_url: str, s3_endpoint: str, s3_dir: Path, nats_credentials: Path | None = None
) -> dict[str, Any]:
    """The call log and the store of a local stack, as settings (``load_settings(**...)``)."""
    key, secret = read_credentials(s3_dir)
    s3 = {"endpoint_url": s3_endpoint, "access_key_id": key, "secret_access_key": secret}
    shared: dict[str, Any] = {"nats_url": nats_url, "artifact_store": STORE_URL, "s3": s3}
    if nats_credentials is not None:
        shared["nats_auth"] = {"credentials_dir": str(nats_credentials)}
    return shared


def running_stack_settings(directory: Path) -> dict[str, Any]:
    """The shared settings of the `protege up` running in ``directory``; none when it is not up."""
    state = read_state(directory)
    supervisor = int(state.get("supervisor") or 0)
    if not (supervisor and pid_alive(supervisor) and state.get("s3") and state.get("nats")):
        return {}
    credentials = Path(state["nats_credentials"]) if state.get("nats_credentials") else None
    return shared_settings(state["nats"], state["s3"]["endpoint"], Path(state["s3"]["dir"]), credentials)


def stop_stack(directory: Path, timeout: float = 120) -> list[str]:
    """`protege down`: stop a running `protege up` (and whatever it left if it was killed)."""
    state = read_state(directory)
    if not state:
        return []
    stopped = []
    supervisor = int(state.get("supervisor") or 0)
    if supervisor and pid_alive(supervisor) and supervisor != os.getpid():
        terminate_pid(supervisor, timeout=timeout)
        stopped.append("protege up")
    for name, pid in (state.get("pids") or {}).items():
        if pid_alive(int(pid)):
            terminate_pid(int(pid), timeout=30)
            stopped.append(name)
    (directory / STATE_FILE).unlink(missing_ok=True)
    return stopped
