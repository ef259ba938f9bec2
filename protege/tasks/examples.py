"""A curated example: one logged call, cleaned of PII, in chat format, ready for a dataset.

Built from a :class:`CallRecord` the teacher answered successfully. Everything a person
wrote or the model answered — messages, their ``name``, tool-call arguments — goes through
one :class:`RecordRedaction` in two passes (:meth:`~RecordRedaction.whole`), so a value found
anywhere in the example is replaced everywhere in it, by the same placeholder.
"""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from protege.api.calls import CallRecord, last_user_text
from protege.api.ids import uuid7_time_ms
from protege.api.specialist import OutputKind
from protege.pii import RecordRedaction

DAY_MS = 86_400_000

_SQL = re.compile(r"^\s*(?:SELECT|WITH|INSERT|UPDATE|DELETE|CREATE|ALTER|DROP)\b", re.I)


def output_kind(answer: dict[str, Any]) -> OutputKind:
    """What kind of output an assistant message is (pure; decides the task's metric later)."""
    if answer.get("tool_calls"):
        return OutputKind.TOOL_CALL
    content = answer.get("content") or ""
    if not isinstance(content, str):
        return OutputKind.PROSE
    text = (
        content.strip().removeprefix("```json").removeprefix("```sql").removeprefix("```").removesuffix("```")
    )
    try:
        if isinstance(json.loads(text), dict | list):
            return OutputKind.JSON
    except ValueError:
        pass
    if _SQL.match(text):
        return OutputKind.SQL
    if 0 < len(text.split()) <= 4 and not re.search(r"[.!?]\s", text):
        return OutputKind.LABEL
    return OutputKind.PROSE


class Example(BaseModel):
    """One training example: the conversation up to the answer, and the answer to learn."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(description="The call record's id (UUIDv7): lineage back to the call log.")
    tenant: str = Field(description="Tenant the call came from.")
    app: str = Field(description="App tag of the call.")
    messages: list[dict[str, Any]] = Field(description="The request's messages, redacted.")
    tools: list[dict[str, Any]] | None = Field(default=None, description="Tool schemas offered.")
    response_format: dict[str, Any] | None = Field(default=None, description="Requested output format.")
    answer: dict[str, Any] = Field(description="The teacher's assistant message, redacted.")
    output_kind: OutputKind = Field(description="What the answer is: tool call, JSON, SQL, label or prose.")
    redactions: dict[str, int] = Field(default_factory=dict, description="PII replaced, by type.")
    name_words: dict[str, int] = Field(
        default_factory=dict,
        description="How many words the name behind each person placeholder had (a count, not the "
        "name): fake names read for training get as many.",
    )

    @property
    def logged_at_ms(self) -> int | None:
        """When its call was logged (Unix ms, from the UUIDv7 id); None for an id of another kind."""
        try:
            return uuid7_time_ms(self.id)
        except ValueError:
            return None

    @property
    def system_prompt(self) -> str:
        return next(
            (str(m.get("content") or "") for m in self.messages if m.get("role") in ("system", "developer")),
            "",
        )

    @property
    def user_text(self) -> str:
        """The last user turn: what varies from call to call within a task."""
        return last_user_text(self.messages)

    def chat(self) -> list[dict[str, Any]]:
        """The example as one chat: the conversation, then the answer to learn."""
        return [*self.messages, self.answer]


def example_from_record(record: CallRecord, redaction: RecordRedaction | None = None) -> Example:
    """The redacted example of a successful call (callers filter failures first)."""
    if record.response is None or not record.response.choices:
        raise ValueError(f"record {record.id} has no answer to learn from")
    redaction = redaction or RecordRedaction()
    answer = record.response.choices[0].message.model_dump(exclude_none=True)
    answer.pop("refusal", None)
    texts = [m.model_dump(exclude_none=True) for m in record.request.messages] + [answer]
    *messages, answer = redaction.whole(lambda: [redaction.message(m) for m in texts])
    return Example(
        id=record.id,
        tenant=record.tenant,
        app=record.app,
        messages=messages,
        tools=record.request.tools,
        response_format=record.request.response_format,
        answer=answer,
        output_kind=output_kind(answer),
        redactions=dict(redaction.counts),
        name_words=dict(redaction.name_words),
    )
