"""Which task a call belongs to: the same structure as the task's calls, and close in meaning.

The structure of a call (tenant, system-prompt template, whether tools are offered,
response format, input shape, conversation step) is computed by the code discovery uses
(:mod:`protege.tasks.discovery.features`), with the segment counts of the registry the
router reads, so a call is keyed exactly as the task's own calls were. When one task has
that structure, it is the match: a dictionary lookup, the common case. When several
tasks share a structure (one prompt serving two jobs, one tool set shared by several
steps), the tools in play narrow them, then the tasks' word profiles (naive Bayes from
discovery) decide when they are near certain; only the calls still open are embedded and
compared with the tasks' centroids, the closest above its threshold winning. Embedding
runs in one worker thread, never on the event loop; vectors are cached by text, and when
too many calls wait for one, the call goes to the teacher (``router_busy``) instead of
queueing behind them. A matched call carries its novelty against the task (the share of
its words the task's vocabulary lacks, and whether that is above the task's bar), made by
discovery's own definition (:mod:`protege.tasks.discovery.features`): set lookups.
"""

from __future__ import annotations

import asyncio
import math
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from numpy.typing import NDArray

from protege.api.calls import ChatRequest, last_user_text
from protege.api.specialist import OutputKind
from protege.pii import RecordRedaction
from protege.tasks.discovery.discover import Embedder
from protege.tasks.discovery.features import (
    Novelty,
    SegmentCounts,
    Structure,
    call_structure,
    tools_answered_after,
    words,
)
from protege.tasks.discovery.tasks import Task

WORD_CERTAINTY = 0.999  # posterior a word profile needs to decide without an embedding
WORD_COVERAGE = 0.6  # share of the call's words the winning profile must know


@dataclass(frozen=True)
class TaskMatch:
    task_id: str
    similarity: float | None  # None when the structure alone decided
    novelty: Novelty | None = None  # the user turn against the task's vocabulary (None: no bar)


def request_messages(request: ChatRequest) -> list[dict[str, Any]]:
    """The request's messages as plain dicts, as the features read them (once per call)."""
    return [m.model_dump(exclude_none=True) for m in request.messages]


def request_structure(
    tenant: str, request: ChatRequest, counts: SegmentCounts, messages: list[dict[str, Any]] | None = None
) -> Structure:
    messages = request_messages(request) if messages is None else messages
    return call_structure(tenant, messages, request.tools, request.response_format, counts)


def redacted(text: str) -> str:
    """A user turn with its PII replaced by the built-in detectors."""
    return RecordRedaction().text(text)


