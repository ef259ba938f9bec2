"""What a call shows before it is answered, computed one way for discovery and for the router (pure).

A task is recognised by what its calls do, not by exact strings, so every feature here is
one that stays put across the calls of one task while agents vary the rest:

- **System prompt as a template.** Agents put per-call context into the system prompt
  (retrieved passages, the user's profile, today's date). The prompt is cut into segments
  (lines and sentences, numbers folded); a segment is part of the prompt's *skeleton* when
  it recurs: it was seen in at least ``min_count`` calls of the tenant and in at least half
  as many calls as the call's most frequent segment. Retrieved passages, names and dates
  fall out; the instructions stay. A segment that PII redaction changed (it carries a
  placeholder) never counts, so the raw prompt the router sees and the redacted prompt
  discovery sees give the same skeleton without running the redactor on the request path.
- **Whether tools are offered, not which.** Tool retrieval, MCP servers that come and go
  and catalogues of hundreds of functions change the offered set call by call; the tools
  a task's answers *call* are evidence for discovery (see ``discover``), not a key.
- **The step of the conversation.** In a tool loop the same question comes back with tool
  results after it; the step (who spoke last, how many tool rounds came before) keeps a
  specialist for the tool-call step from being sent the final-answer step.

A call's **novelty** against its task is the share of its user turn's words the task's
vocabulary lacks (:func:`novelty`); above the task's bar (:func:`novelty_bar`, a high
quantile of its own calls' novelty, set by discovery), the call is unlike the task's
calls: the router records it, the flywheel watches the share of such calls (input drift).

``SegmentCounts`` (per tenant, in the task registry) is the only state: discovery counts,
the router reads the counts of the registry it routes by.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import Counter
from collections.abc import Container, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from protege.api.calls import last_user_text
from protege.pii.redactor import PLACEHOLDER

# A segment recurs when it is in at least this share of the calls of the call's most frequent one.
SKELETON_SHARE = 0.5
MAX_TOOL_ROUNDS = 3  # steps deeper than this in a loop look alike

_SEGMENT_BREAK = re.compile(r"\n+|(?<=[.!?;:])\s+")
_CODE = re.compile(
    r"```|^\s*(?:def|class|import|function|const|let)\s|"
    r"\b(?:SELECT|INSERT|UPDATE|DELETE)\b[\s\S]+?\b(?:FROM|INTO|SET|WHERE)\b",
    re.I | re.M,
)

NO_SYSTEM_PROMPT = "none"


def normalize_segment(text: str) -> str:
    return " ".join(re.sub(r"\d+", "0", text).split()).lower()


def _digest(text: str, size: int = 16) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:size]


def prompt_segments(prompt: str) -> frozenset[str]:
    """Hashes of the prompt's segments that can be part of a template (placeholders excluded)."""
    found = set()
    for part in _SEGMENT_BREAK.split(prompt):
        segment = normalize_segment(part)
        if segment and not PLACEHOLDER.search(part):
            found.add(_digest(segment, 12))
    return frozenset(found)


SegmentCounts = Mapping[str, int]  # segment hash → calls of the tenant that carry it


def count_segments(prompts: Iterable[str], min_count: int) -> dict[str, int]:
    """Segment counts over one tenant's system prompts, kept only for segments that recur."""
    counts: Counter[str] = Counter()
    for prompt in prompts:
        counts.update(prompt_segments(prompt))
    return {segment: n for segment, n in sorted(counts.items()) if n >= min_count}


def system_skeleton(prompt: str, counts: SegmentCounts) -> str:
    """The prompt's template: a hash of its recurring segments.

    ``none`` without a system prompt; a hash unique to the prompt when none of its segments
    recurs (a template seen too rarely yet), so such a call matches no task.
    """
    segments = prompt_segments(prompt)
    if not segments and not prompt.strip():
        return NO_SYSTEM_PROMPT
    seen = {segment: counts.get(segment, 0) for segment in segments}
    most = max(seen.values(), default=0)
    if most == 0:
        return "unseen-" + _digest(prompt)
    skeleton = sorted(segment for segment, n in seen.items() if n >= SKELETON_SHARE * most)
    return _digest(",".join(skeleton))


def conversation_step(messages: list[dict[str, Any]]) -> str:
    """Where the conversation is: who spoke last, and how many tool rounds came before."""
    roles = [str(m.get("role") or "") for m in messages if m.get("role") not in ("system", "developer")]
    last = roles[-1] if roles else "none"
    rounds = sum(1 for m in messages if m.get("role") == "assistant" and m.get("tool_calls"))
    return f"{last}:{min(rounds, MAX_TOOL_ROUNDS)}"


def input_shape(text: str) -> str:
    """'code' when the user turn carries code (a query, a snippet), else 'text'."""
    return "code" if _CODE.search(text) else "text"


