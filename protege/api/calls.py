"""The call record: one logged LLM call (S1), the unit everything downstream learns from.

The request and response keep OpenAI's wire names and accept fields this version does
not know (``extra="allow"``), so a record carries the whole call and round-trips through
JSON without loss.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator, model_validator

from protege.api.ids import uuid7

SCHEMA_VERSION = 1
SUBJECT_PREFIX = "protege.calls"
_SUBJECT_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def check_subject_token(value: str, what: str) -> str:
    """Check that ``value`` can stand as one NATS subject token (tenants and apps do)."""
    if not _SUBJECT_TOKEN.match(value):
        suggestion = re.sub(r"[^A-Za-z0-9_-]+", "-", value).strip("-")[:64] or "default"
        raise ValueError(
            f"{what} {value!r} may only hold 1-64 letters, digits, '-' and '_', because it becomes "
            f"a NATS subject token; use e.g. {suggestion!r}"
        )
    return value


class _OpenAIObject(BaseModel):
    """An OpenAI wire object: known fields typed, unknown fields kept as they came."""

    model_config = ConfigDict(extra="allow")


class FunctionCall(_OpenAIObject):
    name: str = Field(description="Name of the function the model calls.")
    arguments: str = Field(
        description="The arguments as the JSON text the model produced (may be invalid JSON)."
    )


class ToolCall(_OpenAIObject):
    id: str | None = Field(default=None, description="The tool call id the model assigned.")
    type: str = Field(default="function", description="Tool type; 'function' for function tools.")
    function: FunctionCall = Field(description="The called function and its arguments.")


class ChatMessage(_OpenAIObject):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"] = Field(
        description="Author of the message."
    )
    content: str | list[dict[str, Any]] | None = Field(
        default=None, description="Text, or a list of content parts; null for pure tool-call turns."
    )
    name: str | None = Field(default=None, description="Optional participant name.")
    tool_calls: list[ToolCall] | None = Field(default=None, description="Tool calls of an assistant turn.")
    tool_call_id: str | None = Field(default=None, description="For role 'tool': the call this answers.")


class ChatRequest(_OpenAIObject):
    """An OpenAI chat-completions request body."""

    model: str = Field(min_length=1, description="Model name the caller asked for.")
    messages: list[ChatMessage] = Field(min_length=1, description="The conversation so far.")
    tools: list[dict[str, Any]] | None = Field(default=None, description="Tool (function) schemas offered.")
    tool_choice: str | dict[str, Any] | None = Field(default=None, description="How the model may use tools.")
    response_format: dict[str, Any] | None = Field(
        default=None, description="Requested output format, e.g. {'type': 'json_object'} or a JSON schema."
    )
    stream: bool = Field(default=False, description="Whether the caller asked for server-sent events.")
    temperature: float | None = Field(default=None, description="Sampling temperature.")
    top_p: float | None = Field(default=None, description="Nucleus sampling mass.")
    max_tokens: int | None = Field(default=None, description="Legacy cap on completion tokens.")
    max_completion_tokens: int | None = Field(default=None, description="Cap on completion tokens.")
    n: int | None = Field(default=None, description="Number of choices requested.")
    stop: str | list[str] | None = Field(default=None, description="Stop sequences.")
    seed: int | None = Field(default=None, description="Sampling seed.")
    presence_penalty: float | None = Field(default=None, description="Presence penalty.")
    frequency_penalty: float | None = Field(default=None, description="Frequency penalty.")
    logprobs: bool | None = Field(default=None, description="Whether token logprobs were requested.")
    top_logprobs: int | None = Field(default=None, description="Alternatives per token with logprobs.")
    user: str | None = Field(default=None, description="End-user id the caller passed, if any.")


class AssistantMessage(_OpenAIObject):
    role: Literal["assistant"] = Field(default="assistant", description="Always 'assistant'.")
    content: str | None = Field(default=None, description="Text of the answer; null for pure tool calls.")
    tool_calls: list[ToolCall] | None = Field(default=None, description="Tool calls in the answer.")
    refusal: str | None = Field(default=None, description="Refusal text, when the model refused.")


class Choice(_OpenAIObject):
    index: int = Field(default=0, ge=0, description="Position of this choice.")
    message: AssistantMessage = Field(description="The answer.")
    finish_reason: str | None = Field(
        default=None, description="Why generation stopped: stop, length, tool_calls, content_filter, ..."
    )
    logprobs: dict[str, Any] | None = Field(default=None, description="Token logprobs, when requested.")


class ChatResponse(_OpenAIObject):
    """The answer of a chat completion, assembled from chunks for streamed calls."""

    id: str | None = Field(default=None, description="Completion id given by the upstream.")
    model: str | None = Field(default=None, description="Model name the upstream reported.")
    created: int | None = Field(default=None, description="Unix time the upstream reported.")
    choices: list[Choice] = Field(default_factory=list, description="The answers (one unless n > 1).")

    @property
    def content(self) -> str | None:
        return self.choices[0].message.content if self.choices else None

    @property
    def tool_calls(self) -> list[ToolCall]:
        return (self.choices[0].message.tool_calls or []) if self.choices else []

    @property
    def finish_reason(self) -> str | None:
        return self.choices[0].finish_reason if self.choices else None


class Usage(_OpenAIObject):
    prompt_tokens: int = Field(default=0, ge=0, description="Tokens in the prompt.")
    completion_tokens: int = Field(default=0, ge=0, description="Tokens generated.")
    total_tokens: int = Field(default=0, ge=0, description="Prompt plus completion tokens.")


class Latency(BaseModel):
    model_config = ConfigDict(extra="forbid")

    total_ms: float = Field(ge=0, description="From request received to last byte sent, in milliseconds.")
    ttft_ms: float | None = Field(
        default=None, ge=0, description="Time to first token in milliseconds (streamed calls)."
    )


class CallStatus(StrEnum):
    OK = "ok"
    UPSTREAM_ERROR = "upstream_error"
    CLIENT_DISCONNECTED = "client_disconnected"
    TIMEOUT = "timeout"


class ErrorInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: str = Field(description="Error class, e.g. 'upstream_http_error', 'timeout', 'connect_error'.")
    message: str = Field(description="What went wrong (never contains credentials).")
    status_code: int | None = Field(default=None, description="HTTP status returned by the upstream, if any.")


class UpstreamKind(StrEnum):
    TEACHER = "teacher"
    SPECIALIST = "specialist"


class Upstream(BaseModel):
    """Who answered: the teacher (the big model) or one specialist version."""

    model_config = ConfigDict(extra="forbid")

    kind: UpstreamKind = Field(description="'teacher' or 'specialist'.")
    model: str = Field(description="Model name sent to the upstream.")
    specialist: str | None = Field(default=None, description="Specialist name, when kind is 'specialist'.")
    version: str | None = Field(default=None, description="Specialist version, when kind is 'specialist'.")

    @model_validator(mode="after")
    def _specialist_named(self) -> Upstream:
        if self.kind is UpstreamKind.SPECIALIST and not (self.specialist and self.version):
            raise ValueError("an upstream of kind 'specialist' needs both 'specialist' and 'version'")
        return self


class RouteReason(StrEnum):
    NO_ROUTER = "no_router"  # routing disabled: everything goes to the teacher
    NO_TASK_MATCH = "no_task_match"
    ROUTER_BUSY = "router_busy"  # the call needed an embedding the router could not make in time
    NO_ACTIVE_SPECIALIST = "no_active_specialist"
    SPECIALIST = "specialist"
    CANARY = "canary"
    SHADOW = "shadow"
    PINNED = "pinned"  # the caller named a specialist (or version) as its model
    TEACHER_ONLY = "teacher_only"  # only the teacher can answer it (an unrouted endpoint, server state)
    FALLBACK_INVALID_OUTPUT = "fallback_invalid_output"
    FALLBACK_LOW_CONFIDENCE = "fallback_low_confidence"
    FALLBACK_SPECIALIST_ERROR = "fallback_specialist_error"
    BREAKER_OPEN = "breaker_open"  # the version's circuit breaker is open: the engine was not asked


class Endpoint(StrEnum):
    """The OpenAI API a call came in on; its request and answer are recorded in chat-completions shape."""

    CHAT_COMPLETIONS = "chat.completions"  # POST /v1/chat/completions
    RESPONSES = "responses"  # POST /v1/responses, converted (protege.api.responses)
    COMPLETIONS = "completions"  # POST /v1/completions: the prompt as one user message


class RouteDecision(BaseModel):
    model_config = ConfigDict(extra="forbid")

    target: UpstreamKind = Field(description="Where the answer the caller saw came from.")
    reason: RouteReason = Field(description="Why the call went there.")
    task_id: str | None = Field(default=None, description="Task the router matched, if any.")
    similarity: float | None = Field(default=None, description="Router similarity to the matched task.")
    novelty: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="Share of the user turn's words the matched task's vocabulary lacks (none without a "
        "task, or with a task registry older than novelty bars).",
    )
    novel: bool | None = Field(
        default=None,
        description="The call's user turn is unlike the task's training calls: its unseen-word share is "
        "above the task's novelty bar (about 5% of calls like the training calls are).",
    )
    specialist: str | None = Field(default=None, description="Specialist considered for the call.")
    version: str | None = Field(default=None, description="Specialist version considered.")
    confidence: float | None = Field(
        default=None,
        description="Specialist confidence: the token-probability signal its fallback check read "
        "(the mean for fallback.minConfidence, the calibrated check's own otherwise).",
    )


class AlternateAnswer(BaseModel):
    """The answer the caller did not see: a rejected specialist answer, or a shadow answer."""

    model_config = ConfigDict(extra="forbid")

    upstream: Upstream = Field(description="Who produced this answer.")
    response: ChatResponse | None = Field(default=None, description="The answer, if one came back.")
    usage: Usage | None = Field(default=None, description="Its token usage.")
    latency: Latency | None = Field(default=None, description="Its latency.")
    error: ErrorInfo | None = Field(default=None, description="Why it failed, if it did.")
    rejection: str | None = Field(default=None, description="Why the router rejected it, on fallback.")
    agreement: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="The specialist's score against the teacher with the Specialist's metric: a shadow "
        "answer against the teacher's answer, or, on a teacher sample, the returned answer against it.",
    )


def _now() -> datetime:
    return datetime.now(UTC)


class CallRecord(BaseModel):
    """One LLM call as logged by the gateway or the listener SDK."""

    model_config = ConfigDict(extra="forbid")

    schema_version: int = Field(default=SCHEMA_VERSION, description="Version of this record schema.")
    id: str = Field(default_factory=lambda: str(uuid7()), description="UUIDv7: unique and time-ordered.")
    timestamp: AwareDatetime = Field(default_factory=_now, description="When the call arrived (UTC).")
    tenant: str = Field(description="Tenant that made the call; a NATS subject token.")
    app: str = Field(default="default", description="App or workload tag; a NATS subject token.")
    source: Literal["gateway", "sdk"] = Field(default="gateway", description="What captured the call.")
    endpoint: Endpoint = Field(
        default=Endpoint.CHAT_COMPLETIONS,
        description="The API the call came in on; request and response are in chat-completions shape "
        "either way (a Responses call converted, a completion's prompt as one user message).",
    )
    request: ChatRequest = Field(description="The chat request as the caller sent it.")
    response: ChatResponse | None = Field(default=None, description="The answer the caller received.")
    usage: Usage | None = Field(default=None, description="Token usage of the answer.")
    latency: Latency = Field(description="Latency seen by the caller.")
    status: CallStatus = Field(default=CallStatus.OK, description="How the call ended.")
    error: ErrorInfo | None = Field(default=None, description="What failed, when status is not 'ok'.")
    upstream: Upstream | None = Field(default=None, description="Who answered; null if nobody did.")
    route: RouteDecision = Field(
        default_factory=lambda: RouteDecision(target=UpstreamKind.TEACHER, reason=RouteReason.NO_ROUTER),
        description="The router's decision for this call.",
    )
    alternate: AlternateAnswer | None = Field(
        default=None, description="The answer not returned: a fallback's rejected or a shadow answer."
    )
    teacher_sample: AlternateAnswer | None = Field(
        default=None,
        description="The teacher's answer to a call a specialist answered, asked off the request path "
        "(rollout.teacherSampleRate) to score the specialist; its agreement is the specialist's score.",
    )

    @field_validator("schema_version")
    @classmethod
    def _known_schema(cls, value: int) -> int:
        if value != SCHEMA_VERSION:
            raise ValueError(
                f"record schema version {value} is not readable by this Protégé, which reads version "
                f"{SCHEMA_VERSION}; upgrade the reader (pip install -U protege) or re-publish the record"
            )
        return value

    @field_validator("id")
    @classmethod
    def _uuid7(cls, value: str) -> str:
        try:
            parsed = uuid.UUID(value)
        except ValueError:
            raise ValueError(f"id {value!r} is not a UUID; leave it unset to generate a UUIDv7") from None
        if parsed.version != 7:
            raise ValueError(f"id {value!r} is a UUIDv{parsed.version}; ids must be UUIDv7 (time-ordered)")
        return str(parsed)

    @field_validator("tenant")
    @classmethod
    def _tenant_token(cls, value: str) -> str:
        return check_subject_token(value, "tenant")

    @field_validator("app")
    @classmethod
    def _app_token(cls, value: str) -> str:
        return check_subject_token(value, "app")

    @model_validator(mode="after")
    def _status_consistent(self) -> CallRecord:
        if self.status is CallStatus.OK and self.response is None:
            raise ValueError("a record with status 'ok' needs a response; set status to what went wrong")
        if self.status is not CallStatus.OK and self.error is None:
            raise ValueError(
                f"a record with status {self.status.value!r} needs an 'error' saying what failed"
            )
        return self

    @property
    def subject(self) -> str:
        """The JetStream subject this record is published on."""
        return call_subject(self.tenant, self.app)

    def to_json(self) -> bytes:
        # A chat-completions record leaves `endpoint` out: readers older than the field read it still.
        chat = self.endpoint is Endpoint.CHAT_COMPLETIONS
        return self.model_dump_json(exclude={"endpoint"} if chat else None).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> CallRecord:
        return cls.model_validate_json(data)


def last_user_text(messages: list[dict[str, Any]]) -> str:
    """The text of the last user turn of OpenAI-style messages (content parts joined)."""
    for message in reversed(messages):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):
                return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
            return str(content or "")
    return ""


def call_subject(tenant: str, app: str, prefix: str = SUBJECT_PREFIX) -> str:
    return f"{prefix}.{check_subject_token(tenant, 'tenant')}.{check_subject_token(app, 'app')}"
