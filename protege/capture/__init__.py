"""Capture (S1): the call-log publisher, its disk spool, and the listener SDK."""

from protege.capture.publisher import (
    BackgroundPublisher,
    CallLogPublisher,
    PublisherStats,
    StreamSettings,
    ensure_stream,
)
from protege.capture.recorder import CallObserver, RecordSink
from protege.capture.sdk import AsyncCapturingTransport, CapturingTransport, capture_openai
from protege.capture.spool import DiskSpool, SpoolFullError, SpoolInUseError

__all__ = [
    "AsyncCapturingTransport",
    "BackgroundPublisher",
    "CallLogPublisher",
    "CallObserver",
    "CapturingTransport",
    "DiskSpool",
    "PublisherStats",
    "RecordSink",
    "SpoolFullError",
    "SpoolInUseError",
    "StreamSettings",
    "capture_openai",
    "ensure_stream",
]
