"""Capture (S1): the call-log publisher, its disk spool, and the listener SDK."""

from protege.capture.connection import NatsEndpoint
from protege.capture.publisher import (
    BackgroundPublisher,
    CallLogPublisher,
    PublisherStats,
    StreamSettings,
    ensure_stream,
)
from protege.capture.recorder import CallObserver, RecordSink
from protege.capture.sdk import AsyncCapturingTransport, CapturingTransport, capture_openai, capture_tenant
from protege.capture.spool import DiskSpool, SpoolFullError, SpoolInUseError

__all__ = [
    "AsyncCapturingTransport",
    "BackgroundPublisher",
    "CallLogPublisher",
    "CallObserver",
    "CapturingTransport",
    "DiskSpool",
    "NatsEndpoint",
    "PublisherStats",
    "RecordSink",
    "SpoolFullError",
    "SpoolInUseError",
    "StreamSettings",
    "capture_openai",
    "capture_tenant",
    "ensure_stream",
]
