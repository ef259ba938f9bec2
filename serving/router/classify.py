"""Which task a call belongs to: the same structure as the task's calls, and close in meaning.

The router profile of each task (from task discovery) holds the structure its calls share
(tenant, system prompt hash, tools, response format, input shape) and the centroids of
their user turns' embeddings. A call is matched by structure first — a dictionary lookup.
When one task has that structure, it is the match; only when several tasks share a
structure (one system prompt serving two jobs) is the user turn embedded and compared
with their centroids, the closest above its threshold winning. Embedding costs a few
milliseconds on a CPU, so the common case stays a lookup.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from protege.api.calls import ChatRequest, last_user_text
from protege.training.discovery.discover import Embedder
from protege.training.discovery.tasks import Structure, Task, call_structure


@dataclass(frozen=True)
class TaskMatch:
    task_id: str
    similarity: float | None  # None when the structure alone decided


def request_structure(tenant: str, request: ChatRequest) -> Structure:
    messages = [m.model_dump(exclude_none=True) for m in request.messages]
    system = next(
        (str(m.get("content") or "") for m in messages if m.get("role") in ("system", "developer")), ""
    )
    return call_structure(tenant, system, request.tools, request.response_format, last_user_text(messages))


class TaskClassifier:
    """Matches requests to discovered tasks by their router profiles."""

    def __init__(self, tasks: Sequence[Task], embedder: Embedder | None = None) -> None:
        self.embedder = embedder
        self._by_structure: dict[Structure, list[Task]] = defaultdict(list)
        for task in tasks:
            self._by_structure[task.router.fingerprint.structure].append(task)
        models = {task.router.embedding_model for task in tasks if task.router.centroids}
        if embedder is not None and models - {embedder.name}:
            raise ValueError(
                f"task centroids were made with {sorted(models)}, the router embeds with {embedder.name}; "
                "rerun `protege tasks discover` with the router's embedding model"
            )

    @property
    def needs_embeddings(self) -> bool:
        return any(len(tasks) > 1 for tasks in self._by_structure.values())

    def classify(self, tenant: str, request: ChatRequest) -> TaskMatch | None:
        candidates = self._by_structure.get(request_structure(tenant, request), [])
        if len(candidates) == 1:
            return TaskMatch(candidates[0].id, None)
        if not candidates or self.embedder is None:
            return None
        [vector] = self.embedder.encode([last_user_text([m.model_dump() for m in request.messages])])
        best: TaskMatch | None = None
        for task in candidates:
            similarity = float(np.max(np.asarray(task.router.centroids, dtype=np.float32) @ vector))
            if similarity >= task.router.threshold and (best is None or similarity > (best.similarity or -1)):
                best = TaskMatch(task.id, similarity)
        return best
