"""LoRA adapters on a running vLLM engine: loaded on first use, evicted least-recently used.

Each adapter version is loaded under its own immutable name, ``<specialist>@<version>``,
so a new version never reuses state cached for an older one, and loading needs no
restart (vLLM's runtime LoRA loading, ``VLLM_ALLOW_RUNTIME_LORA_UPDATING``). Before
anything reaches the engine, a version is checked against the pool: it must exist in the
artifact store, be trained for the pool's base model and fit the engine's
``maxLoraRank``; its files are verified on download. At most ``maxLoras`` versions are
resident; loading one more first unloads the least recently used.

A version that fails is remembered as failed and never retried by this replica; the
router then answers from the teacher (or the previous version) and records why.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections import OrderedDict
from pathlib import Path

import aiohttp

from protege.api.jobs import ADAPTER_KIND
from protege.serving.router.table import adapter_name
from protege.store.artifacts import ArtifactNotFoundError, ArtifactStore, CorruptedArtifactError


class AdapterLoadError(RuntimeError):
    """A version cannot be served; the message says why (and the version is marked failed)."""


class AdapterManager:
    def __init__(
        self,
        engine_url: str,
        store: ArtifactStore,
        cache_dir: Path,
        *,
        base_model: str,
        max_loras: int,
        max_lora_rank: int,
    ) -> None:
        self.engine_url = engine_url.rstrip("/")
        self.store = store
        self.cache_dir = cache_dir
        self.base_model = base_model
        self.max_loras = max_loras
        self.max_lora_rank = max_lora_rank
        self.loaded: OrderedDict[str, float] = OrderedDict()  # name → seconds its load took
        self.failed: dict[str, str] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300))
        return self._session

    async def ensure(self, specialist: str, version: str) -> str:
        """The engine-side name of the version, loading it (and evicting) when needed."""
        name = adapter_name(specialist, version)
        if name in self.failed:
            raise AdapterLoadError(self.failed[name])
        if name in self.loaded:
            self.loaded.move_to_end(name)
            return name
        async with self._locks.setdefault(name, asyncio.Lock()):
            if name not in self.loaded:
                try:
                    await self._load(specialist, version, name)
                except AdapterLoadError as error:
                    self.failed[name] = str(error)
                    raise
            self.loaded.move_to_end(name)
        return name

    def check(self, specialist: str, version: str) -> None:
        """Everything that can be known about a version before loading it; AdapterLoadError if wrong."""
        label = adapter_name(specialist, version)
        try:
            manifest = self.store.manifest(ADAPTER_KIND, specialist, version)
            config = json.loads(
                self.store.read_file(ADAPTER_KIND, specialist, version, "adapter_config.json")
            )
        except ArtifactNotFoundError:
            raise AdapterLoadError(f"{label}: no such adapter version in {self.store.url}") from None
        except (CorruptedArtifactError, ValueError) as error:
            raise AdapterLoadError(f"{label}: unreadable adapter ({error})") from None
        trained_on = manifest.metadata.get("base_model")
        if trained_on != self.base_model:
            raise AdapterLoadError(
                f"{label} was trained on {trained_on!r}, but this pool serves {self.base_model!r}; "
                "retrain it on the pool's base model or move the specialist to a matching pool"
            )
        rank = int(config.get("r", 0))
        if rank > self.max_lora_rank:
            raise AdapterLoadError(
                f"{label} has LoRA rank {rank}, above the pool's engine.maxLoraRank {self.max_lora_rank}; "
                "retrain with a lower training.rank or raise the pool's maxLoraRank"
            )

    async def _load(self, specialist: str, version: str, name: str) -> None:
        await asyncio.to_thread(self.check, specialist, version)
        directory = self.cache_dir / name
        if not (directory / "adapter_config.json").exists():
            try:
                await asyncio.to_thread(self.store.download, ADAPTER_KIND, specialist, version, directory)
            except (ArtifactNotFoundError, CorruptedArtifactError) as error:
                shutil.rmtree(directory, ignore_errors=True)
                raise AdapterLoadError(f"{name}: download failed ({error})") from None
        while len(self.loaded) >= self.max_loras:
            await self.unload(next(iter(self.loaded)))
        started = asyncio.get_running_loop().time()
        async with self.session.post(
            f"{self.engine_url}/v1/load_lora_adapter", json={"lora_name": name, "lora_path": str(directory)}
        ) as response:
            text = await response.text()
        if response.status != 200:
            raise AdapterLoadError(
                f"{name}: the engine refused the adapter ({response.status}): {text[:500]}"
            )
        self.loaded[name] = asyncio.get_running_loop().time() - started

    async def unload(self, name: str) -> None:
        """Unload a resident adapter (twice is harmless: Serve's cache and this LRU may both ask)."""
        if self.loaded.pop(name, None) is None:
            return
        async with self.session.post(f"{self.engine_url}/v1/unload_lora_adapter", json={"lora_name": name}):
            pass

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
