"""LoRA adapters on a running vLLM engine: loaded on first use, evicted least-recently used.

Each adapter version is loaded under its own immutable name, ``<specialist>@<version>``,
so a new version never reuses state cached for an older one, and loading needs no
restart (vLLM's runtime LoRA loading, ``VLLM_ALLOW_RUNTIME_LORA_UPDATING``). Before
anything reaches the engine, a version is checked against the pool: it must exist in the
artifact store, be trained for the pool's base model and fit the engine's
``maxLoraRank``; its files are verified on download. At most ``maxLoras`` versions are
resident; loading one more first unloads the least recently used.

Faults of the store (unreachable, slow, a transfer cut short, bytes that do not match
their sha256) are retried within a load with exponential backoff (:class:`RetryPolicy`);
a download lands in a temporary directory renamed into place once every file is verified,
so a failed one leaves no half-written adapter behind. A version that still fails is
marked failed for a while — the mark expires, and its lifetime doubles with each failure
in a row up to a cap — so a store outage never disables a version for good; meanwhile the
replica answers 422 at once and the router answers from the teacher (or the previous
version) and records why.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from protege.api.jobs import ADAPTER_KIND
from protege.serving.router.table import adapter_name
from protege.store.artifacts import ArtifactNotFoundError, ArtifactStore, CorruptedArtifactError
from protege.store.retry import Backoff

log = logging.getLogger(__name__)


class AdapterLoadError(RuntimeError):
    """A version cannot be served; the message says why (and the version is marked failed)."""


@dataclass(frozen=True)
class RetryPolicy(Backoff):
    """How a replica retries the store within one load (``attempts`` tries of a load's store reads,
    check and download, with :class:`Backoff`'s delays), and how long a failed version is refused."""

    mark_seconds: float = 10.0  # a failed version is refused this long, doubled per failure in a row
    max_mark_seconds: float = 300.0

    def mark(self, failures: int) -> float:
        """Seconds a version is refused after its ``failures``-th failed load in a row."""
        return float(min(self.mark_seconds * 2 ** (failures - 1), self.max_mark_seconds))


@dataclass(frozen=True)
class FailureMark:
    reason: str
    until: float  # the manager's clock: refused before, tried again after
    failures: int  # failed loads in a row


# vLLM's answer to a load of an adapter it already has resident (400, InvalidUserInput).
_ALREADY_LOADED = "has already been loaded"


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
        retry: RetryPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.engine_url = engine_url.rstrip("/")
        self.store = store
        self.cache_dir = cache_dir
        self.base_model = base_model
        self.max_loras = max_loras
        self.max_lora_rank = max_lora_rank
        self.loaded: OrderedDict[str, float] = OrderedDict()  # name → seconds its load took
        self.failed: dict[str, FailureMark] = {}  # name → why it failed, and until when it is refused
        self.retry = retry or RetryPolicy()
        self.clock, self.sleep = clock, sleep
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
        self._refuse_if_marked(name)
        if name in self.loaded:
            self.loaded.move_to_end(name)
            return name
        async with self._locks.setdefault(name, asyncio.Lock()):
            if name not in self.loaded:
                self._refuse_if_marked(name)  # another call's load may have failed meanwhile
                try:
                    await self._load(specialist, version, name)
                except AdapterLoadError as error:
                    self._mark_failed(name, str(error))
                    raise
                self.failed.pop(name, None)
            self.loaded.move_to_end(name)
        return name

    def _refuse_if_marked(self, name: str) -> None:
        mark = self.failed.get(name)
        if mark is not None and self.clock() < mark.until:
            left = mark.until - self.clock()
            raise AdapterLoadError(f"{mark.reason} (this replica tries it again in {left:.0f} s)")

    def _mark_failed(self, name: str, reason: str) -> None:
        previous = self.failed.get(name)
        failures = previous.failures + 1 if previous is not None else 1
        seconds = self.retry.mark(failures)
        self.failed[name] = FailureMark(reason, self.clock() + seconds, failures)
        log.warning("adapter %s failed (%s); refused for %g s, then tried again", name, reason, seconds)

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
        directory = await self._fetch(specialist, version, name)
        while len(self.loaded) >= self.max_loras:
            await self.unload(next(iter(self.loaded)))
        started = asyncio.get_running_loop().time()
        async with self.session.post(
            f"{self.engine_url}/v1/load_lora_adapter", json={"lora_name": name, "lora_path": str(directory)}
        ) as response:
            text = await response.text()
        if response.status != 200 and _ALREADY_LOADED not in text:  # resident: what a load is for
            raise AdapterLoadError(
                f"{name}: the engine refused the adapter ({response.status}): {text[:500]}"
            )
        self.loaded[name] = asyncio.get_running_loop().time() - started

    async def _fetch(self, specialist: str, version: str, name: str) -> Path:
        """The version checked and its verified files in the cache; store faults retried with backoff."""
        attempts = max(1, self.retry.attempts)
        for attempt in range(1, attempts + 1):
            try:
                return await asyncio.to_thread(self._fetch_once, specialist, version, name)
            except AdapterLoadError:
                raise  # known for what it is (not in the store, another base model, ...): no retry
            except Exception as error:  # the store: unreachable, slow, cut short, bytes not as recorded
                if attempt == attempts:
                    raise AdapterLoadError(
                        f"{name}: the artifact store failed {attempts} times in a row, last with "
                        f"{type(error).__name__}: {str(error)[:300]}"
                    ) from None
                delay = self.retry.delay(attempt)
                log.warning(
                    "adapter %s: reading the store failed (%s: %s); trying again in %g s",
                    name,
                    type(error).__name__,
                    str(error)[:300],
                    delay,
                )
                await self.sleep(delay)
        raise AssertionError("unreachable")

    def _fetch_once(self, specialist: str, version: str, name: str) -> Path:
        self.check(specialist, version)
        directory = self.cache_dir / name
        if not directory.is_dir():  # one there is whole: a download is renamed into place once verified
            self.store.download(ADAPTER_KIND, specialist, version, directory)
        return directory

    async def unload(self, name: str) -> None:
        """Unload a resident adapter (twice is harmless: Serve's cache and this LRU may both ask).

        Under the name's lock, as its loads: a load sent while its unload is on the way would find
        it still resident."""
        if name not in self.loaded:
            return
        async with self._locks.setdefault(name, asyncio.Lock()):
            if self.loaded.pop(name, None) is None:
                return
            async with self.session.post(
                f"{self.engine_url}/v1/unload_lora_adapter", json={"lora_name": name}
            ):
                pass

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
