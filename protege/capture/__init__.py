"""Capture (S1): the call-log publisher and its disk spool."""

from protege.capture.publisher import CallLogPublisher, PublisherStats, StreamSettings, ensure_stream
from protege.capture.spool import DiskSpool, SpoolFullError

__all__ = [
    "CallLogPublisher",
    "DiskSpool",
    "PublisherStats",
    "SpoolFullError",
    "StreamSettings",
    "ensure_stream",
]
