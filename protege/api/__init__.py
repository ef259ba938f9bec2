"""Protégé's API types: the call record and the custom resources."""

from protege.api.calls import (
    AlternateAnswer,
    CallRecord,
    CallStatus,
    ChatMessage,
    ChatRequest,
    ChatResponse,
    Choice,
    ErrorInfo,
    Latency,
    RouteDecision,
    RouteReason,
    ToolCall,
    Upstream,
    UpstreamKind,
    Usage,
)
from protege.api.meta import API_VERSION, GROUP, VERSION, Condition, ConditionStatus, set_condition
from protege.api.pool import SpecialistPoolSpec, SpecialistPoolStatus
from protege.api.resources import (
    RESOURCE_KINDS,
    SPECIALIST,
    SPECIALIST_POOL,
    ResourceKind,
    SpecificationError,
    parse_spec,
)
from protege.api.specialist import SpecialistSpec, SpecialistStatus

__all__ = [
    "API_VERSION",
    "GROUP",
    "RESOURCE_KINDS",
    "SPECIALIST",
    "SPECIALIST_POOL",
    "VERSION",
    "AlternateAnswer",
    "CallRecord",
    "CallStatus",
    "ChatMessage",
    "ChatRequest",
    "ChatResponse",
    "Choice",
    "Condition",
    "ConditionStatus",
    "ErrorInfo",
    "Latency",
    "ResourceKind",
    "RouteDecision",
    "RouteReason",
    "SpecialistPoolSpec",
    "SpecialistPoolStatus",
    "SpecialistSpec",
    "SpecialistStatus",
    "SpecificationError",
    "ToolCall",
    "Upstream",
    "UpstreamKind",
    "Usage",
    "parse_spec",
    "set_condition",
]
