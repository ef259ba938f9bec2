"""The pool's Ray Serve application: a vLLM engine with LoRA per replica, adapters multiplexed.

Why not ``ray.serve.llm``: its LoRA loader reads adapters from ``<dynamic path>/<name>``,
whereas Protégé's versions are content-addressed artifacts checked before loading (base
model, rank, sha256), under names of the form ``<specialist>@<version>``; and ``ray[llm]``
pins the CUDA vLLM, which cannot be installed next to the CPU build used locally. What it
would give — sticky adapter routing and LRU residency — comes from Ray Serve's own model
multiplexing, used here: the router sends ``serve_multiplexed_model_id:
<specialist>@<version>``, Serve routes the call to a replica that has the adapter
resident when there is one, and each replica keeps at most ``engine.maxLoras`` adapters,
unloading the least recently used. Each replica also loads, into its free slots, the versions
the pool's routing table routes to (:mod:`protege.serving.pool.preload`): a candidate is
resident everywhere from its shadow on, before any routed call.

Each replica runs vLLM's OpenAI server (CUDA build in Ray's LLM images, CPU build
locally) as a child process on a loopback port, and relays to it the calls that carry the
pool token (:mod:`protege.serving.pool.auth`: gateways hold it; others get 401). Autoscaling
(min/max replicas, target ongoing requests) and resources come from the pool's spec
(:mod:`protege.serving.pool.config`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import aiohttp
from ray import serve
from ray.serve import Application
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from protege.api.pool import SpecialistPoolSpec
from protege.config import load_settings
from protege.models.chat import chat_template_of, template_knows_tools, tools_in_prompt
from protege.models.resolve import ModelResolver
from protege.services.vllm import VllmServer
from protege.serving.adapters import AdapterLoadError, AdapterManager
from protege.serving.pool.auth import pool_token, refusal
from protege.serving.pool.config import deployment_options, engine_args, on_cpus
from protege.serving.pool.preload import to_preload
from protege.serving.router.table import RoutingTable, TableFile, UnknownAdapterError, parse_adapter_name
from protege.store.artifacts import ArtifactStore

log = logging.getLogger(__name__)


class _Resident:
    """An adapter as Serve's multiplexing cache holds it; evicting it unloads it from vLLM.

    Serve's cache is the one LRU of a replica. Its eviction runs ``__del__`` in a thread and
    moves on, so the unload is scheduled on the replica's loop, and skipped if Serve has
    loaded the same adapter again meanwhile (a newer holder owns it then).
    """

    def __init__(self, holders: dict[str, _Resident], adapters: AdapterManager, name: str) -> None:
        self.holders, self.adapters, self.name = holders, adapters, name
        self.loop = asyncio.get_running_loop()
        self.released = False
        holders[name] = self

    def __del__(self) -> None:  # Serve calls it on eviction (in a thread); GC may call it again
        if self.released or self.loop.is_closed():
            return
        self.released = True
        self.loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self._unload()))

    async def _unload(self) -> None:
        if self.holders.get(self.name) is self:
            del self.holders[self.name]
            await self.adapters.unload(self.name)


def _pool_metrics() -> dict[str, Any]:
    """Adapter metrics of a replica, exported by Ray's metrics agent (prefixed ``ray_``)."""
    from ray.util import metrics

    return {
        "loads": metrics.Counter(
            "protege_adapter_loads",
            description="Adapter versions a pool replica loaded, by outcome (loaded, failed).",
            tag_keys=("pool", "outcome"),
        ),
        "load_seconds": metrics.Histogram(
            "protege_adapter_load_seconds",
            description="Time from load request to the adapter being servable.",
            boundaries=[0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30],
            tag_keys=("pool",),
        ),
        "resident": metrics.Gauge(
            "protege_adapters_resident", description="Adapters resident on a replica.", tag_keys=("pool",)
        ),
    }


def _error(status: int, message: str, code: str) -> JSONResponse:
    return JSONResponse(
        {"error": {"message": message, "type": "invalid_request_error", "code": code}}, status
    )