class TaskClassifier:
    """Matches requests to discovered tasks by their router profiles."""

    def __init__(
        self,
        tasks: Sequence[Task],
        segment_counts: Mapping[str, SegmentCounts] | None = None,
        embeddings: CallEmbeddings | None = None,
    ) -> None:
        self.segment_counts = segment_counts or {}
        self.embeddings = embeddings
        self._by_structure: dict[Structure, list[Task]] = defaultdict(list)
        for task in tasks:
            self._by_structure[task.router.fingerprint.structure].append(task)
        models = {task.router.embedding_model for task in tasks if task.router.centroids}
        if embeddings is not None and models - {embeddings.embedder.name}:
            raise ValueError(
                f"task centroids were made with {sorted(models)}, the router embeds with "
                f"{embeddings.embedder.name}; rerun `protege tasks discover` with the router's model"
            )

    @property
    def needs_embeddings(self) -> bool:
        return any(len(tasks) > 1 for tasks in self._by_structure.values())

    def candidates(
        self, tenant: str, request: ChatRequest, messages: list[dict[str, Any]] | None = None
    ) -> list[Task]:
        """The tasks whose calls have this call's structure (a lookup), narrowed by the tools in play.

        Where several tasks share the structure, a task that calls a tool the call does not
        offer, or answers after another tool's results than the call carries, cannot be the
        call's: the tools decide before any embedding is needed.
        """
        messages = request_messages(request) if messages is None else messages
        counts = self.segment_counts.get(tenant, {})
        tasks = self._by_structure.get(request_structure(tenant, request, counts, messages), [])
        if len(tasks) < 2:
            return tasks
        offered = {str((t.get("function") or {}).get("name")) for t in request.tools or []}
        answered_after = tools_answered_after(messages)

        def possible(task: Task) -> bool:
            tools = task.router.fingerprint.tools
            if not tools:
                return True
            if task.output_kind is OutputKind.TOOL_CALL:
                return set(tools) <= offered
            return tools == answered_after

        return [task for task in tasks if possible(task)]  # none possible: the teacher answers

    async def match(self, tenant: str, request: ChatRequest) -> TaskMatch | None:
        """The call's task: by structure (a lookup), by meaning only when several tasks share it.

        Raises RouterBusyError when an embedding was needed and could not be had.
        """
        messages = request_messages(request)
        candidates = self.candidates(tenant, request, messages)
        text = last_user_text(messages)
        match = await self._among(candidates, text)
        return with_novelty(match, candidates, text)

    async def _among(self, candidates: Sequence[Task], text: str) -> TaskMatch | None:
        if len(candidates) == 1:
            return TaskMatch(candidates[0].id, None)
        if not candidates:
            return None
        by_words = self.by_words(candidates, text)
        if by_words is not None or self.embeddings is None:
            return by_words
        try:
            vector = await self.embeddings.vector(text)
        except RouterBusyError:
            raise
        except Exception as error:  # no embedding model here (a serving image without it), say
            raise RouterBusyError(f"no embedding for the call ({error!r})") from error
        return self.closest(candidates, vector)

    @staticmethod
    def by_words(candidates: Sequence[Task], text: str) -> TaskMatch | None:
        """The task its word profile makes near certain (posterior ≥ WORD_CERTAINTY), else None.

        Only when the winner knows most of the call's words: a call unlike every task (out of
        distribution) is left to the embedding and its thresholds.
        """
        found = words(text)
        profiles = [task.router for task in candidates]
        if not found or any(not profile.words for profile in profiles):
            return None
        scores = [p.log_prior + sum(p.words.get(w, p.unseen_word) for w in found) for p in profiles]
        best = int(np.argmax(scores))
        posterior = 1 / sum(math.exp(min(score - scores[best], 0.0)) for score in scores)
        known = sum(w in profiles[best].words for w in found) / len(found)
        if posterior < WORD_CERTAINTY or known < WORD_COVERAGE:
            return None
        return TaskMatch(candidates[best].id, None)

    @staticmethod
    def closest(candidates: Sequence[Task], vector: NDArray[np.float32]) -> TaskMatch | None:
        """The candidate whose centroid is nearest the call's embedding, if above its threshold."""
        best: TaskMatch | None = None
        for task in candidates:
            if not task.router.centroids:
                continue
            similarity = float(np.max(np.asarray(task.router.centroids, dtype=np.float32) @ vector))
            if similarity >= task.router.threshold and (best is None or similarity > (best.similarity or -1)):
                best = TaskMatch(task.id, similarity)
        return best


def with_novelty(match: TaskMatch | None, candidates: Sequence[Task], text: str) -> TaskMatch | None:
    """The match with the call's novelty against its task: a word split and set lookups, no model."""
    task = next((t for t in candidates if match is not None and t.id == match.task_id), None)
    if match is None or task is None:
        return match
    return replace(match, novelty=task.router.novelty(text))


class RouterBusyError(RuntimeError):
    """The call needs an embedding the router cannot make now (too many wait for one, or the
    embedder failed: a gateway image without the embedding model, say): it goes to the teacher."""


class CallEmbeddings:
    """Embeddings of user turns off the event loop (redacted, then embedded, in one worker thread),
    with an LRU cache by text and a bound on the calls waiting. ``redact`` is the redaction
    curation ran before discovery embedded the task's calls, so both embed the same text."""

    def __init__(
        self,
        embedder: Embedder,
        *,
        redact: Callable[[str], str] = redacted,
        cache_size: int = 4096,
        max_waiting: int = 32,
    ) -> None:
        self.embedder, self.redact = embedder, redact
        self.cache_size = cache_size
        self.max_waiting = max_waiting
        self._cache: OrderedDict[str, NDArray[np.float32]] = OrderedDict()
        self._waiting = 0
        self.made = 0  # embeddings made (calls the cache did not answer)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="router-embed")

    async def vector(self, text: str) -> NDArray[np.float32]:
        cached = self._cache.get(text)
        if cached is not None:
            self._cache.move_to_end(text)
            return cached
        if self._waiting >= self.max_waiting:
            raise RouterBusyError(f"{self._waiting} calls are waiting for an embedding")
        self._waiting += 1
        try:
            loop = asyncio.get_running_loop()
            vector: NDArray[np.float32] = (await loop.run_in_executor(self._executor, self._encode, text))[0]
        except Exception as error:  # a call is never failed for routing: the teacher answers it
            raise RouterBusyError(f"the embedder failed: {type(error).__name__}: {error}") from error
        finally:
            self._waiting -= 1
        self.made += 1
        self._cache[text] = vector
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return vector

    def _encode(self, text: str) -> NDArray[np.float32]:
        return self.embedder.encode([self.redact(text)])

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