def system_prompt_of(messages: list[dict[str, Any]]) -> str:
    return next(
        (str(m.get("content") or "") for m in messages if m.get("role") in ("system", "developer")), ""
    )


class Structure(NamedTuple):
    """The structure of a call, the key of the router's lookup and of discovery's first grouping."""

    tenant: str
    system: str  # the system prompt's skeleton hash
    offers_tools: bool
    response_format: str | None
    input_shape: str
    step: str


def call_structure(
    tenant: str,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None,
    response_format: dict[str, Any] | None,
    counts: SegmentCounts,
) -> Structure:
    """The structure of a call from its request: the router's and discovery's one definition."""
    return Structure(
        tenant=tenant,
        system=system_skeleton(system_prompt_of(messages), counts),
        offers_tools=bool(tools),
        response_format=(response_format or {}).get("type"),
        input_shape=input_shape(last_user_text(messages)),
        step=conversation_step(messages),
    )


def called_tools(messages: list[dict[str, Any]]) -> tuple[str, ...]:
    """The tools called in assistant turns, in order (a conversation's history or one answer)."""
    return tuple(
        str((call.get("function") or {}).get("name") or "")
        for m in messages
        if m.get("role") == "assistant"
        for call in m.get("tool_calls") or []
    )


def tools_answered_after(messages: list[dict[str, Any]]) -> tuple[str, ...]:
    """The tools of the conversation's last tool round (whose results an answer now reads), sorted."""
    last_round = next(
        (m for m in reversed(messages) if m.get("role") == "assistant" and m.get("tool_calls")), None
    )
    return tuple(sorted(set(called_tools([last_round])))) if last_round else ()


# A value PII redaction replaced, as one word. No vocabulary holds it (see word_profiles): the
# router reads the raw value in its place — a name, an address — which the task never saw either.
PII_WORD = "<pii>"
_WORDS = re.compile(r"<pii>|[a-z]+|\d+")


def words(text: str) -> list[str]:
    """The words of a user turn as the router's word profiles count them (numbers folded to 0,
    each placeholder one :data:`PII_WORD`)."""
    text = PLACEHOLDER.sub(f" {PII_WORD} ", text)
    return ["0" if w.isdigit() else w for w in _WORDS.findall(text.lower())]


# A task's novelty bar: this quantile of its own calls' leave-one-out novelty, so that on traffic
# like its training calls about 1 - NOVELTY_QUANTILE of the calls are above it.
NOVELTY_QUANTILE = 0.95
# A task of fewer calls (with words) gets no bar yet: too few calls to tell a new kind of call
# from words it has not met by chance. On the shipped workload (12 draws of its calls each),
# held-out calls like a task's own read novel up to 33% of the time with a bar made from 40
# calls, 21% from 50, 15% from 80 (2-3% on average).
NOVELTY_MIN_CALLS = 50


class Novelty(NamedTuple):
    """How unlike a task's calls one user turn is."""

    share: float  # of the turn's words, the share the task's vocabulary lacks
    novel: bool  # the share is above the task's novelty bar


def novelty(found: Sequence[str], vocabulary: Container[str]) -> float | None:
    """The share of a user turn's words (as :func:`words` gives them) that ``vocabulary`` lacks.

    None for a turn without words: nothing to compare.
    """
    if not found:
        return None
    return sum(w not in vocabulary for w in found) / len(found)


def leave_one_out_novelty(calls: Sequence[Sequence[str]], vocabulary: Container[str]) -> list[float | None]:
    """Each of a task's calls' novelty against its ``vocabulary`` as if the task had not seen it.

    ``calls`` are the words of each of the task's user turns. A word that only this call has
    counts as unseen for it, as it would for a new call; None for a call without words.
    """
    calls_with = Counter(w for call in calls for w in set(call))
    return [
        sum(w not in vocabulary or calls_with[w] == 1 for w in call) / len(call) if call else None
        for call in calls
    ]


def novelty_bar(
    calls: Sequence[Sequence[str]],
    vocabulary: Container[str],
    quantile: float = NOVELTY_QUANTILE,
    min_calls: int = NOVELTY_MIN_CALLS,
) -> float | None:
    """The ``quantile`` of a task's own calls' leave-one-out novelty against its ``vocabulary``.

    One of the shares itself, the ⌈(n + 1) · quantile⌉-th smallest of n (the conformal rank,
    which allows for the bar being made from n calls only): at most ``1 - quantile`` of the
    task's own calls are above it, and about as many of new calls like them. None for fewer
    than ``min_calls`` calls with words.
    """
    shares = sorted(share for share in leave_one_out_novelty(calls, vocabulary) if share is not None)
    if not shares or len(shares) < min_calls:
        return None
    return shares[min(len(shares), math.ceil(quantile * (len(shares) + 1))) - 1]