class PoolEngine:
    def __init__(self, pool: str, spec: dict[str, Any]) -> None:
        self.pool = pool
        self.spec = SpecialistPoolSpec.model_validate(spec)
        settings = load_settings()
        self.token = pool_token(settings)  # no token, no pool: it would answer anyone
        base = self.spec.base_model
        model = ModelResolver.from_settings(settings).resolve(base.source, base.revision)
        work = Path(tempfile.mkdtemp(prefix=f"protege-pool-{pool}-"))
        self.engine = VllmServer(
            work / "vllm",
            model,
            self.spec.base_model.source,
            max_model_len=self.spec.engine.max_model_len,
            max_loras=self.spec.engine.max_loras,
            max_lora_rank=self.spec.engine.max_lora_rank,
            enforce_eager=False,  # the pool's engine_args decide (eager on CPUs, CUDA graphs on GPUs)
            on_cpus=on_cpus(self.spec),
            dtype=self.spec.engine.dtype,
            extra_args=engine_args(self.spec),
        ).start()
        self.engine_url = f"http://{self.engine.host}:{self.engine.port}"
        # a template without tools would drop them: write them as the specialists learned them
        self.tools_as_text = not template_knows_tools(chat_template_of(model))
        self.adapters = AdapterManager(
            self.engine_url,
            ArtifactStore.from_settings(settings, attempts=1),  # the manager retries, with backoff
            work / "adapters",
            base_model=self.spec.base_model.source,
            # Serve's cache evicts; one spare slot covers an unload still on its way
            max_loras=self.spec.engine.max_loras + 1,
            max_lora_rank=self.spec.engine.max_lora_rank,
        )
        self.holders: dict[str, _Resident] = {}
        self._session: aiohttp.ClientSession | None = None
        self.metrics = _pool_metrics()
        self.routes = TableFile(settings.router.table)
        self._preloader: asyncio.Task[None] | None = None
        if settings.router.table is not None:  # Serve runs a constructor on the replica's loop
            every = settings.router.refresh_seconds
            self._preloader = asyncio.get_running_loop().create_task(self._preload_forever(every))

    async def _preload_forever(self, every: float) -> None:
        """Load what the routing table routes to into the free slots, each time it changes or a
        slot frees; an adapter that failed to load is not tried again until the table changes."""
        table, failed = RoutingTable(), set[str]()
        while True:
            try:
                changed = await asyncio.to_thread(self.routes.changed)
                if changed is not None:
                    table, failed = changed, set()
                for name in to_preload(table, self.holders, self.spec.engine.max_loras, failed):
                    try:
                        await self.load_adapter(name)
                    except (AdapterLoadError, UnknownAdapterError) as error:
                        failed.add(name)
                        log.warning("pool %s: preloading %s failed: %s", self.pool, name, error)
            except Exception:  # the replica serves on; calls load what they need
                log.exception("pool %s: preloading from %s failed", self.pool, self.routes.path)
            await asyncio.sleep(every)

    async def load_adapter(self, model_id: str) -> _Resident:  # multiplexed in build()
        raise NotImplementedError

    async def _load(self, model_id: str) -> _Resident:
        specialist, version = parse_adapter_name(model_id)
        if version is None:
            raise UnknownAdapterError(f"{model_id!r}: a replica loads versions, <specialist>@<version>")
        tags = {"pool": self.pool}
        try:
            name = await self.adapters.ensure(specialist, version)
        except AdapterLoadError:
            self.metrics["loads"].inc(tags={**tags, "outcome": "failed"})
            raise
        self.metrics["loads"].inc(tags={**tags, "outcome": "loaded"})
        self.metrics["load_seconds"].observe(self.adapters.loaded[name], tags=tags)
        self.metrics["resident"].set(len(self.adapters.loaded), tags=tags)
        return _Resident(self.holders, self.adapters, name)

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_read=600))
        return self._session

    def check_health(self) -> None:
        if not self.engine.is_ready():
            raise RuntimeError(f"pool {self.pool}: the vLLM engine does not answer /health")

    async def __call__(self, request: Request) -> Response:
        path = request.url.path
        refused = refusal(path, request.headers, self.token)
        if refused is not None:
            return refused
        if path in ("/health", "/-/healthz"):
            return Response("ok")
        if path == "/v1/models" and request.method == "GET":
            async with self.session.get(f"{self.engine_url}/v1/models") as reply:
                return Response(await reply.read(), reply.status, media_type="application/json")
        if path not in ("/v1/chat/completions", "/v1/completions") or request.method != "POST":
            return _error(404, f"{request.method} {path}: the pool serves /v1/chat/completions", "not_found")
        body = await request.body()
        if self.tools_as_text and path == "/v1/chat/completions":
            body = _tools_in_prompt(body)
        model_id = serve.get_multiplexed_model_id() or _adapter_in_body(body)
        if model_id:
            try:
                await self.load_adapter(model_id)
                if model_id in self.adapters.loaded:  # keep the spare-slot LRU in Serve's order
                    self.adapters.loaded.move_to_end(model_id)
            except UnknownAdapterError as error:
                return _error(404, str(error), "model_not_found")
            except AdapterLoadError as error:
                return _error(422, str(error), "adapter_unavailable")
        reply = await self.session.post(
            f"{self.engine_url}{path}", data=body, headers={"Content-Type": "application/json"}
        )
        if reply.content_type == "text/event-stream":
            return StreamingResponse(_relay(reply), reply.status, media_type="text/event-stream")
        async with reply:
            return Response(await reply.read(), reply.status, media_type=reply.content_type)

    def __del__(self) -> None:
        self.engine.stop()


def _tools_in_prompt(body: bytes) -> bytes:
    try:
        request = json.loads(body)
    except ValueError:
        return body  # the engine answers it with its own error
    if not isinstance(request, dict):
        return body
    rewritten = tools_in_prompt(request)
    return body if rewritten is request else json.dumps(rewritten).encode()


def _adapter_in_body(body: bytes) -> str | None:
    """A direct caller may name the adapter as the model instead of sending Serve's header."""
    try:
        model = json.loads(body).get("model")
    except (ValueError, AttributeError):
        return None
    return model if isinstance(model, str) and "@" in model else None


async def _relay(reply: aiohttp.ClientResponse) -> Any:
    async with reply:
        async for data in reply.content.iter_any():
            yield data


def build(args: dict[str, Any]) -> Application:
    """The Serve application of one pool (``import_path: protege.serving.pool.app:build``)."""
    spec = SpecialistPoolSpec.model_validate(args["spec"])

    class Engine(PoolEngine):
        # Serve's multiplexing cache is sized where the method is decorated: here, per pool.
        @serve.multiplexed(max_num_models_per_replica=spec.engine.max_loras)  # type: ignore[untyped-decorator]
        async def load_adapter(self, model_id: str) -> _Resident:
            return await self._load(model_id)

    deployment = serve.deployment(name="PoolEngine", health_check_period_s=10)(Engine)
    application: Application = deployment.options(**deployment_options(spec)).bind(
        args["pool"], spec.to_kube()
    )
    return application
